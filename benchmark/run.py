"""``run(cfg) -> record``: one composed experiment, from raw data to a written run record.

Orchestration only: load the data and split, build and check the model, train it (or reuse
weights trained by an earlier run with the same training key), evaluate it on the test rows and
write the record. The pieces live where they belong: the run's identity in
:mod:`benchmark.results.identity`, the test rows in :mod:`benchmark.eval.rows`, prediction in
:mod:`benchmark.predict`, the model contract in :mod:`benchmark.models.contract`, training in
:mod:`benchmark.training`, the record in :mod:`benchmark.results.record`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from benchmark.audit.summary import record_summary
from benchmark.checks import resume_checkpoint
from benchmark.compose import check_adapter
from benchmark.config import DataConfig, EvalConfig, SliceConfig, SplitConfig, to_object
from benchmark.data.interactions import Interactions
from benchmark.data.loading import load_dataset
from benchmark.data.splits import Split, build_split
from benchmark.data.views import labeled_rows, ranking_rows, sample_negatives
from benchmark.distributed import is_global_zero, world_size
from benchmark.errors import ConfigError
from benchmark.eval.evaluator import evaluate
from benchmark.eval.rows import eval_rows
from benchmark.models.contract import check_model, has_own_train_data, ranks_rows, reads_train, valid_protocol
from benchmark.predict import predict
from benchmark.progress import RunLog, run_version
from benchmark.results.identity import config_hashes, run_id_for, training_key
from benchmark.results.item_facts import build_item_facts
from benchmark.results.record import Evaluated, build_record, encode_predictions, prediction_lines, write_run
from benchmark.util import staged_dir, torch_device


@dataclass
class _Job:
    """What every step of one run needs: its config, id, output root, eval config and log."""

    cfg: DictConfig
    run_id: str
    outputs: Path
    ev: EvalConfig
    log: RunLog

    @property
    def device(self) -> torch.device:
        """Where evaluation runs (CUDA for a GPU accelerator when one is visible)."""
        return torch_device(self.cfg.trainer.get("accelerator", "cpu"))


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
            log.line(
                f"[{run_id}] recorded meanwhile by the run it waited for: {existing.parent}; not run again"
            )
            return json.loads(existing.read_text())
        return _run(cfg, log, version)


def _run(cfg: DictConfig, log: RunLog, version: str) -> dict[str, Any]:
    """:func:`run` once its lock is held (or in a process that writes nothing): the steps in order."""
    run_id = run_id_for(cfg, config_hashes(cfg)[0])
    job = _Job(cfg, run_id, Path(cfg.paths.outputs), to_object(cfg.eval, EvalConfig), log)
    existing = Path(cfg.paths.results) / "runs" / run_id / "record.json"
    if cfg.get("skip_existing") and existing.exists():  # long sweeps continue where they stopped
        print(f"[{run_id}] already recorded in {existing.parent}; skipped (skip_existing=true)")
        return json.loads(existing.read_text())
    resume = resume_checkpoint(cfg, job.outputs / "checkpoints" / run_id)

    data_cfg, data, split = _load(cfg)
    source = data  # the item side table as the dataset has it: the beyond-accuracy facts read it
    described = None
    if cfg.get("describe") is not None:  # generated item descriptions join the item side table
        from benchmark.models.components.describe import add_descriptions
        from benchmark.models.components.llm import default_cache_dir

        root = Path(cfg.describe.cache_dir) if cfg.describe.get("cache_dir") else default_cache_dir()
        data, described = add_descriptions(cfg.describe, data, [str(i) for i in split.item_ids], root)
    model, params, trains = _build(job, split, data)
    logger = make_logger(cfg, run_id, version)
    trainer_kwargs = trainer_arguments(cfg)
    if resume is not None and not trains:
        raise ConfigError(
            f"ckpt_path: model {cfg.model.name} trains nothing; there is no checkpoint to resume"
        )
    if cfg.get("align") is not None:  # start from the parent's SFT weights and align them
        from benchmark.align.stage import align_stage

        training = align_stage(cfg, model, split, data, job.device)
    else:
        training = _train_or_reuse(job, model, split, params[1], trains, resume, trainer_kwargs, logger)
    if cfg.get("precision") is not None:  # the trained weights, evaluated in another precision
        from benchmark.models.components.precision import apply_precision

        apply_precision(model, cfg.precision, job.outputs)
    # Text ILD and the other list facts use the dataset's own item text, never generated
    # descriptions, so they compare across runs and ``validate`` recomputes them from the dataset.
    evaluated = _evaluate(job, model, split, source, trainer_kwargs)
    labels = {"device": job.device.type, "processes": world_size(trainer_kwargs)}
    record = build_record(cfg, data, data_cfg.source, split, job.ev, evaluated, params, training, labels)
    record["audit"] = record_summary(split, getattr(model, "index", None))  # checked by validate
    if described is not None:
        record["model"]["item_descriptions"] = described
    if not is_global_zero():  # other processes of a distributed run write nothing
        return record
    _write(job, record, evaluated, split, logger, model)
    return record


def _load(cfg: DictConfig) -> tuple[DataConfig, Interactions, Split]:
    """The dataset and its split; then every random generator is seeded with the run's seed."""
    import pytorch_lightning as pl

    data_cfg: DataConfig = to_object(cfg.data, DataConfig)
    data = load_dataset(data_cfg)
    split = build_split(data, to_object(cfg.split, SplitConfig))
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    return data_cfg, data, split


