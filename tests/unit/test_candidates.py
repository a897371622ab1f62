"""eval=candidates: candidate metrics by hand, the negatives, the tie rule, config errors, hashes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from benchmark.config import EvalConfig, SliceConfig, SplitConfig
from benchmark.data.atomic import read_atomic
from benchmark.data.splits import build_split
from benchmark.data.views import RankingRows, ranking_rows, sample_negatives
from benchmark.errors import ConfigError
from benchmark.eval.evaluator import Predictions, evaluate
from benchmark.eval.rows import candidate_ks, candidate_view, eval_rows

RUNS = Path(__file__).resolve().parents[2] / "results" / "runs"


def _rows(targets: list[int], slices=None) -> RankingRows:
    n = len(targets)
    z = np.zeros(n + 1, dtype=np.int64)
    return RankingRows(
        "test", np.arange(n), np.arange(n + 1), np.array(targets, dtype=np.int64), z, np.zeros(0, np.int64), slices or {}
    )


def test_target_third_of_twenty_by_hand():
    rows = _rows([7])
    ranked = np.array([[3, 5, 7, *range(20, 37)]])  # 20 candidates, the target 3rd
    m, sizes, per_row = evaluate(Predictions(rows, ranked=ranked), [1, 5, 10], 100, protocol="candidates")
    assert m["test/hit@1"] == 0.0
    assert m["test/hit@5"] == 1.0
    assert m["test/hit@10"] == 1.0
    assert m["test/ndcg@5"] == pytest.approx(1 / np.log2(4))
    assert m["test/ndcg@10"] == pytest.approx(1 / np.log2(4))
    assert "test/ndcg@1" not in m and "test/hr@10" not in m and "test/coverage@10" not in m
    assert m["test/valid_ratio"] == 1.0
    assert sizes == {"all": 1}
    assert per_row["ndcg@5"].tolist() == pytest.approx([0.5])


def test_named_candidate_rows_count_validity_and_hit_at_1():
    # row 0 names its target, row 1 a negative, row 2 names nothing (invalid answer), row 3 target 6th.
    slices = {"cold_item": np.array([True, False, True, False])}
    rows = _rows([4, 5, 6, 9], slices)
    ranked = np.full((4, 20), -1)
    ranked[0, 0], ranked[1, 0] = 4, 8
    ranked[3, :6] = [1, 2, 3, 10, 11, 9]
    m, sizes, _ = evaluate(Predictions(rows, ranked=ranked), [1, 5, 10], 100, protocol="candidates")
    assert m["test/valid_ratio"] == pytest.approx(3 / 4)
    assert m["test/hit@1"] == pytest.approx(1 / 4)
    assert m["test/hit@5"] == pytest.approx(1 / 4)
    assert m["test/hit@10"] == pytest.approx(2 / 4)
    assert m["test/ndcg@10"] == pytest.approx((1 + 1 / np.log2(7)) / 4)
    assert sizes == {"all": 4, "cold_item": 2}
    assert m["test/cold_item/hit@1"] == pytest.approx(1 / 2)


def test_full_protocol_metrics_are_unchanged_by_the_new_argument():
    rows = _rows([7])
    ranked = np.array([[3, 5, 7, *range(20, 37)]])
    a = evaluate(Predictions(rows, ranked=ranked), [5, 10], 100)[0]
    b = evaluate(Predictions(rows, ranked=ranked), [5, 10], 100, protocol="full")[0]
    assert a == b and "test/hr@5" in a and "test/hit@5" not in a


@pytest.fixture
def split(tiny_dir):
    return build_split(read_atomic(tiny_dir, "tiny"), SplitConfig(protocol="loo"))


def test_candidate_rows_hold_19_never_seen_negatives_drawn_like_sampled(split):
    ev = EvalConfig(protocol="candidates", num_negatives=19, ks=[1, 5, 10])
    rows, facts = eval_rows(split, ev, SliceConfig())
    assert rows.negatives.shape == (len(rows), 19)
    every = np.concatenate([split.parts[p][["user", "item"]].to_numpy() for p in ("train", "valid", "test")])
    for r, u in enumerate(rows.users):
        seen = set(every[every[:, 0] == u, 1].tolist())
        assert not seen & set(rows.negatives[r].tolist())
        assert len(set(rows.negatives[r].tolist())) == 19
    # Exactly the sampled protocol's draw (same function, seed and size), so the same fingerprint.
    sampled, sfacts = eval_rows(split, EvalConfig(protocol="sampled", num_negatives=19), SliceConfig())
    assert (sampled.negatives == rows.negatives).all()
    assert facts["negatives_fingerprint"] == sfacts["negatives_fingerprint"]
    # The target is not always in the same slot of a candidate list: negatives come in drawn order.
    assert not (np.diff(rows.negatives, axis=1) > 0).all()
    again, _ = eval_rows(split, EvalConfig(protocol="candidates", num_negatives=19, negatives_seed=1), SliceConfig())
    assert not (again.negatives == rows.negatives).all()


def test_full_runs_view_has_the_candidates_protocols_negatives(split):
    full = EvalConfig(protocol="full", also_candidates=True, test_users=10)
    rows, _ = eval_rows(split, full, SliceConfig())
    view, facts = candidate_view(split, rows, full)
    cand, cfacts = eval_rows(split, EvalConfig(protocol="candidates", num_negatives=19, test_users=10), SliceConfig())
    assert (view.users == cand.users).all() and (view.negatives == cand.negatives).all()
    assert facts == {"num_negatives": 19, "negatives_fingerprint": cfacts["negatives_fingerprint"]}
    assert rows.negatives is None  # the full rows themselves are unchanged
    assert candidate_ks([5, 10, 20], 20) == [1, 5, 10]


def test_scoring_models_rank_candidates_with_the_sampled_tie_rule(split):
    from benchmark.predict import row_predictor

    ev = EvalConfig(protocol="candidates", num_negatives=19, ks=[1, 5, 10])
    rows, _ = eval_rows(split, ev, SliceConfig())

    class Flat(torch.nn.Module):  # every candidate ties
        def score_pairs(self, users, items):
            return torch.zeros(items.shape)

    ids = np.arange(len(rows))
    got = row_predictor(rows, "candidates", 20, 7)(Flat(), ids, torch.device("cpu"))
    same = row_predictor(rows, "sampled", 20, 7)(Flat(), ids, torch.device("cpu"))
    assert (got == same).all()
    for r in range(len(rows)):  # ties: item index ascending
        cand = sorted({*rows.targets_of(r).tolist(), *rows.negatives[r].tolist()})
        assert got[r].tolist() == cand


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"num_negatives": 0}, "eval.num_negatives"),
        ({"candidates_negatives": 0}, "eval.candidates_negatives"),
        ({"protocol": "sampled", "also_candidates": True}, "eval.also_candidates"),
        ({"protocol": "cands"}, "eval.protocol"),
    ],
)
def test_bad_values_name_their_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        EvalConfig(**{"protocol": "candidates", **kwargs})


def test_too_many_negatives_and_too_large_k_are_one_line_errors(split, tiny_dir):
    from benchmark.checks import check_cutoffs
    from benchmark.compose import compose

    base = ["data=atomic", f"data.path={tiny_dir}", "data.name=tiny", "eval=candidates"]
    check_cutoffs(compose(base))
    with pytest.raises(ConfigError, match=r"^eval\.ks: 21 exceeds the 20 candidates"):
        check_cutoffs(compose([*base, "eval.ks=[1,21]"]))
    with pytest.raises(ConfigError, match=r"^eval\.num_negatives=60: exceeds the catalogue"):
        check_cutoffs(compose([*base, "eval.num_negatives=60", "eval.ks=[1]"]))
    with pytest.raises(ConfigError, match=r"^eval\.num_negatives=55: user .* has only"):
        sample_negatives(split, ranking_rows(split, "test"), 55, 0)
    full = ["data=atomic", f"data.path={tiny_dir}", "data.name=tiny", "eval.also_candidates=true"]
    with pytest.raises(ConfigError, match=r"^eval\.candidates_negatives=60: exceeds"):
        check_cutoffs(compose([*full, "eval.candidates_negatives=60"]))


def test_new_options_leave_every_existing_hash_and_label_their_runs():
    from benchmark.compose import compose
    from benchmark.results.identity import config_hashes, result_config, run_id_for

    for over in ([], ["eval=sampled"], ["model=pop", "eval=labeled", "split=random"]):
        cfg = compose(over)
        assert cfg.eval.also_candidates is False and cfg.eval.candidates_negatives == 19
        assert "also_candidates" not in result_config(cfg)["eval"]
        plain = OmegaConf.create(OmegaConf.to_container(cfg))
        del plain.eval["also_candidates"], plain.eval["candidates_negatives"]
        assert config_hashes(cfg) == config_hashes(plain)
    view = compose(["eval.also_candidates=true"])
    assert config_hashes(view)[0] != config_hashes(compose([]))[0]
    cand = compose(["model=bpr", "eval=candidates"])
    assert run_id_for(cand, config_hashes(cand)[0]).startswith("ml-100k-loo-candidates-bpr-")
    recorded = sorted(RUNS.glob("*/record.json"))[:40]
    for path in recorded:  # committed records hash as before once today's defaults are added
        rec = json.loads(path.read_text())
        cfg = OmegaConf.create(rec["config"])
        cfg.eval.also_candidates, cfg.eval.candidates_negatives = False, 19
        assert config_hashes(cfg) == config_hashes(OmegaConf.create(rec["config"]))


def test_generative_catalogue_rankers_are_refused_under_candidates():
    from benchmark.models.contract import missing
    from benchmark.models.p5 import P5
    from benchmark.models.pop import Pop

    gaps = missing(P5, "candidates")
    assert len(gaps) == 1 and "eval=candidates" in gaps[0] and "model=llm_rerank" in gaps[0]
    assert missing(Pop, "candidates") == []
