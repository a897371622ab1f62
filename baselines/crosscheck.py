"""Cross-check a wrapped RecBole model against RecBole itself on the same split rows.

``crosscheck(cfg)`` trains the configured RecBole model twice on our split:

1. **ours**: the :class:`~baselines.recbole_model.RecBoleModel` wrapper trained by our
   Lightning task (:func:`benchmark.training.fit`) and scored by our evaluator, exactly
   as ``llm4rec run`` does (no run record is written);
2. **recbole**: the same RecBole class trained by RecBole's own ``Trainer`` (its loaders,
   sampler, early stopping) and scored by RecBole's own evaluator, on the RecBole
   benchmark files the bridge writes for the same split (``benchmark_filename``);

and also scores the RecBole-trained weights with our evaluator, which separates
differences of training from differences of evaluation. Training settings are mapped
from ``model.train`` (optimizer, learning rate, batch size, epochs, patience) and the
model hyperparameters from ``model.module.params``. See ``baselines/README.md`` for the
tolerance and why small gaps are expected.

Usage: ``python -m baselines.crosscheck model=deepfm split=temporal eval=labeled seed=1``
(Hydra-style overrides; ``out=FILE`` also writes the result as JSON).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from baselines import bridge as B
from baselines import compat
from baselines.recbole_model import recbole_class
from benchmark.config import DataConfig, EvalConfig, SliceConfig, SplitConfig, to_object
from benchmark.errors import BenchmarkError, ConfigError

TARGET = "baselines.recbole_model.RecBoleModel"
LEARNERS = {
    "torch.optim.Adam": "adam",
    "torch.optim.AdamW": "adamw",
    "torch.optim.SGD": "sgd",
    "torch.optim.Adagrad": "adagrad",
    "torch.optim.RMSprop": "rmsprop",
}
RECBOLE_METRIC = {"hr": "Hit", "recall": "Recall", "precision": "Precision", "ndcg": "NDCG", "mrr": "MRR"}


def _native_settings(cfg: DictConfig, ev: EvalConfig) -> dict[str, Any]:
    """RecBole trainer settings equivalent to ``model.train`` and the eval protocol."""
    train = cfg.model.train
    opt = train.optimizer
    learner = LEARNERS.get(str(opt.get("_target_")))
    if learner is None:
        raise ConfigError(
            f"crosscheck: optimizer {opt.get('_target_')} has no RecBole equivalent ({sorted(LEARNERS)})"
        )
    out: dict[str, Any] = {
        "learner": learner,
        "learning_rate": float(opt.get("lr", 1e-3)),
        "weight_decay": float(opt.get("weight_decay", 0.0) or 0.0),
        "train_batch_size": int(train.batch_size),
        "epochs": int(train.max_epochs),
        "stopping_step": int(train.patience),
        "eval_step": 1,
    }
    if ev.protocol == "labeled":
        out.update(metrics=["AUC", "LogLoss"], valid_metric="AUC")
    else:
        name, k = ev.valid_metric.split("@")
        metrics = sorted({"Hit", "NDCG", RECBOLE_METRIC[name]})
        out.update(metrics=metrics, topk=list(ev.ks), valid_metric=f"{RECBOLE_METRIC[name]}@{k}")
    return out


def _compared(ev: EvalConfig) -> list[tuple[str, str]]:
    """(our metric key, RecBole's key) pairs compared."""
    if ev.protocol == "labeled":
        return [("test/auc", "auc"), ("test/logloss", "logloss")]
    return [
        (f"test/{ours}@{k}", f"{theirs}@{k}")
        for k in ev.ks
        for ours, theirs in (("hr", "hit"), ("ndcg", "ndcg"))
    ]


def _ours(cfg: DictConfig, split: Any, data: Any, ev: EvalConfig, slices: SliceConfig, work: Path) -> tuple:
    """Train the wrapper with our Lightning task and score it with our evaluator (as ``run`` does)."""
    import pytorch_lightning as pl

    from benchmark.data.views import labeled_rows, ranking_rows
    from benchmark.run import build_model, trainer_arguments
    from benchmark.training import fit

    seed = int(cfg.seed)
    pl.seed_everything(seed, workers=True, verbose=False)
    model = build_model(cfg.model, split, data)
    if ev.protocol == "labeled":
        valid = labeled_rows(split, "valid", split.config["label_threshold"])
    else:
        valid = ranking_rows(split, "valid")
    trainer_kwargs = trainer_arguments(cfg)
    train_data = model.train_dataset(split, int(cfg.model.train.batch_size), seed)
    training = fit(
        model,
        train_data,
        valid,
        cfg.model.train,
        {**trainer_kwargs, "logger": False, "enable_progress_bar": False},
        seed,
        str(work / "checkpoints"),
        ev.valid_metric,
        ev.chunk_users,
    )
    return model, _score(cfg, model, split, ev, slices), training


def _score(cfg: DictConfig, model: Any, split: Any, ev: EvalConfig, slices: SliceConfig) -> tuple:
    """Our test metrics of ``model`` (as ``run`` computes them), its predictions and per-row values."""
    from benchmark.eval.evaluator import evaluate
    from benchmark.eval.rows import eval_rows
    from benchmark.predict import predict
    from benchmark.run import trainer_arguments
    from benchmark.util import torch_device

    rows, _ = eval_rows(split, ev, slices)
    device = torch_device(cfg.trainer.get("accelerator", "cpu"))
    pred = predict(model, rows, ev, device, trainer_arguments(cfg), progress=False)
    metrics, _, per_row = evaluate(pred, ev.ks, split.n_items)
    return metrics, pred, per_row


def _native(cfg: DictConfig, split: Any, data: Any, ev: EvalConfig, work: Path) -> tuple:
    """Train with RecBole's own Trainer on the bridge's benchmark files; RecBole's test metrics."""
    from recbole.data.utils import create_samplers, get_dataloader
    from recbole.utils import init_seed

    mod = cfg.model.module
    cls = recbole_class(str(mod.name))
    params = {k: _plain(v) for k, v in dict(mod.get("params") or {}).items()}
    spec = B.spec_for(
        cls,
        split,
        data,
        _plain(mod.get("user_features")),
        _plain(mod.get("item_features")),
        _plain(mod.get("field_types")),
        int(mod.get("max_len", 50)),
        int(mod.get("min_history", 1)),
    )
    spec.label = spec.label or ev.protocol == "labeled"  # RecBole's labeled evaluation reads the label
    settings = {**_native_settings(cfg, ev), **params}
    seed = int(cfg.seed)
    bridge = B.build_bridge(
        split, data, cls, spec, ev.protocol, settings, native=True, seed=seed, workdir=work / "native"
    )
    with compat.recbole_session():
        config = bridge.config
        init_seed(seed, True)
        model = cls(config, bridge.parts["train"]).to(config["device"])
        built = [bridge.parts[p] for p in ("train", "valid", "test")]
        samplers = create_samplers(config, bridge.dataset, built)
        loaders = [
            get_dataloader(config, phase)(
                config, part, sampler, shuffle=phase == "train" and config["shuffle"]
            )
            for phase, part, sampler in zip(("train", "valid", "test"), built, samplers, strict=True)
        ]
        trainer = compat.native_trainer(config, model, work / "native")
        t0 = time.perf_counter()
        best_valid, _ = trainer.fit(loaders[0], loaders[1], verbose=False, saved=True, show_progress=False)
        seconds = time.perf_counter() - t0
        best = compat.load_checkpoint(trainer.saved_model_file, config["device"])
        model.load_state_dict(best["state_dict"])
        model.load_other_parameter(best.get("other_parameter"))
        result = trainer.evaluate(loaders[2], load_best_model=False, show_progress=False)
        trainer.tensorboard.close()
    training = {
        "epochs": len(trainer.train_loss_dict),
        "best_epoch": int(best["epoch"]),
        "best_valid": float(best_valid),
        "seconds": seconds,
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {k: float(v) for k, v in result.items()}, training, state, bridge


def crosscheck(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg``'s RecBole model by our Lightning path and by RecBole's Trainer; compare.

    Args:
        cfg: a composed root config whose ``model.module`` is a :class:`RecBoleModel`
            (``model=deepfm``, ``din``, ``sasrec``, ``bpr_recbole``, ``lightgcn`` or ``recbole``)
            and ``eval`` is ``labeled`` or ``full``.

    Returns:
        ``metrics``: per compared metric, ``ours``, ``recbole``, ``diff`` (ours - recbole) and
        ``recbole_weights_our_evaluator`` (RecBole's trained weights scored by our evaluator),
        ``training_diff`` (ours - that: same protocol, so only training differs),
        ``evaluation_diff`` (that - recbole: same weights, so only evaluation differs), the
        ``tolerance`` of ``training_diff`` and whether it holds; ``training`` facts of both.
    """
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split

    if cfg.model.get("module", {}).get("_target_") != TARGET:
        raise ConfigError(f"crosscheck: model={cfg.model.name} is not a RecBole model ({TARGET})")
    data_cfg: DataConfig = to_object(cfg.data, DataConfig)
    split_cfg: SplitConfig = to_object(cfg.split, SplitConfig)
    ev: EvalConfig = to_object(cfg.eval, EvalConfig)
    slices: SliceConfig = to_object(cfg.slices, SliceConfig)
    if ev.protocol == "sampled":
        raise ConfigError(
            "crosscheck: eval=sampled draws different negatives in RecBole; use eval=full or labeled"
        )
    data = load_dataset(data_cfg)
    split = build_split(data, split_cfg)
    work = Path(tempfile.mkdtemp(prefix="recbole-crosscheck-"))
    try:
        model, (ours, pred, per_row), ours_training = _ours(cfg, split, data, ev, slices, work)
        native, native_training, state, bridge = _native(cfg, split, data, ev, work)
        same_ids = np.array_equal(bridge.user_rb, model._user_rb.cpu().numpy()) and np.array_equal(
            bridge.item_rb, model._item_rb.cpu().numpy()
        )
        if not same_ids:
            raise BenchmarkError("crosscheck: the two RecBole datasets map ids differently")
        model.load_state_dict({f"recbole.{k}": v for k, v in state.items()})  # also: score the test part
        theirs, _, _ = _score(cfg, model, split, ev, slices)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = _metric_rows(ev, ours, native, theirs, pred, per_row)
    return {
        "model": str(cfg.model.module.name),
        "dataset": data.name,
        "split": split.protocol,
        "split_fingerprint": split.fingerprint,
        "eval": ev.protocol,
        "seed": int(cfg.seed),
        "train": {
            "max_epochs": int(cfg.model.train.max_epochs),
            "patience": int(cfg.model.train.patience),
            "batch_size": int(cfg.model.train.batch_size),
        },
        "metrics": rows,
        "within_tolerance": all(r["within"] for r in rows),
        "training": {"ours": _jsonable(ours_training), "recbole": native_training},
        "recbole_all": native,
    }


def _metric_rows(
    ev: EvalConfig,
    ours: dict[str, float],
    native: dict[str, float],
    theirs: dict[str, float],
    pred: Any,
    per_row: dict[str, np.ndarray],
) -> list[dict[str, Any]]:
    """One row per compared metric: ours, RecBole's, RecBole's weights under our evaluator, the diffs."""
    rows = []
    for ours_key, native_key in _compared(ev):
        name = ours_key.removeprefix("test/")
        o, n, t = float(ours[ours_key]), native.get(native_key, float("nan")), float(theirs[ours_key])
        tol = tolerance(name, o, pred, per_row)
        rows.append(
            {
                "metric": name,
                "ours": o,
                "recbole": n,
                "diff": o - n,
                "recbole_weights_our_evaluator": t,
                "training_diff": o - t,
                "evaluation_diff": t - n,
                "tolerance": tol,
                "within": bool(abs(o - t) <= tol),
            }
        )
    return rows


def tolerance(metric: str, value: float, pred: Any, per_row: dict[str, np.ndarray]) -> float:
    """Two standard errors of the difference of two independent runs' estimates on these test rows.

    Ranking metrics and LogLoss: from the per-row values; AUC: Hanley & McNeil (1982).
    """
    if metric == "auc":
        labels = np.asarray(pred.rows.labels).astype(bool)
        n1, n0 = int(labels.sum()), int((~labels).sum())
        a = value
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        se = np.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0))
    else:
        if metric == "logloss":
            y, p = np.asarray(pred.rows.labels).astype(bool), np.asarray(pred.scores, dtype=np.float64)
            v = -np.log(np.clip(np.where(y, p, 1 - p), 1e-7, 1.0))
        else:
            v = np.asarray(per_row[metric], dtype=np.float64)
        se = v.std(ddof=1) / np.sqrt(len(v))
    return float(2 * np.sqrt(2) * se)


def format_table(result: dict[str, Any]) -> str:
    """The comparison as a fixed-width table."""
    head = (
        f"crosscheck {result['model']} on {result['dataset']} {result['split']} ({result['eval']}), "
        f"seed {result['seed']}, max_epochs {result['train']['max_epochs']}"
    )
    cols = f"{'metric':<11}{'ours':>9}{'recbole':>9}{'diff':>9}{'rb w/ ours':>12}{'train diff':>12}{'tol':>8}"
    lines = [head, cols]
    for r in result["metrics"]:
        lines.append(
            f"{r['metric']:<11}{r['ours']:>9.4f}{r['recbole']:>9.4f}{r['diff']:>+9.4f}"
            f"{r['recbole_weights_our_evaluator']:>12.4f}{r['training_diff']:>+12.4f}{r['tolerance']:>8.4f}"
            f"{'' if r['within'] else '  !'}"
        )
    t = result["training"]
    lines.append(
        "diff = ours - recbole; rb w/ ours = RecBole's weights scored by our evaluator; "
        "train diff = ours - rb w/ ours (must be within tol)"
    )
    lines.append(
        f"epochs (best): ours {t['ours']['epochs']} ({t['ours']['best_epoch']}), "
        f"recbole {t['recbole']['epochs']} ({t['recbole']['best_epoch']}); "
        f"train seconds: ours {t['ours']['seconds']:.1f}, recbole {t['recbole']['seconds']:.1f}"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """``crosscheck [OVERRIDE ...] [out=FILE]``: run :func:`crosscheck`, print the table (and write JSON).

    Raises:
        BenchmarkError: bad config or data (one line; ``llm4rec crosscheck`` prints it and exits 2).
    """
    from benchmark.compose import check_config, compose

    out = [a.split("=", 1)[1] for a in argv if a.startswith("out=")]
    overrides = [a for a in argv if not a.startswith("out=")]
    cfg = compose(overrides)
    check_config(cfg)
    result = crosscheck(cfg)
    print(format_table(result))
    if out:
        path = Path(out[-1])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return (
        OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    )


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in d.items()}


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except BenchmarkError as e:
        print(f"llm4rec: error: {e}", file=sys.stderr)
        sys.exit(2)
