"""Few-shot training rows: which train rows a model trains on, drawn by the run seed.

A TALLRec-style LLM and an ID baseline run with the same ``shots`` and seed train on the
very same rows, so few-shot comparisons differ in the model only.
"""

from __future__ import annotations

import numpy as np

from benchmark.errors import ConfigError
from benchmark.util import sha256_bytes


def draw_rows(n: int, count: int | str, seed: int, stream: int = 0) -> np.ndarray:
    """``count`` distinct positions in [0, n) drawn by ``seed`` (all of them, shuffled, for ``all``).

    Args:
        n: number of rows to draw from.
        count: how many (or ``all``).
        seed: the run seed.
        stream: separates independent draws made with one seed (0: training shots, 1: in-context,
            2: calibration prompts of a precision option, 3 and 4: balanced in-context likes and dislikes).

    Returns:
        [count] int64 positions, in draw order.

    Raises:
        ConfigError: more rows asked for than there are.
    """
    perm = np.random.default_rng([int(seed), 7_207, stream]).permutation(n)
    if count == "all":
        return perm.astype(np.int64)
    if int(count) > n:
        raise ConfigError(f"model shots={count}: the train part has only {n} rows")
    return perm[: int(count)].astype(np.int64)


def rows_digest(rows: np.ndarray) -> str:
    """sha256 of int64 row positions (which rows a model was trained on)."""
    return sha256_bytes(np.ascontiguousarray(rows, dtype=np.int64).tobytes())

