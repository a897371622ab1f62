"""Negative items for preference pairs: random, popularity-weighted, or hard (the SFT model's beams).

Every negative is an item the user has not interacted with in the train part and is not the
target; draws are made by a seeded ``numpy`` generator, so the same seed gives the same negatives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmark.errors import ConfigError

NEGATIVE_MODES = ("random", "popularity", "hard")


def allowed_items(n_items: int, seen: np.ndarray, target: int) -> np.ndarray:
    """[M] items a negative may be: not in ``seen`` (the user's train items), not ``target``."""
    ok = np.ones(n_items, dtype=bool)
    ok[np.asarray(seen, dtype=np.int64)] = False
    ok[int(target)] = False
    return np.flatnonzero(ok)


def sample_negatives(
    mode: str,
    k: int,
    n_items: int,
    seen: np.ndarray,
    target: int,
    rng: np.random.Generator,
    popularity: np.ndarray | None = None,
    candidates: Sequence[int] | None = None,
) -> np.ndarray:
    """k distinct negatives for one (user, target).

    Args:
        mode: ``random`` (uniform), ``popularity`` (proportional to train count + 1) or ``hard``
            (``candidates`` in order, e.g. the SFT model's beams best first, the allowed ones
            kept; topped up uniformly when fewer than k remain).
        k: how many.
        n_items: catalogue size.
        seen: the user's train items.
        target: the chosen item.
        rng: the seeded generator (advanced by the draw).
        popularity: [n_items] train counts (``popularity`` mode).
        candidates: ranked candidate items (``hard`` mode); -1 entries are skipped.

    Returns:
        [k] int64 items.

    Raises:
        ConfigError: k exceeds the allowed items, an unknown mode, or missing popularity.
    """
    if mode not in NEGATIVE_MODES:
        raise ConfigError(f"align.negatives: {mode!r} is not one of {', '.join(NEGATIVE_MODES)}")
    pool = allowed_items(n_items, seen, target)
    if k > len(pool):
        raise ConfigError(
            f"align.k={k}: more negatives than the {len(pool)} items a user may get "
            f"(catalogue {n_items} minus the user's train items and the target)"
        )
    if mode == "random":
        return rng.choice(pool, size=k, replace=False).astype(np.int64)
    if mode == "popularity":
        if popularity is None:
            raise ConfigError("align.negatives=popularity needs the train item counts")
        w = np.asarray(popularity, dtype=np.float64)[pool] + 1.0
        return rng.choice(pool, size=k, replace=False, p=w / w.sum()).astype(np.int64)
    allowed = np.zeros(n_items, dtype=bool)
    allowed[pool] = True
    out: list[int] = []
    for c in candidates if candidates is not None else []:
        c = int(c)
        if 0 <= c < n_items and allowed[c] and c not in out:
            out.append(c)
            if len(out) == k:
                break
    if len(out) < k:
        allowed[out] = False
        rest = np.flatnonzero(allowed)
        out.extend(rng.choice(rest, size=k - len(out), replace=False).tolist())
    return np.asarray(out, dtype=np.int64)
