"""Alignment parts without a model: negatives, rule rewards, the PGRM judge (stub LM), the trace
and its reward-hacking flag, the config group."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from benchmark.align.config import AlignConfig
from benchmark.align.negatives import allowed_items, sample_negatives
from benchmark.align.rewards import ObjectiveJudge, rule_rewards, validity_rate
from benchmark.align.trace import Trace, hacking_flag
from benchmark.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- negatives


@pytest.mark.parametrize("mode", ["random", "popularity", "hard"])
def test_negatives_never_a_train_item_or_the_target(mode):
    n_items, rng = 50, np.random.default_rng(0)
    pop = np.arange(n_items)[::-1].copy()
    for trial in range(200):
        seen = rng.choice(n_items, size=int(rng.integers(1, 40)), replace=False)
        target = int(rng.integers(n_items))
        k = int(rng.integers(1, n_items - len(set(seen) | {target}) + 1))
        cands = rng.permutation(n_items)[:10]  # includes seen items and maybe the target
        neg = sample_negatives(mode, k, n_items, seen, target, np.random.default_rng(trial), pop, cands)
        assert len(neg) == k == len(set(neg.tolist()))
        assert not set(neg.tolist()) & (set(seen.tolist()) | {target})


def test_negatives_are_reproducible_by_seed_and_hard_keeps_beam_order():
    seen, target = np.array([0, 1, 2]), 3
    a = sample_negatives("random", 5, 30, seen, target, np.random.default_rng(7))
    b = sample_negatives("random", 5, 30, seen, target, np.random.default_rng(7))
    assert np.array_equal(a, b)
    hard = sample_negatives(
        "hard", 3, 30, seen, target, np.random.default_rng(0), candidates=[3, 1, 9, -1, 4, 8]
    )
    assert hard.tolist() == [9, 4, 8]
    topped = sample_negatives("hard", 4, 30, seen, target, np.random.default_rng(0), candidates=[9, 2])
    assert topped[0] == 9 and len(set(topped.tolist())) == 4 and not set(topped.tolist()) & {0, 1, 2, 3}


def test_popularity_negatives_follow_counts():
    pop = np.zeros(10)
    pop[5] = 1e6
    draws = [
        sample_negatives("popularity", 1, 10, np.array([0]), 1, np.random.default_rng(s), pop)[0]
        for s in range(50)
    ]
    assert np.mean(np.asarray(draws) == 5) > 0.9


def test_k_larger_than_available_negatives_is_one_line():
    with pytest.raises(ConfigError, match=r"align.k=8: more negatives than the 7 items") as e:
        sample_negatives("random", 8, 10, np.array([0, 1]), 2, np.random.default_rng(0))
    assert "\n" not in str(e.value)
    assert allowed_items(10, np.array([0, 1]), 2).tolist() == [3, 4, 5, 6, 7, 8, 9]


# ----------------------------------------------------------------------------- rewards


def test_rule_rewards_on_hand_built_generations():
    gens = np.array([[4], [7], [-1], [7]])  # G = 4 single-item generations, best first
    assert rule_rewards(gens, 7, "hit").tolist() == [0.0, 1.0, 0.0, 1.0]
    assert np.allclose(rule_rewards(gens, 7, "ndcg"), [0, 1 / math.log2(3), 0, 1 / math.log2(5)])
    assert np.allclose(rule_rewards(gens, 7, "hit", invalid_penalty=0.5), [0, 1, -0.5, 1])
    lists = np.array([[1, 2, 7], [7, -1, -1]])  # G = 2 lists of 3: rank = position in the list
    assert np.allclose(rule_rewards(lists, 7, "ndcg", 0.1), [0.5, 1 - 0.2])
    assert validity_rate(lists) == pytest.approx(4 / 6)
    with pytest.raises(ConfigError, match="align.reward"):
        rule_rewards(gens, 7, "mrr")


class StubLM:
    """A 'causal LM' whose next-token logits prefer the digit 5 when the prompt lists 'Comedy'."""

    class Tok:
        pad_token_id = 0

        def __call__(self, text, add_special_tokens=True):
            if text in {"1", "2", "3", "4", "5"}:
                return {"input_ids": [int(text)]}
            return {"input_ids": [9 if "Comedy" in text else 8]}

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=1, **kw):
            last = input_ids[:, -1]
            logits = torch.zeros(len(last), 1, 10)
            logits[last == 9, 0, 5] = 30.0  # certain "5"
            logits[last == 8, 0, 1] = 30.0  # certain "1"
            return type("Out", (), {"logits": logits})()

    def __init__(self):
        self.tokenizer, self.model = self.Tok(), self.Model()


def test_prompt_guided_judge_scores_lists_against_the_objective():
    titles = ["Heat", "Comedy Night", "Casino"]
    judge = ObjectiveJudge(titles, "funny films", lm=StubLM())
    assert "Objective: funny films" in judge.prompt([0, 1, -1]) and "Heat; Comedy Night" in judge.prompt(
        [0, 1, -1]
    )
    r = judge.rewards(np.array([[0, 1], [0, 2]]))
    assert np.allclose(r, [1.0, 0.0], atol=1e-9)
    facts = judge.facts()
    assert facts["objective"] == "funny films" and len(facts["prompt_sha256"]) == 64


@pytest.mark.parametrize("titles", [None, [], ["", " "]])
def test_pgrm_on_a_dataset_without_item_text_is_one_line(titles):
    with pytest.raises(ConfigError, match="needs item titles"):
        ObjectiveJudge(titles, "diverse")


# ----------------------------------------------------------------------------- trace and hacking


def test_trace_keeps_rows_on_its_period():
    t = Trace(every=2)
    for s in range(1, 6):
        t.add(s, loss=1.0 / s, reward=float("nan") if s == 2 else s)
    t.add(7, force=True, valid_metric=0.1)
    assert [r["step"] for r in t.rows] == [2, 4, 7]
    assert t.rows[0]["reward"] is None and t.rows[2]["valid_metric"] == 0.1
    with pytest.raises(ValueError, match="unknown keys"):
        t.add(8, accuracy=1)


def constructed(rewards, valids):
    return [
        {"step": s, "reward": r, "valid_metric": v}
        for s, (r, v) in enumerate(zip(rewards, valids, strict=True))
    ]


def test_hacking_flag_on_a_constructed_trace():
    hacked = constructed([0.1, 0.3, 0.5, 0.9], [0.20, None, None, 0.12])
    verdict = hacking_flag(hacked, max_valid_drop=0.05)
    assert verdict == {"flag": True, "reward_change": 0.8, "valid_change": -0.08, "max_valid_drop": 0.05}
    assert not hacking_flag(hacked, max_valid_drop=0.1)["flag"]  # fall within tolerance
    assert not hacking_flag(constructed([0.1, 0.9], [0.2, 0.25]), 0.0)["flag"]  # metric rose too
    assert not hacking_flag(constructed([0.9, 0.1], [0.2, 0.0]), 0.0)["flag"]  # reward fell
    assert hacking_flag(constructed([0.1], [0.2]), 0.0)["reward_change"] is None


# ----------------------------------------------------------------------------- config group


@pytest.mark.parametrize("method", ["dpo", "sdpo", "grpo", "pgrm"])
def test_config_group_files_are_valid(method):
    node = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "align" / f"{method}.yaml"))
    cfg = AlignConfig.from_config(node)
    assert cfg.method == method


@pytest.mark.parametrize(
    "node, message",
    [
        ({"method": "ppo"}, "align.method"),
        ({"method": "dpo", "k": 3}, "align.k"),
        ({"method": "grpo", "group": 1}, "align.group"),
        ({"method": "dpo", "beta": 0}, "align.beta"),
        ({"method": "dpo", "negatives": "hardest"}, "align.negatives"),
        ({"method": "dpo", "betta": 0.1}, "unknown keys"),
        ({"method": "pgrm", "judge": {"objectiv": "x"}}, "align.judge: unknown keys"),
    ],
)
def test_bad_config_is_one_line(node, message):
    with pytest.raises(ConfigError, match=message) as e:
        AlignConfig.from_config(node)
    assert "\n" not in str(e.value)


def test_leaderboard_marks_a_run_flagged_for_reward_hacking(tmp_path):
    import json as _json

    from tests.unit.test_leaderboard import board, make_run

    runs = tmp_path / "runs"
    flagged = make_run(runs, model="p5-collaborative+grpo")
    rec = _json.loads((flagged / "record.json").read_text())
    rec["training"]["align"] = {"hacking": hacking_flag(constructed([0.1, 0.9], [0.3, 0.1]), 0.01)}
    (flagged / "record.json").write_text(_json.dumps(rec))
    make_run(runs, model="p5-collaborative+dpo")  # not flagged
    rows, md, _ = board(runs, tmp_path / "lb")
    labels = sorted(r["model"] for r in rows)
    assert labels == ["p5-collaborative+dpo", "p5-collaborative+grpo [possible reward hacking]"]
    assert "p5-collaborative+grpo [possible reward hacking]" in md
