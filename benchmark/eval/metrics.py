"""Metrics as pure functions over arrays, with a registry.

Ranking metrics take ``hits`` [R, L] (bool: the item at rank j of row r is one of
the row's targets; ranks are 0-based, invalid/duplicate entries are never hits)
and ``n_targets`` [R], and return one value per row, so per-row values are kept
for significance tests. CTR metrics take labels and scores over all rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def hr_at_k(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    """1 if any target is in the top k, else 0."""
    return hits[:, :k].any(axis=1).astype(float)


def recall_at_k(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    """Targets found in the top k over the number of targets."""
    return hits[:, :k].sum(axis=1) / np.maximum(n_targets, 1)


def precision_at_k(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    """Targets found in the top k over k."""
    return hits[:, :k].sum(axis=1) / k


def ndcg_at_k(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    """DCG of the top k (gain 1/log2(rank+2)) over the ideal DCG of min(n_targets, k) hits."""
    k_eff = min(k, hits.shape[1])
    discount = 1.0 / np.log2(np.arange(2, k_eff + 2))
    dcg = (hits[:, :k_eff] * discount).sum(axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    idcg = ideal[np.minimum(n_targets, k)]
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def mrr_at_k(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    """1/(rank of the first hit, 1-based) if within the top k, else 0."""
    h = hits[:, :k]
    first = h.argmax(axis=1)
    return np.where(h.any(axis=1), 1.0 / (first + 1), 0.0)


def coverage_at_k(ranked: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalogue that appears in at least one top-k list (invalid ids, -1, ignored)."""
    top = ranked[:, :k]
    return float(len(np.unique(top[top >= 0])) / max(n_items, 1))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half). NaN with one class."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_group_auc(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUC per group that has both classes.

    Returns:
        (groups [G] ascending, auc [G], rows per group [G]).
    """
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(groups, kind="stable")
    g, lab, sc = np.asarray(groups)[order], labels[order], np.asarray(scores)[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    out_g, out_auc, out_n = [], [], []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        pos = lab[a:b].sum()
        if 0 < pos < b - a:
            out_g.append(g[a])
            out_auc.append(auc(lab[a:b], sc[a:b]))
            out_n.append(b - a)
    return np.array(out_g), np.array(out_auc, dtype=float), np.array(out_n, dtype=np.int64)


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Per-user AUC averaged with weights = the user's number of rows, over users with both classes."""
    _, values, n = per_group_auc(labels, scores, groups)
    return float((values * n).sum() / n.sum()) if len(n) else float("nan")


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities clipped to [eps, 1-eps]."""
    p = np.clip(np.asarray(probs, dtype=float), eps, 1 - eps)
    y = np.asarray(labels, dtype=float)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


@dataclass(frozen=True)
class RankingMetric:
    """A per-row ranking metric at a cut-off."""

    fn: Callable[[np.ndarray, np.ndarray, int], np.ndarray]
    higher_is_better: bool = True


RANKING_METRICS: dict[str, RankingMetric] = {
    "hr": RankingMetric(hr_at_k),
    "recall": RankingMetric(recall_at_k),
    "precision": RankingMetric(precision_at_k),
    "ndcg": RankingMetric(ndcg_at_k),
    "mrr": RankingMetric(mrr_at_k),
}
# Metrics of a candidate list (eval=candidates): per-row functions of the hit matrix.
CANDIDATE_METRICS = {"hit": hr_at_k, "ndcg": ndcg_at_k}
# Share of rows whose answer names one of the row's candidates (eval=candidates).
VALIDITY_METRICS = {"valid_ratio": True}
# Set-level ranking metrics (not per row): name -> higher is better.
SET_METRICS = {"coverage": True, "gini": False}
# Beyond-accuracy metrics per row (benchmark.eval.beyond): name -> higher is better. ARP and
# miscalibration (KL) are better when lower; diversity, novelty and the long-tail share higher.
BEYOND_METRICS = {
    "ild": True,
    "ildgenre": True,
    "novelty": True,
    "arp": False,
    "longtail": True,
    "calib": False,
    "heldout": True,
}
# CTR metrics over labeled rows: name -> higher is better.
LABELED_METRICS = {"auc": True, "gauc": True, "logloss": False, "accuracy": True}


def higher_is_better(metric: str) -> bool:
    """Direction of a metric name such as ``test/cold_item/ndcg@10`` or ``auc``."""
    base = metric.rsplit("/", 1)[-1].split("@", 1)[0]
    if base in RANKING_METRICS:
        return RANKING_METRICS[base].higher_is_better
    if base in CANDIDATE_METRICS or base in VALIDITY_METRICS:
        return True
    if base in SET_METRICS:
        return SET_METRICS[base]
    if base in BEYOND_METRICS:
        return BEYOND_METRICS[base]
    if base in LABELED_METRICS:
        return LABELED_METRICS[base]
    return True


def is_beyond_accuracy(metric: str) -> bool:
    """Whether a metric name such as ``test/cold_item/ild@10`` is a beyond-accuracy metric
    (computed only when the evaluator is given :class:`~benchmark.eval.beyond.ItemFacts`)."""
    base = metric.rsplit("/", 1)[-1].split("@", 1)[0]
    return base in BEYOND_METRICS or base == "gini"
