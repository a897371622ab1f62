"""Which history items a prompt keeps under a token budget (``history_select``, ``history_budget``).

Shared by the TALLRec-style scorer (one target per prompt) and the listwise reranker (a prompt
per user listing its candidates):

- ``recent``: the most recent items first;
- ``relevant`` (ReLLa-style semantic selection): the items whose text embedding is nearest the
  prompt's anchor items (the target, or the candidates: the highest cosine over them) first, ties
  going to the more recent item.

:func:`kept_count` then keeps the longest prefix of that order whose prompt fits the budget; the
kept items are always shown in time order. Item vectors come from the train-independent item
texts (titles), so nothing learned from interactions enters the choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from benchmark.errors import ConfigError


def check_history_fit(select: str, budget: object, allowed: Sequence[str]) -> None:
    """One-line errors for ``history_select`` (one of ``allowed``) and ``history_budget``."""
    if select not in allowed:
        raise ConfigError(f"model.module.history_select: unknown {select!r} (one of {', '.join(allowed)})")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 8):
        raise ConfigError(f"model.module.history_budget: a prompt length in tokens >= 8, got {budget!r}")


def recency_order(n: int) -> list[int]:
    """Positions ``0..n-1`` of a history (oldest first), most recent first."""
    return list(range(n - 1, -1, -1))


def relevance_order(vectors: np.ndarray, hist: Sequence[int], anchors: Sequence[int]) -> list[int]:
    """Positions of ``hist``, the item most similar to any of ``anchors`` first.

    Args:
        vectors: [n_items, d] L2-normalised item vectors.
        hist: item indices of the history, oldest first.
        anchors: item indices the history is compared with (a target, or a candidate list).

    Returns:
        positions of ``hist`` by decreasing max cosine to the anchors; ties: more recent first.
    """
    n = len(hist)
    if n == 0 or len(anchors) == 0:
        return recency_order(n)
    h = vectors[np.asarray(hist, dtype=np.int64)]
    a = vectors[np.asarray(anchors, dtype=np.int64)]
    sims = (h @ a.T).max(axis=1)
    return [int(j) for j in np.lexsort((-np.arange(n), -sims))]


def kept_count(order: Sequence[int], length_of: Callable[[list[int]], int], budget: int | None) -> int:
    """How many items of ``order`` a prompt keeps: all of them without a budget, else the largest
    ``k`` whose prompt (the positions ``order[:k]`` in time order) is at most ``budget`` tokens
    long (0 when even the prompt without history is longer).

    Args:
        order: history positions in the order they are kept.
        length_of: prompt length in tokens of the history positions given (sorted, time order).
        budget: prompt budget in tokens, or None.
    """
    keep = len(order)
    if budget is None:
        return keep
    while keep > 0 and length_of(sorted(order[:keep])) > budget:
        keep -= 1
    return keep


def fit_facts(select: str, budget: int | None, stats: Sequence[int]) -> dict[str, object]:
    """The record's ``history_fit``: the rule, the budget, and from ``stats`` (prompts fitted,
    history items offered, items kept, prompts over budget even without history) the means."""
    rows, offered, kept, over = stats
    return {
        "select": select,
        "budget_tokens": budget,
        "rows": rows,
        "items_offered_mean": round(offered / rows, 3) if rows else None,
        "items_kept_mean": round(kept / rows, 3) if rows else None,
        "rows_over_budget_without_history": over,
    }
