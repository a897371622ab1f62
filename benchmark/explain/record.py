"""A stored explanation run: ``results/explain/<run_id>/record.json`` + ``explanations.jsonl``.

One JSON line per explained pair::

    {"user": "1", "item": "50", "item_title": "Star Wars", "history": ["172", ...],
     "explanation": "Because you liked ...", "reference": null,
     "text": {"length": 9, "rep2": 0.0}, "checks": {... benchmark.eval.grounding ...},
     "rouge": null, "bertscore": null, "judge": {"score": 3.2, "probs": [...], "grounded": true}}

Every metric of the record is a function of these lines (:func:`metrics_from_rows`), so
:func:`check_run` recomputes them from the stored file and compares; with the dataset it also
re-runs the grounding check of every line (:func:`recheck_rows`). Files are read with limits, as
every run folder from elsewhere is (:mod:`benchmark.untrusted`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError
from benchmark.eval.grounding import agreement, grounding_metrics
from benchmark.eval.text_metrics import bleu4, reference_free, rouge_means, rouge_rows
from benchmark.util import atomic_write_all, sha256_bytes

RECORD = "record.json"
EXPLANATIONS = "explanations.jsonl"
SCHEMA = "llm4rec-explain/1"
TOLERANCE = 1e-9
# Metrics that compare with references: absent (null) when a run has none, never zero.
REFERENCE_METRICS = ("bleu4", "rouge1", "rouge2", "rougeL", "bertscore")


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def metrics_from_rows(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Every metric of an explanation run from its stored lines.

    Returns:
        (metrics named ``explain/<name>``: reference-free ``length``, ``rep2``, ``distinct1/2``,
        ``empty``, grounding (``grounded``, ``hallucination``, ``hallucinated_rows``,
        ``cites_history``, ``claims``), judge (``judge``, ``judge_grounded``,
        ``judge_agreement``, ``judge_kappa``: None without a judge) and reference-based
        (``bleu4``, ``rouge1/2/L``, ``bertscore``: None without references); facts: the BLEU
        signature and the rows with a reference).
    """
    texts = [str(r["explanation"]) for r in rows]
    refs = [r.get("reference") for r in rows]
    out: dict[str, float | None] = {}
    out.update(reference_free(texts))
    out.update(grounding_metrics([r["checks"] for r in rows]))
    judged = [r["judge"] for r in rows if r.get("judge") is not None]
    if judged and len(judged) != len(rows):
        raise ConfigError(f"explanations: {len(judged)} of {len(rows)} lines have a judge score")
    agree = (
        agreement([bool(j["grounded"]) for j in judged], [bool(r["checks"]["grounded"]) for r in rows])
        if judged
        else {}
    )
    out["judge"] = _mean([float(j["score"]) for j in judged])
    out["judge_grounded"] = _mean([float(bool(j["grounded"])) for j in judged])
    out["judge_agreement"] = agree.get("accuracy")
    out["judge_kappa"] = agree.get("kappa")
    bleu, signature = bleu4(texts, refs)
    out["bleu4"] = bleu
    out.update(rouge_means(rouge_rows(texts, refs)))
    scored = [float(r["bertscore"]) for r in rows if r.get("bertscore") is not None]
    out["bertscore"] = _mean(scored)
    facts = {"bleu_signature": signature, "rows_with_reference": sum(1 for x in refs if x is not None)}
    return {f"explain/{k}": v for k, v in out.items()}, facts


