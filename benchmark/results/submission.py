"""Submissions: pack a run, validate a run or archive against the canonical split.

Everything read here may have been written by a stranger. Archives and run folders are read with
the bounds of :class:`~benchmark.untrusted.Limits` before any heavy module is imported;
nothing in a record is instantiated, and no path in it is used unchecked (see
:mod:`benchmark.results.trust`). Reproducing a run (which runs it) is :mod:`benchmark.reproduce`.
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from benchmark.errors import BenchmarkError, ConfigError
from benchmark.results.archive import read_submission
from benchmark.untrusted import (
    DEFAULT_LIMITS,
    RECORD,
    SAFE_NAME,
    Limits,
    Rejected,
    check_prediction_stream,
    prediction_lines,
    read_run_dir,
)
from benchmark.util import atomic_write, sha256_bytes

METRIC_TOLERANCE = 1e-9  # recomputed vs reported metric (same code, same predictions)
# Text ILD reads item embeddings that a validator encodes on its own CPU (float32 kernels differ in
# the last bits between CPUs), so it is held to a looser tolerance than the other metrics.
TEXT_TOLERANCE = 1e-6


# ----------------------------------------------------------------------------- submit


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def submit(run_dir: Path, out: Path | None = None, limits: Limits = DEFAULT_LIMITS) -> Path:
    """Pack record, predictions, resolved config and environment into ``<run_id>.tar.gz``.

    Only ``record.json`` and the predictions file it names are read, both regular files directly
    inside ``run_dir`` (no links, no paths); members are named ``<run_id>/<file>`` and the run id
    must be a plain name. The archive is written to ``out`` (default
    ``submissions/<run_id>.tar.gz``) through a temporary file in the same folder, and is
    deterministic (sorted members, mtime 0), so the same run packs to the same bytes.

    Raises:
        BenchmarkError: one line naming the file and field at fault; nothing is written.
    """
    import yaml

    from benchmark.results.schema import schema_errors

    run_dir = Path(run_dir)
    try:
        sub = read_run_dir(run_dir, limits)
    except Rejected as e:
        raise BenchmarkError(f"{run_dir}: {e.reason}") from None
    record = sub.record
    errs = schema_errors(record)
    if errs:
        raise BenchmarkError(f"{run_dir / RECORD}: {errs[0]}")
    run_id = record["run_id"]
    if not SAFE_NAME.match(run_id):
        raise BenchmarkError(f"{run_dir / RECORD}: run_id {run_id[:80]!r} is not a plain name")
    if sha256_bytes(sub.predictions) != record["predictions"]["sha256"]:
        raise BenchmarkError(f"{run_dir / record['predictions']['file']}: sha256 differs from the record's predictions.sha256")
    out = Path(out) if out else Path("submissions") / f"{run_id}.tar.gz"
    members = {
        RECORD: (run_dir / RECORD).read_bytes(),
        record["predictions"]["file"]: sub.predictions,
        "config.yaml": yaml.safe_dump(record["config"], sort_keys=True).encode(),
        "environment.json": json.dumps(record["environment"], indent=1, sort_keys=True).encode(),
    }
    return atomic_write(out, _pack(run_id, members))


def _pack(run_id: str, members: dict[str, bytes]) -> bytes:
    """A deterministic ``.tar.gz`` of ``members`` under ``<run_id>/`` (sorted, mtime 0, mode 0644)."""
    import gzip

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(members):
            _tar_add(tar, f"{run_id}/{name}", members[name])
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=packed, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


# ----------------------------------------------------------------------------- validate


@dataclass
class Check:
    name: str
    ok: bool
    message: str = ""


@dataclass
class Report:
    source: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, message: str = "") -> bool:
        self.checks.append(Check(name, ok, message))
        return ok

    @property
    def failed(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    def verdict(self) -> str:
        """``ACCEPTED <source>`` or ``REJECTED <check>: <reason>`` (one line)."""
        bad = self.failed
        if bad is None and self.ok:
            return f"ACCEPTED {self.source}"
        return f"REJECTED {bad.name}: {bad.message}" if bad else "REJECTED files: nothing was checked"

    def summary(self) -> str:
        lines = [f"  [{'ok' if c.ok else 'FAIL'}] {c.name}" + (f": {c.message}" if c.message else "") for c in self.checks]
        return "\n".join([*lines, self.verdict()])


@lru_cache(maxsize=8)
def _canonical_split(data_json: str, split_json: str):
    from benchmark.config import DataConfig, SplitConfig, to_object
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split

    data = load_dataset(to_object(json.loads(data_json), DataConfig))
    return data.fingerprint, build_split(data, to_object(json.loads(split_json), SplitConfig))


def _data_config(cfg: dict[str, Any], data_path: Path | None) -> dict[str, Any]:
    """The record's data config with every location replaced or checked (never used as given)."""
    from benchmark.config import DataConfig
    from benchmark.results.trust import check_record_path

    data = dict(cfg)
    data["cache_dir"] = os.environ.get("LLM4REC_CACHE", ".cache/llm4rec")  # the validator's own cache
    name = data.get("name")
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        raise Rejected("config", f"data.name {str(name)[:60]!r} is not a plain dataset name")
    if data_path is not None:
        data["path"] = str(data_path)
    else:
        try:
            check_record_path("data.path", data.get("path"))
        except ConfigError as e:
            raise Rejected("config", f"{e} (llm4rec validate ARCHIVE --data DIR)") from None
    if data.get("raw_dir") is not None:
        try:
            check_record_path("data.raw_dir", data.get("raw_dir"))
        except ConfigError as e:
            raise Rejected("config", str(e)) from None
    extra = set(data) - set(DataConfig.__dataclass_fields__)
    if extra:
        raise Rejected("config", f"data: unknown key(s) {sorted(extra)}")
    return data


