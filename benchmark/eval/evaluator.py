"""The one evaluator: predictions of any model family -> metrics overall and per slice."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from benchmark.data.views import LabeledRows, RankingRows
from benchmark.eval import metrics as M


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
    """

    rows: RankingRows | LabeledRows
    ranked: np.ndarray | None = None
    scores: np.ndarray | None = None
    probabilities: bool = False
    extra: dict[str, float] = field(default_factory=dict)

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
    pred: Predictions, ks: list[int], n_items: int, prefix: str = "test"
) -> tuple[dict[str, float], dict[str, int], dict[str, np.ndarray]]:
    """Score predictions overall and per slice.

    Returns:
        metrics: ``{prefix}/{metric}`` and ``{prefix}/{slice}/{metric}`` -> mean value.
        sizes: slice name ("all" for overall) -> number of rows it covers.
        per_row: metric -> paired values for significance tests: per row for ranking
            metrics, per user (users with both classes, ascending) for labeled AUC.
    """
    metrics: dict[str, float] = {}
    sizes: dict[str, int] = {}
    if pred.kind == "ranking":
        assert pred.ranked is not None
        rows: RankingRows = pred.rows  # type: ignore[assignment]
        per_row, keep = ranking_per_row(pred.ranked, rows, ks)
        sizes["all"] = len(keep)
        metrics.update({f"{prefix}/{n}": float(v.mean()) for n, v in per_row.items()})
        for k in ks:
            metrics[f"{prefix}/coverage@{k}"] = M.coverage_at_k(pred.ranked, n_items, k)
        for sname, mask in rows.slices.items():
            sl, skeep = ranking_per_row(pred.ranked, rows, ks, mask)
            sizes[sname] = len(skeep)
            for n, v in sl.items():
                metrics[f"{prefix}/{sname}/{n}"] = float(v.mean()) if len(v) else float("nan")
        return metrics, sizes, per_row

    assert pred.scores is not None
    lrows: LabeledRows = pred.rows  # type: ignore[assignment]

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
