"""Vectorised top-K ranking: full catalogue (chunked over users) and fixed candidates.

Ties are broken deterministically by item index (lower first), so a ranking is
a pure function of the scores on any machine and batch size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from benchmark.data.views import RankingRows

Scorer = Callable[[torch.Tensor], torch.Tensor]  # users [B] -> scores [B, n_items]
PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # users [B], items [B, C] -> [B, C]


def _order(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by (value desc, index asc)."""
    o = idx.argsort(dim=1)
    vals, idx = vals.gather(1, o), idx.gather(1, o)
    o = vals.argsort(dim=1, descending=True, stable=True)
    return vals.gather(1, o), idx.gather(1, o)


def topk_deterministic(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k column indices per row ordered by (score desc, index asc).

    Args:
        scores: [B, N] float scores; -inf marks excluded columns.
        k: list length (<= N).

    Returns:
        [B, k] int64 indices; entries whose score is -inf are set to -1.
    """
    b, n = scores.shape
    k = min(k, n)
    if k < n:
        vals, idx = scores.topk(k + 1, dim=1)  # [B, k+1], ties in arbitrary order
        # Rows where a tie straddles the cut need every tied candidate to pick by index.
        tied = (vals[:, k] == vals[:, k - 1]) & torch.isfinite(vals[:, k])
        vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
        if bool(tied.any()):
            rows = tied.nonzero().squeeze(1)
            sub = scores[rows]  # [T, N]
            m = int((sub >= vals[rows, k - 1 :]).sum(dim=1, dtype=torch.int32).max())
            v2, i2 = _order(*sub.topk(m, dim=1))
            vals[rows], idx[rows] = v2[:, :k], i2[:, :k]
    else:
        vals, idx = scores.topk(k, dim=1)
    vals, idx = _order(vals, idx)
    return torch.where(torch.isneginf(vals), torch.full_like(idx, -1), idx)


@torch.no_grad()
def rank_full(
    scorer: Scorer,
    rows: RankingRows,
    k: int,
    chunk_users: int = 1024,
    device: torch.device | str = "cpu",
    row_ids: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Rank the whole catalogue for each row, excluding the row's history.

    Memory is bounded by one [chunk_users, n_items] score block.

    Args:
        scorer: maps user indices [B] to scores [B, n_items].
        rows: ranking rows with exclusion lists.
        k: list length.
        chunk_users: rows per block.
        device: where scores are computed.
        row_ids: subset of row positions to rank (default all), e.g. one rank's shard.
        progress: called with the number of rows finished after each block.

    Returns:
        [len(row_ids), k] item indices, -1 where fewer than k items were rankable.
    """
    row_ids = np.arange(len(rows)) if row_ids is None else np.asarray(row_ids)
    out = np.full((len(row_ids), k), -1, dtype=np.int64)  # a catalogue smaller than k pads with -1
    for start in range(0, len(row_ids), chunk_users):
        r = row_ids[start : start + chunk_users]
        users = torch.as_tensor(rows.users[r], device=device)
        scores = scorer(users).float()  # [B, n_items]
        # Exclusions: flatten the CSR slices of this block into (row, col) pairs.
        lo, hi = rows.exclude_ptr[r], rows.exclude_ptr[r + 1]
        lens = hi - lo
        if lens.sum():
            flat = np.concatenate([rows.exclude[a:b] for a, b in zip(lo, hi, strict=True)])
            rr = np.repeat(np.arange(len(r)), lens)
            scores[torch.as_tensor(rr, device=device), torch.as_tensor(flat, device=device)] = float("-inf")
        top = topk_deterministic(scores, k).cpu().numpy()  # [B, min(k, n_items)]
        out[start : start + len(r), : top.shape[1]] = top
        del scores  # free this block before the scorer allocates the next one
        if progress is not None:
            progress(len(r))
    return out


@torch.no_grad()
def rank_candidates(
    pair_scorer: PairScorer,
    rows: RankingRows,
    k: int,
    chunk_users: int = 1024,
    device: torch.device | str = "cpu",
    row_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Rank each row's targets together with its fixed negatives (sampled protocol).

    Args:
        row_ids: subset of row positions to rank (default all), e.g. one rank's shard.

    Returns:
        [len(row_ids), k] item indices (k capped at the candidate count, padded with -1).
    """
    assert rows.negatives is not None, "sampled protocol needs fixed negatives"
    row_ids = np.arange(len(rows)) if row_ids is None else np.asarray(row_ids)
    n_t = np.diff(rows.target_ptr)
    width = int(n_t.max()) + rows.negatives.shape[1]
    cand = np.full((len(row_ids), width), -1, dtype=np.int64)
    for j, r in enumerate(row_ids):  # build [R, C] candidates: targets first, then negatives
        t = rows.targets_of(r)
        cand[j, : len(t)] = t
        cand[j, len(t) : len(t) + rows.negatives.shape[1]] = rows.negatives[r]
    out = np.full((len(row_ids), k), -1, dtype=np.int64)
    kk = min(k, width)
    for start in range(0, len(row_ids), chunk_users):
        c = torch.as_tensor(cand[start : start + chunk_users], device=device)
        users = torch.as_tensor(rows.users[row_ids[start : start + chunk_users]], device=device)
        scores = pair_scorer(users, c.clamp(min=0)).float()  # [B, C]
        scores = scores.masked_fill(c < 0, float("-inf"))
        # Order by (score desc, item index asc): sort candidate columns by item first.
        o = c.argsort(dim=1)
        c_sorted, s_sorted = c.gather(1, o), scores.gather(1, o)
        pos = topk_deterministic(s_sorted, kk)
        items = torch.where(pos >= 0, c_sorted.gather(1, pos.clamp(min=0)), torch.full_like(pos, -1))
        out[start : start + len(c), :kk] = items.cpu().numpy()
    return out
