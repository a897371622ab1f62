"""The dynamic prompt pool: bandits and user groups against hand-computed values, the policy
comparison by hand, and the pool model's feedback (valid rows only) and per-row choices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.errors import ConfigError
from benchmark.eval.metrics import auc
from benchmark.eval.pool import compare_policies, comparison_from_lines
from benchmark.models.components.bandit import LinUCB, ThompsonSampling, make_bandit, replay, user_groups

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- bandits


def test_thompson_posterior_is_a_fractional_beta_update_and_choices_are_keyed():
    b = ThompsonSampling(n_groups=2, n_arms=2, seed=3)
    b.update(0, 1, 0.75)
    b.update(0, 1, 1.0)
    b.update(1, 0, 0.0)
    mean = np.array(b.facts()["posterior_mean"])
    # group 0 arm 1: Beta(1 + 1.75, 1 + 0.25) -> 2.75 / 4; group 1 arm 0: Beta(1, 2) -> 1/3
    assert mean[0, 1] == pytest.approx(2.75 / 4) and mean[1, 0] == pytest.approx(1 / 3) and mean[0, 0] == 0.5
    assert b.choose(0, [1, 5, 7]) == b.choose(0, [1, 5, 7])  # a function of the request key
    for _ in range(200):  # a clearly better arm ends up chosen almost always
        b.update(0, 1, 1.0)
        b.update(0, 0, 0.0)
    assert sum(b.choose(0, [1, k, 0]) == 1 for k in range(100)) >= 99


def test_linucb_estimate_is_the_ridge_solution_by_hand():
    b = LinUCB(n_groups=2, n_arms=2, alpha=0.0)
    b.update(0, 0, 1.0)  # x = [1, 1, 0]: A = I + x x^T = [[2,1,0],[1,2,0],[0,0,1]], b = x
    # theta = A^-1 b = [1/3, 1/3, 0] -> estimate at group 0: 2/3, at group 1: 1/3
    est = np.array(b.facts()["estimate"])
    assert est[0, 0] == pytest.approx(2 / 3) and est[1, 0] == pytest.approx(1 / 3) and est[0, 1] == 0.0
    assert b.choose(0) == 0
    b.update(1, 1, 1.0)
    b.update(1, 1, 1.0)
    assert b.choose(1) == 1
    with pytest.raises(ConfigError, match="model.module.alpha"):
        LinUCB(2, 2, alpha=-1)
    with pytest.raises(ConfigError, match="model.module.bandit"):
        make_bandit("ucb1", 1, 2, 0)


def test_replay_sees_only_the_chosen_arm_and_learns_the_better_one():
    rng = np.random.default_rng(0)
    n = 300
    rewards = np.stack([np.full(n, 0.2), np.full(n, 0.9)], axis=1)
    keys = np.stack([np.zeros(n, int), np.arange(n), rng.integers(50, size=n)], axis=1)
    b = ThompsonSampling(1, 2, seed=0)
    facts = replay(b, np.zeros(n, int), rewards, keys, seed=0)
    counts = np.array(facts["arm_counts_per_group"])
    assert counts.sum() == n and counts[0, 1] > 0.8 * n
    # what was collected is exactly the chosen arms' rewards
    assert facts["mean_reward"] == pytest.approx((0.2 * counts[0, 0] + 0.9 * counts[0, 1]) / n, abs=1e-6)
    assert facts["arm_mean_reward"] == [0.2, 0.9]


# ----------------------------------------------------------------------------- groups


def test_activity_groups_cut_the_train_counts_at_their_quantiles():
    # users 0..5 with 1, 2, 3, 4, 5, 6 train rows; user 6 has none
    users = np.repeat(np.arange(6), np.arange(1, 7))
    groups, facts = user_groups(users, np.zeros(len(users), int), 7, "activity", 3, seed=0)
    edges = np.quantile(np.arange(1, 7), [1 / 3, 2 / 3])  # 2.667, 4.333
    assert facts["edges"] == pytest.approx(edges.tolist())
    assert groups.tolist() == [0, 0, 1, 1, 2, 2, 0]
    assert facts["sizes"] == [3, 2, 2]
    with pytest.raises(ConfigError, match="model.module.groups"):
        user_groups(users, users, 7, "age", 3, 0)


def test_genre_groups_come_from_train_items_only():
    genres = [["Action"], ["Action"], ["Drama"], ["Drama"], ["Horror"]]
    users = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    items = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    groups, facts = user_groups(users, items, 5, "genre", 2, seed=0, item_genres=genres)
    assert groups[0] == groups[2] != groups[1] == groups[3] and groups[4] == 0  # user 4: no train rows
    assert facts["genres"] == ["Action", "Drama", "Horror"]
    with pytest.raises(ConfigError, match="no item genres"):
        user_groups(users, items, 5, "genre", 2, 0, item_genres=[[]] * 5)


# ----------------------------------------------------------------------------- comparison


def test_policy_comparison_by_hand():
    labels = np.array([1, 0, 1, 0])
    groups = np.array([0, 0, 1, 1])
    # arm a ranks group 0 right and group 1 wrong; arm b the opposite
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    chosen = np.array([0, 0, 1, 1])  # the bandit picked the right arm per group
    out = compare_policies(labels, groups, chosen, scores, ["a", "b"], "b", seed=0)
    assert out["bandit"] == pytest.approx(auc(labels, np.array([0.9, 0.2, 0.7, 0.4])))  # = 1.0
    assert out["single"] == {"a": pytest.approx(auc(labels, scores[:, 0])), "b": pytest.approx(auc(labels, scores[:, 1]))}
    assert out["best_on_valid"] == {"template": "b", "auc": out["single"]["b"]}
    assert out["oracle_per_group"]["templates"] == {"0": "a", "1": "b"} and out["oracle_per_group"]["auc"] == 1.0
    lines = [{"label": int(y), "prompt": {"group": int(g), "template": "ab"[c], "scores": s.tolist()}} for y, g, c, s in zip(labels, groups, chosen, scores, strict=True)]
    assert comparison_from_lines(lines, ["a", "b"], "b", 0) == out
    lines[0]["prompt"]["template"] = "z"
    with pytest.raises(ValueError, match="unknown template"):
        comparison_from_lines(lines, ["a", "b"], "b", 0)


# ----------------------------------------------------------------------------- the model


def _pool_model(split, data, lm, **kw):
    from omegaconf import OmegaConf

    from benchmark.models.prompt_pool import TallRecPool
    from tests.unit.test_tallrec import REPO

    pool = {k: OmegaConf.to_container(OmegaConf.load(REPO / "configs/prompt" / f"{n}.yaml")) for k, n in (("tallrec", "tallrec"), ("terse", "tallrec_terse"))}
    kw.setdefault("feedback_rows", 8)
    return TallRecPool(split, data, pool=pool, backbone=str(lm), seed=0, score_batch_size=8, **kw)


def test_paired_policy_values_per_user_by_hand():
    from benchmark.eval.pool import paired_policy_values, rank_comparison_from_lines

    def rank_line(user, target, s0, s1, chosen):
        return {"user": user, "targets": [target], "prompt": {"group": 0, "template": chosen, "candidates": ["a", "b", "c"], "scores": [s0, s1]}}

    lines = [  # t0 orders a, b, c; t1 orders by its own scores
        rank_line("u1", "b", [3, 2, 1], [1, 3, 2], "t1"),  # t0: b 2nd -> 1/log2(3); t1: b 1st -> 1
        rank_line("u2", "c", [3, 2, 1], [1, 2, 3], "t0"),  # t0: c 3rd -> 1/2;       t1: 1
        rank_line("u3", "a", [3, 2, 1], [1, 2, 3], "t1"),  # t0: 1;                  t1: a 3rd -> 1/2
    ]
    users, v = paired_policy_values(lines, ["t0", "t1"], "t0", 5, rank=True)
    g = 1 / np.log2(3)
    assert users == ["u1", "u2", "u3"]
    np.testing.assert_allclose(v["bandit"], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(v["fixed"], [g, 0.5, 1.0])
    gains = np.array([[g, 1.0], [0.5, 1.0], [1.0, 0.5]])
    assert all(x in gains[r] for r, x in enumerate(v["random"]))  # each user scored by one of the templates
    assert v["random"].mean() == pytest.approx(rank_comparison_from_lines(lines, ["t0", "t1"], "t0", 5)["random"], abs=1e-6)

    def lab_line(user, label, s0, s1, chosen):
        return {"user": user, "label": label, "prompt": {"group": 0, "template": chosen, "scores": [s0, s1]}}

    lab = [
        *(lab_line("u1", y, a, b, "t0") for y, a, b in [(1, 0.9, 0.1), (0, 0.1, 0.9), (1, 0.8, 0.2), (0, 0.2, 0.8)]),
        *(lab_line("u2", y, a, b, "t1") for y, a, b in [(1, 0.2, 0.9), (0, 0.8, 0.1), (0, 0.9, 0.2), (1, 0.1, 0.8)]),
        *(lab_line("u3", 1, a, b, "t0") for a, b in [(0.5, 0.5), (0.6, 0.4)]),  # one class: no per-user AUC
    ]
    users, v = paired_policy_values(lab, ["t0", "t1"], "t0", 5, rank=False)
    assert users == ["u1", "u2"]
    np.testing.assert_allclose(v["bandit"], [1.0, 1.0])  # u1 by t0 (AUC 1), u2 by t1 (AUC 1)
    np.testing.assert_allclose(v["fixed"], [1.0, 0.0])  # t0 ranks u2's rows the wrong way round
    assert paired_policy_values([{"label": 1, "prompt": {}}], ["t0"], "t0", 1, rank=False) is None  # no scores


def test_pool_learns_on_valid_rows_only_and_scores_each_row_with_its_choice(yesno_split, yesno_data, yesno_lm):
    import dataclasses

    model = _pool_model(yesno_split, yesno_data, yesno_lm)
    users = torch.as_tensor(yesno_split.test["user"].to_numpy()[:6])
    items = torch.as_tensor(yesno_split.test["item"].to_numpy()[:6]).unsqueeze(1)
    p = model.score_pairs(users, items).squeeze(1)
    feedback = model._replayed
    assert feedback["part"] == "valid" and feedback["rows"] == 8
    for u, i, s in zip(users.tolist(), items.squeeze(1).tolist(), p.tolist(), strict=True):
        facts = model._choices[(u, i)]
        assert facts["group"] == int(model.user_group[u])
        assert s == pytest.approx(facts["scores"][model.arm_ids.index(facts["template"])], abs=1e-6)
        # the chosen template's own prompt gives that score
        arm = model.arm_ids.index(facts["template"])
        assert float(model._scores(arm, np.array([u]), np.array([i]))[0]) == pytest.approx(s, abs=1e-5)
    # other test labels and ratings leave the bandit's learning unchanged
    test = yesno_split.test.copy()
    test["rating"] = 6 - test["rating"]
    other = _pool_model(dataclasses.replace(yesno_split, parts={**yesno_split.parts, "test": test}), yesno_data, yesno_lm)
    other._learn()
    assert other._replayed["arm_counts_per_group"] == feedback["arm_counts_per_group"]
    facts = model.prediction_facts()["prompt_pool"]
    assert [t["id"] for t in facts["templates"]] == ["tallrec", "terse"] and facts["learns_on_test"] is False
    assert sum(facts["test_choices"].values()) == 6


def test_pool_refuses_bad_settings(yesno_split, yesno_data, yesno_lm):
    from benchmark.models.prompt_pool import TallRecPool

    with pytest.raises(ConfigError, match="at least two templates"):
        TallRecPool(yesno_split, yesno_data, pool={"a": {}}, backbone=str(yesno_lm))
    with pytest.raises(ConfigError, match="feedback_rows"):
        _pool_model(yesno_split, yesno_data, yesno_lm, feedback_rows=0)
    with pytest.raises(ConfigError, match="lora"):
        _pool_model(yesno_split, yesno_data, yesno_lm, lora={"r": 2})


def test_a_second_pool_run_reads_every_template_score_from_the_cache(yesno_split, yesno_data, yesno_lm, tmp_path, monkeypatch):
    """Another bandit seed over the same pool scores nothing again: the feedback and test scores of
    every template come from the score cache, and the per-template scores equal the first run's."""
    monkeypatch.setenv("LLM4REC_CACHE", str(tmp_path))
    users = torch.as_tensor(yesno_split.test["user"].to_numpy(copy=True)[:6])
    items = torch.as_tensor(yesno_split.test["item"].to_numpy(copy=True)[:6]).unsqueeze(1)
    first = _pool_model(yesno_split, yesno_data, yesno_lm, score_cache=True)
    first.score_pairs(users, items)
    made = first.prediction_facts()["llm"]["score_cache"]
    assert made["read"] == 0 and made["computed"] == 2 * (8 + 6)  # two templates x (8 feedback + 6 test rows)
    from benchmark.models.prompt_pool import TallRecPool

    monkeypatch.setattr(TallRecPool, "_p_yes_tokens", lambda *a, **k: pytest.fail("the LM ran on cached prompts"))
    again = _pool_model(yesno_split, yesno_data, yesno_lm, score_cache=True, bandit="linucb")
    again.score_pairs(users, items)
    read = again.prediction_facts()["llm"]["score_cache"]
    assert read["read"] == 2 * (8 + 6) and read["computed"] == 0
    for key, facts in first._choices.items():
        assert again._choices[key]["scores"] == facts["scores"]
