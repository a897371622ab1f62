"""Run records and predictions files: written atomically, after evaluation only.

Layout of one run: ``<runs>/<run_id>/record.json`` and ``predictions.jsonl.gz``.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import platform
import resource
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from benchmark.data.interactions import Interactions
from benchmark.data.splits import Split
from benchmark.data.views import LabeledRows, RankingRows
from benchmark.eval.evaluator import Predictions
from benchmark.results.identity import config_hashes, model_label, run_id_for
from benchmark.results.schema import SCHEMA_VERSION, check_record
from benchmark.util import cpu_features, package_version, sha256_bytes, staged_dir

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

    versions = {p: package_version(p) for p in PACKAGES}
    status = git("status", "--porcelain", "--", ".", ":!results", ":!paper", ":!outputs")
    cuda = torch.cuda.is_available()
    return {
        "git_sha": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_features(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "packages": versions,
    }


@dataclass
class Evaluated:
    """The outcome of evaluating a model on the test rows, as the record states it.

    Attributes:
        pred: the model's predictions for the test rows.
        metrics: metric name (``test/ndcg@10``, ``test/cold_item/hr@10``) -> value (NaN: undefined).
        sizes: rows per slice (``all`` and every slice).
        facts: what the row selection adds to the record's ``eval`` (test users, negatives).
        seconds: wall time of row selection, prediction and metrics.
        candidates: a full run's candidates view (``eval.also_candidates``): ``metrics`` and
            ``facts`` (negatives, ks, slice rows); None without one.
        cpu_seconds: CPU time of this process (all its threads) over the same span, or None; on a
            shared machine it compares runs better than wall time.
    """

    pred: Predictions
    metrics: dict[str, float]
    sizes: dict[str, int]
    facts: dict[str, Any]
    seconds: float
    candidates: dict[str, Any] | None = None
    cpu_seconds: float | None = None


def clean_metrics(metrics: dict[str, float]) -> dict[str, float | None]:
    """Metric values as the record keeps them: rounded to 10 digits, NaN (undefined) as None."""
    return {
        k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 10))
        for k, v in metrics.items()
    }


def build_record(
    cfg: DictConfig,
    data: Interactions,
    data_source: str,
    split: Split,
    ev: Any,
    evaluated: Evaluated,
    params: tuple[int, int],
    training: dict[str, Any],
    labels: dict[str, Any],
) -> dict[str, Any]:
    """The run record of one evaluated run (before :func:`write_run` adds its predictions file).

    Args:
        cfg: the run's composed config (recorded resolved; its hashes and run id are computed here).
        data: the loaded dataset; ``data_source`` its ``data.source``.
        split: the split the model was trained and evaluated on.
        ev: the typed eval config (:class:`benchmark.config.EvalConfig`).
        evaluated: predictions, metrics, slice sizes, row facts and eval seconds.
        params: (total, trainable) parameter counts of the model.
        training: training facts of this run (``seconds`` 0 when weights were reused or loaded).
        labels: ``device`` (type), ``processes``; ``seeds_in_run`` is 1.
    """
    config_hash, group_key = config_hashes(cfg)
    pred = evaluated.pred
    view = evaluated.candidates
    record = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id_for(cfg, config_hash),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "config_hash": config_hash,
        "group_key": group_key,
        "seed": int(cfg.seed),
        "dataset": {
            "name": data.name,
            "source": data_source,
            "fingerprint": data.fingerprint,
            "files": data.files,
            "stats": data.stats(),
        },
        "split": {"protocol": split.protocol, "fingerprint": split.fingerprint, "stats": split.stats()},
        "eval": {
            "protocol": ev.protocol,
            "ks": ev.ks,
            "list_length": ev.max_k,
            "rows": evaluated.sizes.get("all", 0),
            "n_items": split.n_items,
            "probabilities": pred.probabilities,
            "slice_rows": evaluated.sizes,
            **evaluated.facts,
        },
        "model": {
            "name": cfg.model.name,
            "label": model_label(cfg),
            "family": cfg.model.get("family", "classic"),
            "params_total": params[0],
            "params_trainable": params[1],
            "notes": dict(cfg.model.get("notes") or {}),
            **pred.extra,
        },
        "labels": {"device": labels["device"], "seeds_in_run": 1, "processes": labels["processes"]},
        "training": training,
        "metrics": clean_metrics(evaluated.metrics),
        "efficiency": _efficiency(training, evaluated.seconds, evaluated.cpu_seconds),
        "environment": environment(),
    }
    if view is not None:  # eval.also_candidates: the candidates view of the same scores, kept apart
        record["eval"]["candidates"] = view["facts"]
        record["metrics_candidates"] = clean_metrics(view["metrics"])
    return record


def _efficiency(training: dict[str, Any], eval_seconds: float, eval_cpu_seconds: float | None = None) -> dict[str, Any]:
    """Times of this run (train 0 when weights were reused or loaded), peak memory of this process."""
    import torch

    original = training.get("original_seconds")
    return {
        "train_seconds": round(training["seconds"], 3),
        **({"original_train_seconds": round(original, 3)} if "original_seconds" in training else {}),
        "eval_seconds": round(eval_seconds, 3),
        **({"eval_cpu_seconds": round(eval_cpu_seconds, 3)} if eval_cpu_seconds is not None else {}),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if torch.cuda.is_available()
        else None,
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
            if pred.view is not None:  # eval.also_candidates: the row's candidates, best first
                lines[-1]["ranked_candidates"] = [str(iid[i]) if i >= 0 else None for i in pred.view.ranked[r]]
            if pred.row_facts is not None:  # a generative model's answer to the candidate list, or
                # how the reranker's prompt pool scored the user (model=llm_rerank_pool)
                lines[-1]["prompt" if "prompt_pool" in (pred.extra or {}) else "answer"] = pred.row_facts[r]
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
            if pred.row_facts is not None:  # how the row was scored (model=tallrec_pool)
                lines[-1]["prompt"] = pred.row_facts[r]
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


def write_run(
    runs_dir: Path,
    run_id: str,
    record: dict[str, Any],
    predictions: bytes,
    extras: dict[str, bytes] | None = None,
) -> Path:
    """Write record + predictions (+ ``extras``: file name -> bytes, e.g. the item embeddings of
    ``save_item_embeddings``) into ``runs_dir/run_id`` atomically (temp dir + rename).

    The record gets the predictions file's name and sha256, is reduced to plain JSON types and
    checked against the schema before anything is renamed into place; an existing run folder is
    replaced as a whole (:func:`benchmark.util.staged_dir`).
    """
    for name in extras or {}:
        if name in (PREDICTIONS, RECORD) or Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"write_run: extra file name {name!r} is not a plain new file name")
    record = dict(record)
    record["predictions"] = {"file": PREDICTIONS, "sha256": sha256_bytes(predictions)}
    record = json.loads(json.dumps(record, default=_json_default))  # plain JSON types
    check_record(record)
    final = Path(runs_dir) / run_id
    with staged_dir(final) as tmp:
        (tmp / PREDICTIONS).write_bytes(predictions)
        for name, data in (extras or {}).items():
            (tmp / name).write_bytes(data)
        (tmp / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True, default=_json_default) + "\n")
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
