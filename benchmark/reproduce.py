"""Reproduce a recorded run: rebuild its config from the project's own config groups, run it again, compare.

A record is data written by someone else. :func:`rebuild_config` trusts nothing in it: the
checks of :mod:`benchmark.results.trust` refuse code the project's configs do not define and
paths outside the current directory; the config-group options the record matches are composed
with :func:`benchmark.compose.compose`, the recorded values laid over them, and the result must
hash like the recorded config. :func:`reproduce` then runs it (:func:`benchmark.run.run`) in a
temporary directory and compares every metric.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError
from benchmark.eval.metrics import is_beyond_accuracy
from benchmark.untrusted import DEFAULT_LIMITS, RECORD, Limits, Rejected, read_run_dir

MetricRow = tuple[str, float | None, float | None, float]  # (metric, recorded, reproduced, |diff|)


def tolerance(overrides: list[str], cuda: bool | None = None) -> float:
    """The metric tolerance of a reproduction: ``reproduce.tolerance_gpu`` with CUDA, else ``_cpu``.

    Args:
        overrides: the user's own overrides (trusted), e.g. ``reproduce.tolerance_cpu=X``.
        cuda: whether the run uses CUDA (default: whether a CUDA device is visible).
    """
    from benchmark.compose import compose

    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    cfg = compose(overrides)
    return float(cfg.reproduce.tolerance_gpu if cuda else cfg.reproduce.tolerance_cpu)


def rebuild_config(record: dict[str, Any], overrides: list[str], cwd: Path | None = None) -> Any:
    """The recorded run's config, composed from the project's config groups (see module doc).

    Args:
        record: the parsed record (untrusted).
        overrides: the user's command-line overrides (trusted), e.g. ``hydra.searchpath=[...]``,
            ``reproduce.tolerance_cpu=X`` or ``data.path=DIR``.
        cwd: the directory recorded relative paths must stay inside (default: the current one).

    Returns:
        A DictConfig ready for :func:`benchmark.run.run` once the caller sets ``paths``.

    Raises:
        ConfigError: a ``_target_`` the configs do not define, an unsafe path, or a config that
            the project's configs cannot rebuild with the recorded hash.
    """
    from omegaconf import OmegaConf

    from benchmark import compose as composition
    from benchmark.results.identity import result_config
    from benchmark.results.submission import recorded_config_hashes
    from benchmark.results.trust import (
        check_record_config,
        check_record_paths,
        config_dirs,
        defined_targets,
        flat,
        infer_choices,
        overlay,
        under,
        user_keys,
    )

    cfg = record.get("config")
    dirs = config_dirs(overrides, composition.CONFIG_DIR)
    check_record_config(cfg, defined_targets(dirs))
    trusted = user_keys(overrides)
    check_record_paths(cfg, trusted, cwd)

    recorded = OmegaConf.create(cfg)
    if record.get("config_hash") not in [h for h, _ in recorded_config_hashes(cfg)]:
        raise ConfigError("record: config_hash is not the hash of the recorded config")
    base = composition.compose(infer_choices(cfg, dirs) + list(overrides))
    OmegaConf.set_struct(base, False)
    values = overlay(cfg, trusted)
    merged = OmegaConf.merge(base, OmegaConf.create(values))
    for key, value in flat(values).items():  # a recorded empty mapping replaces the option's entries
        if value == {}:
            OmegaConf.update(merged, key, {}, merge=False)
    merged.logger = None
    merged.reuse_trained = False
    merged.skip_existing = False
    merged.ckpt_path = None
    a, b = flat(result_config(recorded)), flat(result_config(merged))
    # Keys the record lacks were added to the configs since; they keep the project's defaults.
    diff = sorted(k for k in a if a[k] != b.get(k, "<absent>") and not under(k, trusted))
    if diff:
        k = diff[0]
        raise ConfigError(
            f"record: the project's configs cannot rebuild the recorded config ({len(diff)} keys differ; "
            f"{k}: recorded {json.dumps(a.get(k, '<absent>'))[:60]}, rebuilt {json.dumps(b.get(k, '<absent>'))[:60]})"
        )
    return merged


def metric_rows(old: dict[str, Any], new: dict[str, Any]) -> list[MetricRow]:
    """Every metric of either record with its absolute difference (inf where one side lacks it).

    Beyond-accuracy metrics that the recorded run does not have (records made before them) are
    not compared: the rerun adds them, it does not change them.
    """
    rows = []
    added = {k for k in new["metrics"] if is_beyond_accuracy(k) and k not in old["metrics"]}
    blocks = [("", old["metrics"], new["metrics"], added)]
    if "metrics_candidates" in old or "metrics_candidates" in new:  # eval.also_candidates: the view too
        blocks.append(("candidates view ", old.get("metrics_candidates") or {}, new.get("metrics_candidates") or {}, set()))
    for name, om, nm, skip in blocks:
        for k in sorted((set(om) | set(nm)) - skip):
            a, b = om.get(k), nm.get(k)
            if a is None and b is None:
                diff = 0.0
            elif a is None or b is None:
                diff = math.inf
            else:
                diff = abs(a - b)
            rows.append((name + k, a, b, diff))
    return rows


def reproduce(
    run_dir: Path, tolerance: float, overrides: list[str] | None = None, limits: Limits = DEFAULT_LIMITS
) -> tuple[bool, list[MetricRow], dict, dict]:
    """Re-run a recorded run in a clean temporary directory and compare every metric.

    The configuration is rebuilt by :func:`rebuild_config` from the project's own config groups
    (nothing the record names is instantiated unless the project's configs define it), with the
    user's ``overrides`` (trusted) on top.

    An aligned run (``align.parent``) needs its parent's SFT weights: the parent record is read
    and rebuilt the same way, run first in the same temporary outputs (its weights are saved
    there under its training key), and its metrics are compared too (rows ``parent <metric>``).

    Returns:
        (passed, [(metric, recorded, reproduced, abs diff)], the old record, the new record).

    Raises:
        ConfigError: the record cannot be rebuilt safely (one line; exit 2 in the CLI).
    """
    from benchmark.run import run

    overrides = list(overrides or [])
    old = _read_record(Path(run_dir), limits)
    cfg = rebuild_config(old, overrides)
    parent_dir = aligned_parent(cfg)
    parent_old = parent_cfg = None
    if parent_dir is not None:  # an aligned run starts from its parent's weights: train them first
        parent_old = _read_record(parent_dir, limits)
        parent_cfg = rebuild_config(
            parent_old, [o for o in overrides if not o.lstrip("+~").startswith("align")]
        )
    rows: list[MetricRow] = []
    fingerprints_agree = True
    with tempfile.TemporaryDirectory(prefix="llm4rec-reproduce-") as tmp:
        paths = {"results": f"{tmp}/results", "outputs": f"{tmp}/outputs"}
        if parent_cfg is not None and parent_old is not None:
            parent_cfg.paths = dict(paths)
            parent_new = run(parent_cfg)
            rows += [(f"parent {m}", a, b, d) for m, a, b, d in metric_rows(parent_old, parent_new)]
            fingerprints_agree = parent_new["split"]["fingerprint"] == parent_old["split"]["fingerprint"]
        cfg.paths = dict(paths)
        new = run(cfg)
    rows += metric_rows(old, new)
    fingerprints_agree = fingerprints_agree and new["split"]["fingerprint"] == old["split"]["fingerprint"]
    passed = all(d <= tolerance for *_, d in rows) and fingerprints_agree
    return passed, rows, old, new


def _read_record(run_dir: Path, limits: Limits) -> dict[str, Any]:
    """The record of a run folder, read within ``limits`` and schema-checked (one-line ConfigError)."""
    from benchmark.results.schema import schema_errors

    try:
        rec = read_run_dir(run_dir, limits).record
    except Rejected as e:
        raise ConfigError(f"{run_dir}: {e.reason}") from None
    errs = schema_errors(rec)
    if errs:
        raise ConfigError(f"{run_dir / RECORD}: {errs[0]}")
    return rec


def aligned_parent(cfg: Any) -> Path | None:
    """The parent run folder of an aligned run's rebuilt config (``align.parent``), else None.

    The value was checked by :func:`rebuild_config` like every recorded path (relative, inside
    the current directory) unless the user passed it on the command line.
    """
    node = cfg.get("align")
    parent = node.get("parent") if node is not None else None
    return Path(str(parent)) if parent else None


def environment_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Package versions that differ between two records' environments."""
    a = (old.get("environment") or {}).get("packages") or {}
    b = (new.get("environment") or {}).get("packages") or {}
    if not isinstance(a, dict) or not isinstance(b, dict):
        return []
    return [f"{p}: {a.get(p)} -> {b.get(p)}" for p in sorted(set(a) | set(b)) if a.get(p) != b.get(p)]