def _typed(node: Any, cls: type, key: str) -> Any:
    from benchmark.config import to_object

    if not isinstance(node, dict):
        raise Rejected("config", f"config.{key} is not an object")
    try:
        return to_object(node, cls)
    except BenchmarkError as e:
        raise Rejected("config", str(e)) from None
    except Exception as e:  # dataclass construction from foreign values: wrong types, unknown keys
        raise Rejected("config", f"config.{key}: {type(e).__name__}: {e}") from None


def recorded_config_hashes(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(config_hash, group_key) pairs a record with this config may carry, current rule first.

    :func:`benchmark.results.identity.config_hashes` is the rule; records written before ``data.cache_dir``
    was left out of it (every run committed before that change) hashed it in, so that earlier
    rule is accepted too. Both commit to the whole result config.
    """
    from omegaconf import OmegaConf

    from benchmark.results.identity import canonical_json, config_hashes, result_config
    from benchmark.util import sha256_text

    out = [config_hashes(OmegaConf.create(cfg))]
    data = cfg.get("data")
    if isinstance(data, dict) and "cache_dir" in data:
        c = result_config(OmegaConf.create(cfg))
        c["data"] = {**c["data"], "cache_dir": data["cache_dir"]}
        full = sha256_text(canonical_json(c))
        c.pop("seed", None)
        out.append((full, sha256_text(canonical_json(c))))
    return out


def validate(path: Path, limits: Limits = DEFAULT_LIMITS, data_path: Path | None = None) -> Report:
    """Check a run folder or submission archive; the report's verdict names the first failed check.

    Cheap checks (archive limits, record JSON and schema, predictions hash and stream limits)
    run before numpy/torch are imported. Then the config hash, the dataset and split
    fingerprints (rebuilt from the raw data), the record's audit summary (when it has one),
    the protocol checks of every predictions line
    against the canonical test rows, and finally every metric, recomputed from the canonical
    rows and the submitted lists/scores.

    Args:
        path: run folder or ``.tar.gz`` archive (untrusted).
        limits: reading bounds (defaults documented in the README).
        data_path: the caller's copy of an atomic dataset (``data.source=atomic``); a record's
            own ``data.path`` is used only when relative and inside the current directory.
    """
    report = Report(str(path))
    try:
        _validate(report, Path(path), limits, data_path)
    except Rejected as e:
        report.add(e.check, False, e.reason)
    except BenchmarkError as e:
        report.add("config", False, str(e))
    except MemoryError:
        report.add("limits", False, "out of memory")
    except Exception as e:  # a verdict, never a traceback, whatever the input
        report.add("unexpected", False, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
    return report


def _validate(report: Report, path: Path, limits: Limits, data_path: Path | None) -> None:
    """The checks of :func:`validate` in order; each failure raises :class:`Rejected`."""
    sub = _check_files(report, path, limits)  # standard library only up to here
    record = sub.record
    ev, slices_cfg, data_cfg = _check_config(report, record, data_path)
    split = _check_split(report, record, data_cfg)
    _check_audit(report, record, split)
    pred = _check_protocol(report, record, sub.predictions, split, ev, slices_cfg, limits)
    _check_metrics(report, record, pred, ev, split.n_items, data_cfg)


def _check_files(report: Report, path: Path, limits: Limits) -> Any:
    """files, schema, predictions_hash, predictions: the bounded reads (no numpy, no torch)."""
    from benchmark.results.schema import schema_errors

    sub = read_submission(path, limits)
    report.add("files", True)
    errs = schema_errors(sub.record)
    if errs:
        raise Rejected("schema", errs[0])
    report.add("schema", True)
    digest = sha256_bytes(sub.predictions)
    if digest != sub.record["predictions"]["sha256"]:
        raise Rejected("predictions_hash", f"sha256 {digest[:12]} != recorded {sub.record['predictions']['sha256'][:12]}")
    report.add("predictions_hash", True)
    n_lines = check_prediction_stream(sub.predictions, limits)  # bounded, nothing kept
    report.add("predictions", True, f"{n_lines} lines")
    return sub


def _check_config(report: Report, record: dict[str, Any], data_path: Path | None) -> tuple[Any, Any, dict[str, Any]]:
    """config, config_hash: the recorded config is safe, typed, and hashes as recorded.

    Returns:
        (EvalConfig, SliceConfig, the data config with checked locations).
    """
    from benchmark.config import EvalConfig, SliceConfig
    from benchmark.results.trust import check_record_config

    cfg = record["config"]
    try:
        check_record_config(cfg, None)
    except ConfigError as e:
        raise Rejected("config", str(e)) from None
    ev = _typed(cfg["eval"], EvalConfig, "eval")
    slices_cfg = _typed(cfg.get("slices", {}), SliceConfig, "slices")
    data_cfg = _data_config(cfg["data"], data_path) if isinstance(cfg["data"], dict) else None
    if data_cfg is None:
        raise Rejected("config", "config.data is not an object")
    hashes = recorded_config_hashes(cfg)
    if (record["config_hash"], record["group_key"]) not in hashes:
        raise Rejected(
            "config_hash",
            f"config_hash {record['config_hash'][:12]} / group_key {record['group_key'][:12]} are not the hashes "
            f"of the recorded config ({hashes[0][0][:12]} / {hashes[0][1][:12]})",
        )
    report.add("config_hash", True)
    rec_ev = record["eval"]
    for key, want in (("protocol", ev.protocol), ("ks", ev.ks), ("list_length", ev.max_k)):
        if rec_ev[key] != want:
            raise Rejected("config", f"eval.{key}={rec_ev[key]!r} but the recorded config implies {want!r}")
    return ev, slices_cfg, data_cfg


def _check_split(report: Report, record: dict[str, Any], data_cfg: dict[str, Any]) -> Any:
    """dataset_fingerprint, split_fingerprint: the canonical split rebuilt from the raw data."""
    try:
        data_fp, split = _canonical_split(
            json.dumps(data_cfg, sort_keys=True), json.dumps(record["config"]["split"], sort_keys=True)
        )
    except BenchmarkError as e:
        raise Rejected("split_fingerprint", f"cannot rebuild the canonical split: {e}") from None
    except Exception as e:
        raise Rejected("split_fingerprint", f"cannot rebuild the canonical split: {type(e).__name__}: {e}") from None
    if data_fp != record["dataset"]["fingerprint"]:
        raise Rejected("dataset_fingerprint", f"{record['dataset']['fingerprint'][:12]} != canonical {data_fp[:12]}")
    if split.fingerprint != record["split"]["fingerprint"]:
        raise Rejected("split_fingerprint", f"{record['split']['fingerprint'][:12]} != canonical {split.fingerprint[:12]}")
    report.add("split_fingerprint", True)
    if record["eval"]["n_items"] != split.n_items:
        raise Rejected("config", f"eval.n_items={record['eval']['n_items']} but the canonical split has {split.n_items} items")
    return split


def _check_audit(report: Report, record: dict[str, Any], split: Any) -> None:
    """audit: the record's audit summary recomputed from the canonical split (and the item index
    when it is cheap to rebuild); a record without one (made before summaries) is not checked."""
    if "audit" not in record:
        return
    from benchmark.audit.summary import rebuilt_index, summary_differences

    try:
        diffs = summary_differences(record["audit"], split, rebuilt_index(record["config"], split))
    except BenchmarkError as e:
        raise Rejected("audit", f"cannot recompute the audit summary: {e}") from None
    if diffs:
        raise Rejected("audit", f"{len(diffs)} figures differ; first: {diffs[0]}")
    report.add("audit", True)


def _check_protocol(
    report: Report, record: dict[str, Any], predictions: bytes, split: Any, ev: Any, slices_cfg: Any, limits: Limits
) -> Any:
    """rows, negatives_fingerprint, protocol: every predictions line against the canonical test rows.

    Returns:
        The ``Predictions`` the evaluator scores.
    """
    from benchmark.eval.rows import eval_rows
    from benchmark.results.protocol import labeled_predictions, ranking_predictions

    rec_ev = record["eval"]
    try:
        rows, facts = eval_rows(split, ev, slices_cfg)  # the run's own test rows (and fixed negatives)
    except BenchmarkError as e:
        raise Rejected("rows", f"cannot build the canonical test rows: {e}") from None
    if ev.protocol in ("sampled", "candidates") and facts.get("negatives_fingerprint") != rec_ev.get("negatives_fingerprint"):
        raise Rejected("negatives_fingerprint", "fixed negatives differ from the canonical ones")
    lines = prediction_lines(predictions, limits)
    if len(lines) != len(rows):
        raise Rejected("rows", f"{len(lines)} predictions lines for {len(rows)} canonical test rows")
    if ev.protocol == "labeled":
        pred = labeled_predictions(lines, rows, split.user_ids, split.item_ids, bool(rec_ev.get("probabilities", False)))
    else:
        pred = ranking_predictions(lines, rows, split.user_ids, split.item_ids, ev.protocol, ev.max_k)
    if ev.also_candidates:
        pred.view = _check_view(record, lines, split, ev, rows)
    report.add("protocol", True)
    if isinstance(rec_ev.get("prompt_pool"), dict):
        _check_pool(report, record, lines)
    return pred


def _check_pool(report: Report, record: dict[str, Any], lines: list[Any]) -> None:
    """prompt_pool: each line's score is its chosen template's, and the policy comparison of the
    record is recomputed from the lines (canonical labels: checked line by line before)."""
    from benchmark.eval.pool import comparison_from_lines

    pool = (record.get("model") or {}).get("prompt_pool")
    rank = isinstance(pool, dict) and pool.get("metric") == "ndcg@10"  # the reranker's pool
    best_key = "best_on_feedback" if rank else "best_on_valid"
    try:
        arm_ids = [str(t["id"]) for t in pool["templates"]]
        best, seed = str(pool["feedback"][best_key]), int(pool["seed"])
    except (KeyError, TypeError, ValueError):
        raise Rejected("prompt_pool", f"record.model.prompt_pool lacks templates, feedback.{best_key} or seed") from None
    if rank:
        _check_rank_pool(report, record, lines, arm_ids, best, seed)
        return
    for n, ln in enumerate(lines):
        facts = ln.get("prompt") if isinstance(ln, dict) else None
        try:
            mine = float(facts["scores"][arm_ids.index(facts["template"])])
        except (KeyError, TypeError, ValueError, IndexError):
            raise Rejected("prompt_pool", f"predictions line {n + 1}: no chosen template with a score") from None
        if abs(mine - float(ln["score"])) > 1e-6:
            raise Rejected("prompt_pool", f"predictions line {n + 1}: score is not the chosen template's")
    try:
        again = comparison_from_lines(lines, arm_ids, best, seed)
    except (ValueError, TypeError) as e:  # ragged or non-numeric per-template scores
        raise Rejected("prompt_pool", str(e)[:200]) from None
    if again != record["eval"]["prompt_pool"]:
        raise Rejected("prompt_pool", "the policy comparison does not recompute from the predictions")
    report.add("prompt_pool", True)


def _check_rank_pool(report: Report, record: dict[str, Any], lines: list[Any], arm_ids: list[str], best: str, seed: int) -> None:
    """The reranker's pool: each line's ranked list starts with the user's candidates in the order of
    its chosen template's scores, and the policy comparison is recomputed from the lines."""
    from benchmark.eval.pool import rank_comparison_from_lines

    for n, ln in enumerate(lines):
        facts = ln.get("prompt") if isinstance(ln, dict) else None
        try:
            cands = [str(c) for c in facts["candidates"]]
            mine = [float(x) for x in facts["scores"][arm_ids.index(facts["template"])]]
            head = [str(x) for x in ln["ranked"][: len(cands)]]
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            raise Rejected("prompt_pool", f"predictions line {n + 1}: no chosen template with its candidates' scores") from None
        by_item = dict(zip(cands, mine, strict=False))
        if len(mine) != len(cands) or sorted(head) != sorted(cands) or len(set(cands)) != len(cands):
            raise Rejected("prompt_pool", f"predictions line {n + 1}: the ranked list does not start with the candidates")
        ordered = [by_item[c] for c in head]
        if any(b > a + 1e-6 for a, b in zip(ordered, ordered[1:], strict=False)):
            raise Rejected("prompt_pool", f"predictions line {n + 1}: the ranked list is not the chosen template's order")
    try:
        again = rank_comparison_from_lines(lines, arm_ids, best, seed)
    except (ValueError, TypeError) as e:
        raise Rejected("prompt_pool", str(e)[:200]) from None
    if again != record["eval"]["prompt_pool"]:
        raise Rejected("prompt_pool", "the policy comparison does not recompute from the predictions")
    report.add("prompt_pool", True)