def _build(job: _Job, split: Split, data: Interactions) -> tuple[torch.nn.Module, tuple[int, int], bool]:
    """The model, built and checked against the contract for this run.

    Returns:
        (model, (parameters total, trainable), whether this run trains it).
    """
    cfg = job.cfg
    model = build_model(cfg.model, split, data, cfg.get("adapter"))
    if reads_train(model):
        tr = split.train
        model.init_from_train(tr["user"].to_numpy(), tr["item"].to_numpy())
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trains = bool(n_train and cfg.model.get("train"))
    check_model(model, cfg.model.name, job.ev.protocol, trains=trains)
    if cfg.get("save_item_embeddings") and _item_embeddings(model) is None:
        raise ConfigError(
            f"save_item_embeddings: model {cfg.model.name} has no item embedding table to save"
        )
    if job.ev.also_candidates and ranks_rows(model):
        raise ConfigError(
            f"eval.also_candidates: model {cfg.model.name} generates ranked lists (no catalogue scores "
            "to rank a candidate list by); run it without the candidates view"
        )
    return model, (n_params, n_train), trains


def _item_embeddings(model: torch.nn.Module) -> Any:
    """[n_items, d] item embeddings of a model that has a table (``item_embeddings()``), else None."""
    get = getattr(model, "item_embeddings", None)
    return get() if callable(get) else None


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


def trainer_arguments(cfg: DictConfig) -> dict[str, Any]:
    """Lightning Trainer keyword arguments from ``cfg.trainer`` (``_target_`` nodes, e.g. a
    strategy object, are instantiated)."""
    from benchmark.distributed import check_trainer

    kwargs = instantiate(OmegaConf.to_container(cfg.trainer, resolve=True), _convert_="all")
    check_trainer(kwargs)
    return kwargs


def _train_or_reuse(
    job: _Job,
    model: torch.nn.Module,
    split: Split,
    n_train: int,
    trains: bool,
    resume: str | None,
    trainer_kwargs: dict[str, Any],
    logger: Any,
) -> dict[str, Any]:
    """Training facts of this run: weights given (``load_weights``), reused, trained, or none.

    Under the training-key lock (:func:`_training_lock`): an explicit checkpoint to resume, or
    given weights, win over weights of an earlier run; weights this run trains are saved for
    later runs with the same training key.
    """
    cfg = job.cfg
    key = training_key(cfg)[:16]
    trained_dir = job.outputs / "models" / key
    with _training_lock(job.outputs, key, job.log, job.run_id):
        may_reuse = (
            n_train and resume is None and not cfg.get("load_weights") and cfg.get("reuse_trained", True)
        )
        reused = _load_trained(trained_dir, model) if may_reuse else None
        if cfg.get("load_weights"):
            weights = Path(cfg.load_weights)
            if not weights.exists():
                raise ConfigError(f"load_weights: file not found: {weights}")
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            return {"seconds": 0.0, "loaded_weights": str(weights)}
        if reused is not None:
            job.log.line(
                f"[{job.run_id}] {reuse_note(reused, trained_dir)}; nothing trained (reuse_trained=false trains again)"
            )
            return reused
        if not trains:
            return {"seconds": 0.0}
        training = _fit(job, model, split, resume, trainer_kwargs, logger)
        if is_global_zero():
            _save_trained(trained_dir, model, {**training, "trained_by": job.run_id})
        return training


