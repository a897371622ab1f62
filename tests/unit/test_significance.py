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


def test_leaderboard_marks_follow_the_paired_unit_not_the_pooled_metric():
    from benchmark.results.leaderboard import _significance

    rng = np.random.default_rng(0)
    base_users = rng.uniform(0.6, 0.8, 100)

    def row(model, family, pooled_auc, per_user):
        return {"dataset": "d", "split": "tallrec_movie", "eval": "labeled", "model": model, "family": family,
                "metrics": {"test/auc": (pooled_auc, None)}, "_per_user": per_user,
                "sig_vs": "", "p_holm": None, "sig": ""}  # fmt: skip

    best = row("deepfm", "recbole", 0.67, base_users)
    # Higher pooled AUC (orders users well) but lower AUC within every user: significantly worse.
    pooled_up = row("llm-a", "llm", 0.69, base_users - 0.1)
    # Lower pooled AUC but higher AUC within every user: significantly better.
    pooled_down = row("llm-b", "llm", 0.60, base_users + 0.05)
    same = row("llm-c", "llm", 0.70, base_users.copy())
    _significance([best, pooled_up, pooled_down, same])
    assert best["sig_vs"] == "(best baseline)"
    assert (pooled_up["sig"], pooled_down["sig"], same["sig"]) == ("▼", "▲", "")
    assert pooled_up["sig_vs"] == "deepfm" and pooled_up["p_holm"] < 0.05
