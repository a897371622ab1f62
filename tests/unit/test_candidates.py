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


def test_generative_catalogue_rankers_without_candidate_answers_are_refused():
    from benchmark.models.contract import missing
    from benchmark.models.p5 import P5
    from benchmark.models.pop import Pop

    class Generates:  # ranks the catalogue itself, cannot answer a candidate list
        def rank_rows(self, rows, row_ids, k, device): ...

        def score_pairs(self, users, items): ...

    gaps = missing(Generates, "candidates")
    assert len(gaps) == 1 and "eval=candidates" in gaps[0] and "model=llm_rerank" in gaps[0]
    assert missing(Pop, "candidates") == [] and missing(P5, "candidates") == []


@pytest.mark.parametrize("constrained", [True, False])
def test_p5_beams_are_restricted_to_the_row_candidates(constrained, tmp_path, one_torch_thread):
    from tests.conftest import random_rows
    from tests.unit.test_p5 import FILMS, make, p5

    tiny = make(tmp_path, random_rows(n_users=20, n_items=10, per_user=5, seed=3), {f"i{i}": t for i, t in enumerate(FILMS)})
    _, split = tiny
    model = p5(tiny, constrained=constrained).eval()
    rows, _ = eval_rows(split, EvalConfig(protocol="candidates", num_negatives=3, ks=[1, 2, 4]), SliceConfig())
    out = model.answer_candidates(rows, np.arange(len(rows)), 20, "cpu")
    assert out.shape == (len(rows), 20)
    for r in range(len(rows)):
        cand = {*rows.targets_of(r).tolist(), *rows.negatives[r].tolist()}
        got = [x for x in out[r].tolist() if x >= 0]
        assert set(got) <= cand and len(got) == len(set(got))
        if constrained:  # every beam stays inside the list: the whole list is ranked
            assert set(got) == cand
    assert model.answer_facts(rows) == []


def test_leaderboard_keeps_candidate_rows_apart_and_shows_a_full_runs_view_beside_it(tmp_path):
    from tests.unit.test_leaderboard import board, make_run

    runs = tmp_path / "runs"
    view = {"test/hit@1": 0.25, "test/hit@5": 0.5, "test/hit@10": 0.75, "test/ndcg@5": 0.3, "test/ndcg@10": 0.4, "test/valid_ratio": 1.0}
    full = make_run(runs, model="bpr", ev={"also_candidates": True, "candidates_negatives": 19})
    rec = json.loads((full / "record.json").read_text())
    rec["metrics_candidates"] = view
    (full / "record.json").write_text(json.dumps(rec))
    make_run(runs, model="pop")
    cand = {"protocol": "candidates", "num_negatives": 19, "ks": [1, 5, 10]}
    make_run(runs, model="pop", ev=cand, metrics={**view, "test/hit@1": 0.5})
    make_run(runs, model="pop", ev={**cand, "num_negatives": 49}, metrics=view)
    rows, md, _ = board(runs, tmp_path / "lb")
    evals = {(r["model"], r["eval"]) for r in rows}
    assert evals == {("bpr", "full"), ("pop", "full"), ("pop", "candidates"), ("pop", "candidates[num_negatives=49]")}
    by = {(r["model"], r["eval"]): r for r in rows}
    assert by[("bpr", "full")]["candidates_view:test/hit@1"] == "0.25"  # the view beside its full row
    assert by[("pop", "full")]["candidates_view:test/hit@1"] == ""
    assert by[("pop", "candidates")]["test/hit@1"] == "0.5" and by[("pop", "candidates")]["test/hr@10"] == ""
    tables = md.split("### ")
    full_table = next(t for t in tables if t.startswith("tiny · split=loo · eval=full"))
    assert "candidates view: hit@1" in full_table and "| 0.2500 |" in full_table
    cand_table = next(t for t in tables if t.startswith("tiny · split=loo · eval=candidates (1 target + 19 negatives"))
    assert "not comparable with full ranking" in cand_table
    assert "| hit@1 | hit@5 | hit@10 | ndcg@5 | ndcg@10 | valid_ratio |" in cand_table
    assert "bpr" not in cand_table and "pop" in cand_table
    # the same model's eval=full row beside its candidates row (same split, same label)
    assert by[("pop", "full")]["test/ndcg@10"] != ""
    assert by[("pop", "candidates")]["full_ranking:test/ndcg@10"] == by[("pop", "full")]["test/ndcg@10"]
    assert "full ranking: ndcg@10" in cand_table and "same model's eval=full row" in cand_table
    assert "full ranking" not in full_table