def _fit(
    job: _Job,
    model: torch.nn.Module,
    split: Split,
    resume: str | None,
    trainer_kwargs: dict[str, Any],
    logger: Any,
) -> dict[str, Any]:
    """Train ``model`` in place with early stopping on the valid part; its training facts."""
    from benchmark.launch import requeued_checkpoint
    from benchmark.training import PairwiseStream, fit

    cfg, ev, run_id = job.cfg, job.ev, job.run_id
    protocol = valid_protocol(ev.protocol, model)
    if protocol == "labeled":
        valid = labeled_rows(split, "valid", to_object(cfg.split, SplitConfig).label_threshold)
    else:
        valid = ranking_rows(split, "valid")
        if protocol == "sampled":  # a pair scorer ranks each valid target among negatives (test never read)
            valid.negatives = sample_negatives(
                split, valid, ev.num_negatives, ev.negatives_seed, parts=("train", "valid")
            )
    if len(valid) == 0:
        raise ConfigError(f"split {split.protocol}: the valid part is empty; early stopping needs it")
    batch_size, seed = int(cfg.model.train.batch_size), int(cfg.seed)
    if has_own_train_data(model):
        train_data = model.train_dataset(split, batch_size, seed)
    else:
        tr = split.train
        train_data = PairwiseStream(
            tr["user"].to_numpy(), tr["item"].to_numpy(), split.n_items, batch_size, seed
        )
    if resume is not None:
        job.log.line(f"[{run_id}] resuming training from ckpt_path={resume}")
    ckpt_dir = job.outputs / "checkpoints" / run_id
    return fit(
        model,
        train_data,
        valid,
        cfg.model.train,
        {**trainer_kwargs, "logger": logger if logger is not None else False},
        seed,
        str(ckpt_dir),
        ev.valid_metric,
        ev.chunk_users,
        requeued_checkpoint(resume, ckpt_dir),  # SLURM requeue resumes
        log=job.log,
    )


def _evaluate(
    job: _Job, model: torch.nn.Module, split: Split, data: Interactions, trainer_kwargs: dict[str, Any]
) -> Evaluated:
    """Predictions and metrics on the configured test rows, timed (ranking runs also get the
    beyond-accuracy metrics from the train part's item facts, built before the clock starts)."""
    ranking = job.ev.protocol not in ("labeled", "candidates")  # candidate lists get no beyond-accuracy metrics
    item_facts = build_item_facts(split, data) if ranking and is_global_zero() else None
    t0, c0 = time.perf_counter(), time.process_time()
    rows, facts = eval_rows(split, job.ev, to_object(job.cfg.slices, SliceConfig))
    progress = bool(job.cfg.trainer.get("enable_progress_bar", True))
    pred = predict(model, rows, job.ev, job.device, trainer_kwargs, progress, log=job.log)
    metrics, sizes, _ = evaluate(pred, job.ev.ks, split.n_items, facts=item_facts, protocol=job.ev.protocol)
    view = _candidates_view(job, model, split, rows, pred) if job.ev.also_candidates else None
    pool = (pred.extra or {}).get("prompt_pool")
    if pool and pool.get("compare") and pred.row_facts:  # the bandit against its baselines, same rows
        facts = {**facts, "prompt_pool": pool_comparison(pred, pool, split.item_ids)}
    return Evaluated(pred, metrics, sizes, facts, time.perf_counter() - t0, view, time.process_time() - c0)