def _check_view(record: dict[str, Any], lines: list[Any], split: Any, ev: Any, rows: Any) -> Any:
    """The candidates view of a full run: its negatives against the canonical ones, and every line's
    ``ranked_candidates`` checked as an ``eval=candidates`` ranked list of the view's rows.

    Returns:
        The view's ``Predictions`` (scored by :func:`_check_metrics` into ``metrics_candidates``).
    """
    from benchmark.eval.rows import candidate_view
    from benchmark.results.protocol import ranking_predictions

    want = record["eval"].get("candidates")
    if not isinstance(want, dict) or not isinstance(record.get("metrics_candidates"), dict):
        raise Rejected("config", "eval.also_candidates is on but the record has no candidates view (eval.candidates, metrics_candidates)")
    try:
        view_rows, facts = candidate_view(split, rows, ev)
    except BenchmarkError as e:
        raise Rejected("rows", f"cannot build the canonical candidates view: {e}") from None
    if facts["negatives_fingerprint"] != want.get("negatives_fingerprint"):
        raise Rejected("negatives_fingerprint", "fixed negatives of the candidates view differ from the canonical ones")
    renamed = [{**ln, "ranked": ln.get("ranked_candidates")} if isinstance(ln, dict) else ln for ln in lines]
    return ranking_predictions(renamed, view_rows, split.user_ids, split.item_ids, "candidates", ev.max_k)