def encode_rows(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """The explanations file: one compact JSON object per line, keys sorted."""
    return "".join(
        json.dumps(r, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n" for r in rows
    ).encode()


def write_run(out_dir: Path, record: dict[str, Any], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``record.json`` and ``explanations.jsonl`` into ``out_dir/<run_id>/``, each atomically.

    The record names the explanations file with its sha256 and line count.
    """
    data = encode_rows(rows)
    record["explanations"] = {"file": EXPLANATIONS, "rows": len(rows), "sha256": sha256_bytes(data)}
    run_dir = Path(out_dir) / record["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_all({run_dir / EXPLANATIONS: data, run_dir / RECORD: text})
    return run_dir


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The record and the lines of a stored run, read with limits and checked against each other.

    Raises:
        ConfigError: one line naming the file and what is wrong (missing, too large, a link, not
            JSON, a hash or line count that differs from the record, a malformed line).
    """
    from benchmark.untrusted import DEFAULT_LIMITS, Rejected, loads_strict, parse_record, read_regular_file

    run_dir = Path(run_dir)
    try:
        record = parse_record(
            read_regular_file(run_dir / RECORD, run_dir, DEFAULT_LIMITS.record_bytes, RECORD)
        )
        if record.get("schema") != SCHEMA:
            raise Rejected("record", f"schema is {str(record.get('schema'))[:40]!r}, not {SCHEMA}")
        data = read_regular_file(run_dir / EXPLANATIONS, run_dir, DEFAULT_LIMITS.member_bytes, EXPLANATIONS)
        declared = record.get("explanations") or {}
        if declared.get("sha256") != sha256_bytes(data):
            raise Rejected("explanations", f"{EXPLANATIONS} does not match the sha256 in the record")
        rows = []
        for n, line in enumerate(data.split(b"\n"), 1):
            if len(line) > DEFAULT_LIMITS.line_bytes:
                raise Rejected(
                    "limits", f"{EXPLANATIONS} line {n} is longer than {DEFAULT_LIMITS.line_bytes} bytes"
                )
            if line.strip():
                rows.append(loads_strict(line, f"{EXPLANATIONS} line {n}"))
    except Rejected as e:
        raise ConfigError(f"{run_dir}: {e}") from None
    if declared.get("rows") != len(rows):
        raise ConfigError(f"{run_dir}: {len(rows)} explanation lines, the record says {declared.get('rows')}")
    for n, r in enumerate(rows, 1):
        if (
            not isinstance(r, dict)
            or not isinstance(r.get("explanation"), str)
            or not isinstance(r.get("checks"), dict)
        ):
            raise ConfigError(
                f"{run_dir}: {EXPLANATIONS} line {n}: not an explanation row (explanation, checks)"
            )
    return record, rows


def compare(
    recorded: Mapping[str, Any], recomputed: Mapping[str, Any], tol: float = TOLERANCE
) -> list[tuple[str, Any, Any, bool]]:
    """(name, recorded, recomputed, equal) for every metric of either side: both None, or numbers
    within ``tol``."""
    out = []
    for k in sorted(set(recorded) | set(recomputed)):
        a, b = recorded.get(k), recomputed.get(k)
        if a is None or b is None:
            ok = a is None and b is None
        else:
            ok = isinstance(a, (int, float)) and math.isfinite(float(a)) and abs(float(a) - float(b)) <= tol
        out.append((k, a, b, ok))
    return out


def check_run(run_dir: Path, overrides: Sequence[str] | None = None) -> list[tuple[str, Any, Any, bool]]:
    """Recompute a stored run's metrics from its explanations file and compare with its record.

    Args:
        run_dir: the run folder.
        overrides: main-config overrides naming the dataset and split (``data=ml-100k split=loo``);
            when given, or when the record's own name no dataset path, every line's grounding
            check is also re-run on the rebuilt split (rows ``checks[<user>]``).

    Returns:
        (name, recorded, recomputed, equal) rows; all equal = the run validates.
    """
    record, rows = read_run(run_dir)
    diffs = compare(record.get("metrics") or {}, metrics_from_rows(rows)[0])
    given = list(overrides) if overrides is not None else _record_overrides(record)
    if given is not None:
        diffs += recheck_rows(record, rows, given)
    return diffs


def _record_overrides(record: Mapping[str, Any]) -> list[str] | None:
    """The record's dataset overrides when they name no path (a record is data: its paths are not followed)."""
    given = (record.get("config") or {}).get("run_overrides")
    if not isinstance(given, list) or not all(isinstance(o, str) for o in given):
        return None
    return None if any("path" in o.partition("=")[0] for o in given) else list(given)


def recheck_rows(
    record: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], overrides: Sequence[str]
) -> list[tuple[str, Any, Any, bool]]:
    """Re-run every line's grounding check on the rebuilt split and catalogue.

    Returns:
        ``split`` (recorded vs rebuilt fingerprint) and one ``checks[<user>]`` row per line whose
        stored checks differ from the recomputed ones (equal lines are summed up in ``checks``).
    """
    from benchmark.eval.grounding import Catalogue, check_explanation
    from benchmark.explain.pairs import load_split, train_items

    data_cfg, data, split = load_split(list(overrides))

    out = [
        (
            "split",
            (record.get("split") or {}).get("fingerprint"),
            split.fingerprint,
            (record.get("split") or {}).get("fingerprint") == split.fingerprint,
        )
    ]
    if not out[0][3]:
        return out
    cat = Catalogue.from_items(data.items, data_cfg.item_fields, split.item_ids)
    user_of = {u: i for i, u in enumerate(split.user_ids.tolist())}
    item_of = {x: i for i, x in enumerate(split.item_ids.tolist())}
    history = train_items(split)
    same = 0
    for r in rows:
        u, i = user_of.get(str(r.get("user")), -1), item_of.get(str(r.get("item")), -1)
        if u < 0 or i < 0:
            out.append((f"checks[{r.get('user')}]", r.get("item"), "unknown user or item", False))
            continue
        again = check_explanation(cat, r["explanation"], i, history[u])
        if again == r["checks"]:
            same += 1
        else:
            out.append((f"checks[{r['user']}]", r["checks"], again, False))
    out.append(("checks", len(rows), same, same == len(rows)))
    return out
