"""``run(cfg) -> record``: one composed experiment, from raw data to a written run record."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from benchmark.checks import resume_checkpoint
from benchmark.config import DataConfig, EvalConfig, SliceConfig, SplitConfig, to_object
from benchmark.data.loading import load_dataset
from benchmark.data.splits import Split, build_split
from benchmark.data.views import (
    labeled_rows,
    ranking_rows,
)
from benchmark.errors import ConfigError
from benchmark.eval.evaluator import Predictions, evaluate
from benchmark.eval.ranking import rank_candidates, rank_full
from benchmark.eval.rows import eval_rows
from benchmark.models.components.adapter import is_active_node
from benchmark.progress import Progress, RunLog, run_version
from benchmark.results.identity import config_hashes, model_label, run_id_for, training_key
from benchmark.results.record import (
    SCHEMA_VERSION,
    encode_predictions,
    environment,
    prediction_lines,
    write_run,
)
from benchmark.training import is_global_zero


def _load_trained(directory: Path, model: torch.nn.Module) -> dict[str, Any] | None:
    """Weights and training facts saved by an earlier run with the same training key.

    Returns the training facts of THIS run: ``seconds`` 0 (nothing was trained), the original
    run's seconds under ``original_seconds``, the weights folder (``reused_from``) and the run
    that trained them (``trained_by``; None for weights saved before it was recorded). None when
    the folder holds no weights. A folder that cannot be loaded is a one-line ConfigError.
    """
    facts_file = directory / "training.json"
    if not facts_file.is_file():
        return None
    try:
        facts = json.loads(facts_file.read_text())
        if not isinstance(facts, dict):
            raise ValueError("training.json is not a JSON object")
        original = float(facts.get("seconds") or 0.0)
        model.load_state_dict(torch.load(directory / "model.pt", map_location="cpu", weights_only=True))
    except Exception as e:  # unreadable facts, missing or mismatched weights: never train on a half-loaded model
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise ConfigError(
            f"reuse_trained: cannot reuse the weights in {directory} ({reason}); "
            "delete that folder or run with reuse_trained=false"
        ) from None
    return {
        **facts,
        "seconds": 0.0,
        "original_seconds": original,
        "reused_from": directory.name,
        "trained_by": facts.get("trained_by"),
    }


def _save_trained(directory: Path, model: torch.nn.Module, facts: dict[str, Any]) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    torch.save(model.state_dict(), tmp / "model.pt")
    (tmp / "training.json").write_text(json.dumps(facts, indent=1))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def _clean(metrics: dict[str, float]) -> dict[str, float | None]:
    return {
        k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 10))
        for k, v in metrics.items()
    }


def trainer_arguments(cfg: DictConfig) -> dict[str, Any]:
    """Lightning Trainer keyword arguments from ``cfg.trainer`` (``_target_`` nodes, e.g. a
    strategy object, are instantiated)."""
    from benchmark.distributed import check_trainer

    kwargs = instantiate(OmegaConf.to_container(cfg.trainer, resolve=True), _convert_="all")
    check_trainer(kwargs)
    return kwargs


def world_size(trainer_kwargs: dict[str, Any]) -> int:
    devices = trainer_kwargs.get("devices", 1)
    n = devices if isinstance(devices, int) and devices > 0 else (len(devices) if isinstance(devices, list) else 1)
    return n * int(trainer_kwargs.get("num_nodes", 1) or 1)


def _device(cfg: DictConfig) -> torch.device:
    acc = str(cfg.trainer.get("accelerator", "cpu"))
    return (
        torch.device("cuda")
        if acc in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        else torch.device("cpu")
    )


def build_model(
    model_cfg: DictConfig, split: Split, data: Any, adapter: DictConfig | None = None
) -> torch.nn.Module:
    """Instantiate ``model.module``: with the catalogue sizes, or with the whole split and
    dataset when the model config says ``inputs: split`` (models that need features/text).
    An item adapter other than ``none`` goes to models that take one (``adapter=``).
    """
    extra = {"adapter": adapter} if check_adapter(model_cfg, adapter) else {}
    if model_cfg.get("inputs", "ids") == "split":
        # Split and Interactions are dataclasses of DataFrames: passed to instantiate as kwargs,
        # Hydra would merge them into the config (and fail). Bind them to the partial instead.
        return instantiate(model_cfg.module, _partial_=True)(split=split, data=data, **extra)
    return instantiate(model_cfg.module, n_users=split.n_users, n_items=split.n_items)


def check_adapter(model_cfg: DictConfig, adapter: DictConfig | None) -> bool:
    """Whether an item adapter is on (validated); ConfigError when the model takes none."""
    if not is_active_node(adapter):
        return False
    import inspect

    from hydra.utils import get_class

    from benchmark.models.components.adapter import adapter_config

    adapter_config(adapter)  # unknown keys, modalities, k, encoder/projector nodes
    target = get_class(model_cfg.module._target_)
    if model_cfg.get("inputs", "ids") != "split" or "adapter" not in inspect.signature(target).parameters:
        raise ConfigError(
            f"adapter={adapter.name}: model {model_cfg.name} takes no item adapter (p5 and tallrec do)"
        )
    return True


def row_predictor(rows: Any, ev: EvalConfig) -> Callable[[torch.nn.Module, np.ndarray, torch.device], np.ndarray]:
    """``fn(model, row_ids, device)``: ranked lists [B, K] or scores [B] for those rows.

    Models that generate their lists (instead of scoring the catalogue) implement
    ``rank_rows(rows, row_ids, k, device) -> [B, K]``.
    """
    if ev.protocol == "labeled":

        def scores(model: torch.nn.Module, ids: np.ndarray, device: torch.device) -> np.ndarray:
            u = torch.as_tensor(rows.users[ids], device=device)
            i = torch.as_tensor(rows.items[ids], device=device).unsqueeze(1)
            return model.score_pairs(u, i).squeeze(1).float().cpu().numpy()

        return scores
    if ev.protocol == "sampled":
        return lambda model, ids, device: rank_candidates(
            model.score_pairs, rows, ev.max_k, ev.chunk_users, device, row_ids=ids
        )

    def full(model: torch.nn.Module, ids: np.ndarray, device: torch.device) -> np.ndarray:
        if hasattr(model, "rank_rows"):
            return model.rank_rows(rows, ids, ev.max_k, device)
        return rank_full(model.score, rows, ev.max_k, ev.chunk_users, device, row_ids=ids)

    return full


def is_distributed(trainer_kwargs: dict[str, Any]) -> bool:
    """Whether the trainer config asks for more than one process."""
    devices, nodes = trainer_kwargs.get("devices", 1), int(trainer_kwargs.get("num_nodes", 1) or 1)
    many = not isinstance(devices, int) or devices != 1
    return nodes > 1 or (many and devices not in (None, "auto")) or trainer_kwargs.get("strategy") not in (None, "auto")


def predict(
    model: torch.nn.Module,
    rows: Any,
    ev: EvalConfig,
    device: torch.device,
    trainer_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    log: RunLog | None = None,
) -> Predictions:
    """Model outputs for the test rows, in one process or sharded over the trainer's processes.

    In one process, an ``eval`` counter (:class:`~benchmark.progress.Progress`: a bar on a
    terminal, status lines with rows/s and ETA in ``log``) advances per chunk of
    ``eval.chunk_users`` rows, and inside a chunk wherever the model reports
    (:func:`~benchmark.progress.within_chunk`: LLM scoring and generation).
    """
    fn = row_predictor(rows, ev)
    model.eval().to(device)
    if trainer_kwargs is not None and is_distributed(trainer_kwargs):
        from benchmark.training import predict_sharded

        out = predict_sharded(model, fn, len(rows), ev.chunk_users, trainer_kwargs)
    else:
        parts = []
        with Progress(len(rows), "eval", enabled=progress, log=log) as bar:
            for start in range(0, len(rows), ev.chunk_users):
                ids = np.arange(start, min(start + ev.chunk_users, len(rows)))
                with torch.no_grad(), bar.chunk(len(ids)):
                    parts.append(fn(model, ids, device))
        out = np.concatenate(parts) if parts else np.zeros((0, ev.max_k), dtype=np.int64)
    extra = dict(getattr(model, "prediction_facts", lambda: {})())
    if ev.protocol == "labeled":
        probs = bool(getattr(model, "outputs_probabilities", False))
        return Predictions(rows, scores=out, probabilities=probs, extra=extra)
    return Predictions(rows, ranked=out, extra=extra)


def _file_state(path: Path) -> tuple[int, int] | None:
    """(inode, mtime in ns) of ``path``, None when absent: tells whether a file was rewritten."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _announce(log: RunLog) -> Callable[[str], None]:
    """A message the user must see now (stderr) that also goes into the run's log file."""

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)
        log.file_only(message)

    return say


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one composed experiment; write and return its run record.

    One process at a time per run id: the writing process (global rank 0) holds an exclusive
    lock on ``<outputs>/locks/<run_id>.lock`` (:mod:`benchmark.runlock`) until the record is
    written. A second invocation of the same run waits for the first; when the first wrote the
    record meanwhile, that record is returned and nothing is trained or written again.
    Progress lines go into ``<outputs>/logs/<run_id>/<version>/run.log`` (and to stdout when it
    is not a terminal); ``version`` is this invocation's (time and process id).
    """
    from benchmark.runlock import exclusive, lock_path

    run_id = run_id_for(cfg, config_hashes(cfg)[0])
    outputs = Path(cfg.paths.outputs)
    version = run_version()
    if not is_global_zero():  # other processes of a distributed run write nothing and lock nothing
        return _run(cfg, RunLog(quiet=True), version)
    log = RunLog(outputs / "logs" / run_id / version / "run.log")
    existing = Path(cfg.paths.results) / "runs" / run_id / "record.json"
    before = _file_state(existing)
    busy = f"[{run_id}] the same run is in progress"
    with exclusive(lock_path(outputs, run_id), _announce(log), busy) as waited:
        if waited and existing.is_file() and _file_state(existing) != before:
            log.line(f"[{run_id}] recorded meanwhile by the run it waited for: {existing.parent}; not run again")
            return json.loads(existing.read_text())
        return _run(cfg, log, version)


def _run(cfg: DictConfig, log: RunLog, version: str) -> dict[str, Any]:
    """:func:`run` once its lock is held (or in a process that writes nothing)."""
    import pytorch_lightning as pl

    data_cfg: DataConfig = to_object(cfg.data, DataConfig)
    split_cfg: SplitConfig = to_object(cfg.split, SplitConfig)
    ev: EvalConfig = to_object(cfg.eval, EvalConfig)
    slices: SliceConfig = to_object(cfg.slices, SliceConfig)
    seed = int(cfg.seed)
    config_hash, group_key = config_hashes(cfg)
    run_id = run_id_for(cfg, config_hash)
    outputs = Path(cfg.paths.outputs)
    progress = bool(cfg.trainer.get("enable_progress_bar", True))
    existing = Path(cfg.paths.results) / "runs" / run_id / "record.json"
    if cfg.get("skip_existing") and existing.exists():  # long sweeps continue where they stopped
        print(f"[{run_id}] already recorded in {existing.parent}; skipped (skip_existing=true)")
        return json.loads(existing.read_text())
    resume = resume_checkpoint(cfg, outputs / "checkpoints" / run_id)

    data = load_dataset(data_cfg)
    split = build_split(data, split_cfg)
    pl.seed_everything(seed, workers=True, verbose=False)

    model = build_model(cfg.model, split, data, cfg.get("adapter"))
    tr = split.train
    if hasattr(model, "init_from_train"):
        model.init_from_train(tr["user"].to_numpy(), tr["item"].to_numpy())
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)

    logger = make_logger(cfg, run_id, version)
    training: dict[str, Any] = {"seconds": 0.0}
    trainer_kwargs = trainer_arguments(cfg)
    trains = bool(n_train and cfg.model.get("train"))
    if resume is not None and not trains:
        raise ConfigError(f"ckpt_path: model {cfg.model.name} trains nothing; there is no checkpoint to resume")
    key = training_key(cfg)[:16]
    trained_dir = outputs / "models" / key
    with _training_lock(outputs, key, log, run_id):
        # An explicit checkpoint to resume, or given weights, win over weights of an earlier run.
        may_reuse = n_train and resume is None and not cfg.get("load_weights") and cfg.get("reuse_trained", True)
        reused = _load_trained(trained_dir, model) if may_reuse else None
        if cfg.get("load_weights"):
            weights = Path(cfg.load_weights)
            if not weights.exists():
                raise ConfigError(f"load_weights: file not found: {weights}")
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            training = {"seconds": 0.0, "loaded_weights": str(weights)}
        elif reused is not None:
            training = reused
            log.line(f"[{run_id}] {reuse_note(training, trained_dir)}; nothing trained (reuse_trained=false trains again)")
        elif trains:
            from benchmark.launch import requeued_checkpoint
            from benchmark.training import PairwiseStream, fit

            if ev.protocol == "labeled":
                valid = labeled_rows(split, "valid", split_cfg.label_threshold)
            else:
                valid = ranking_rows(split, "valid")
            if len(valid) == 0:
                raise ConfigError(f"split {split.protocol}: the valid part is empty; early stopping needs it")
            batch_size, train_seed = int(cfg.model.train.batch_size), seed
            if hasattr(model, "train_dataset"):
                train_data = model.train_dataset(split, batch_size, train_seed)
            else:
                train_data = PairwiseStream(tr["user"].to_numpy(), tr["item"].to_numpy(), split.n_items, batch_size, train_seed)
            if resume is not None:
                log.line(f"[{run_id}] resuming training from ckpt_path={resume}")
            training = fit(
                model,
                train_data,
                valid,
                cfg.model.train,
                {**trainer_kwargs, "logger": logger if logger is not None else False},
                seed,
                str(outputs / "checkpoints" / run_id),
                ev.valid_metric,
                ev.chunk_users,
                requeued_checkpoint(resume, outputs / "checkpoints" / run_id),  # SLURM requeue resumes
                log=log,
            )
            if is_global_zero():
                _save_trained(trained_dir, model, {**training, "trained_by": run_id})

    t0 = time.perf_counter()
    rows, facts = eval_rows(split, ev, slices)
    pred = predict(model, rows, ev, _device(cfg), trainer_kwargs, progress, log=log)
    metrics, sizes, _ = evaluate(pred, ev.ks, split.n_items)
    eval_seconds = time.perf_counter() - t0

    record = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "config_hash": config_hash,
        "group_key": group_key,
        "seed": seed,
        "dataset": {
            "name": data.name,
            "source": data_cfg.source,
            "fingerprint": data.fingerprint,
            "files": data.files,
            "stats": data.stats(),
        },
        "split": {"protocol": split.protocol, "fingerprint": split.fingerprint, "stats": split.stats()},
        "eval": {
            "protocol": ev.protocol,
            "ks": ev.ks,
            "list_length": ev.max_k,
            "rows": sizes.get("all", 0),
            "n_items": split.n_items,
            "probabilities": pred.probabilities,
            "slice_rows": sizes,
            **facts,
        },
        "model": {
            "name": cfg.model.name,
            "label": model_label(cfg),
            "family": cfg.model.get("family", "classic"),
            "params_total": n_params,
            "params_trainable": n_train,
            "notes": dict(cfg.model.get("notes") or {}),
            **pred.extra,
        },
        "labels": {"device": _device(cfg).type, "seeds_in_run": 1, "processes": world_size(trainer_kwargs)},
        "training": training,
        "metrics": _clean(metrics),
        "efficiency": {
            "train_seconds": round(training["seconds"], 3),  # of this run: 0 when weights were reused or loaded
            **(
                {"original_train_seconds": round(training["original_seconds"], 3)}
                if "original_seconds" in training
                else {}
            ),
            "eval_seconds": round(eval_seconds, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
            if torch.cuda.is_available()
            else None,
        },
        "environment": environment(),
    }
    if not is_global_zero():  # other processes of a distributed run write nothing
        return record
    run_dir = write_run(
        Path(cfg.paths.results) / "runs", run_id, record, encode_predictions(prediction_lines(pred, split))
    )
    from benchmark.loggers import log_final

    log_final(logger, record, run_dir)
    line = summary_line(record, run_dir)
    print(line)
    log.file_only(line)
    return record


def summary_line(record: dict[str, Any], run_dir: Path) -> str:
    """One line per run: the id, headline metrics, times and where the record is."""
    m = record["metrics"]
    keys = [k for k in ("test/ndcg@10", "test/hr@10", "test/auc", "test/gauc") if k in m]
    vals = " ".join(f"{k.split('/', 1)[1]}={m[k]:.4f}" for k in keys if m[k] is not None)
    eff = record["efficiency"]
    t = record.get("training") or {}
    if t.get("reused_from"):
        train = f"train 0.0s, {reuse_note(t)}"
    elif t.get("loaded_weights"):
        train = "train 0.0s, weights loaded (load_weights)"
    elif t.get("resumed_from"):
        train = f"train {eff['train_seconds']:.1f}s resumed from ckpt_path={t['resumed_from']}"
    else:
        train = f"train {eff['train_seconds']:.1f}s"
    return f"[{record['run_id']}] {vals} ({train}, eval {eff['eval_seconds']:.1f}s) -> {run_dir}"


def reuse_note(training: dict[str, Any], trained_dir: Path | None = None) -> str:
    """``reused weights models/<key> (trained by <run id> in 19.3s)``: what a reusing run says."""
    where = str(trained_dir) if trained_dir is not None else f"models/{training.get('reused_from')}"
    by = training.get("trained_by")
    seconds = training.get("original_seconds")
    origin = " ".join(
        x for x in (f"by {by}" if by else "", f"in {float(seconds):.1f}s" if seconds is not None else "") if x
    )
    return f"reused weights {where}" + (f" (trained {origin})" if origin else "")


def make_logger(cfg: DictConfig, run_id: str, version: str) -> Any:
    """The experiment logger of ``cfg.logger`` (None for ``logger=none``), in a folder of its own.

    Loggers whose factory takes ``version`` get this invocation's (``<run_id>/<version>``), so a
    rerun or a concurrent start never writes into another invocation's files.
    """
    if not cfg.get("logger"):
        return None
    import inspect

    from hydra.utils import get_method

    kwargs: dict[str, Any] = {"run_id": run_id}
    try:
        if "version" in inspect.signature(get_method(cfg.logger._target_)).parameters:
            kwargs["version"] = version
    except (ValueError, TypeError, AttributeError, ImportError):  # not introspectable: call as before
        pass
    return instantiate(cfg.logger, **kwargs)


@contextmanager
def _training_lock(outputs: Path, key: str, log: RunLog, run_id: str) -> Iterator[None]:
    """While one process trains the weights of ``key`` (or loads them), others with the same key wait.

    Runs that differ only in the eval protocol share their trained weights: the second waits
    for the first to save them and then reuses them. Only the writing process locks.
    """
    if not is_global_zero():
        yield
        return
    from benchmark.runlock import exclusive, lock_path

    busy = f"[{run_id}] the same weights (training key {key}) are being trained"
    with exclusive(lock_path(outputs, f"train-{key}"), _announce(log), busy):
        yield