def _item_facts(record: dict[str, Any], data_cfg: dict[str, Any]) -> Any:
    """The train part's item facts of the canonical split (for the beyond-accuracy metrics)."""
    from benchmark.results.item_facts import facts_for_config

    try:
        _, split_fp, facts = facts_for_config(data_cfg, record["config"]["split"])
    except BenchmarkError as e:
        raise Rejected("metrics", f"cannot build the item facts of the beyond-accuracy metrics: {e}") from None
    if split_fp != record["split"]["fingerprint"]:
        raise Rejected("split_fingerprint", f"{record['split']['fingerprint'][:12]} != canonical {split_fp[:12]}")
    return facts


def _is_text_ild(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1].split("@", 1)[0] == "ild"


def _check_metrics(
    report: Report, record: dict[str, Any], pred: Any, ev: Any, n_items: int, data_cfg: dict[str, Any]
) -> None:
    """metrics: every reported metric recomputed from the canonical rows and the predictions.

    Beyond-accuracy metrics are recomputed (from the canonical split's train part) only for a record
    that reports them: records made before them do not, and are checked as before.
    """
    from benchmark.eval.evaluator import evaluate
    from benchmark.eval.metrics import is_beyond_accuracy

    facts = _item_facts(record, data_cfg) if any(map(is_beyond_accuracy, record["metrics"])) else None
    if facts is not None and not any(".heldout@" in k or "/heldout@" in k for k in record["metrics"]):
        facts = replace(facts, holdout=None)  # records made before the heldout metric are checked as before
    again, sizes, _ = evaluate(pred, ev.ks, n_items, facts=facts, protocol=ev.protocol)
    if sizes != record["eval"]["slice_rows"]:
        raise Rejected("rows", f"slice_rows {record['eval']['slice_rows']} != canonical {sizes}")
    _compare_metrics(record["metrics"], again, "metrics")
    if pred.view is not None:
        _check_view_metrics(record, pred, ev, n_items)
    report.add("metrics", True, f"{len(again)} recomputed")


