"""Beyond-accuracy metrics against hand-computed values; absent (not zero) without genres or text."""

from __future__ import annotations

import gzip
import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from benchmark.data.views import RankingRows
from benchmark.eval import beyond as B
from benchmark.eval.beyond import ItemFacts
from benchmark.eval.evaluator import Predictions, evaluate
from benchmark.eval.metrics import higher_is_better, is_beyond_accuracy
from benchmark.results.schema import RECORD_SCHEMA


def _facts(pop, genres=None, user_genres=None, embeddings=None, n_train_users=3) -> ItemFacts:
    pop = np.asarray(pop, dtype=np.int64)
    n_users = 1 if user_genres is None else len(user_genres)
    return ItemFacts(
        item_ids=np.array([f"i{i}" for i in range(len(pop))]),
        user_ids=np.array([f"u{u}" for u in range(n_users)]),
        popularity=pop,
        n_train_users=n_train_users,
        head=B.head_mask(pop),
        genres=None if genres is None else np.asarray(genres, dtype=bool),
        user_genres=None if user_genres is None else np.asarray(user_genres, dtype=float),
        embeddings=None if embeddings is None else np.asarray(embeddings, dtype=np.float32),
    )


def _rows(targets: list[list[int]], users=None, slices=None) -> RankingRows:
    ptr = np.r_[0, np.cumsum([len(t) for t in targets])]
    flat = np.array([x for t in targets for x in t], dtype=np.int64)
    z = np.zeros(len(targets) + 1, dtype=np.int64)
    users = np.arange(len(targets)) if users is None else np.asarray(users)
    return RankingRows("test", users, ptr, flat, z, np.zeros(0, np.int64), slices or {})


def test_head_mask_covers_the_share_of_train_interactions():
    # total 10, 20 % = 2: the most popular item (5) already covers it.
    assert B.head_mask(np.array([5, 3, 1, 1, 0])).tolist() == [True, False, False, False, False]
    # total 10, 50 % = 5: item 2 (4) then item 0 (3, tie with item 1 broken by the lower index): 7 >= 5.
    assert B.head_mask(np.array([3, 3, 4]), share=0.5).tolist() == [True, False, True]
    # uniform 1s, total 5, 20 % = 1: one item, the lowest index.
    assert B.head_mask(np.ones(5, dtype=np.int64)).tolist() == [True, False, False, False, False]
    assert not B.head_mask(np.zeros(3, dtype=np.int64)).any()  # no train interaction: no head


def test_novelty_arp_longtail_by_hand():
    pop, u = np.array([3, 1, 0]), 3
    # self-information -log2((pop + 1) / (U + 1)): item 0: -log2(4/4) = 0; item 1: -log2(2/4) = 1;
    # item 2: -log2(1/4) = 2.
    ranked = np.array([[0, 1], [2, -1], [-1, -1]])
    nov = B.novelty_at_k(ranked, pop, u, 2)
    assert nov[:2].tolist() == pytest.approx([(0 + 1) / 2, 2.0])  # the invalid entry is skipped
    assert math.isnan(nov[2])  # no valid item: nothing to measure
    assert B.arp_at_k(ranked, pop, 2)[:2].tolist() == pytest.approx([(3 + 1) / 2, 0.0])
    head = B.head_mask(pop)  # total 4, 20 % = 0.8: item 0 is the head
    assert head.tolist() == [True, False, False]
    # row 0: items 0 (head), 1 (tail) -> 1/2; row 1: item 2 (tail) -> 1.
    assert B.longtail_at_k(ranked, head, 2)[:2].tolist() == pytest.approx([0.5, 1.0])
    assert B.novelty_at_k(ranked, pop, u, 1)[:2].tolist() == pytest.approx([0.0, 2.0])  # k cuts the list


def test_text_ild_by_hand():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # unit rows
    ranked = np.array([[0, 1, 2], [0, -1, -1], [2, 2, -1]])
    ild = B.ild_at_k(ranked, emb, 3)
    # row 0: cos(0,1) = 0, cos(0,2) = 0.6, cos(1,2) = 0.8 -> mean 1.4/3 -> ILD = 1 - 0.4667 = 0.5333
    assert ild[0] == pytest.approx(1 - 1.4 / 3)
    assert math.isnan(ild[1])  # one valid item: no pair
    assert ild[2] == pytest.approx(0.0)  # a repeated item is one pair with cosine 1
    assert B.ild_at_k(ranked, emb, 2)[0] == pytest.approx(1.0)  # only the pair (0, 1): cosine 0


