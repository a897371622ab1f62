"""Recompute every metric of a run from its predictions file alone (raw ids), and with the
train part's item facts also its beyond-accuracy metrics."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmark.data.views import LabeledRows, RankingRows
from benchmark.eval.beyond import ItemFacts
from benchmark.eval.evaluator import Predictions, evaluate


def predictions_from_lines(
    lines: list[dict[str, Any]],
    kind: str,
    slice_names: list[str],
    probabilities: bool = False,
    facts: ItemFacts | None = None,
) -> Predictions:
    """Rebuild :class:`Predictions` from predictions-file lines (ids re-indexed locally).

    ``slice_names`` lists every slice of the run, including empty ones. With ``facts`` (ranking
    only), users and items take the split's indices of ``facts`` instead, so the beyond-accuracy
    metrics can read them; an id outside the split is a ValueError naming it.
    """
    if kind == "labeled":
        users = {u: i for i, u in enumerate(sorted({ln["user"] for ln in lines}))}
        items = {x: i for i, x in enumerate(sorted({ln["item"] for ln in lines}))}
        rows = LabeledRows(
            "test",
            np.array([users[ln["user"]] for ln in lines], dtype=np.int64),
            np.array([items[ln["item"]] for ln in lines], dtype=np.int64),
            np.array([ln["label"] for ln in lines], dtype=np.int64),
            {n: np.array([n in ln["slices"] for ln in lines], dtype=bool) for n in slice_names},
        )
        return Predictions(
            rows, scores=np.array([ln["score"] for ln in lines], dtype=float), probabilities=probabilities
        )
    vocab: dict[str, int] = {}
    if facts is not None:
        vocab = {str(x): i for i, x in enumerate(facts.item_ids)}

    def idx(x: str | None) -> int:
        if x is None:
            return -1
        if facts is not None and x not in vocab:
            raise ValueError(f"predictions: item {str(x)[:40]!r} is not in the split's catalogue")
        return vocab.setdefault(x, len(vocab))

    targets = [[idx(t) for t in ln["targets"]] for ln in lines]
    ranked = np.array([[idx(x) for x in ln["ranked"]] for ln in lines], dtype=np.int64)
    ptr = np.r_[0, np.cumsum([len(t) for t in targets])].astype(np.int64)
    flat = np.array([t for ts in targets for t in ts], dtype=np.int64)
    slices = {
        n: np.array([n in ss for ln in lines for ss in ln["target_slices"]], dtype=bool) for n in slice_names
    }
    empty = np.zeros(len(lines) + 1, dtype=np.int64)
    users = np.arange(len(lines))
    if facts is not None:
        user_index = {str(u): i for i, u in enumerate(facts.user_ids)}
        for r, ln in enumerate(lines):
            if str(ln["user"]) not in user_index:
                raise ValueError(f"predictions: user {str(ln['user'])[:40]!r} is not in the split")
            users[r] = user_index[str(ln["user"])]
    rows = RankingRows("test", users, ptr, flat, empty, np.zeros(0, np.int64), slices)
    return Predictions(rows, ranked=ranked)


def recompute_metrics(
    record: dict[str, Any], lines: list[dict[str, Any]], facts: ItemFacts | None = None
) -> dict[str, float]:
    """The metrics of ``record`` recomputed from its predictions lines; with ``facts`` (the train
    part's item facts of the record's split) a ranking run's beyond-accuracy metrics too."""
    ev = record["eval"]
    kind = "labeled" if ev["protocol"] == "labeled" else "ranking"
    names = [n for n in ev["slice_rows"] if n != "all"]
    facts = facts if kind == "ranking" else None
    pred = predictions_from_lines(lines, kind, names, bool(ev.get("probabilities", False)), facts)
    metrics, _, _ = evaluate(pred, list(ev["ks"]), int(ev["n_items"]), facts=facts, protocol=str(ev["protocol"]))
    return metrics


def per_row_values(record: dict[str, Any], lines: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Paired per-row (ranking) or per-user (labeled AUC) values of a run, for significance tests."""
    ev = record["eval"]
    kind = "labeled" if ev["protocol"] == "labeled" else "ranking"
    pred = predictions_from_lines(lines, kind, [], bool(ev.get("probabilities", False)))
    _, _, per_row = evaluate(pred, list(ev["ks"]), int(ev["n_items"]), protocol=str(ev["protocol"]))
    return per_row
