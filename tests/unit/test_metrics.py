"""Metrics against values computed by hand."""

import math

import numpy as np
import pytest

from benchmark.eval import metrics as M


def test_perfect_ranking_single_target():
    hits = np.array([[True, False, False]])
    n = np.array([1])
    assert M.hr_at_k(hits, n, 1)[0] == 1
    assert M.ndcg_at_k(hits, n, 3)[0] == pytest.approx(1.0)
    assert M.mrr_at_k(hits, n, 3)[0] == 1.0
    assert M.recall_at_k(hits, n, 3)[0] == 1.0
    assert M.precision_at_k(hits, n, 3)[0] == pytest.approx(1 / 3)


def test_no_hit_is_zero_everywhere():
    hits = np.zeros((2, 5), dtype=bool)
    n = np.array([1, 2])
    for name, m in M.RANKING_METRICS.items():
        assert (m.fn(hits, n, 5) == 0).all(), name


def test_worked_ndcg_example():
    # Targets at ranks 2 and 4 (1-based), 3 targets in total, K=5:
    # DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068 = 1.06161
    # IDCG = 1 + 1/log2(3) + 1/log2(4) = 1 + 0.63093 + 0.5 = 2.13093
    hits = np.array([[False, True, False, True, False]])
    n = np.array([3])
    assert M.ndcg_at_k(hits, n, 5)[0] == pytest.approx(1.06161 / 2.13093, abs=1e-5)
    assert M.recall_at_k(hits, n, 5)[0] == pytest.approx(2 / 3)
    assert M.mrr_at_k(hits, n, 5)[0] == pytest.approx(0.5)
    # At K=3 only the rank-2 hit counts; IDCG over min(3, 3) = 3 targets.
    assert M.ndcg_at_k(hits, n, 3)[0] == pytest.approx(0.63093 / 2.13093, abs=1e-5)
    assert M.hr_at_k(hits, n, 1)[0] == 0


def test_single_target_ndcg_is_inverse_log_rank():
    hits = np.zeros((1, 10), dtype=bool)
    hits[0, 3] = True  # rank 4
    assert M.ndcg_at_k(hits, np.array([1]), 10)[0] == pytest.approx(1 / math.log2(5))
    assert M.ndcg_at_k(hits, np.array([1]), 3)[0] == 0


def test_coverage_ignores_invalid():
    ranked = np.array([[0, 1, -1], [1, 2, 3]])
    assert M.coverage_at_k(ranked, 10, 2) == pytest.approx(3 / 10)  # {0, 1, 2}
    assert M.coverage_at_k(ranked, 10, 3) == pytest.approx(4 / 10)  # {0, 1, 2, 3}


def test_auc_by_hand_with_ties():
    # pos scores {0.8, 0.4}, neg {0.4, 0.1}: pairs (0.8>0.4)=1, (0.8>0.1)=1, (0.4=0.4)=0.5, (0.4>0.1)=1 -> 3.5/4
    y = np.array([1, 1, 0, 0])
    s = np.array([0.8, 0.4, 0.4, 0.1])
    assert M.auc(y, s) == pytest.approx(0.875)
    assert math.isnan(M.auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_gauc_weights_users_by_rows():
    # user a: 3 rows, AUC = 2/2 = 1; user b: 2 rows, AUC 0; user c: one class only (skipped).
    y = np.array([1, 0, 0, 1, 0, 1])
    s = np.array([0.9, 0.1, 0.2, 0.1, 0.9, 0.5])
    g = np.array([0, 0, 0, 1, 1, 2])
    assert M.gauc(y, s, g) == pytest.approx((1 * 3 + 0 * 2) / 5)


def test_logloss_by_hand():
    y = np.array([1, 0])
    p = np.array([0.8, 0.3])
    assert M.logloss(y, p) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)


def test_direction():
    assert M.higher_is_better("test/cold_item/ndcg@10")
    assert not M.higher_is_better("test/logloss")
