"""Merging what an LLM model keeps per row while predicting, across the processes of a sharded run.

:class:`benchmark.predict.ShardedPredict` gives every process all processes' ``shard_state()``;
each row is predicted by exactly one process, so per-row dictionaries are disjoint and counters add.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def merged_counts(counts: Sequence[Sequence[int]], largest: tuple[int, ...] = ()) -> list[int]:
    """The processes' counters added position by position; positions in ``largest`` (a longest
    prompt) take the largest value instead."""
    return [max(c[j] for c in counts) if j in largest else sum(c[j] for c in counts) for j in range(len(counts[0]))]


def merged_dicts(dicts: Sequence[Mapping[Any, Any]]) -> dict[Any, Any]:
    """The union of the processes' per-row dictionaries (disjoint keys: one process per row)."""
    out: dict[Any, Any] = {}
    for d in dicts:
        out.update(d)
    return out
