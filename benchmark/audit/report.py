"""The whole audit: every check on a split and its indexes, as a JSON document and a text report.

:func:`run_audit` audits :class:`AuditData` (and item indexes) against thresholds;
:func:`configured` builds them from a composed config (the dataset, the split, the fixed
negatives of a sampled protocol, and the item indexes named by ``audit.indexes``, each also
rebuilt from the train part alone); :func:`render` prints the report, one line per finding;
:func:`write_report` writes the JSON. The report holds no times or machine facts, so the same
input gives the same file.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmark.audit.findings import SEVERITIES, Finding, Thresholds
from benchmark.audit.identifiers import AuditIndex, id_codes, index_checks
from benchmark.audit.overlap import duplicates, labels, overlap, sampling
from benchmark.audit.semantic import code_quality
from benchmark.audit.table import AuditData, from_split
from benchmark.audit.timeline import timeline
from benchmark.errors import ConfigError
from benchmark.util import atomic_write

AUDIT_VERSION = 1
SCHEMES = ("random", "sequential", "collaborative", "semantic", "title")


def run_audit(data: AuditData, indexes: list[AuditIndex], limits: Thresholds) -> dict[str, Any]:
    """Every check on ``data`` and on each index.

    Returns:
        the report: ``audited`` (name, protocol, facts), ``stats``, ``sections`` (figures per
        check family, ``indexes`` per index), ``findings`` (one per check and scope), ``counts``
        per severity and ``passed`` (no error).
    """
    sections: dict[str, Any] = {}
    findings: list[Finding] = []
    for name, check in (
        ("timeline", timeline),
        ("overlap", overlap),
        ("duplicates", duplicates),
        ("sampling", sampling),
        ("labels", labels),
    ):
        sections[name], found = check(data, limits)
        findings += found
    sections["indexes"] = {}
    for index in indexes:
        figures, found = index_checks(data, index, limits)
        kind, codes = id_codes(index.ids)
        if kind == "structured" and index.scheme in (None, "semantic"):  # codes, not cluster paths
            figures["codes"], more = code_quality(index, codes, limits)
            found += more
        sections["indexes"][index.name] = figures
        findings += found
    counts = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
    return {
        "audit_version": AUDIT_VERSION,
        "audited": {"name": data.name, "protocol": data.protocol, **data.facts},
        "stats": data.stats(),
        "sections": sections,
        "findings": [f.as_dict() for f in findings],
        "counts": counts,
        "passed": counts["error"] == 0,
    }


def render(report: dict[str, Any]) -> str:
    """The report as text: what was audited, one line per finding (errors first), the verdict."""
    a, s = report["audited"], report["stats"]
    lines = [
        f"audit of {a['name']} (protocol {a['protocol']}): {s['users']} users, {s['items']} items, "
        f"{s['train_rows']}/{s['valid_rows']}/{s['test_rows']} train/valid/test rows",
    ]
    rank = {sev: i for i, sev in enumerate(reversed(SEVERITIES))}
    ordered = sorted(report["findings"], key=lambda f: rank[f["severity"]])
    lines += [Finding(**f).line() for f in ordered]
    c = report["counts"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines.append(f"{verdict}: {c['error']} errors, {c['warning']} warnings, {c['info']} info")
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: Path) -> Path:
    """Write the report as JSON (atomically, sorted keys, one indent)."""
    return atomic_write(Path(path), json.dumps(report, indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- configured splits


def audit_options(node: Any) -> tuple[list[str] | None, Thresholds]:
    """(``indexes``, thresholds) of the ``audit`` config node.

    ``indexes``: None = the chosen model's own indexing (when it has one); a list of schemes.

    Raises:
        ConfigError: an unknown key or scheme, or a bad threshold.
    """
    node = dict(node or {})
    indexes = node.pop("indexes", None)
    if indexes is not None:
        if isinstance(indexes, str):
            indexes = SCHEMES if indexes == "all" else [indexes]
        indexes = [str(s) for s in indexes]
        unknown = [s for s in indexes if s not in SCHEMES]
        if unknown:
            raise ConfigError(
                f"audit.indexes: unknown scheme(s) {unknown} (all, or a list of {', '.join(SCHEMES)})"
            )
    return indexes, Thresholds.from_mapping(node)


def configured(cfg: Any) -> tuple[AuditData, list[AuditIndex], Thresholds]:
    """The split, its fixed negatives and its indexes of a composed config (with an ``audit`` node).

    Args:
        cfg: a composed root config with ``audit`` (``+audit=default``).

    Returns:
        (data, indexes, thresholds).
    """
    from omegaconf import OmegaConf

    from benchmark.config import DataConfig, EvalConfig, SplitConfig, to_object
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split

    schemes, limits = audit_options(OmegaConf.to_container(cfg.get("audit") or {}, resolve=True))
    data_cfg = to_object(cfg.data, DataConfig)
    split_cfg = to_object(cfg.split, SplitConfig)
    ev = to_object(cfg.eval, EvalConfig)
    dataset = load_dataset(data_cfg)
    split = build_split(dataset, split_cfg)
    labeled = ev.protocol == "labeled"
    audit_data = from_split(
        split, f"{dataset.name} {split.protocol}", split_cfg.label_threshold if labeled else None
    )
    audit_data.facts.update(
        {
            "dataset": dataset.name,
            "dataset_fingerprint": dataset.fingerprint,
            "fingerprint": split.fingerprint,
            "eval": ev.protocol,
        }
    )
    if ev.protocol in ("sampled", "candidates"):
        from benchmark.data.views import ranking_rows, sample_negatives

        rows = ranking_rows(split, "test")
        audit_data.negatives = (
            rows.users,
            sample_negatives(split, rows, ev.num_negatives, ev.negatives_seed),
        )
    if schemes is None:
        own = cfg.model.get("module", {}).get("indexing") if cfg.get("model") else None
        schemes = [str(own["scheme"])] if own else []
    return audit_data, built_indexes(cfg, split, dataset, schemes), limits


def built_indexes(cfg: Any, split: Any, dataset: Any, schemes: list[str]) -> list[AuditIndex]:
    """Each scheme's index of the split, and the same index rebuilt from the train part alone.

    Options come from the model's ``module.indexing`` when it has one, else the defaults.
    """
    from omegaconf import OmegaConf

    from benchmark.config import to_object
    from benchmark.models.components.indexing import IndexConfig, build_index

    node = cfg.model.get("module", {}).get("indexing") if cfg.get("model") else None
    options = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    empty = split.train.iloc[:0]
    train_only = replace(split, parts={"train": split.train, "valid": empty, "test": empty})
    out = []
    from benchmark.models.components.text_encoder import memoized

    with memoized() if "semantic" in schemes else nullcontext():
        for scheme in schemes:
            icfg = to_object({**options, "scheme": scheme}, IndexConfig, "model.module.indexing")
            index = build_index(icfg, split, dataset, int(cfg.seed))
            refit = build_index(icfg, train_only, dataset, int(cfg.seed))
            facts = {
                "options": index.facts["options"],
                "sha256": index.facts["sha256"],
                "built_from": "train part only",
            }
            out.append(AuditIndex(scheme, list(index.texts), list(refit.texts), scheme, facts))
    return out
