"""Reproduce RecBole 1.2.1's ``Pop`` against true train popularity on the same split.

RecBole's ``Pop.calculate_loss`` does ``item_cnt[item] = item_cnt[item] + 1`` for the item
column of each training batch. Two things follow, both visible in the counts it learns:

- an indexed assignment with repeated indices writes once, so an item gains at most one
  count per batch, however often it occurs in that batch: counts cap at the number of
  training batches;
- ``Pop`` is a pointwise model, so its training batches also hold the sampled negative
  items (label 0), which are counted like positives.

This script writes our MovieLens-100K leave-one-out split as RecBole benchmark files (the
bridge used by every RecBole baseline), trains RecBole's ``Pop`` with RecBole's own
``Trainer`` (one epoch, its default batch size of 2,048 and one uniform negative per positive) and scores it with
RecBole's own evaluator on the test part (full ranking); then it replaces the learned counts
with the true train counts of each item and scores again with the same evaluator. Both
count vectors are also scored by our evaluator (ties broken by item index). The result is
written as JSON (default ``results/crosscheck/recbole_pop_ml100k.json``), from which the
paper's numbers are generated.

Usage: ``python -m baselines.recbole_pop [--out FILE]`` (about a minute on one CPU core).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import BenchmarkError
from benchmark.util import atomic_write, package_version

OUT = Path("results/crosscheck/recbole_pop_ml100k.json")
OVERRIDES = ["data=ml-100k", "split=loo", "eval=full", "model=pop", "seed=1"]
OTHER_SEEDS = (2, 3)  # RecBole seeds also trained, to show how much the learned counts depend on them


@dataclass
class _RecBoleRuns:
    """What RecBole's Pop learned and how RecBole's evaluator scored it (RecBole's item ids)."""

    recbole_counts: Any  # [n_items_rb] torch.Tensor, learned item_cnt (id 0 = padding)
    true_counts: Any  # [n_items_rb] torch.Tensor, train occurrences per item
    native: dict[str, float]  # RecBole's test metrics of the learned counts
    true_native: dict[str, float]  # ... of the true counts
    per_seed: dict[str, dict[str, float]]  # seed -> HR@10/NDCG@10 of the learned counts
    n_batches: int
    batch_size: int
    neg: dict[str, Any]
    seconds: float


def _ours(cfg: Any, split: Any, counts: np.ndarray) -> dict[str, float]:
    """Our evaluator's test metrics of a popularity model with the given item counts."""
    import torch

    from baselines.crosscheck import _score
    from benchmark.config import EvalConfig, SliceConfig, to_object
    from benchmark.models.pop import Pop

    model = Pop(split.n_users, split.n_items)
    model.counts = torch.as_tensor(counts, dtype=torch.float32)
    ev = to_object(cfg.eval, EvalConfig)
    metrics, _, _ = _score(cfg, model, split, ev, to_object(cfg.slices, SliceConfig))
    return {k: float(metrics[k]) for k in ("test/hr@10", "test/ndcg@10")}


def _bridge(split: Any, data: Any, seed: int, workdir: Path) -> Any:
    """Our split as RecBole benchmark files, configured like RecBole's own Pop pipeline."""
    from recbole.model.general_recommender import Pop

    from baselines import bridge as B

    spec = B.spec_for(Pop, split, data, user_features=[], item_features=[])
    # RecBole's defaults for training (overall.yaml): batch 2048, one uniform negative per positive.
    # The bridge switches negatives off for non-general models; Pop's own pipeline keeps them.
    defaults = B.model_defaults("Pop")
    settings = {
        "train_batch_size": 2048,
        "train_neg_sample_args": {
            "distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False, "candidate_num": 0
        },
        **defaults,
        "metrics": ["Hit", "NDCG"],
        "topk": [10],
        "valid_metric": "NDCG@10",
    }  # fmt: skip
    return B.build_bridge(split, data, Pop, spec, "full", settings, native=True, seed=seed, workdir=workdir)


def _train(bridge: Any, run_seed: int, workdir: Path) -> tuple[Any, Any, list[Any], float]:
    """RecBole's Pop trained by RecBole's Trainer with ``run_seed`` (negatives and batch order).

    Returns:
        (model, trainer, [train, valid, test] loaders, training seconds).
    """
    from recbole.data.utils import create_samplers, get_dataloader
    from recbole.model.general_recommender import Pop
    from recbole.utils import init_seed

    from baselines import compat

    config = bridge.config
    built = [bridge.parts[p] for p in ("train", "valid", "test")]
    init_seed(run_seed, True)
    model = Pop(config, bridge.parts["train"]).to(config["device"])
    samplers = create_samplers(config, bridge.dataset, built)
    loaders = [
        get_dataloader(config, phase)(config, part, sampler, shuffle=phase == "train" and config["shuffle"])
        for phase, part, sampler in zip(("train", "valid", "test"), built, samplers, strict=True)
    ]
    trainer = compat.native_trainer(config, model, workdir / f"trainer-{run_seed}")
    t0 = time.perf_counter()
    trainer.fit(loaders[0], loaders[1], verbose=False, saved=False, show_progress=False)
    return model, trainer, loaders, time.perf_counter() - t0


def _hr_ndcg(result: dict[str, Any]) -> dict[str, float]:
    """HR@10 and NDCG@10 of a RecBole evaluation result, under our names."""
    return {"hr@10": float(result["hit@10"]), "ndcg@10": float(result["ndcg@10"])}


def _recbole_runs(bridge: Any, seed: int, workdir: Path) -> _RecBoleRuns:
    """Train Pop for :data:`OTHER_SEEDS` and ``seed``; score the learned and the true counts."""
    import torch

    from baselines import compat

    config = bridge.config
    with compat.recbole_session():
        per_seed = {}
        for other in OTHER_SEEDS:
            _, t, ls, _ = _train(bridge, other, workdir)
            per_seed[str(other)] = _hr_ndcg(t.evaluate(ls[2], load_best_model=False, show_progress=False))
            t.tensorboard.close()
        model, trainer, loaders, seconds = _train(bridge, seed, workdir)
        recbole_counts = model.item_cnt[:, 0].detach().cpu().clone()
        native = trainer.evaluate(loaders[2], load_best_model=False, show_progress=False)
        per_seed[str(seed)] = _hr_ndcg(native)
        train_items = bridge.parts["train"].inter_feat[config["ITEM_ID_FIELD"]]
        true_counts = torch.bincount(train_items, minlength=len(recbole_counts)).to(recbole_counts.dtype)
        model.item_cnt = true_counts.unsqueeze(1).to(model.item_cnt.device)
        model.max_cnt = torch.max(model.item_cnt, dim=0)[0]
        true_native = trainer.evaluate(loaders[2], load_best_model=False, show_progress=False)
        trainer.tensorboard.close()
        return _RecBoleRuns(
            recbole_counts=recbole_counts,
            true_counts=true_counts,
            native=dict(native),
            true_native=dict(true_native),
            per_seed=per_seed,
            n_batches=len(loaders[0]),
            batch_size=int(config["train_batch_size"]),
            neg=dict(config["train_neg_sample_args"] or {}),
            seconds=seconds,
        )


def reproduce(workdir: Path) -> dict[str, Any]:
    """Train RecBole's Pop on our ml-100k loo split; score its counts and the true counts.

    Args:
        workdir: scratch folder for RecBole's files (left for the caller to remove).

    Returns:
        the JSON-ready result: split facts, RecBole's training settings, count statistics,
        and HR@10/NDCG@10 of both count vectors under RecBole's and our evaluator.

    Raises:
        RuntimeError: RecBole's train part does not hold our train rows (a bridge bug).
    """
    from benchmark.compose import compose
    from benchmark.config import DataConfig, SplitConfig, to_object
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split

    cfg = compose(OVERRIDES)
    data = load_dataset(to_object(cfg.data, DataConfig))
    split = build_split(data, to_object(cfg.split, SplitConfig))
    seed = int(cfg.seed)
    bridge = _bridge(split, data, seed, workdir)
    runs = _recbole_runs(bridge, seed, workdir)
    # RecBole ids -> our item indices (RecBole id 0 is padding).
    rec_ours = runs.recbole_counts.numpy()[bridge.item_rb].astype(np.float64)  # [n_items]
    true_ours = runs.true_counts.numpy()[bridge.item_rb].astype(np.float64)  # [n_items]
    if not np.array_equal(true_ours, np.bincount(split.train["item"].to_numpy(), minlength=split.n_items)):
        raise RuntimeError("recbole_pop: RecBole's train part does not hold our train rows")
    return _report(cfg, data, split, runs, rec_ours, true_ours)


def _report(
    cfg: Any, data: Any, split: Any, runs: _RecBoleRuns, rec_ours: np.ndarray, true_ours: np.ndarray
) -> dict[str, Any]:
    """The JSON document: split facts, RecBole's settings, count statistics and the four scores."""
    top_rec = set(np.argsort(-rec_ours, kind="stable")[:10].tolist())
    top_true = set(np.argsort(-true_ours, kind="stable")[:10].tolist())
    per_seed = runs.per_seed
    return {
        "what": "RecBole 1.2.1 Pop (RecBole Trainer, one epoch) vs true train popularity, same split and evaluators",
        "dataset": data.name,
        "split": split.protocol,
        "split_fingerprint": split.fingerprint,
        "eval": "full",
        "seed": int(cfg.seed),
        "train_rows": int(len(split.train)),
        "items": int(split.n_items),
        "recbole": {
            # recbole is installed: reproduce imported it (package_version is None only when absent).
            "version": package_version("recbole"),
            "train_batch_size": runs.batch_size,
            "train_neg_sample_args": {k: _plain(v) for k, v in runs.neg.items()},
            "train_batches": int(runs.n_batches),
            "train_seconds": round(runs.seconds, 3),
        },
        "counts": {
            "recbole_max": int(rec_ours.max()),
            "recbole_items_at_max": int((rec_ours == rec_ours.max()).sum()),
            "true_max": int(true_ours.max()),
            "items_with_true_count_above_batches": int((true_ours > runs.n_batches).sum()),
            "items_counted_by_recbole_without_train_rows": int(((true_ours == 0) & (rec_ours > 0)).sum()),
            "top10_overlap": len(top_rec & top_true),
        },
        "item_counts": {  # per item, in our item index order (sorted raw ids)
            "recbole": [int(v) for v in rec_ours],
            "true": [int(v) for v in true_ours],
        },
        "recbole_counts_by_seed": {
            "seeds": [int(k) for k in sorted(per_seed)],
            "hr@10_min": min(v["hr@10"] for v in per_seed.values()),
            "hr@10_max": max(v["hr@10"] for v in per_seed.values()),
            "per_seed": dict(sorted(per_seed.items())),
        },
        "metrics": {
            "recbole_counts": {
                "recbole_evaluator": _hr_ndcg(runs.native),
                "our_evaluator": _strip(_ours(cfg, split, rec_ours)),
            },
            "true_counts": {
                "recbole_evaluator": _hr_ndcg(runs.true_native),
                "our_evaluator": _strip(_ours(cfg, split, true_ours)),
            },
        },
    }


def _strip(metrics: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("test/"): v for k, v in metrics.items()}


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)


def main(argv: list[str] | None = None) -> int:
    """``python -m baselines.recbole_pop [--out FILE]``: run :func:`reproduce`, write JSON atomically.

    Returns:
        the exit status: 0, or 2 after a one-line error for bad config or data.
    """
    p = argparse.ArgumentParser(prog="python -m baselines.recbole_pop")
    p.add_argument("--out", default=str(OUT), help=f"JSON output (default {OUT})")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="recbole-pop-"))
    try:
        result = reproduce(work)
    except BenchmarkError as e:
        print(f"recbole_pop: error: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    atomic_write(Path(a.out), json.dumps(result, indent=1) + "\n")
    m = result["metrics"]
    print(
        f"RecBole Pop HR@10 {m['recbole_counts']['recbole_evaluator']['hr@10']:.4f}, "
        f"true popularity HR@10 {m['true_counts']['recbole_evaluator']['hr@10']:.4f} (RecBole's evaluator); "
        f"wrote {a.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
