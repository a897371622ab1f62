"""Significance helpers against hand-computed values."""

import numpy as np
import pytest

from benchmark.eval.significance import holm, paired_pvalue


def test_holm_by_hand():
    # sorted p: 0.01 (x3) -> 0.03, 0.02 (x2) -> 0.04, 0.04 (x1) -> 0.04 (monotone)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_identical_rows_are_not_significant():
    a = np.array([0.1, 0.5, 0.0])
    assert paired_pvalue(a, a.copy()) == 1.0


def test_clear_difference_is_significant():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    assert paired_pvalue(a + 0.1, a) < 1e-10
    with pytest.raises(ValueError):
        paired_pvalue(a, a[:10])