def test_genre_ild_by_hand_skips_items_without_genres():
    genres = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=bool)
    ranked = np.array([[0, 1, 2, 3]])
    # pairs among items 0, 1, 2 (item 3 has no genre): cos(0,1) = 1/sqrt(2) = 0.7071,
    # cos(0,2) = 0, cos(1,2) = 0 -> mean 0.2357 -> ILD 0.7643
    assert B.genre_ild_at_k(ranked, genres, 4)[0] == pytest.approx(1 - (1 / math.sqrt(2)) / 3)


def test_calibration_by_hand_and_zero_when_distributions_match():
    genres = np.array([[1, 0], [0, 1], [1, 1]], dtype=bool)
    # history of user 0: items 0 and 2 -> item 0: [1, 0], item 2: [0.5, 0.5] -> p = [1.5, 0.5] / 2 = [0.75, 0.25]
    p = B.history_genres(np.array([0, 0]), np.array([0, 2]), genres, 2)
    assert p[0].tolist() == pytest.approx([0.75, 0.25])
    assert p[1].tolist() == [0.0, 0.0]  # user 1 has no history
    # list [0, 1] -> q = [0.5, 0.5]; q~ = 0.99 q + 0.01 p = [0.5025, 0.4975]
    # KL = 0.75 ln(0.75/0.5025) + 0.25 ln(0.25/0.4975) = 0.30036 - 0.17204 = 0.12832
    kl = B.calibration_at_k(np.array([[0, 1]]), np.array([0]), genres, p, 2)
    want = 0.75 * math.log(0.75 / 0.5025) + 0.25 * math.log(0.25 / 0.4975)
    assert kl[0] == pytest.approx(want)
    assert want == pytest.approx(0.12832, abs=1e-5)
    # list [0, 2] has the history's genre distribution: q = p, so q~ = p and KL = 0.
    assert B.calibration_at_k(np.array([[0, 2]]), np.array([0]), genres, p, 2)[0] == pytest.approx(
        0.0, abs=1e-12
    )
    # a list without any genre: q = 0, q~ = alpha p, KL = ln(1 / alpha)
    no_genre = np.array([[-1, -1]])
    assert B.calibration_at_k(no_genre, np.array([0]), genres, p, 2)[0] == pytest.approx(math.log(100))
    assert math.isnan(B.calibration_at_k(np.array([[0, 1]]), np.array([1]), genres, p, 2)[0])  # no history


def test_gini_uniform_is_zero_and_one_item_is_n_minus_1_over_n():
    assert B.gini_at_k(np.array([[0], [1], [2]]), 3, 1) == pytest.approx(0.0)
    assert B.gini_at_k(np.array([[0, 1], [2, 3]]), 4, 2) == pytest.approx(0.0)
    assert B.gini_at_k(np.array([[1], [1], [-1]]), 4, 1) == pytest.approx(3 / 4)  # (n-1)/n, n = 4
    # exposures [2, 1, 0] -> sorted [0, 1, 2], sum 3: ((2-4)*0 + (4-4)*1 + (6-4)*2) / (3*3) = 4/9
    assert B.gini_at_k(np.array([[0, 1], [0, -1]]), 3, 2) == pytest.approx(4 / 9)
    assert math.isnan(B.gini_at_k(np.array([[-1]]), 3, 1))


