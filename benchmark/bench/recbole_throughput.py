"""Training throughput of RecBole's DeepFM: our Lightning task versus RecBole's own Trainer.

Same process, same data, same model class and hyperparameters, same batch size:
MovieLens-100K (RecBole's bundled copy, read in place), temporal 80/10/10 split,
labeled CTR rows (label = rating >= 4), user features age/gender/occupation and item
features release_year/class, as in ``configs/experiment/baselines_ctr_ml100k.yaml``.

- ours: :class:`baselines.recbole_model.RecBoleModel` trained by a Lightning ``Trainer``
  built from the benchmark's default trainer config (``configs/trainer/cpu.yaml``) with
  our ``RecTask``, fed by the wrapper's train stream;
- RecBole: the same class trained by ``recbole.trainer.Trainer._train_epoch`` (RecBole's
  own epoch loop) over its ``TrainDataLoader`` on the bridge's benchmark files.

Validation and checkpointing are off on both sides: only training epochs are timed
(wall clock per epoch, samples = train rows). After one warm-up epoch each, the sides
alternate epoch by epoch (ours, RecBole, ours, ...), so that load from other processes on
a shared machine hits both alike. The headline is the ratio ``ours / RecBole`` of
samples per second from the best (shortest) epoch of each side, the usual noise-robust
estimate on a shared machine; the median of the per-pair ratios is reported beside it
(target: >= 0.9, i.e. ours at most 10% slower).

Run: ``python -m benchmark.bench recbole_throughput`` or
``python -m benchmark.bench.recbole_throughput --out results/perf``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.bench import write_result

OUT_NAME = "recbole_throughput.json"
PAIRS = 8  # timed epochs per side, alternating ours / RecBole, after one warm-up epoch each
BATCH_SIZE = 2048
SEED = 0
TARGET_RATIO = 0.9
PARAMS = {"embedding_size": 10, "mlp_hidden_size": [128, 128, 128], "dropout_prob": 0.2}
USER_FEATURES = ["age", "gender", "occupation"]
ITEM_FEATURES = ["release_year", "class"]


def _machine() -> dict[str, Any]:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _ours_block(model: Any, stream: Any, trainer_kwargs: dict[str, Any], epochs: int) -> list[float]:
    """Train ``epochs`` epochs with our RecTask; seconds per epoch."""
    import pytorch_lightning as pl

    from benchmark.data.views import LabeledRows
    from benchmark.distributed import quiet_lightning
    from benchmark.training import RecTask

    times: list[float] = []

    class EpochClock(pl.Callback):
        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            times.append(time.perf_counter() - self.t0)

    import torch
    from torch.utils.data import DataLoader

    empty = LabeledRows("valid", np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    task = RecTask(model, empty, lambda p: torch.optim.Adam(p, lr=1e-3), "auc")
    kwargs = {
        **trainer_kwargs,
        "max_epochs": epochs,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "limit_val_batches": 0,
        "callbacks": [EpochClock()],
    }
    import warnings

    with quiet_lightning(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*validation_step.*val_dataloader.*")
        trainer = pl.Trainer(**kwargs)
        trainer.fit(task, DataLoader(stream, batch_size=None))
    return times


def _recbole_block(trainer: Any, loader: Any, epochs: int, start: int) -> list[float]:
    """Train ``epochs`` epochs with RecBole's own epoch loop; seconds per epoch."""
    times = []
    for e in range(start, start + epochs):
        t0 = time.perf_counter()
        trainer._train_epoch(loader, e, show_progress=False)
        times.append(time.perf_counter() - t0)
    return times


