"""Paired significance tests over per-row (per-user) metric values, with Holm correction."""

from __future__ import annotations

import numpy as np
from scipy.stats import wilcoxon


def paired_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired values ``a`` vs ``b`` ([N] each).

    Returns 1.0 when the two are identical on every row (no evidence of a difference).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs aligned rows, got {a.shape} vs {b.shape}")
    if not np.any(a != b):
        return 1.0
    return float(wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (monotone, capped at 1), in input order."""
    p = np.asarray(pvalues, float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj.tolist()
