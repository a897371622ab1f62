"""The evaluator: hits with invalid and duplicate outputs, slices, labeled rows."""

import numpy as np
import pytest

from benchmark.data.views import LabeledRows, RankingRows
from benchmark.eval.evaluator import Predictions, evaluate, hit_matrix


def _rows(targets: list[list[int]], slices=None) -> RankingRows:
    ptr = np.r_[0, np.cumsum([len(t) for t in targets])]
    flat = np.array([x for t in targets for x in t], dtype=np.int64)
    z = np.zeros(len(targets) + 1, dtype=np.int64)
    return RankingRows("test", np.arange(len(targets)), ptr, flat, z, np.zeros(0, np.int64), slices or {})


def test_invalid_and_duplicate_outputs_never_hit():
    rows = _rows([[3], [5]])
    ranked = np.array([[-1, 3, 3], [5, -1, 5]])
    h = hit_matrix(ranked, rows)
    assert h.tolist() == [[False, True, False], [True, False, False]]


def test_evaluate_overall_and_slices_by_hand():
    # row 0: targets {1, 2}, ranked [2, 9, 1] -> hits at ranks 1 and 3
    # row 1: target {4}, ranked [7, 8, 9]     -> no hit
    slices = {"cold_item": np.array([False, True, True])}  # targets 2 and 4 are cold
    rows = _rows([[1, 2], [4]], slices)
    ranked = np.array([[2, 9, 1], [7, 8, 9]])
    m, sizes, per_row = evaluate(Predictions(rows, ranked=ranked), [1, 3], n_items=10)
    assert m["test/hr@1"] == pytest.approx(0.5)
    assert m["test/recall@3"] == pytest.approx((2 / 2 + 0) / 2)
    idcg = 1 + 1 / np.log2(3)
    assert m["test/ndcg@3"] == pytest.approx((1 + 1 / np.log2(4)) / idcg / 2)
    assert m["test/coverage@3"] == pytest.approx(5 / 10)
    # cold_item keeps target 2 in row 0 (hit at rank 1) and target 4 in row 1 (miss).
    assert sizes == {"all": 2, "cold_item": 2}
    assert m["test/cold_item/hr@1"] == pytest.approx(0.5)
    assert m["test/cold_item/recall@3"] == pytest.approx(0.5)
    assert per_row["hr@1"].tolist() == [1.0, 0.0]


def test_empty_slice_is_nan_not_zero():
    rows = _rows([[1]], {"cold_user": np.array([False])})
    m, sizes, _ = evaluate(Predictions(rows, ranked=np.array([[1, 2]])), [2], n_items=3)
    assert sizes["cold_user"] == 0
    assert np.isnan(m["test/cold_user/hr@2"])


def test_labeled_metrics():
    rows = LabeledRows("test", np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0]))
    m, _, _ = evaluate(Predictions(rows, scores=np.array([0.9, 0.2, 0.3, 0.4]), probabilities=True), [10], 2)
    assert m["test/auc"] == pytest.approx(0.75)  # (0.9>0.2, 0.9>0.4, 0.3>0.2, 0.3<0.4) = 3/4
    assert m["test/gauc"] == pytest.approx(0.5)  # user 0: 1, user 1: 0
    assert m["test/accuracy"] == pytest.approx(0.75)  # predicted [1, 0, 0, 0] vs [1, 0, 1, 0]
    assert "test/logloss" in m
    m2, _, _ = evaluate(Predictions(rows, scores=np.array([5.0, 1, 2, 3])), [10], 2)
    assert "test/logloss" not in m2  # raw scores are not probabilities