def _ours_side(split: Any, data: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Our wrapped DeepFM, its train stream and the Lightning trainer arguments of the default config.

    Returns:
        (RecBoleModel, its train stream, ``pl.Trainer`` keyword arguments without the progress bar).
    """
    import pytorch_lightning as pl

    from baselines.recbole_model import RecBoleModel
    from benchmark.compose import compose
    from benchmark.run import trainer_arguments

    cfg = compose(["model=deepfm", "eval=labeled", "split=temporal"])
    trainer_kwargs = trainer_arguments(cfg)
    trainer_kwargs.pop("enable_progress_bar", None)
    pl.seed_everything(SEED, verbose=False)
    model = RecBoleModel(split, data, "DeepFM", PARAMS, USER_FEATURES, ITEM_FEATURES)
    return model, model.train_dataset(split, BATCH_SIZE, SEED), trainer_kwargs


def _recbole_side(split: Any, data: Any, work: Path) -> tuple[Any, Any]:
    """RecBole's DeepFM on the bridge's benchmark files (in ``work``), its Trainer and train loader."""
    from baselines import bridge as B
    from baselines import compat
    from baselines.recbole_model import recbole_class

    cls = recbole_class("DeepFM")
    spec = B.spec_for(cls, split, data, USER_FEATURES, ITEM_FEATURES)
    settings = {
        **PARAMS,
        "train_batch_size": BATCH_SIZE,
        "learning_rate": 1e-3,
        "learner": "adam",
        "gpu_id": "",
    }
    bridge = B.build_bridge(
        split, data, cls, spec, "labeled", settings, native=False, seed=SEED, workdir=work
    )
    with compat.recbole_session():
        from recbole.data.utils import create_samplers, get_dataloader
        from recbole.utils import init_seed

        config = bridge.config
        init_seed(SEED, True)
        native_model = cls(config, bridge.parts["train"])
        built = [bridge.parts[p] for p in ("train", "valid", "test")]
        train_sampler = create_samplers(config, bridge.dataset, built)[0]
        loader = get_dataloader(config, "train")(config, built[0], train_sampler, shuffle=True)
        return compat.native_trainer(config, native_model, work), loader


def _alternate(
    model: Any,
    stream: Any,
    trainer_kwargs: dict[str, Any],
    native_trainer: Any,
    loader: Any,
    deterministic: bool,
) -> tuple[list[float], list[float]]:
    """One warm-up epoch each, then :data:`PAIRS` alternating epochs; seconds per epoch of each side."""
    import torch

    from baselines import compat

    _ours_block(model, stream, trainer_kwargs, 1)  # warm-up
    with compat.recbole_session():
        _recbole_block(native_trainer, loader, 1, 0)
    ours_times: list[float] = []
    native_times: list[float] = []
    for pair in range(PAIRS):
        ours_times += _ours_block(model, stream, trainer_kwargs, 1)
        torch.use_deterministic_algorithms(deterministic)  # the same flag Lightning set for ours
        with compat.recbole_session():
            native_times += _recbole_block(native_trainer, loader, 1, pair + 1)
    return ours_times, native_times


def _side(times: list[float], n_rows: int) -> dict[str, Any]:
    """One side's epoch times and its samples per second (best epoch)."""
    return {
        "epoch_seconds": [round(t, 4) for t in times],
        "best_epoch_seconds": round(min(times), 4),
        "median_epoch_seconds": round(statistics.median(times), 4),
        "samples_per_second": round(n_rows / min(times), 1),
    }


def _document(
    machine: dict[str, Any],
    data: Any,
    split: Any,
    model: Any,
    n_rows: int,
    deterministic: bool,
    ours_times: list[float],
    native_times: list[float],
) -> dict[str, Any]:
    """The JSON document written to :data:`OUT_NAME`."""
    ratio = min(native_times) / min(ours_times)  # (rows / ours) / (rows / native)
    pair_ratios = [n / o for o, n in zip(ours_times, native_times, strict=True)]
    return {
        "benchmark": "recbole_throughput",
        "what": "training samples/s of RecBole's DeepFM: our Lightning task (wrapper) vs RecBole's Trainer._train_epoch",
        "created_unix": int(time.time()),
        "machine": machine,
        "data": {
            "dataset": data.name,
            "split": "temporal 80/10/10",
            "split_fingerprint": split.fingerprint,
            "train_rows": n_rows,
            "user_features": USER_FEATURES,
            "item_features": ITEM_FEATURES,
        },
        "model": {
            "name": "DeepFM",
            "params": PARAMS,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "batch_size": BATCH_SIZE,
        "timed_epochs_per_side": PAIRS,
        "order": "one warm-up epoch each, then alternating epochs: ours, recbole, ours, ...",
        "deterministic_algorithms": deterministic,
        "ours": _side(ours_times, n_rows),
        "recbole": _side(native_times, n_rows),
        "ratio_ours_over_recbole": round(ratio, 4),
        "median_pair_ratio_ours_over_recbole": round(statistics.median(pair_ratios), 4),
        "target_min_ratio": TARGET_RATIO,
        "meets_target": bool(ratio >= TARGET_RATIO),
        "load_average_1_5_15_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "timing_note": "wall clock on a shared machine (see the load averages): sides alternate epoch by "
        "epoch; the ratio uses each side's best epoch, the median pair ratio is the paired alternative",
    }


def main(out_dir: Path) -> dict[str, Any]:
    """Measure both sides, write ``<out_dir>/recbole_throughput.json`` and print a summary."""
    from benchmark.config import DataConfig, SplitConfig
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split

    machine = _machine()
    data = load_dataset(DataConfig())
    split = build_split(data, SplitConfig(protocol="temporal"))
    model, stream, trainer_kwargs = _ours_side(split, data)
    n_rows = stream.n
    work = Path(tempfile.mkdtemp(prefix="recbole-throughput-"))
    try:
        native_trainer, loader = _recbole_side(split, data, work)
        deterministic = bool(trainer_kwargs.get("deterministic", False))
        ours_times, native_times = _alternate(
            model, stream, trainer_kwargs, native_trainer, loader, deterministic
        )
        native_trainer.tensorboard.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc = _document(machine, data, split, model, n_rows, deterministic, ours_times, native_times)
    write_result(Path(out_dir) / OUT_NAME, doc)
    ratio = min(native_times) / min(ours_times)
    median_pair = statistics.median(n / o for o, n in zip(ours_times, native_times, strict=True))
    print(
        f"DeepFM training on ML-100K ({n_rows} rows, batch {BATCH_SIZE}): "
        f"ours {n_rows / min(ours_times):,.0f} samples/s, "
        f"RecBole {n_rows / min(native_times):,.0f} samples/s (best epochs) -> ratio {ratio:.3f} "
        f"(median pair ratio {median_pair:.3f}; target >= {TARGET_RATIO})",
        flush=True,
    )
    return doc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmark.bench.recbole_throughput")
    parser.add_argument("--out", type=Path, default=Path("results/perf"))
    main(parser.parse_args().out)
