"""Submissions: pack a run, validate a run or archive against the canonical split, reproduce a run."""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from benchmark.errors import BenchmarkError
from benchmark.results.recompute import recompute_metrics
from benchmark.results.record import PREDICTIONS, RECORD
from benchmark.results.schema import schema_errors

METRIC_TOLERANCE = 1e-9  # recomputed vs reported metric (same code, same predictions)


# ----------------------------------------------------------------------------- submit


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def submit(run_dir: Path, out: Path | None = None) -> Path:
    """Pack record, predictions, resolved config and environment into ``<run_id>.tar.gz``.

    The archive is deterministic (sorted members, mtime 0), so the same run packs to the same bytes.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RECORD).exists():
        raise BenchmarkError(f"{run_dir}: not a run directory (no {RECORD})")
    record = json.loads((run_dir / RECORD).read_text())
    pred_file = run_dir / record.get("predictions", {}).get("file", PREDICTIONS)
    if not pred_file.exists():
        raise BenchmarkError(f"{pred_file}: predictions file missing")
    run_id = record["run_id"]
    out = Path(out) if out else Path("submissions") / f"{run_id}.tar.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    members = {
        RECORD: (run_dir / RECORD).read_bytes(),
        pred_file.name: pred_file.read_bytes(),
        "config.yaml": yaml.safe_dump(record["config"], sort_keys=True).encode(),
        "environment.json": json.dumps(record["environment"], indent=1, sort_keys=True).encode(),
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name in sorted(members):
            _tar_add(tar, f"{run_id}/{name}", members[name])
    import gzip

    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as f, gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    tmp.replace(out)
    return out


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
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, message: str = "") -> bool:
        self.checks.append(Check(name, ok, message))
        return ok

    def summary(self) -> str:
        lines = [f"{'ACCEPTED' if self.ok else 'REJECTED'}: {self.source}"]
        lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.name}" + (f": {c.message}" if c.message else "") for c in self.checks]
        return "\n".join(lines)


def _open_submission(path: Path) -> tuple[dict[str, Any] | None, bytes | None]:
    """(record, predictions bytes) from a run directory or a submission archive."""
    path = Path(path)
    if path.is_dir():
        rec = json.loads((path / RECORD).read_text()) if (path / RECORD).exists() else None
        name = (rec or {}).get("predictions", {}).get("file", PREDICTIONS)
        pred = (path / name).read_bytes() if (path / name).exists() else None
        return rec, pred
    if not path.exists():
        raise BenchmarkError(f"{path}: no such run directory or archive")
    try:
        with tarfile.open(path, "r:*") as tar:
            files = {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except tarfile.TarError as e:
        raise BenchmarkError(f"{path}: not a submission archive ({e})") from None
    rec = json.loads(files[RECORD]) if RECORD in files else None
    name = (rec or {}).get("predictions", {}).get("file", PREDICTIONS)
    return rec, files.get(name)


@lru_cache(maxsize=8)
def _canonical_split(data_json: str, split_json: str):
    from benchmark.config import DataConfig, SplitConfig, to_object
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split

    data = load_dataset(to_object(json.loads(data_json), DataConfig))
    return build_split(data, to_object(json.loads(split_json), SplitConfig))


def _canonical(record: dict[str, Any]):
    """The canonical split (rebuilt from raw data; cached per config) and eval config of a record."""
    from benchmark.config import EvalConfig, to_object

    cfg = record["config"]
    split = _canonical_split(json.dumps(cfg["data"], sort_keys=True), json.dumps(cfg["split"], sort_keys=True))
    return split, to_object(cfg["eval"], EvalConfig)


def validate(path: Path) -> Report:
    """Check a run directory or archive; every failed check is named in the report."""
    import gzip

    from benchmark.data.views import array_fingerprint, labeled_rows, ranking_rows, sample_negatives

    report = Report(str(path))
    record, pred_bytes = _open_submission(path)
    if not report.add("files", record is not None and pred_bytes is not None, "" if record and pred_bytes else "record.json or predictions missing"):
        return report
    errs = schema_errors(record)
    if not report.add("schema", not errs, errs[0] if errs else ""):
        return report
    digest = hashlib.sha256(pred_bytes).hexdigest()
    if not report.add("predictions_hash", digest == record["predictions"]["sha256"], "" if digest == record["predictions"]["sha256"] else f"sha256 {digest[:12]} != recorded {record['predictions']['sha256'][:12]}"):
        return report
    lines = [json.loads(x) for x in gzip.decompress(pred_bytes).decode().splitlines() if x]

    try:
        split, ev = _canonical(record)
    except BenchmarkError as e:
        report.add("split_fingerprint", False, f"cannot rebuild the canonical split: {e}")
        return report
    fp_ok = split.fingerprint == record["split"]["fingerprint"]
    report.add("split_fingerprint", fp_ok, "" if fp_ok else f"{record['split']['fingerprint'][:12]} != canonical {split.fingerprint[:12]}")
    if not fp_ok:
        return report

    catalogue = set(split.item_ids.tolist())
    if ev.protocol == "labeled":
        rows = labeled_rows(split, "test", split.config["label_threshold"])
        want = sorted(zip(split.user_ids[rows.users].tolist(), split.item_ids[rows.items].tolist(), rows.labels.tolist(), strict=True))
        got = sorted((ln.get("user"), ln.get("item"), ln.get("label")) for ln in lines)
        missing, extra = len(set(want) - set(got)), len(got) - len(set(got))
        cover_ok = want == got
        msg = "" if cover_ok else f"{missing} test rows missing, {extra} duplicated, {len(got)} lines for {len(want)} rows"
        report.add("rows", cover_ok, msg)
        bad = [ln.get("item") for ln in lines if ln.get("item") not in catalogue]
        report.add("item_ids", not bad, f"{len(bad)} unknown item ids, e.g. {bad[0]!r}" if bad else "")
        scores_ok = all(isinstance(ln.get("score"), (int, float)) and math.isfinite(ln["score"]) for ln in lines)
        report.add("scores", scores_ok, "" if scores_ok else "non-finite or missing scores")
    else:
        rows = ranking_rows(split, "test")
        want = {str(split.user_ids[u]): sorted(split.item_ids[rows.targets_of(r)].tolist()) for r, u in enumerate(rows.users)}
        users = [ln.get("user") for ln in lines]
        dup = len(users) - len(set(users))
        missing = set(want) - set(users)
        wrong = [u for u in users if u in want and sorted(next(ln for ln in lines if ln["user"] == u)["targets"]) != want[u]]
        unknown = set(users) - set(want)
        cover_ok = not (dup or missing or wrong or unknown)
        msg = "" if cover_ok else f"{len(missing)} test rows missing, {dup} duplicated, {len(unknown)} unknown users, {len(wrong)} with wrong targets"
        report.add("rows", cover_ok, msg)
        bad = [x for ln in lines for x in ln.get("ranked", []) if x is not None and x not in catalogue]
        short = [ln["user"] for ln in lines if len(ln.get("ranked", [])) < record["eval"]["list_length"]]
        report.add("item_ids", not bad, f"{len(bad)} unknown item ids, e.g. {bad[0]!r}" if bad else "")
        report.add("list_length", not short, f"{len(short)} rows shorter than {record['eval']['list_length']}" if short else "")
        if ev.protocol == "sampled":
            neg = sample_negatives(split, rows, ev.num_negatives, ev.negatives_seed)
            nf = array_fingerprint(rows.users, neg)
            ok = nf == record["eval"].get("negatives_fingerprint")
            report.add("negatives_fingerprint", ok, "" if ok else "fixed negatives differ from the canonical ones")
    if not report.ok:
        return report

    again = recompute_metrics(record, lines)
    diffs = []
    for k, v in record["metrics"].items():
        a = again.get(k)
        if a is None or (v is None) != (isinstance(a, float) and math.isnan(a)):
            diffs.append(f"{k}: reported {v}, recomputed {a}")
        elif v is not None and abs(a - v) > METRIC_TOLERANCE:
            diffs.append(f"{k}: reported {v}, recomputed {a:.10g}")
    missing = sorted(set(again) - set(record["metrics"]))
    if missing:
        diffs.append(f"metrics not reported: {missing[:3]}")
    report.add("metrics", not diffs, f"{len(diffs)} differ; first: {diffs[0]}" if diffs else "")
    return report


# ----------------------------------------------------------------------------- reproduce


def reproduce(run_dir: Path, tolerance: float) -> tuple[bool, list[tuple[str, float | None, float | None, float]], dict]:
    """Re-run the recorded config in a clean temporary directory and compare every metric.

    Returns:
        (passed, [(metric, recorded, reproduced, abs diff)], the new record).
    """
    from omegaconf import OmegaConf

    from benchmark.run import run

    run_dir = Path(run_dir)
    if not (run_dir / RECORD).exists():
        raise BenchmarkError(f"{run_dir}: not a run directory (no {RECORD})")
    old = json.loads((run_dir / RECORD).read_text())
    cfg = OmegaConf.create(old["config"])
    with tempfile.TemporaryDirectory(prefix="llm4rec-reproduce-") as tmp:
        cfg.paths = {"results": f"{tmp}/results", "outputs": f"{tmp}/outputs"}
        cfg.logger = {}
        cfg.reuse_trained = False
        new = run(cfg)
    rows = []
    for k in sorted(set(old["metrics"]) | set(new["metrics"])):
        a, b = old["metrics"].get(k), new["metrics"].get(k)
        if a is None and b is None:
            diff = 0.0
        elif a is None or b is None:
            diff = math.inf
        else:
            diff = abs(a - b)
        rows.append((k, a, b, diff))
    passed = all(d <= tolerance for *_, d in rows) and new["split"]["fingerprint"] == old["split"]["fingerprint"]
    return passed, rows, new


def environment_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Package versions that differ between two records' environments."""
    a, b = old["environment"]["packages"], new["environment"]["packages"]
    return [f"{p}: {a.get(p)} -> {b.get(p)}" for p in sorted(set(a) | set(b)) if a.get(p) != b.get(p)]