def test_evaluate_with_facts_overall_slices_and_absent_not_zero():
    genres = np.array([[1, 0], [0, 1], [1, 1], [0, 1]], dtype=bool)
    user_genres = np.array([[0.75, 0.25], [0.0, 1.0]])
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, 1.0]])
    full = _facts([3, 1, 0, 2], genres, user_genres, emb, n_train_users=3)
    slices = {"cold_item": np.array([False, True])}  # only row 1's target is cold
    rows = _rows([[2], [0]], users=[0, 1], slices=slices)
    ranked = np.array([[0, 1, -1], [3, 2, 1]])
    m, sizes, per_row = evaluate(Predictions(rows, ranked=ranked), [2], n_items=4, facts=full)
    assert sizes == {"all": 2, "cold_item": 1}
    # novelty@2: info = -log2((pop + 1) / 4) = [0, 1, 2, 0.415]; row 0: (0 + 1)/2; row 1: (0.415 + 2)/2
    info = -np.log2((np.array([3, 1, 0, 2]) + 1) / 4)
    assert m["test/novelty@2"] == pytest.approx(((info[0] + info[1]) / 2 + (info[3] + info[2]) / 2) / 2)
    assert m["test/cold_item/novelty@2"] == pytest.approx((info[3] + info[2]) / 2)
    assert m["test/arp@2"] == pytest.approx(((3 + 1) / 2 + (2 + 0) / 2) / 2)
    # text ILD@2: row 0 cos(0,1) = 0 -> 1; row 1 cos(3,2) = 0.8 -> 0.2
    assert m["test/ild@2"] == pytest.approx((1.0 + 0.2) / 2)
    assert m["test/cold_item/ild@2"] == pytest.approx(0.2)
    assert "test/ildgenre@2" in m and "test/calib@2" in m and "test/longtail@2" in m
    # exposure at 2 over 4 items: [1, 1, 1, 1] -> Gini 0; a set metric: no slice value
    assert m["test/gini@2"] == pytest.approx(0.0)
    assert "test/cold_item/gini@2" not in m
    assert not any(is_beyond_accuracy(k) for k in per_row)  # paired values stay the accuracy metrics

    bare = _facts([3, 1, 0, 2], n_train_users=3)  # no genres, no text
    m2, _, _ = evaluate(Predictions(rows, ranked=ranked), [2], n_items=4, facts=bare)
    assert not any(k.split("/")[-1].startswith(("ild", "calib")) for k in m2)  # absent, not zero
    assert m2["test/novelty@2"] == m["test/novelty@2"]

    pattern = re.compile(RECORD_SCHEMA["properties"]["metrics"]["propertyNames"]["pattern"])
    assert all(pattern.match(k) for k in m)  # every name fits the run record's schema

    m3, _, _ = evaluate(Predictions(rows, ranked=ranked), [2], n_items=4)  # no facts: nothing new
    assert not any(is_beyond_accuracy(k) for k in m3)
    assert set(m3) == {k for k in m if not is_beyond_accuracy(k)}


def test_directions_and_names():
    assert not higher_is_better("test/calib@10") and not higher_is_better("test/gini@10")
    assert not higher_is_better("test/arp@10")
    assert higher_is_better("test/cold_user/ild@10") and higher_is_better("test/novelty@10")
    assert is_beyond_accuracy("test/cold_item/longtail@20") and not is_beyond_accuracy("test/coverage@10")


def test_item_facts_from_a_split(tmp_path):
    from benchmark.results.item_facts import build_item_facts, genre_matrix

    items = pd.DataFrame(
        {"title": ["A", "B", "C"], "genres": ["Action, Sci-Fi", "Drama", ""]}, index=pd.Index(["a", "b", "c"])
    )
    g, names = genre_matrix(items, {"genres": "genres"}, ["a", "b", "c"])
    assert names == ["Action", "Drama", "Sci-Fi"]  # commas in the column: split on commas
    assert g.tolist() == [[True, False, True], [False, True, False], [False, False, False]]
    spaced = pd.DataFrame({"class": ["Action Adventure", "Children's"]}, index=pd.Index(["a", "b"]))
    g2, names2 = genre_matrix(spaced, {"genres": "class"}, ["a", "b"])
    assert names2 == ["Action", "Adventure", "Children's"]  # RecBole token_seq: whitespace
    assert genre_matrix(items.drop(columns="genres"), {}, ["a", "b", "c"]) is None  # absent

    from benchmark.data.interactions import Interactions
    from benchmark.data.splits import Split

    train = pd.DataFrame({"user": [0, 0, 1, 1, 1], "item": [0, 1, 0, 0, 2]})  # (1, 0) twice: one user
    empty = pd.DataFrame({"user": np.zeros(0, np.int64), "item": np.zeros(0, np.int64)})
    split = Split(
        "loo",
        np.array(["u0", "u1", "u2"]),
        np.array(["a", "b", "c"]),
        {"train": train, "valid": empty, "test": empty},
    )
    data = Interactions("t", pd.DataFrame(), items, pd.DataFrame(), item_fields={"genres": "genres"})
    f = build_item_facts(split, data, text=False)
    assert f.popularity.tolist() == [2, 1, 1]  # distinct train users per item
    assert f.n_train_users == 2
    assert f.embeddings is None
    # user 0: items a (Action, Sci-Fi) and b (Drama) -> [0.5, 0, 0.5] + [0, 1, 0] -> /2 = [0.25, 0.5, 0.25]
    assert f.user_genres[0].tolist() == pytest.approx([0.25, 0.5, 0.25])
    # user 1: items a and c (no genre) -> [0.5, 0, 0.5]; user 2: no history -> zeros
    assert f.user_genres[1].tolist() == pytest.approx([0.5, 0.0, 0.5])
    assert f.user_genres[2].tolist() == [0.0, 0.0, 0.0]
    no_title = Interactions("t", pd.DataFrame(), items.drop(columns=["title", "genres"]), pd.DataFrame())
    bare = build_item_facts(split, no_title, text=True, store_dir=tmp_path)
    assert bare.embeddings is None and bare.genres is None  # no titles, no genres: absent