def pool_comparison(pred: Any, pool: dict[str, Any], item_ids: Any) -> dict[str, Any] | None:
    """The prompt pool's policies on the test rows, from the per-row facts the model returned."""
    from benchmark.eval.pool import comparison_from_lines, rank_comparison_from_lines

    arm_ids = [t["id"] for t in pool["templates"]]
    if pool.get("metric") == "ndcg@10":  # the reranker's pool: each user's targets and candidates' scores
        rows, iid = pred.rows, item_ids
        lines = [
            {"targets": [str(iid[t]) for t in rows.targets[rows.target_ptr[r] : rows.target_ptr[r + 1]]], "prompt": f}
            for r, f in enumerate(pred.row_facts)
        ]
        return rank_comparison_from_lines(lines, arm_ids, pool["feedback"]["best_on_feedback"], pool["seed"])
    lines = [{"label": int(y), "prompt": f} for y, f in zip(pred.rows.labels, pred.row_facts, strict=True)]
    return comparison_from_lines(lines, arm_ids, pool["feedback"]["best_on_valid"], pool["seed"])


def _candidates_view(job: _Job, model: torch.nn.Module, split: Split, rows: Any, pred: Any) -> dict[str, Any]:
    """The candidates view of a full run (``eval.also_candidates``): the row's target and fixed
    negatives ranked by the same catalogue scores, scored with the candidate metrics."""
    from benchmark.eval.evaluator import Predictions
    from benchmark.eval.rows import candidate_ks, candidate_view
    from benchmark.predict import candidates_view

    view_rows, facts = candidate_view(split, rows, job.ev)
    pred.view = Predictions(view_rows, ranked=candidates_view(model, view_rows, job.ev, job.device))
    ks = candidate_ks(job.ev.ks, 1 + job.ev.candidates_negatives)
    metrics, sizes, _ = evaluate(pred.view, ks, split.n_items, protocol="candidates")
    return {"metrics": metrics, "facts": {**facts, "ks": ks, "slice_rows": sizes}}


def _write(
    job: _Job,
    record: dict[str, Any],
    evaluated: Evaluated,
    split: Split,
    logger: Any,
    model: torch.nn.Module,
) -> Path:
    """Write the run folder (record + predictions, and the item embeddings with
    ``save_item_embeddings``), hand the record to the logger, print the summary."""
    from benchmark.loggers import log_final

    predictions = encode_predictions(prediction_lines(evaluated.pred, split))
    extras = None
    if job.cfg.get("save_item_embeddings"):  # checked when the model was built
        from benchmark.models.components.cf_features import embedding_files

        extras = embedding_files(
            _item_embeddings(model), job.run_id, record["model"]["label"], split.fingerprint
        )
    run_dir = write_run(Path(job.cfg.paths.results) / "runs", job.run_id, record, predictions, extras)
    log_final(logger, record, run_dir)
    line = summary_line(record, run_dir)
    print(line)
    job.log.file_only(line)
    return run_dir


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
    except (
        Exception
    ) as e:  # unreadable facts, missing or mismatched weights: never train on a half-loaded model
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
    """Weights and training facts for later runs with the same training key (folder replaced as a whole)."""
    with staged_dir(directory) as tmp:
        torch.save(model.state_dict(), tmp / "model.pt")
        (tmp / "training.json").write_text(json.dumps(facts, indent=1))


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


def summary_line(record: dict[str, Any], run_dir: Path) -> str:
    """One line per run: the id, headline metrics, times and where the record is."""
    m = record["metrics"]
    keys = [k for k in ("test/ndcg@10", "test/hr@10", "test/hit@1", "test/valid_ratio", "test/auc", "test/gauc") if k in m]
    vals = " ".join(f"{k.split('/', 1)[1]}={m[k]:.4f}" for k in keys if m[k] is not None)
    if record["eval"]["protocol"] == "candidates":  # never read as a full-ranking number
        vals = f"[candidates, 1+{record['config']['eval']['num_negatives']}] {vals}"
    view = record.get("metrics_candidates") or {}
    if view.get("test/hit@1") is not None:
        vals += f" | candidates view hit@1={view['test/hit@1']:.4f}"
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
