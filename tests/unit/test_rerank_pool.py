"""The listwise reranker's prompt pool: feedback from train tasks only, per-user choices, the
policy comparison in NDCG@10 by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.errors import ConfigError
from benchmark.eval.pool import compare_rank_policies, rank_comparison_from_lines, rank_gain
from tests.unit.test_rerank_prompts import loo_split, rerank_lm  # noqa: F401 - fixtures


def test_rank_gain_is_ndcg_at_10_of_the_targets_by_hand():
    assert rank_gain(["a", "b", "c"], ["a"]) == 1.0
    assert rank_gain(["b", "c", "a"], ["a"]) == pytest.approx(1 / math.log2(4))  # rank 3
    assert rank_gain([str(i) for i in range(20)], ["10"]) == 0.0  # rank 11: outside the top 10
    assert rank_gain(["x", "y"], ["z"]) == 0.0  # the target is not a candidate
    # two targets at ranks 1 and 3: (1 + 1/2) / (1 + 1/log2(3))
    assert rank_gain(["a", "q", "b"], ["a", "b"]) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))


def test_rank_policy_comparison_by_hand():
    # arm 0 is right for group 0, arm 1 for group 1
    gains = np.array([[1.0, 0.0], [0.5, 0.0], [0.0, 1.0], [0.0, 0.5]])
    groups = np.array([0, 0, 1, 1])
    chosen = np.array([0, 0, 1, 0])  # wrong on the last user
    out = compare_rank_policies(gains, groups, chosen, ["a", "b"], "b", seed=0)
    assert out["bandit"] == pytest.approx((1.0 + 0.5 + 1.0 + 0.0) / 4)
    assert out["single"] == {"a": 0.375, "b": 0.375}
    assert out["best_on_feedback"] == {"template": "b", "ndcg@10": 0.375}
    assert out["oracle_per_group"]["templates"] == {"0": "a", "1": "b"} and out["oracle_per_group"]["ndcg@10"] == 0.75
    random_arm = np.random.default_rng([0, 7_211]).integers(2, size=4)
    assert out["random"] == pytest.approx(gains[np.arange(4), random_arm].mean())
    assert out["rows"] == 4 and out["metric"] == "ndcg@10"


def test_rank_comparison_from_lines_orders_each_templates_candidates_by_its_scores():
    lines = [
        # template a puts the target "t1" first (gain 1), template b third (gain 1/log2(4) = 0.5)
        {"targets": ["t1"], "prompt": {"group": 0, "template": "a", "candidates": ["t1", "x", "y"], "scores": [[-1, -2, -3], [-3, -2, -1]]}},
        # ties keep the listed order: template a ranks "t2" second (1/log2(3)), template b first
        {"targets": ["t2"], "prompt": {"group": 1, "template": "b", "candidates": ["x", "t2"], "scores": [[0, 0], [-5, -1]]}},
    ]
    out = rank_comparison_from_lines(lines, ["a", "b"], "a", 3)
    assert out["single"] == {"a": pytest.approx((1 + 1 / math.log2(3)) / 2, abs=1e-6), "b": pytest.approx((0.5 + 1) / 2)}
    assert out["bandit"] == pytest.approx(1.0)
    bad = [dict(lines[0], prompt={**lines[0]["prompt"], "scores": [[0, 0, 0]]}), lines[1]]
    with pytest.raises(ValueError, match="one finite score per template and candidate"):
        rank_comparison_from_lines(bad, ["a", "b"], "a", 3)
    with pytest.raises(ValueError, match="unknown template"):
        rank_comparison_from_lines([dict(lines[0], prompt={**lines[0]["prompt"], "template": "z"})], ["a", "b"], "a", 3)
    assert rank_comparison_from_lines([{"targets": ["t"], "prompt": {"group": 0, "template": "a"}}], ["a", "b"], "a", 3) is None


def _pool(split, data, lm, tmp_path, **kw):
    from benchmark.models.rerank_pool import LLMRerankPool
    from tests.unit.test_tallrec import fake_first_stage, load_prompt

    first = fake_first_stage(tmp_path / "first", split)
    pool = {"listwise": load_prompt("rerank_listwise"), "terse": load_prompt("rerank_terse")}
    kw.setdefault("feedback_users", 6)
    return LLMRerankPool(split, data, pool=pool, first_stage=str(first), backbone=str(lm), top_n=5, seed=0, n_groups=2, **kw)


def test_the_pool_learns_on_train_tasks_only_and_reranks_each_user_with_its_choice(loo_split, yesno_data, rerank_lm, tmp_path):  # noqa: F811
    import dataclasses

    from benchmark.models.llm_rerank import LLMRerank
    from tests.unit.test_tallrec import load_prompt

    model = _pool(loo_split, yesno_data, rerank_lm, tmp_path)
    users = torch.tensor([0, 1, 2, 3])
    scores = model.score(users)
    feedback = model._replayed
    assert feedback["part"] == "train" and feedback["rows"] == 6 and feedback["best_on_feedback"] in ("listwise", "terse")
    singles = {
        tid: LLMRerank(
            loo_split, yesno_data, first_stage=str(tmp_path / "first"), backbone=str(rerank_lm), top_n=5, seed=0,
            prompt=load_prompt(name), prefix_reuse=False,
        ).score(users)
        for tid, name in (("listwise", "rerank_listwise"), ("terse", "rerank_terse"))
    }
    # each template keeps its own run-wide prefix: the listwise instruction ran once for its prompts
    # (train tasks and test users); the terse one is shorter than a prefix worth keeping
    listwise, terse = (arm["prefix"] for arm in model._arms)
    assert listwise.computed == 1 and len(listwise.tokens) >= listwise.min_tokens and listwise.reused_tokens > 0
    assert terse.computed == 0 and model.prompt_prefix.computed == 0
    for r, u in enumerate(users.tolist()):
        fact = model._choices[u]
        assert fact["group"] == int(model.user_group[u])
        # the user's scores are its chosen template's, as that template alone gives them
        assert torch.allclose(scores[r], singles[fact["template"]][r], atol=1e-5, equal_nan=True)
        cands = model.candidates[u][:5]
        for a, tid in enumerate(model.arm_ids):
            assert np.allclose(fact["scores"][a], singles[tid][r, torch.as_tensor(cands)].numpy(), atol=1e-5)
        assert fact["candidates"] == [str(loo_split.item_ids[i]) for i in cands]
    # other valid and test parts leave the feedback and the learned bandit unchanged
    valid, test = loo_split.valid.copy(), loo_split.test.copy()
    valid["item"], test["item"] = test["item"].to_numpy(), valid["item"].to_numpy()
    other = _pool(dataclasses.replace(loo_split, parts={**loo_split.parts, "valid": valid, "test": test}), yesno_data, rerank_lm, tmp_path)
    assert other._learn() | {"seconds": 0} == feedback | {"seconds": 0}
    facts = model.prediction_facts()["prompt_pool"]
    assert [t["id"] for t in facts["templates"]] == ["listwise", "terse"] and facts["learns_on_test"] is False
    assert sum(facts["test_choices"].values()) == 4 and facts["metric"] == "ndcg@10"
    assert all(t["prompt_tokens"]["prompts"] == 4 for t in facts["templates"])  # compare: every template, every user
    llm = model.prediction_facts()["llm"]
    assert llm["prompt_tokens"]["prompts"] == 8 and llm["prompt_tokens"]["max"] == max(t["prompt_tokens"]["max"] for t in facts["templates"])


def test_without_compare_only_the_chosen_template_runs(loo_split, yesno_data, rerank_lm, tmp_path):  # noqa: F811
    model = _pool(loo_split, yesno_data, rerank_lm, tmp_path, compare=False)
    model.score(torch.tensor([0, 1, 2]))
    facts = model.prediction_facts()["prompt_pool"]
    assert sum(t["prompt_tokens"]["prompts"] for t in facts["templates"]) == 3
    assert all("scores" not in model._choices[u] for u in (0, 1, 2))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"pool": {"a": {}}}, "at least two templates"),
        ({"feedback_users": 0}, "feedback_users"),
        ({"groups": "age"}, "model.module.groups"),
        ({"bandit": "greedy"}, "bandit"),
    ],
)
def test_bad_pool_settings_are_one_line(kw, message, loo_split, yesno_data, rerank_lm, tmp_path):  # noqa: F811
    from benchmark.models.rerank_pool import LLMRerankPool
    from tests.unit.test_tallrec import fake_first_stage

    if "pool" in kw:
        with pytest.raises(ConfigError, match=message):
            LLMRerankPool(loo_split, yesno_data, first_stage=str(fake_first_stage(tmp_path / "f", loo_split)), backbone=str(rerank_lm), **kw)
        return
    with pytest.raises(ConfigError, match=message):
        _pool(loo_split, yesno_data, rerank_lm, tmp_path, **kw)


def test_a_tallrec_template_is_refused_in_the_listwise_pool(loo_split, yesno_data, rerank_lm, tmp_path):  # noqa: F811
    from benchmark.models.rerank_pool import LLMRerankPool
    from tests.unit.test_tallrec import fake_first_stage, load_prompt

    pool = {"listwise": load_prompt("rerank_listwise"), "yesno": load_prompt("tallrec")}
    with pytest.raises(ConfigError, match=r"model.module.pool.yesno: a listwise prompt needs the fields"):
        LLMRerankPool(loo_split, yesno_data, pool=pool, first_stage=str(fake_first_stage(tmp_path / "f", loo_split)), backbone=str(rerank_lm))


def test_a_second_pool_run_reads_every_answer_log_probability_from_the_cache(loo_split, yesno_data, rerank_lm, tmp_path, monkeypatch):  # noqa: F811
    """LinUCB after Thompson sampling with the same seed: the same feedback tasks and test prompts,
    so nothing runs the LM again, and every template's scores equal the first run's."""
    import benchmark.models.llm_rerank as llm_rerank

    monkeypatch.setenv("LLM4REC_CACHE", str(tmp_path / "cache"))
    users = torch.tensor([0, 1, 2])
    first = _pool(loo_split, yesno_data, rerank_lm, tmp_path, score_cache=True)
    first.score(users)
    made = first.prediction_facts()["llm"]["score_cache"]
    assert made["read"] == 0 and made["computed"] == 2 * (6 + 3) * 5  # 2 templates x (6 tasks + 3 users) x 5 candidates
    monkeypatch.setattr(llm_rerank, "shared_prefix_logprobs", lambda *a, **k: pytest.fail("the LM ran on cached prompts"))
    again = _pool(loo_split, yesno_data, rerank_lm, tmp_path, score_cache=True, bandit="linucb")
    again.score(users)
    read = again.prediction_facts()["llm"]["score_cache"]
    assert read == {**made, "read": made["computed"], "computed": 0}
    assert again._replayed["mean_reward"] == first._replayed["mean_reward"]
    for u in (0, 1, 2):
        assert again._choices[u]["scores"] == first._choices[u]["scores"]


def test_the_log_probability_cache_skips_values_that_are_not_log_probabilities(tmp_path):
    import json

    from benchmark.models.components.score_cache import ScoreCache, prompt_key

    store = ScoreCache(tmp_path, {"x": 1}, bounds=(-math.inf, 0.0))
    store.put([[1, 2, -1, 3], [1, 2, -1, 4]], [-0.5, 0.25])  # a positive log-probability is not written
    lines = [json.dumps({"k": prompt_key([9]), "p": float("nan")}), '{"k": "short", "p": -1.0}', '{"k": ' + '"' + prompt_key([8]) + '", "p": -2.0}']
    with open(store.path, "a") as f:
        f.write("\n".join(lines) + "\n")
    again = ScoreCache(tmp_path, {"x": 1}, bounds=(-math.inf, 0.0))
    assert again.get([[1, 2, -1, 3], [1, 2, -1, 4], [9], [8]]) == [-0.5, None, None, -2.0]
    # the split between prompt and answer is part of the key
    assert prompt_key([1, 2, -1, 3]) != prompt_key([1, -1, 2, 3])


def test_shard_states_join_rows_and_add_counts_by_hand():
    from benchmark.models.components.shard_state import merged_counts, merged_dicts

    # prompts, tokens, longest: counts add, the longest is the largest
    assert merged_counts([[2, 30, 20], [3, 12, 5]], largest=(2,)) == [5, 42, 20]
    assert merged_counts([[1, 2, 3, 4], [10, 20, 30, 40]]) == [11, 22, 33, 44]
    assert merged_dicts([{1: "a"}, {2: "b"}, {}]) == {1: "a", 2: "b"}


def test_a_pool_split_over_two_shards_merges_to_the_facts_of_one(loo_split, yesno_data, rerank_lm, tmp_path):  # noqa: F811
    whole = _pool(loo_split, yesno_data, rerank_lm, tmp_path)
    whole.score(torch.tensor([0, 1, 2, 3]))
    shards = [_pool(loo_split, yesno_data, rerank_lm, tmp_path) for _ in range(2)]
    shards[0].score(torch.tensor([0, 2]))
    shards[1].score(torch.tensor([1, 3]))
    states = [s.shard_state() for s in shards]
    for s in shards:
        s.merge_shard_states(states)
    for s in shards:
        facts, want = s.prediction_facts(), whole.prediction_facts()
        assert facts["prompt_pool"]["test_choices"] == want["prompt_pool"]["test_choices"]
        assert [t["prompt_tokens"] for t in facts["prompt_pool"]["templates"]] == [t["prompt_tokens"] for t in want["prompt_pool"]["templates"]]
        assert facts["llm"]["prompt_tokens"] == want["llm"]["prompt_tokens"]
        assert facts["rerank"]["users_scored"] == 4
        assert {u: c["template"] for u, c in s._choices.items()} == {u: c["template"] for u, c in whole._choices.items()}
