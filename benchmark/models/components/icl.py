"""In-context example selection for the yes/no LLM scorer (``model.module.icl_select``).

Examples always come from the train part; a row never gets itself (the same (user, item) pair)
as an example, and nothing of the valid or test parts is read.

- ``random``: ``k`` train rows drawn once by seed, the same for every row (the original behaviour).
- ``balanced``: ``ceil(k/2)`` liked and ``floor(k/2)`` disliked train rows drawn once by seed, the
  same for every row, shown in draw order.
- ``similar``: per row, the ``k`` train rows whose history is closest to the row's history
  (cosine of the mean L2-normalised all-MiniLM-L6-v2 text embedding of the history items, from the
  feature store), most similar last (nearest to the query row), ties by lower train position.
- ``diverse``: per row, maximal marginal relevance over the 50 most similar train rows:
  greedily the row maximising ``lambda * sim(query, c) - (1 - lambda) * max sim(c, chosen)``
  (lambda = :data:`MMR_LAMBDA`), shown in selection order reversed (the first chosen last).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmark.data.shots import draw_rows
from benchmark.errors import ConfigError

STRATEGIES = ("random", "balanced", "similar", "diverse")
PER_ROW = ("similar", "diverse")
MMR_LAMBDA = 0.5
MMR_POOL = 50


def check_strategy(strategy: str) -> None:
    """A one-line error for an unknown strategy."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"model.module.icl_select: unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")


def fixed_examples(strategy: str, k: int, labels: np.ndarray, seed: int) -> np.ndarray:
    """Train positions of the examples shared by every row (``random``, ``balanced``)."""
    n = len(labels)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if strategy == "random":
        return draw_rows(n, k, seed, stream=1)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    want_pos, want_neg = (k + 1) // 2, k // 2
    if len(pos) < want_pos or len(neg) < want_neg:
        raise ConfigError(
            f"model.module.icl_shots={k}: balanced examples need {want_pos} liked and {want_neg} disliked "
            f"train rows, the train part has {len(pos)} and {len(neg)}"
        )
    picked_pos = pos[draw_rows(len(pos), want_pos, seed, stream=3)]
    picked_neg = neg[draw_rows(len(neg), want_neg, seed, stream=4)]
    order = np.empty(k, dtype=np.int64)  # alternate liked and disliked, liked first
    order[0::2], order[1::2] = picked_pos, picked_neg
    return order


def history_vectors(histories: Sequence[Sequence[int]], item_vectors: np.ndarray) -> np.ndarray:
    """[R, d] L2-normalised mean item vector of each history (zeros for an empty history)."""
    d = item_vectors.shape[1]
    out = np.zeros((len(histories), d), dtype=np.float32)
    for r, hist in enumerate(histories):
        if len(hist):
            out[r] = item_vectors[np.asarray(hist, dtype=np.int64)].mean(axis=0)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def per_row_examples(
    strategy: str, k: int, query: np.ndarray, train: np.ndarray, exclude: np.ndarray
) -> np.ndarray:
    """Train positions of one row's examples (``similar`` or ``diverse``), in prompt order.

    Args:
        strategy: ``similar`` or ``diverse``.
        k: how many examples.
        query: [d] the row's history vector.
        train: [N, d] the train rows' history vectors.
        exclude: train positions that are this row itself (same user and item).
    """
    sims = train @ query  # [N] cosine (vectors are normalised)
    sims = sims.astype(np.float64)
    sims[exclude] = -np.inf
    order = np.lexsort((np.arange(len(sims)), -sims))  # most similar first, ties by lower position
    order = order[np.isfinite(sims[order])]
    if strategy == "similar":
        return order[:k][::-1].astype(np.int64)
    pool = order[:MMR_POOL]
    chosen: list[int] = []
    redundancy = np.full(len(pool), -np.inf)
    for _ in range(min(k, len(pool))):
        score = MMR_LAMBDA * sims[pool] - (1 - MMR_LAMBDA) * np.where(np.isfinite(redundancy), redundancy, 0.0)
        score[[pool.tolist().index(c) for c in chosen]] = -np.inf
        best = int(np.argmax(score))
        chosen.append(int(pool[best]))
        redundancy = np.maximum(redundancy, train[pool] @ train[pool[best]])
    return np.asarray(chosen[::-1], dtype=np.int64)