def test_recomputed_from_a_runs_predictions_equals_the_record(tmp_path):
    """A tiny pop run with titles and genres records the new metrics; recomputing them from its
    predictions file and the rebuilt split's facts gives the same values."""
    from benchmark.compose import compose
    from benchmark.results.item_facts import facts_for_config
    from benchmark.results.recompute import recompute_metrics
    from benchmark.run import run
    from tests.conftest import random_rows, write_atomic

    d = write_atomic(tmp_path / "data", "tiny", random_rows())
    genres = ["Drama", "Comedy", "Drama Comedy", "Action", ""]
    lines = ["item_id:token\ttitle:token_seq\tgenres:token_seq"]
    lines += [f"i{i}\tTitle {i}\t{genres[i % 5]}" for i in range(60)]
    (d / "tiny.item").write_text("\n".join(lines) + "\n")
    cfg = compose(
        [
            "model=pop", "data=atomic", f"data.path={d}", "data.name=tiny", "logger=none",
            "+data.item_fields.genres=genres", "trainer.enable_progress_bar=false",
            f"paths.results={tmp_path / 'res'}", f"paths.outputs={tmp_path / 'out'}",
        ]
    )  # fmt: skip
    run_dir = tmp_path / "res" / "runs" / run(cfg)["run_id"]
    record = json.loads((run_dir / "record.json").read_text())
    m = record["metrics"]
    for name in ("ild", "ildgenre", "novelty", "arp", "longtail", "calib", "gini"):
        assert math.isfinite(m[f"test/{name}@10"]), name
    assert "test/cold_item/calib@10" in m and "test/cold_item/gini@10" not in m
    preds = [
        json.loads(ln)
        for ln in gzip.decompress((run_dir / record["predictions"]["file"]).read_bytes()).splitlines()
    ]
    _, split_fp, facts = facts_for_config(record["config"]["data"], record["config"]["split"])
    assert split_fp == record["split"]["fingerprint"]
    again = recompute_metrics(record, preds, facts)
    for k, v in m.items():
        if v is None:
            assert math.isnan(again[k]), k
        else:
            assert again[k] == pytest.approx(v, abs=1e-9), k  # records keep 10 decimals
    assert not any(is_beyond_accuracy(k) for k in recompute_metrics(record, preds))  # without facts: none
    _validate_checks_them(d, run_dir)
    _leaderboard_recomputes_what_a_record_lacks(tmp_path, run_dir, record)


def _validate_checks_them(data_dir, run_dir) -> None:
    """validate accepts the run, and rejects it when a beyond-accuracy value is changed."""
    import shutil

    from benchmark.results.submission import validate

    report = validate(run_dir, data_path=data_dir)
    assert report.ok, report.verdict()
    bad = run_dir.parent / "changed"
    shutil.copytree(run_dir, bad)
    rec = json.loads((bad / "record.json").read_text())
    rec["metrics"]["test/novelty@10"] += 0.01
    (bad / "record.json").write_text(json.dumps(rec))
    verdict = validate(bad, data_path=data_dir).verdict()
    assert verdict.startswith("REJECTED metrics") and "novelty@10" in verdict, verdict


def _leaderboard_recomputes_what_a_record_lacks(tmp_path, run_dir, record) -> None:
    """A copy of the run without the new metrics (as if recorded before them), its dataset at a
    relative path: the leaderboard recomputes them from the predictions, equal to the recorded ones."""
    import csv
    import os
    import shutil

    from benchmark.results.leaderboard import write_leaderboard

    old = tmp_path / "old" / run_dir.name
    shutil.copytree(run_dir, old)
    rec = json.loads((old / "record.json").read_text())
    rec["metrics"] = {k: v for k, v in rec["metrics"].items() if not is_beyond_accuracy(k)}
    rec["config"]["data"]["path"] = "data"  # a record's data path is used only relative, inside the cwd
    (old / "record.json").write_text(json.dumps(rec))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        warnings: list[str] = []
        write_leaderboard(tmp_path / "old", tmp_path / "lb", warnings.append)
    finally:
        os.chdir(cwd)
    assert warnings == []
    (row,) = csv.DictReader((tmp_path / "lb" / "leaderboard.csv").open())
    for name in ("ild@10", "ildgenre@10", "novelty@10", "gini@10", "calib@10", "cold_item/longtail@10"):
        assert float(row[f"test/{name}"]) == pytest.approx(record["metrics"][f"test/{name}"], abs=1e-9), name
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "| model | ild@10 | ildgenre@10 | novelty@10 | arp@10 | longtail@10 | gini@10 | calib@10 |" in md


