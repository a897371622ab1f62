"""The one prediction path: model outputs for evaluation rows, used by the run's evaluation and by
validation during training.

:func:`row_predictor` chooses, once per set of rows, how a model answers them: pair scores
(``score_pairs``) for labeled rows, the ranked fixed candidates (``score_pairs``) for sampled
rows and candidate lists (or the one candidate a generative model names, ``answer_candidates``), and for full-catalogue rows the model's own ranked lists (``rank_rows``, generative models)
or the top-K of its catalogue scores (``score``). :func:`predict` runs it over all rows, in one
process or sharded over the trainer's processes. The methods are the model contract's
(:mod:`benchmark.models.contract`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmark.config import EvalConfig
from benchmark.data.views import LabeledRows, RankingRows
from benchmark.distributed import is_distributed, quiet_lightning
from benchmark.eval.evaluator import Predictions
from benchmark.eval.ranking import rank_candidates, rank_full
from benchmark.models.contract import answers_candidates, outputs_probabilities, prediction_facts, ranks_rows
from benchmark.progress import Progress, RunLog, is_terminal

# fn(model, row_ids [B], device) -> ranked item indices [B, K] (ranking rows) or scores [B] (labeled rows)
RowFn = Callable[[nn.Module, np.ndarray, torch.device], np.ndarray]


def row_predictor(rows: RankingRows | LabeledRows, protocol: str, k: int, chunk_users: int) -> RowFn:
    """``fn(model, row_ids, device)``: ranked lists [B, k] or scores [B] for those rows.

    Args:
        rows: the rows to answer (test rows, or the valid part during training).
        protocol: ``labeled`` (scores of the rows' pairs), ``sampled`` (rank each row's targets
            with its fixed negatives) or ``full`` (rank the whole catalogue).
        k: list length of ranked lists.
        chunk_users: rows scored per block inside one call (bounds the [B, n_items] scores).
    """
    if protocol == "labeled":

        def scores(model: nn.Module, ids: np.ndarray, device: torch.device) -> np.ndarray:
            u = torch.as_tensor(rows.users[ids], device=device)
            i = torch.as_tensor(rows.items[ids], device=device).unsqueeze(1)  # [B, 1]
            return model.score_pairs(u, i).squeeze(1).float().cpu().numpy()  # [B, 1] -> [B]

        return scores
    if protocol == "sampled":
        return lambda model, ids, device: rank_candidates(
            model.score_pairs, rows, k, chunk_users, device, row_ids=ids
        )
    if protocol == "candidates":

        def candidates(model: nn.Module, ids: np.ndarray, device: torch.device) -> np.ndarray:
            if answers_candidates(model):  # a generative model names one candidate per row
                return model.answer_candidates(rows, ids, k, device)
            # The same ranking (and tie rule: item index ascending) as eval=sampled.
            return rank_candidates(model.score_pairs, rows, k, chunk_users, device, row_ids=ids)

        return candidates

    def full(model: nn.Module, ids: np.ndarray, device: torch.device) -> np.ndarray:
        if ranks_rows(model):  # generative models rank their rows themselves
            return model.rank_rows(rows, ids, k, device)
        return rank_full(model.score, rows, k, chunk_users, device, row_ids=ids)

    return full


def predict(
    model: nn.Module,
    rows: RankingRows | LabeledRows,
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
    fn = row_predictor(rows, ev.protocol, ev.max_k, ev.chunk_users)
    model.eval().to(device)
    if trainer_kwargs is not None and is_distributed(trainer_kwargs):
        out = predict_sharded(model, fn, len(rows), ev.chunk_users, trainer_kwargs)
    else:
        parts = []
        with Progress(len(rows), "eval", enabled=progress, log=log) as bar:
            for start in range(0, len(rows), ev.chunk_users):
                ids = np.arange(start, min(start + ev.chunk_users, len(rows)))
                with torch.no_grad(), bar.chunk(len(ids)):
                    parts.append(fn(model, ids, device))
        out = np.concatenate(parts) if parts else np.zeros((0, ev.max_k), dtype=np.int64)
    extra = prediction_facts(model)
    if ev.protocol == "labeled":
        # a model may say per row how it scored it (model=tallrec_pool: group, template, every template's score)
        facts = model.row_facts(rows) if callable(getattr(model, "row_facts", None)) else None
        return Predictions(
            rows, scores=out, probabilities=outputs_probabilities(model), extra=extra, row_facts=facts or None
        )
    if ev.protocol == "candidates":
        row_facts = model.answer_facts(rows) if answers_candidates(model) else None
    else:  # a model may say per row how it ranked (model=llm_rerank_pool: group, template, every template's scores)
        row_facts = model.row_facts(rows) if callable(getattr(model, "row_facts", None)) else None
    return Predictions(rows, ranked=out, extra=extra, row_facts=row_facts or None)


@torch.no_grad()
def candidates_view(model: nn.Module, rows: RankingRows, ev: EvalConfig, device: torch.device) -> np.ndarray:
    """A full run's candidates view (``eval.also_candidates``): each row's candidates ranked by the
    model's own catalogue scores (``score``), with the tie rule of ``eval=sampled``.

    Args:
        rows: the test rows with the view's fixed negatives.

    Returns:
        [R, list_length] candidate item indices, best first.
    """

    def from_catalogue(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return model.score(users).float().gather(1, items)  # [B, n_items] -> [B, C]

    model.eval().to(device)
    return rank_candidates(from_catalogue, rows, ev.max_k, ev.chunk_users, device)


class ShardedPredict(pl.LightningModule):
    """Runs ``fn(model, row_ids, device)`` over row shards on every process and gathers the
    outputs by row id, so each row is predicted exactly once whatever the number of processes.

    Process r of w takes rows r, r + w, r + 2w, ... (no padding: shards may differ by one row, so
    no row is predicted twice). A model that keeps per-row state while predicting (an LLM's chosen
    templates, answers, prompt counts) gives it as ``shard_state()``; every process then receives
    all processes' states through ``merge_shard_states(states)``, so the facts rank 0 records
    cover every row.
    """

    def __init__(self, model: nn.Module, fn: RowFn, n_rows: int, chunk: int = 1024) -> None:
        super().__init__()
        self.model = model
        self.fn = fn
        self.n_rows = n_rows
        self.chunk = chunk
        self._ids: list[np.ndarray] = []
        self._out: list[np.ndarray] = []
        self.result: np.ndarray | None = None

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        return DataLoader(torch.arange(rank, self.n_rows, world), batch_size=self.chunk)

    def predict_step(self, row_ids: torch.Tensor, batch_idx: int) -> None:
        ids = row_ids.cpu().numpy()
        with torch.no_grad():
            self._out.append(np.asarray(self.fn(self.model, ids, self.device)))
        self._ids.append(ids)

    def on_predict_epoch_end(self) -> None:
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, dtype=np.int64)
        out = np.concatenate(self._out) if self._out else None
        stateful = callable(getattr(self.model, "shard_state", None))
        if self.trainer.world_size > 1:
            import torch.distributed as dist

            gathered: list = [None] * self.trainer.world_size
            dist.all_gather_object(gathered, (ids, out, self.model.shard_state() if stateful else None))
            ids = np.concatenate([g[0] for g in gathered])
            out = np.concatenate([g[1] for g in gathered if g[1] is not None])
            if stateful:
                self.model.merge_shard_states([g[2] for g in gathered])
        uniq, first = np.unique(ids, return_index=True)
        if len(uniq) != self.n_rows:
            raise RuntimeError(f"sharded prediction covered {len(uniq)} of {self.n_rows} rows")
        self.result = out[first]


def predict_sharded(
    model: nn.Module,
    fn: RowFn,
    n_rows: int,
    chunk: int,
    trainer_kwargs: dict[str, Any],
) -> np.ndarray:
    """``fn`` over all rows, sharded across the trainer's processes; every process gets all rows."""
    kwargs = {**trainer_kwargs, "logger": False, "enable_checkpointing": False, "use_distributed_sampler": False}
    if not is_terminal(sys.stdout):  # a bar redrawn into a log file is noise
        kwargs["enable_progress_bar"] = False
    with quiet_lightning():
        trainer = pl.Trainer(**kwargs)
        module = ShardedPredict(model.eval(), fn, n_rows, chunk)
        trainer.predict(module, return_predictions=False)
    return module.result