# ----------------------------------------------------------------------------- generative answers


def test_named_candidate_maps_an_answer_to_one_of_the_row_candidates():
    from benchmark.eval.grounding import Catalogue, named_candidate

    cat = Catalogue(["Toy Story", "Heat", "Godfather, The", "Heat", "Up"], [1995] * 5, [()] * 5)
    assert named_candidate(cat, '"Heat (1995)".', [1, 2]) == 1
    assert named_candidate(cat, "The Godfather is my guess", [1, 2]) == 2  # an alias, at the start
    assert named_candidate(cat, 'I think "Toy Story" fits', [0, 1]) == 0  # cited inside the answer
    assert named_candidate(cat, "Toy Story", [1, 2]) is None  # a catalogue item, but no candidate
    assert named_candidate(cat, "Heat", [3, 1]) == 3  # two candidates share the title: the one listed first
    assert named_candidate(cat, "no idea", [0, 1, 2]) is None


@pytest.fixture(scope="module")
def rerank_setup(tmp_path_factory):
    from tests.conftest import random_rows, write_atomic
    from tests.unit.test_tallrec import load_prompt, make_tiny_lm, template_words

    d = tmp_path_factory.mktemp("cand_tiny")
    write_atomic(d, "tiny", random_rows(n_users=12, n_items=30, per_user=14), {f"i{i}": f"Title {i}" for i in range(30)})
    data = read_atomic(d, "tiny")
    lm = make_tiny_lm(tmp_path_factory.mktemp("cand_lm"), template_words("rerank_listwise") + [f"Title {i}" for i in range(30)])
    split = build_split(data, SplitConfig(protocol="loo"))
    rows, _ = eval_rows(split, EvalConfig(protocol="candidates", num_negatives=9, ks=[1, 5, 10]), SliceConfig())
    return split, data, lm, rows, load_prompt("rerank_listwise")


def test_llm_rerank_names_one_candidate_per_row_in_a_seeded_order(rerank_setup):
    from benchmark.models.contract import check_model
    from benchmark.models.llm_rerank import LLMRerank

    split, data, lm, rows, prompt = rerank_setup
    m = LLMRerank(split, data, backbone=str(lm), prompt=prompt, seed=3, answer_tokens=4)
    check_model(m, "llm_rerank", "candidates")
    ids = np.arange(len(rows))
    out = m.answer_candidates(rows, ids, 20, "cpu")  # the tiny random LM really generates
    assert out.shape == (len(rows), 20) and (out[:, 1:] == -1).all()
    facts = m.answer_facts(rows)
    firsts = set()
    for r, f in enumerate(facts):
        cand = {str(split.item_ids[i]) for i in [*rows.targets_of(r), *rows.negatives[r]]}
        assert sorted(f["order"]) == sorted(cand) and len(f["order"]) == 10
        firsts.add(f["order"][0] == str(split.item_ids[rows.targets_of(r)[0]]))
        assert isinstance(f["answer"], str) and f["valid"] == (f["named"] is not None)
        assert (out[r, 0] >= 0) == f["valid"]
        if f["valid"]:
            assert f["named"] in cand and str(split.item_ids[out[r, 0]]) == f["named"]
    assert False in firsts  # the target is not always listed first
    again = LLMRerank(split, data, backbone=str(lm), prompt=prompt, seed=3)
    assert [again.shown_order(rows, r).tolist() for r in ids] == [m.shown_order(rows, r).tolist() for r in ids]
    other = LLMRerank(split, data, backbone=str(lm), prompt=prompt, seed=4)
    assert [other.shown_order(rows, r).tolist() for r in ids] != [m.shown_order(rows, r).tolist() for r in ids]
    with pytest.raises(ConfigError, match="^model.module.first_stage: .*eval=candidates"):
        m.score(torch.tensor([0]))