def test_paper_draws_accuracy_against_diversity_per_ranking_table(tmp_path):
    from benchmark.paper import fig_beyond

    def row(model: str, ndcg: str, ild: str, novelty: str, ev: str = "full") -> dict[str, str]:
        return {"dataset": "ml-100k", "split": "loo", "eval": ev, "model": model, "family": "classic",
                "test/ndcg@10": ndcg, "test/ild@10": ild, "test/novelty@10": novelty}  # fmt: skip

    rows = [row("pop", "0.04", "0.65", "1.2"), row("bpr", "0.06", "0.64", "1.9")]
    rows += [row("pop", "0.2", "", "", ev="sampled"), row("bpr", "0.3", "", "", ev="sampled")]  # no values: no figure
    made = fig_beyond(rows, tmp_path)
    assert sorted(p.name for p in made) == ["beyond-ml-100k-loo-full.pdf", "beyond-ml-100k-loo-full.png"]


def test_heldout_share_by_hand_and_only_on_strict_cold_splits(tmp_path):
    from benchmark.eval.beyond import heldout_at_k

    holdout = np.array([False, True, False, True])
    ranked = np.array([[0, 2, 1], [1, 0, 2], [-1, 0, 3], [0, 2, -1]])
    # top-1: only row 1 starts with a held-out item; top-3: rows 0 (item 1), 1, 2 (item 3)
    assert heldout_at_k(ranked, holdout, 1).tolist() == [0.0, 1.0, 0.0, 0.0]
    assert heldout_at_k(ranked, holdout, 3).tolist() == [1.0, 1.0, 1.0, 0.0]

    from benchmark.config import SplitConfig
    from benchmark.data.atomic import read_atomic
    from benchmark.data.splits import build_split
    from benchmark.results.item_facts import build_item_facts
    from tests.conftest import random_rows, write_atomic

    data = read_atomic(write_atomic(tmp_path / "d", "tiny", random_rows()), "tiny")
    strict = build_split(data, SplitConfig(protocol="loo", holdout_items=0.2))
    f = build_item_facts(strict, data, text=False)
    assert np.flatnonzero(f.holdout).tolist() == strict.holdout_items.tolist()
    assert build_item_facts(build_split(data, SplitConfig(protocol="loo")), data, text=False).holdout is None


def test_a_strict_cold_run_records_the_heldout_share_and_validates(tmp_path):
    """The run's heldout@k equals the share recomputed by hand from its predictions, and `validate`
    accepts it; a record made before the metric (heldout removed) is still accepted."""
    from benchmark.compose import compose
    from benchmark.run import run
    from tests.conftest import random_rows, write_atomic
    from tests.smoke.test_cli import llm4rec

    d = write_atomic(tmp_path / "data", "tiny", random_rows())
    cfg = compose(
        [
            "model=bpr", "split=strict_cold_item", "split.holdout_items=0.3", "data=atomic", f"data.path={d}",
            "data.name=tiny", "logger=none", "trainer.enable_progress_bar=false", "model.train.max_epochs=1",
            f"paths.results={tmp_path / 'res'}", f"paths.outputs={tmp_path / 'out'}",
        ]
    )  # fmt: skip
    run_dir = tmp_path / "res" / "runs" / run(cfg)["run_id"]
    record = json.loads((run_dir / "record.json").read_text())
    preds = [
        json.loads(ln)
        for ln in gzip.decompress((run_dir / record["predictions"]["file"]).read_bytes()).splitlines()
    ]
    from benchmark.config import SplitConfig, to_object
    from benchmark.data.atomic import read_atomic
    from benchmark.data.splits import build_split

    split = build_split(read_atomic(d, "tiny"), to_object(record["config"]["split"], SplitConfig))
    held = {str(x) for x in split.item_ids[split.holdout_items]}
    by_hand = np.mean([any(str(x) in held for x in p["ranked"][:10]) for p in preds])
    assert record["metrics"]["test/heldout@10"] == pytest.approx(by_hand, abs=1e-12)
    llm4rec("validate", str(run_dir), "--data", str(d))
    for k in [k for k in record["metrics"] if "heldout@" in k]:
        del record["metrics"][k]
    (run_dir / "record.json").write_text(json.dumps(record))
    llm4rec("validate", str(run_dir), "--data", str(d))
