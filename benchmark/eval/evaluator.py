"""The one evaluator: predictions of any model family -> metrics overall and per slice."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from benchmark.data.views import LabeledRows, RankingRows
from benchmark.eval import beyond as B
from benchmark.eval import metrics as M
from benchmark.eval.beyond import ItemFacts


@dataclass
class Predictions:
    """What a model returns for the evaluated rows.

    Attributes:
        rows: the evaluated rows (ranking or labeled).
        ranked: ranking: [R, L] item indices best first; -1 = an output that maps to
            no catalogue item (counted as a miss, never dropped).
        scores: labeled: [R] scores (probabilities when ``probabilities``).
        probabilities: whether ``scores`` are calibrated probabilities (enables LogLoss).
        extra: model-specific rates recorded with the metrics (e.g. validity).
        row_facts: per row, what a generative model's candidate answer was (raw answer, candidate
            order, named candidate, valid), or how a labeled row was scored (``model=tallrec_pool``:
            group, template, every template's score); written into its predictions line; None for others.
        view: the candidates view of a full run (``eval.also_candidates``): its rows (with the
            view's negatives) and each row's candidates best first, scored by
            :func:`evaluate_candidates`; None without one.
    """

    rows: RankingRows | LabeledRows
    ranked: np.ndarray | None = None
    scores: np.ndarray | None = None
    probabilities: bool = False
    extra: dict[str, float] = field(default_factory=dict)
    row_facts: list[dict] | None = None
    view: Predictions | None = None

    @property
    def kind(self) -> str:
        return "ranking" if isinstance(self.rows, RankingRows) else "labeled"


def hit_matrix(ranked: np.ndarray, rows: RankingRows, target_mask: np.ndarray | None = None) -> np.ndarray:
    """[R, L] bool: entry j of row r is a (masked-in) target, first occurrence only."""
    n_rows, length = ranked.shape
    span = int(max(ranked.max(initial=0), rows.targets.max(initial=0))) + 2
    row_idx = np.repeat(np.arange(n_rows), length).reshape(n_rows, length)
    keys = row_idx.astype(np.int64) * span + (ranked + 1)  # +1 keeps -1 distinct
    first = np.zeros(keys.size, dtype=bool)
    first[np.unique(keys.ravel(), return_index=True)[1]] = True
    first = first.reshape(n_rows, length)
    tmask = np.ones(len(rows.targets), dtype=bool) if target_mask is None else target_mask
    tkeys = rows.row_of_target()[tmask].astype(np.int64) * span + (rows.targets[tmask] + 1)
    return np.isin(keys, tkeys) & first & (ranked >= 0)


def ranking_per_row(
    ranked: np.ndarray, rows: RankingRows, ks: list[int], target_mask: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-row metric values and the rows they cover (rows with >= 1 masked-in target)."""
    tmask = np.ones(len(rows.targets), dtype=bool) if target_mask is None else target_mask
    n_t = np.bincount(rows.row_of_target()[tmask], minlength=len(rows))
    keep = np.flatnonzero(n_t > 0)
    hits = hit_matrix(ranked, rows, tmask)[keep]
    per_row = {f"{name}@{k}": m.fn(hits, n_t[keep], k) for name, m in M.RANKING_METRICS.items() for k in ks}
    return per_row, keep


def evaluate(
    pred: Predictions,
    ks: list[int],
    n_items: int,
    prefix: str = "test",
    facts: ItemFacts | None = None,
    protocol: str = "full",
) -> tuple[dict[str, float], dict[str, int], dict[str, np.ndarray]]:
    """Score predictions overall and per slice.

    Args:
        pred: the model's predictions over the evaluated rows.
        ks: cut-offs of the ranking metrics.
        n_items: catalogue size (coverage, Gini).
        prefix: first part of every metric name (``test``, ``valid``).
        facts: train-part item facts in the index space of ``pred``; with them, ranking runs also
            get the beyond-accuracy metrics of :mod:`benchmark.eval.beyond` (None: none of them,
            so callers without facts and records made before them are unchanged).
        protocol: ``candidates`` scores ranked candidate lists with the candidate metrics only
            (:func:`evaluate_candidates`); any other value as before.

    Returns:
        metrics: ``{prefix}/{metric}`` and ``{prefix}/{slice}/{metric}`` -> mean value.
        sizes: slice name ("all" for overall) -> number of rows it covers.
        per_row: metric -> paired values for significance tests: per row for ranking
            metrics, per user (users with both classes, ascending) for labeled AUC.
    """
    if pred.kind == "ranking" and protocol == "candidates":
        return evaluate_candidates(pred, ks, prefix)
    if pred.kind == "ranking":
        return _evaluate_ranking(pred, ks, n_items, prefix, facts)
    return _evaluate_labeled(pred, prefix)


def _evaluate_ranking(
    pred: Predictions, ks: list[int], n_items: int, prefix: str, facts: ItemFacts | None
) -> tuple[dict[str, float], dict[str, int], dict[str, np.ndarray]]:
    """:func:`evaluate` for ranked lists: accuracy per row, set metrics, beyond-accuracy with ``facts``."""
    assert pred.ranked is not None
    rows: RankingRows = pred.rows  # type: ignore[assignment]
    metrics: dict[str, float] = {}
    sizes: dict[str, int] = {}
    per_row, keep = ranking_per_row(pred.ranked, rows, ks)
    # Beyond-accuracy values of every row; each slice averages those of the rows it covers.
    beyond = B.beyond_per_row(pred.ranked, rows.users, facts, ks) if facts is not None else {}
    sizes["all"] = len(keep)
    metrics.update({f"{prefix}/{n}": float(v.mean()) for n, v in per_row.items()})
    metrics.update({f"{prefix}/{n}": B.finite_mean(v[keep]) for n, v in beyond.items()})
    for k in ks:
        metrics[f"{prefix}/coverage@{k}"] = M.coverage_at_k(pred.ranked, n_items, k)
        if facts is not None:
            metrics[f"{prefix}/gini@{k}"] = B.gini_at_k(pred.ranked, n_items, k)
    for sname, mask in rows.slices.items():
        sl, skeep = ranking_per_row(pred.ranked, rows, ks, mask)
        sizes[sname] = len(skeep)
        for n, v in sl.items():
            metrics[f"{prefix}/{sname}/{n}"] = float(v.mean()) if len(v) else float("nan")
        for n, v in beyond.items():
            metrics[f"{prefix}/{sname}/{n}"] = B.finite_mean(v[skeep])
    return metrics, sizes, per_row


def candidates_per_row(
    ranked: np.ndarray, rows: RankingRows, ks: list[int], target_mask: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-row candidate metrics (``hit@k`` for every K, ``ndcg@k`` for every K > 1, where it
    differs from hit@1) and the rows they cover, as :func:`ranking_per_row`."""
    tmask = np.ones(len(rows.targets), dtype=bool) if target_mask is None else target_mask
    n_t = np.bincount(rows.row_of_target()[tmask], minlength=len(rows))
    keep = np.flatnonzero(n_t > 0)
    hits = hit_matrix(ranked, rows, tmask)[keep]
    per_row = {}
    for name, fn in M.CANDIDATE_METRICS.items():
        for k in ks:
            if name != "ndcg" or k > 1:
                per_row[f"{name}@{k}"] = fn(hits, n_t[keep], k)
    return per_row, keep


def evaluate_candidates(
    pred: Predictions, ks: list[int], prefix: str = "test"
) -> tuple[dict[str, float], dict[str, int], dict[str, np.ndarray]]:
    """:func:`evaluate` for candidate lists (``eval=candidates``, or a full run's candidates view).

    ``pred.ranked`` [R, L] holds each row's candidates best first (a model that names one candidate
    puts it first and -1 after it). Besides the per-row metrics overall and per slice,
    ``{prefix}/valid_ratio`` is the share of rows whose first entry is a candidate (1 for scoring
    models; for a generative model the share of answers that named a candidate).
    """
    assert pred.ranked is not None
    rows: RankingRows = pred.rows  # type: ignore[assignment]
    per_row, keep = candidates_per_row(pred.ranked, rows, ks)
    metrics = {f"{prefix}/{n}": float(v.mean()) for n, v in per_row.items()}
    metrics[f"{prefix}/valid_ratio"] = float((pred.ranked[:, 0] >= 0).mean()) if len(pred.ranked) else float("nan")
    sizes = {"all": len(keep)}
    for sname, mask in rows.slices.items():
        sl, skeep = candidates_per_row(pred.ranked, rows, ks, mask)
        sizes[sname] = len(skeep)
        for n, v in sl.items():
            metrics[f"{prefix}/{sname}/{n}"] = float(v.mean()) if len(v) else float("nan")
    return metrics, sizes, per_row


def _evaluate_labeled(
    pred: Predictions, prefix: str
) -> tuple[dict[str, float], dict[str, int], dict[str, np.ndarray]]:
    """:func:`evaluate` for labeled rows: CTR metrics overall and per slice, per-user AUC."""
    assert pred.scores is not None
    lrows: LabeledRows = pred.rows  # type: ignore[assignment]
    metrics: dict[str, float] = {}
    sizes: dict[str, int] = {}

    def ctr(sel: np.ndarray) -> dict[str, float]:
        y, s, g = lrows.labels[sel], pred.scores[sel], lrows.users[sel]
        out = {"auc": M.auc(y, s), "gauc": M.gauc(y, s, g)}
        if pred.probabilities:
            out["logloss"] = M.logloss(y, s)
            out["accuracy"] = float(((s >= 0.5) == y.astype(bool)).mean())
        return out

    everything = np.ones(len(lrows), dtype=bool)
    sizes["all"] = len(lrows)
    metrics.update({f"{prefix}/{n}": v for n, v in ctr(everything).items()})
    for sname, mask in lrows.slices.items():
        sizes[sname] = int(mask.sum())
        vals = ctr(mask) if mask.any() else {}
        metrics.update({f"{prefix}/{sname}/{n}": v for n, v in vals.items()})
    # Paired unit for significance tests: the user (AUC within each user with both classes).
    _, user_auc, _ = M.per_group_auc(lrows.labels, pred.scores, lrows.users)
    return metrics, sizes, {"auc": user_auc}