def test_answers_naming_the_target_score_hit_at_1_and_invalid_answers_count(rerank_setup):
    from benchmark.models.llm_rerank import LLMRerank

    split, data, lm, rows, prompt = rerank_setup
    m = LLMRerank(split, data, backbone=str(lm), prompt=prompt, seed=3, user_batch_size=5)
    # Rows are answered in order: the even ones name their target's title, the odd ones a non-candidate.
    outside = [i for i in range(split.n_items) if i not in set(rows.negatives[1]) | set(rows.targets_of(1))][0]
    script = iter(
        f"{data.items.loc[str(split.item_ids[rows.targets_of(r)[0]]), 'title']} (1995)." if r % 2 == 0
        else ("Title of nothing" if r != 1 else f'"{data.items.loc[str(split.item_ids[outside]), "title"]}"')
        for r in range(len(rows))
    )
    m.generate_answers = lambda texts: [next(script) for _ in texts]
    pred = Predictions(rows, ranked=m.answer_candidates(rows, np.arange(len(rows)), 20, "cpu"), row_facts=m.answer_facts(rows))
    metrics, _, _ = evaluate(pred, [1, 5, 10], split.n_items, protocol="candidates")
    n_even = (len(rows) + 1) // 2
    assert metrics["test/valid_ratio"] == pytest.approx(n_even / len(rows))
    assert metrics["test/hit@1"] == pytest.approx(n_even / len(rows))
    assert metrics["test/hit@10"] == metrics["test/hit@1"]  # one named candidate: nothing below it
    assert pred.row_facts[1]["named"] is None and pred.row_facts[1]["valid"] is False
    facts = m.prediction_facts()["candidates"]
    assert facts["rows_answered"] == len(rows) and facts["valid_ratio"] == pytest.approx(n_even / len(rows), abs=1e-6)


@pytest.mark.parametrize("ev", [EvalConfig(protocol="candidates", num_negatives=19), EvalConfig(also_candidates=True)])
def test_split_export_writes_the_candidate_negatives(split, tmp_path, ev):
    from benchmark.data.export import write_split_files

    write_split_files(split, tmp_path, ev, SliceConfig(), {})
    lines = (tmp_path / "test_negatives.tsv").read_text().splitlines()[1:]
    assert len(lines) == len(ranking_rows(split, "test")) and all(len(x.split("\t")[1].split()) == 19 for x in lines)
    meta = json.loads((tmp_path / "meta.json").read_text())
    _, facts = eval_rows(split, EvalConfig(protocol="candidates", num_negatives=19), SliceConfig())
    assert meta["negatives"]["fingerprint"] == facts["negatives_fingerprint"]


def test_valid_negatives_of_a_pair_scorer_never_read_the_test_part(rerank_setup):
    """Validation candidates (``parts=("train", "valid")``) avoid the user's train and valid items
    and are the same whatever the test part holds; test candidates avoid every part."""
    split = rerank_setup[0]
    valid = ranking_rows(split, "valid")
    neg = sample_negatives(split, valid, 9, 7, parts=("train", "valid"))
    assert neg.shape == (len(valid), 9)
    for r, u in enumerate(valid.users):
        seen = set(split.train.loc[split.train["user"] == u, "item"]) | set(split.valid.loc[split.valid["user"] == u, "item"])
        assert not seen & set(neg[r].tolist()) and len(set(neg[r].tolist())) == 9
    moved = split.test.copy()
    moved["item"] = (moved["item"] + 1) % split.n_items  # another test part
    other = type(split)(split.protocol, split.user_ids, split.item_ids, {**split.parts, "test": moved})
    assert np.array_equal(sample_negatives(other, ranking_rows(other, "valid"), 9, 7, parts=("train", "valid")), neg)
    # the test draw excludes test items and uses its own stream
    assert not np.array_equal(sample_negatives(split, valid, 9, 7), neg)


def test_validation_protocol_follows_what_the_model_answers():
    from benchmark.models.bpr import BPR
    from benchmark.models.contract import missing, valid_protocol
    from benchmark.models.llara import LLaRA
    from benchmark.models.tallrec import TallRec

    assert valid_protocol("labeled", TallRec) == "labeled"
    assert valid_protocol("candidates", TallRec) == valid_protocol("sampled", TallRec) == "sampled"
    assert valid_protocol("candidates", BPR) == valid_protocol("sampled", BPR) == "full"  # as before
    assert valid_protocol("candidates", LLaRA) == "full"  # it answers its own valid candidate lists
    assert missing(TallRec, "candidates", trains=True) == []
    assert any("eval=full" in m for m in missing(TallRec, "full"))
