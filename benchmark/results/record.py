"""Run records and predictions files: written atomically, after evaluation only.

Layout of one run: ``<runs>/<run_id>/record.json`` and ``predictions.jsonl.gz``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.data.splits import Split
from benchmark.data.views import LabeledRows, RankingRows
from benchmark.eval.evaluator import Predictions
from benchmark.results.schema import SCHEMA_VERSION, check_record  # noqa: F401  (re-exported)

RECORD = "record.json"
PREDICTIONS = "predictions.jsonl.gz"
PACKAGES = (
    "llm4rec-bench",
    "torch",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "pytorch-lightning",
    "hydra-core",
    "omegaconf",
    "transformers",
    "peft",
    "recbole",
    "open_clip_torch",
    "wandb",
)
REPO_ROOT = Path(__file__).resolve().parents[2]


def environment() -> dict[str, Any]:
    """Git state, package versions and hardware of this process."""
    import torch

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    status = git("status", "--porcelain", "--", ".", ":!results", ":!paper", ":!outputs")
    cuda = torch.cuda.is_available()
    return {
        "git_sha": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "packages": versions,
    }


def prediction_lines(pred: Predictions, split: Split) -> list[dict[str, Any]]:
    """One JSON object per evaluated row, with raw ids, so every metric can be recomputed."""
    uid, iid = split.user_ids, split.item_ids
    lines = []
    if isinstance(pred.rows, RankingRows):
        rows = pred.rows
        tslices = [[name for name, m in rows.slices.items() if m[t]] for t in range(len(rows.targets))]
        for r in range(len(rows)):
            a, b = rows.target_ptr[r], rows.target_ptr[r + 1]
            lines.append(
                {
                    "row": r,
                    "user": str(uid[rows.users[r]]),
                    "targets": [str(x) for x in iid[rows.targets[a:b]]],
                    "target_slices": tslices[a:b],
                    "ranked": [str(iid[i]) if i >= 0 else None for i in pred.ranked[r]],
                }
            )
    else:
        rows_l: LabeledRows = pred.rows
        for r in range(len(rows_l)):
            lines.append(
                {
                    "row": r,
                    "user": str(uid[rows_l.users[r]]),
                    "item": str(iid[rows_l.items[r]]),
                    "label": int(rows_l.labels[r]),
                    "slices": [name for name, m in rows_l.slices.items() if m[r]],
                    "score": float(pred.scores[r]),
                }
            )
    return lines


def encode_predictions(lines: list[dict[str, Any]]) -> bytes:
    """gzip (mtime 0, so identical content gives identical bytes) of JSON lines."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        for line in lines:
            gz.write((json.dumps(line, separators=(",", ":")) + "\n").encode())
    return buf.getvalue()


def read_predictions(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_run(runs_dir: Path, run_id: str, record: dict[str, Any], predictions: bytes) -> Path:
    """Write record + predictions into ``runs_dir/run_id`` atomically (temp dir + rename)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    final = runs_dir / run_id
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{run_id}-", dir=runs_dir))
    os.chmod(tmp, 0o755)
    try:
        (tmp / PREDICTIONS).write_bytes(predictions)
        record = dict(record)
        record["predictions"] = {
            "file": PREDICTIONS,
            "sha256": hashlib.sha256(predictions).hexdigest(),
        }
        record = json.loads(json.dumps(record, default=_json_default))  # plain JSON types
        check_record(record)
        (tmp / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True, default=_json_default) + "\n")
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{run_id}-", dir=runs_dir))
            os.replace(final, old / run_id)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def load_record(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / RECORD).read_text())