def _check_view_metrics(record: dict[str, Any], pred: Any, ev: Any, n_items: int) -> None:
    """metrics_candidates: the candidates view's metrics recomputed from ``ranked_candidates``."""
    from benchmark.eval.evaluator import evaluate
    from benchmark.eval.rows import candidate_ks

    ks = candidate_ks(ev.ks, 1 + ev.candidates_negatives)
    if record["eval"]["candidates"].get("ks") != ks:
        raise Rejected("config", f"eval.candidates.ks={record['eval']['candidates'].get('ks')!r} but the recorded config implies {ks!r}")
    again, sizes, _ = evaluate(pred.view, ks, n_items, protocol="candidates")
    if sizes != record["eval"]["candidates"].get("slice_rows"):
        raise Rejected("rows", f"candidates view slice_rows {record['eval']['candidates'].get('slice_rows')} != canonical {sizes}")
    _compare_metrics(record["metrics_candidates"], again, "metrics_candidates")


def _compare_metrics(reported: dict[str, Any], again: dict[str, float], block: str) -> None:
    """Every reported metric of ``block`` equals its recomputed value, and none is left out."""
    diffs = []
    for k, v in reported.items():
        a = again.get(k)
        if a is None or (v is None) != (isinstance(a, float) and math.isnan(a)):
            diffs.append(f"{k}: reported {v}, recomputed {a}")
        elif v is not None and abs(a - v) > (TEXT_TOLERANCE if _is_text_ild(k) else METRIC_TOLERANCE):
            diffs.append(f"{k}: reported {v}, recomputed {a:.10g}")
    missing = sorted(set(again) - set(reported))
    if missing:
        diffs.append(f"{block} not reported: {missing[:3]}")
    if diffs:
        where = "" if block == "metrics" else f"{block}: "
        raise Rejected("metrics", f"{where}{len(diffs)} differ; first: {diffs[0]}")
