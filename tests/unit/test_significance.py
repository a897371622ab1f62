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


def test_aligned_rows_are_tested_against_their_own_parent_runs():
    """vs SFT pairs an aligned row with the mean of exactly the parent runs it names, Holm over aligned rows."""
    from benchmark.results.leaderboard import _versus_parents

    rng = np.random.default_rng(1)
    p1, p2, p3 = (rng.uniform(0.0, 0.3, 120) for _ in range(3))

    def row(model, runs, parents=()):
        per_user = np.mean(list(runs.values()), axis=0)
        return {"dataset": "d", "split": "loo", "eval": "full", "model": model, "seeds": len(runs),
                "_per_user": per_user, "_per_user_runs": runs, "_parents": sorted(parents),
                "vs_parent": "", "p_parent": None}  # fmt: skip

    sft = row("p5", {"s1": p1, "s2": p2, "s3": p3})
    better = row("p5+dpo", {"a1": p1 + 0.05, "a2": p2 + 0.05}, parents=("s1", "s2"))
    one_seed = row("p5+pgrm", {"g1": p1 - 0.02}, parents=("s1",))
    same = row("p5+grpo", {"b3": p3.copy()}, parents=("s3",))
    orphan = row("p5+sdpo", {"c1": p1 + 0.2}, parents=("elsewhere",))
    other_table = {**row("p5+dpo", {"x": p1 + 0.5}, parents=("s1",)), "split": "temporal"}
    _versus_parents([sft, better, one_seed, same, orphan, other_table])
    raw = [
        paired_pvalue(np.mean([p1 + 0.05, p2 + 0.05], axis=0), np.mean([p1, p2], axis=0)),
        paired_pvalue(p1 - 0.02, p1),
        paired_pvalue(p3, p3),
    ]
    assert [better["p_parent"], one_seed["p_parent"], same["p_parent"]] == pytest.approx(holm(raw))
    assert (better["vs_parent"], one_seed["vs_parent"], same["vs_parent"]) == ("▲", "▼", "n.s.")
    assert (orphan["vs_parent"], orphan["p_parent"]) == ("", None)  # its parent is not in the table
    assert (other_table["vs_parent"], sft["vs_parent"]) == ("", "")  # the parent must be in the same table


def test_seeds_recorded_under_an_earlier_hash_rule_share_a_row():
    """A record whose config hashed data.cache_dir (the rule of its day) and one recorded today
    group together; a config that cannot be hashed keeps the record's own key."""
    from omegaconf import OmegaConf

    from benchmark.results.identity import config_hashes
    from benchmark.results.leaderboard import seed_group

    cfg = {"data": {"name": "d", "cache_dir": ".cache/x"}, "model": {"name": "bpr"}, "seed": 1}
    old_rule = {**cfg, "group_key": "recorded-under-the-old-rule", "config": cfg}
    today = {"config": {"data": {"name": "d"}, "model": {"name": "bpr"}, "seed": 2}, "group_key": "g2"}
    assert seed_group(old_rule) == seed_group(today) == config_hashes(OmegaConf.create(today["config"]))[1]
    other = {"config": {"data": {"name": "d"}, "model": {"name": "pop"}, "seed": 1}, "group_key": "g3"}
    assert seed_group(other) != seed_group(today)
    broken = {"config": {"data": {"name": "${nope}"}}, "group_key": "its-own"}
    assert seed_group(broken) == "its-own"


@pytest.mark.parametrize("trace", [None, "abc", {"step": 1}, [], [1, 2], [{"reward": float("nan"), "valid_metric": "x"}]])
def test_alignment_summary_facts_survive_strange_traces(trace):
    """A stranger's record with a trace of the wrong shape gives empty cells, not a traceback."""
    from benchmark.align.summary import run_facts

    rec = {"training": {"align": {"trace": trace, "hacking": {"flag": "yes"}, "seconds_per_step": float("inf")}},
           "model": {"generation": {"valid_rate": True}}, "efficiency": {"train_seconds": -0.0}}  # fmt: skip
    facts = run_facts([rec])
    assert facts["reward"] is None and facts["valid_metric"] is None and facts["validity"] is None
    assert facts["flagged"] == 0 and facts["step_seconds"] is None


def test_seeds_of_one_aligned_setting_share_a_row_though_their_parents_differ():
    from benchmark.results.leaderboard import seed_group

    def rec(seed, parent, beta=0.1):
        cfg = {"model": {"name": "p5"}, "align": {"method": "dpo", "beta": beta, "parent": parent}, "seed": seed}
        return {"config": cfg, "group_key": f"own-{seed}"}

    assert seed_group(rec(1, "runs/p-s1")) == seed_group(rec(2, "runs/p-s2"))
    assert seed_group(rec(1, "runs/p-s1")) != seed_group(rec(2, "runs/p-s2", beta=0.5))


def test_seeds_reading_their_own_seeds_first_stage_share_a_row():
    """The committed LLaRA hybrid seeds read the SASRec run of their own seed (adapter.encoder.run
    ...-s<seed>-*): one row; another first-stage model, or seed 2 reading seed 1's run, is another
    row; a reranker's seeds reading one fixed first stage share a row."""
    import copy
    import json
    from pathlib import Path

    from benchmark.results.leaderboard import seed_group

    runs = Path(__file__).resolve().parents[2] / "results" / "runs"
    recs = [json.loads(p.read_text()) for p in sorted(runs.glob("ml-100k-loo-candidates-llara-hybrid+cf_proj-cf-sasrec-k1-s*/record.json"))]
    assert [r["seed"] for r in recs] == [1, 2] and recs[0]["group_key"] != recs[1]["group_key"]
    assert seed_group(recs[0]) == seed_group(recs[1])
    other = copy.deepcopy(recs[1])
    other["config"]["adapter"]["encoder"]["run"] = other["config"]["adapter"]["encoder"]["run"].replace("sasrec", "gru4rec")
    assert seed_group(other) != seed_group(recs[0])
    crossed = copy.deepcopy(recs[1])
    crossed["config"]["adapter"]["encoder"]["run"] = recs[0]["config"]["adapter"]["encoder"]["run"]
    assert seed_group(crossed) != seed_group(recs[0])

    def rerank(seed, first):
        return {"config": {"model": {"name": "llm_rerank", "module": {"first_stage": first}}, "seed": seed}, "group_key": "k"}

    # a reranker's first stage is one fixed run for all its seeds: they share a row
    assert seed_group(rerank(1, "runs/x-s1-a")) == seed_group(rerank(3, "runs/x-s1-a")) != seed_group(rerank(3, "runs/x-s3-a"))
