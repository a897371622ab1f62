"""The Lightning task that trains any ranking model, and its pairwise data stream."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from benchmark.data.views import LabeledRows, RankingRows
from benchmark.distributed import is_global_zero, quiet_lightning
from benchmark.eval.evaluator import ranking_per_row
from benchmark.eval.metrics import auc
from benchmark.predict import row_predictor
from benchmark.progress import RunLog, is_terminal


class PairwiseStream(IterableDataset):
    """Shuffled (user, positive, negative) batches, one pass over train per epoch.

    Negatives are uniform over items the user has no train interaction with. The
    order and negatives of epoch e are a function of (seed, e) only, and rank r of
    world w takes every w-th batch, so runs are reproducible for any device count.
    """

    def __init__(
        self, users: np.ndarray, items: np.ndarray, n_items: int, batch_size: int, seed: int
    ) -> None:
        self.users = torch.tensor(users, dtype=torch.long)
        self.items = torch.tensor(items, dtype=torch.long)
        self.n_items = n_items
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.rank, self.world = 0, 1
        self.pos_keys = torch.unique(self.users * n_items + self.items)  # sorted

    def __len__(self) -> int:
        return -(-len(self.users) // self.batch_size)

    def _is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users * self.n_items + items
        pos = torch.searchsorted(self.pos_keys, keys).clamp(max=len(self.pos_keys) - 1)
        return self.pos_keys[pos] == keys

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)  # epoch set by the task
        perm = torch.randperm(len(self.users), generator=g)
        neg = torch.randint(self.n_items, (len(self.users),), generator=g)
        bad = self._is_positive(self.users[perm], neg)
        while bad.any():  # resample negatives that hit a train positive
            neg[bad] = torch.randint(self.n_items, (int(bad.sum()),), generator=g)
            bad = self._is_positive(self.users[perm], neg)
        for start in range(0, len(perm), self.batch_size):
            idx = perm[start : start + self.batch_size][self.rank :: self.world]
            yield {
                "user": self.users[idx],
                "pos": self.items[idx],
                "neg": neg[start : start + self.batch_size][self.rank :: self.world],
            }


class RecTask(pl.LightningModule):
    """Trains ``model.loss`` and validates on the valid part with the evaluator's metrics.

    Validation answers the valid rows with the evaluation's prediction path
    (:func:`benchmark.predict.row_predictor`): ranking validation ranks the full catalogue per
    valid row (``ndcg@10`` etc.), or only the row's fixed negatives when the valid rows carry
    them (a pair scorer under ``eval=sampled``/``candidates``, see
    :func:`benchmark.models.contract.valid_protocol`), or asks ``model.rank_rows`` for models that
    generate their ranked lists; labeled validation (``auc``) scores every valid interaction. Values are kept
    per row id and gathered from all ranks, so padding added by a distributed
    sampler is dropped and the metric is computed over rows, not averaged over ranks.

    Args:
        model: a model with ``loss`` and ``score`` (ranking) or ``score_pairs`` (labeled).
        valid_rows: ranking rows (exclusions = train items) or labeled rows of the valid part.
        optimizer: a partial optimizer (``params -> Optimizer``).
        valid_metric: ``<metric>@K`` for ranking rows, ``auc`` for labeled rows.
        chunk_users: rows scored per validation batch.
    """

    def __init__(
        self,
        model: nn.Module,
        valid_rows: RankingRows | LabeledRows,
        optimizer: Callable[..., torch.optim.Optimizer],
        valid_metric: str = "ndcg@10",
        chunk_users: int = 1024,
    ) -> None:
        super().__init__()
        self.model = model
        self.valid_rows = valid_rows
        self.optimizer_factory = optimizer
        self.valid_metric = valid_metric
        self.labeled = isinstance(valid_rows, LabeledRows)
        # ranking rows with fixed negatives (a pair scorer's valid candidates) rank just those
        self.protocol = "labeled" if self.labeled else ("sampled" if valid_rows.negatives is not None else "full")
        if self.labeled != (valid_metric == "auc"):
            raise ValueError(f"valid_metric {valid_metric} does not fit {type(valid_rows).__name__}")
        self.k = 0 if self.labeled else int(valid_metric.split("@")[1])
        self.chunk_users = chunk_users
        self._ids: list[np.ndarray] = []
        self._values: list[np.ndarray] = []

    def on_train_epoch_start(self) -> None:
        # Streams derive order and negatives from (seed, epoch): a resumed run replays the same epochs.
        data = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(data, "epoch"):
            data.epoch = self.current_epoch

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model.loss(batch)
        size = len(next(iter(batch.values())))
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=size)
        # The running step loss for the terminal bar only (loggers keep the epoch mean above).
        self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False, batch_size=size)
        return loss

    def validation_step(self, row_ids: torch.Tensor, batch_idx: int) -> None:
        ids = row_ids.cpu().numpy()
        # The evaluation's own prediction path, built per batch (the task holds no closure, so it
        # pickles); the batch (at most chunk_users rows) is scored in one block.
        predict = row_predictor(
            self.valid_rows, self.protocol, self.k, max(len(ids), 1)
        )
        out = predict(self.model, ids, self.device)  # scores [B] or ranked lists [B, k]
        if self.labeled:
            values = out
        else:
            per_row, _ = ranking_per_row(out, _subset_rows(self.valid_rows, ids), [self.k])
            values = per_row[self.valid_metric]
        self._ids.append(ids)
        self._values.append(np.asarray(values, dtype=np.float64))

    def on_validation_epoch_end(self) -> None:
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, dtype=np.int64)
        values = np.concatenate(self._values) if self._values else np.zeros(0)
        self._ids.clear()
        self._values.clear()
        if self.trainer.world_size > 1:
            import torch.distributed as dist

            gathered: list = [None] * self.trainer.world_size
            dist.all_gather_object(gathered, (ids, values))
            ids = np.concatenate([g[0] for g in gathered])
            values = np.concatenate([g[1] for g in gathered])
        ids, first = np.unique(ids, return_index=True)  # each row once, whatever the sharding
        values = values[first]
        if self.labeled:
            value = auc(self.valid_rows.labels[ids], values)
        else:
            value = float(values.mean()) if len(values) else 0.0
        self.log(f"valid/{self.valid_metric}", float(value), sync_dist=False, prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.model.parameters())


class EpochLog(pl.Callback):
    """One line per training epoch: epoch, train loss, validation metric, seconds.

    Written to the run's :class:`~benchmark.progress.RunLog` (its log file always; stdout when
    stdout is not a terminal), by the global-zero process only. The epoch that improves the
    validation metric is marked ``best``.

    Args:
        log: where the lines go.
        valid_metric: the monitored metric without ``valid/`` (``ndcg@10``, ``auc``).
    """

    def __init__(self, log: RunLog, valid_metric: str) -> None:
        self.run_log = log
        self.valid_metric = valid_metric
        self.best: float | None = None
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.run_log.line(self.line(trainer.current_epoch, trainer.max_epochs, trainer.callback_metrics))

    def line(self, epoch: int, max_epochs: int | None, metrics: dict[str, Any]) -> str:
        """``epoch 3/20  train/loss=0.6931  valid/ndcg@10=0.1234 best  (1.2s)`` (epoch counted from 1)."""
        seconds = time.perf_counter() - self._t0
        loss, value = metrics.get("train/loss"), metrics.get(f"valid/{self.valid_metric}")
        parts = [f"epoch {epoch + 1}/{max_epochs if max_epochs and max_epochs > 0 else '?'}"]
        parts.append(f"train/loss={float(loss):.4f}" if loss is not None else "train/loss=n/a")
        if value is None:
            parts.append(f"valid/{self.valid_metric}=n/a")
        else:
            v = float(value)
            improved = self.best is None or v > self.best
            self.best = v if improved else self.best
            parts.append(f"valid/{self.valid_metric}={v:.4f}" + (" best" if improved else ""))
        parts.append(f"({seconds:.1f}s)")
        return "  ".join(parts)


def _subset_rows(rows: RankingRows, ids: np.ndarray) -> RankingRows:
    """The ranking rows at positions ``ids`` (targets only; used for per-row metrics)."""
    lo, hi = rows.target_ptr[ids], rows.target_ptr[ids + 1]
    targets = np.concatenate([rows.targets[a:b] for a, b in zip(lo, hi, strict=True)])
    ptr = np.r_[0, np.cumsum(hi - lo)]
    empty = np.zeros(len(ids) + 1, dtype=np.int64)
    return RankingRows(rows.part, rows.users[ids], ptr, targets, empty, np.zeros(0, dtype=np.int64))


def fit(
    model: nn.Module,
    train_data: IterableDataset,
    valid_rows: RankingRows | LabeledRows,
    train_cfg: Any,
    trainer_kwargs: dict[str, Any],
    seed: int,
    ckpt_dir: str,
    valid_metric: str = "ndcg@10",
    chunk_users: int = 1024,
    ckpt_path: str | None = None,
    log: RunLog | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place with early stopping on ``valid_metric``; keep the best epoch.

    ``train_data`` yields ready batches (dicts of tensors) for ``model.loss``; streams
    with ``rank``/``world`` attributes split every batch across processes.

    Progress: one line per epoch (:class:`EpochLog`) into ``log`` (default: stdout when it is
    not a terminal); the terminal bar shows the step loss and the validation metric. When stdout
    is not a terminal, Lightning's bar is off (its redraws would only clutter a log file).

    Returns:
        training facts for the run record (epochs, best epoch and value, seconds).
    """
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    if ckpt_path is None and is_global_zero():
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # a fresh run never picks up a stale checkpoint
    task = RecTask(model, valid_rows, instantiate(train_cfg.optimizer), valid_metric, chunk_users)
    monitor = f"valid/{valid_metric}"
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, monitor=monitor, mode="max", save_last=True, filename="best")
    epochs = EpochLog(log if log is not None else RunLog(), valid_metric)
    callbacks = [ckpt, EarlyStopping(monitor=monitor, mode="max", patience=int(train_cfg.patience)), epochs]
    if not is_terminal(sys.stdout):
        trainer_kwargs = {**trainer_kwargs, "enable_progress_bar": False}
    with quiet_lightning():
        trainer = pl.Trainer(max_epochs=int(train_cfg.max_epochs), callbacks=callbacks, **trainer_kwargs)
    if hasattr(train_data, "rank"):  # shard every batch across processes
        train_data.rank, train_data.world = trainer.global_rank, trainer.world_size
    train_loader = DataLoader(train_data, batch_size=None)
    valid_ids = torch.arange(len(valid_rows))
    valid_loader = DataLoader(valid_ids, batch_size=chunk_users, shuffle=False)
    t0 = time.perf_counter()
    with quiet_lightning():
        trainer.fit(task, train_loader, valid_loader, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - t0
    best = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False)
    task.load_state_dict(best["state_dict"])
    return {
        "epochs": int(trainer.current_epoch),
        "best_epoch": int(best["epoch"]),
        "best_valid": float(ckpt.best_model_score),
        "valid_metric": valid_metric,
        "max_epochs": int(train_cfg.max_epochs),
        "patience": int(train_cfg.patience),
        "batch_size": int(train_cfg.batch_size),
        "seconds": seconds,
        "resumed_from": ckpt_path,
        "world_size": int(trainer.world_size),
    }
