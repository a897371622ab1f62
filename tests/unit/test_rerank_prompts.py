"""The listwise reranker's prompt axes: its template pool and its history under a token budget
(recent vs relevant), with the shared selection helpers checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.config import SplitConfig
from benchmark.data.splits import build_split
from benchmark.errors import ConfigError
from benchmark.models.components.history_fit import kept_count, recency_order, relevance_order

TEMPLATES = ("rerank_listwise", "rerank_role", "rerank_json", "rerank_terse")


def test_relevance_order_ranks_by_the_nearest_anchor_and_breaks_ties_by_recency():
    s = 1 / np.sqrt(2)
    vectors = np.array([[1, 0], [0, 1], [s, s], [-1, 0], [0, -1]], dtype=np.float32)
    # history items 3, 0, 2, 1 (oldest first); anchors 0 and 1. Max cosine by hand:
    # item 3: max(-1, 0) = 0; item 0: 1; item 2: .707; item 1: 1 -> positions 3 (item 1, newer), 1 (item 0), 2, 0
    assert relevance_order(vectors, [3, 0, 2, 1], [0, 1]) == [3, 1, 2, 0]
    # cosines of positions 0..3 to item 4: 0, 0, -.707, -1 -> the tie goes to the newer position 1
    assert relevance_order(vectors, [3, 0, 2, 1], [4]) == [1, 0, 2, 3]
    assert relevance_order(vectors, [3, 0], []) == recency_order(2) == [1, 0]


def test_kept_count_keeps_the_longest_prefix_that_fits():
    lengths = {(): 10, (1,): 13, (0, 1): 17, (0, 1, 2): 20}
    order = [1, 0, 2]  # kept in this order, measured in time order

    def length_of(kept):
        return lengths[tuple(kept)]

    assert kept_count(order, length_of, None) == 3
    assert kept_count(order, length_of, 20) == 3
    assert kept_count(order, length_of, 19) == 2
    assert kept_count(order, length_of, 13) == 1
    assert kept_count(order, length_of, 9) == 0  # even the bare prompt is too long


@pytest.fixture(scope="module")
def rerank_lm(tmp_path_factory):
    from tests.unit.test_tallrec import make_tiny_lm, template_words

    words = template_words(*TEMPLATES) + [f"Title {i}" for i in range(30)] + ["{", "}", "[", "]", ":", '"']
    return make_tiny_lm(tmp_path_factory.mktemp("rerank_lm"), words, seed=5)


@pytest.fixture(scope="module")
def loo_split(yesno_data):
    return build_split(yesno_data, SplitConfig(protocol="loo"))


def _rerank(split, data, lm, tmp_path, monkeypatch=None, vectors=None, **kw):
    from benchmark.models.llm_rerank import LLMRerank
    from tests.unit.test_tallrec import fake_first_stage, load_prompt

    if vectors is not None:
        import benchmark.models.components.item_text as item_text

        monkeypatch.setattr(item_text, "text_embeddings", lambda data, ids: (vectors, {"key": "test"}))
    first = fake_first_stage(tmp_path / "first", split)
    kw.setdefault("prompt", load_prompt("rerank_listwise"))
    return LLMRerank(split, data, first_stage=str(first), backbone=str(lm), top_n=5, seed=0, **kw)


def _length(model, text):
    return len(model.tokenizer(text, add_special_tokens=True)["input_ids"])


@pytest.mark.parametrize("name", TEMPLATES)
def test_each_listwise_template_scores_the_candidates_and_records_its_id_and_lengths(name, loo_split, yesno_data, rerank_lm, tmp_path):
    from tests.unit.test_tallrec import load_prompt

    template = load_prompt(name)
    assert {"liked", "disliked", "candidates"} <= template.fields
    m = _rerank(loo_split, yesno_data, rerank_lm, tmp_path, prompt=template)
    text = m._render(0, m.candidates[0][:5])
    assert all(m.texts[int(i)] in text for i in m.candidates[0][:5])  # every candidate is listed
    scores = m.score(torch.tensor([0, 1, 2]))
    assert torch.isfinite(scores[:, :5]).all() and torch.isneginf(scores[:, 5:]).all()
    llm = m.prediction_facts()["llm"]
    assert llm["prompt"]["name"] == name and len(llm["prompt"]["sha256"]) == 64
    lengths = [_length(m, m._render(u, m.candidates[u][:5][np.argsort(m.prompt_order(u, 5))])) for u in (0, 1, 2)]
    assert llm["prompt_tokens"] == {"prompts": 3, "mean": round(sum(lengths) / 3, 2), "max": max(lengths)}
    assert "history_fit" not in llm  # no budget: the whole history, as before


def test_recent_history_under_a_budget_keeps_the_newest_items_that_fit(loo_split, yesno_data, rerank_lm, tmp_path):
    full = _rerank(loo_split, yesno_data, rerank_lm, tmp_path, history=10)
    hist, likes = full.histories[0]
    assert len(hist) == 10
    shown = full.candidates[0][:5]
    lengths = [_length(full, full._text(hist[n:], likes[n:], shown)) for n in range(11)]
    budget = (lengths[6] + lengths[5]) // 2  # by hand: the newest 4 items fit, the newest 5 do not
    assert lengths[6] <= budget < lengths[5]
    m = _rerank(loo_split, yesno_data, rerank_lm, tmp_path, history=10, history_budget=budget)
    text = m._render(0, shown)
    assert text == full._text(hist[6:], likes[6:], shown) and _length(m, text) <= budget
    fit = m.prediction_facts()["llm"]["history_fit"]
    assert fit == {"select": "recent", "budget_tokens": budget, "rows": 1, "items_offered_mean": 10.0,
                   "items_kept_mean": 4.0, "rows_over_budget_without_history": 0}


def test_relevant_history_keeps_the_items_nearest_the_candidates_in_time_order(loo_split, yesno_data, rerank_lm, tmp_path, monkeypatch):
    g = np.random.default_rng(2)
    vectors = g.normal(size=(loo_split.n_items, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    full = _rerank(loo_split, yesno_data, rerank_lm, tmp_path, history=10)
    hist, likes = full.histories[0]
    shown = full.candidates[0][:5]
    sims = np.array([max(float(vectors[h] @ vectors[c]) for c in shown) for h in hist])  # by hand
    top3 = sorted(np.argsort(-sims, kind="stable")[:3].tolist())
    budget = _length(full, full._text([hist[j] for j in top3], [likes[j] for j in top3], shown))
    m = _rerank(loo_split, yesno_data, rerank_lm, tmp_path, monkeypatch, vectors, history=10,
                history_select="relevant", history_budget=budget)
    assert m._fit_history(hist, likes, shown) == ([int(hist[j]) for j in top3], [int(likes[j]) for j in top3])
    assert m._render(0, shown) == full._text([hist[j] for j in top3], [likes[j] for j in top3], shown)
    recent = _rerank(loo_split, yesno_data, rerank_lm, tmp_path, history=10, history_budget=budget)
    assert recent._fit_history(hist, likes, shown)[0] != [int(hist[j]) for j in top3] or top3 == list(range(7, 10))
    fit = m.prediction_facts()["llm"]["history_fit"]
    assert fit["select"] == "relevant" and fit["items_kept_mean"] == 3.0 and m.prediction_facts()["llm"]["text_encoder"] == {"key": "test"}


def test_histories_come_from_train_only(loo_split, yesno_data, rerank_lm, tmp_path):
    m = _rerank(loo_split, yesno_data, rerank_lm, tmp_path, history=50, history_budget=10_000)
    train = loo_split.train
    for u in range(loo_split.n_users):
        hist, _ = m.histories[u]
        assert set(hist) <= set(train.loc[train["user"] == u, "item"].tolist())
        held = set(loo_split.valid.loc[loo_split.valid["user"] == u, "item"]) | set(loo_split.test.loc[loo_split.test["user"] == u, "item"])
        assert not set(hist) & (held - set(train.loc[train["user"] == u, "item"]))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"history_select": "relevant"}, "history_select=relevant: chooses which items fit a budget"),
        ({"history_select": "summary", "history_budget": 100}, "model.module.history_select: unknown 'summary'"),
        ({"history_budget": 4}, "model.module.history_budget: a prompt length in tokens >= 8"),
        ({"history_budget": True}, "model.module.history_budget"),
    ],
)
def test_bad_history_settings_are_one_line(kw, message, loo_split, yesno_data, rerank_lm, tmp_path):
    with pytest.raises(ConfigError, match=message) as e:
        _rerank(loo_split, yesno_data, rerank_lm, tmp_path, **kw)
    assert len(str(e.value).splitlines()) == 1


def test_rerank_prompt_experiments_launch_the_documented_runs():
    from benchmark.compose import compose_expanded, expand_overrides
    from benchmark.launch import sweep_jobs

    def grid(name, *extra, seeds=(1,)):
        jobs = [compose_expanded(j) for j in sweep_jobs(expand_overrides([f"experiment={name}", *extra]))]
        assert sorted({c.seed for c in jobs}) == list(seeds)
        for c in jobs:
            assert (c.split.protocol, c.eval.protocol, c.model.name) == ("loo", "full", "llm_rerank")
            assert c.eval.test_users == 200 and c.skip_existing and c.model.module.order == "random"
            assert c.model.module.first_stage == "results/runs/ml-100k-loo-full-sasrec-recbole-s1-5b4ecd46"
        return jobs

    assert [c.model.prompt.name for c in grid("prompt_templates_rerank_ml100k")] == list(TEMPLATES)
    hist = grid("prompt_history_rerank_ml100k")
    assert [(c.model.module.history_select, c.model.module.history, c.model.module.history_budget) for c in hist] == [
        ("recent", 50, 450), ("relevant", 50, 450)
    ]
    sel = grid("prompt_selection_rerank_ml100k", seeds=(1, 2, 3))
    assert [(c.model.module.icl_select, c.model.module.icl_shots, c.seed) for c in sel] == [("random", 2, s) for s in (1, 2, 3)]
    per_user = grid("prompt_selection_rerank_ml100k", "model.module.icl_select=similar,diverse", "seed=1")
    assert [c.model.module.icl_select for c in per_user] == ["similar", "diverse"]


# ----------------------------------------------------------------------------- in-context examples


def test_example_pool_is_each_users_last_train_item_among_unseen_negatives(loo_split):
    from benchmark.data.histories import user_histories
    from benchmark.models.components.listwise_icl import example_pool

    pool = example_pool(loo_split, 3, 3.0, 5, seed=4)
    full = user_histories(loo_split, 10_000, 3.0)  # every train item, oldest first
    train = loo_split.train
    assert len(pool.users) == sum(len(h) >= 2 for h, _ in full) > 0
    for p, u in enumerate(pool.users):
        items, likes = full[u]
        assert pool.answer[p] == items[-1]  # by definition: the user's last train item
        assert pool.hist[p] == tuple(items[-4:-1]) and pool.likes[p] == tuple(likes[-4:-1])
        assert len(pool.shown[p]) == 5 and len(set(pool.shown[p].tolist())) == 5 and items[-1] in pool.shown[p]
        seen = set(train.loc[train["user"] == u, "item"].tolist())
        assert not (set(pool.shown[p].tolist()) - {items[-1]}) & seen  # negatives: never in the user's train part
    again = example_pool(loo_split, 3, 3.0, 5, seed=4)
    assert all((a == b).all() for a, b in zip(pool.shown, again.shown, strict=True))
    other = example_pool(loo_split, 3, 3.0, 5, seed=5)
    assert any((a != b).any() for a, b in zip(pool.shown, other.shown, strict=True))


def test_example_pool_reads_no_valid_or_test_row(loo_split):
    import dataclasses

    from benchmark.models.components.listwise_icl import example_pool

    pool = example_pool(loo_split, 3, 3.0, 5, seed=4)
    parts = {**loo_split.parts, "valid": loo_split.valid.iloc[:0], "test": loo_split.test.iloc[:0]}
    hidden = dataclasses.replace(loo_split, parts=parts)
    other = example_pool(hidden, 3, 3.0, 5, seed=4)
    assert (pool.users == other.users).all() and pool.hist == other.hist and (pool.answer == other.answer).all()
    assert all((a == b).all() for a, b in zip(pool.shown, other.shown, strict=True))


def test_random_examples_are_shared_and_similar_ones_are_the_nearest_other_users(loo_split):
    from benchmark.models.components.icl import history_vectors
    from benchmark.models.components.listwise_icl import choose, example_pool, fixed_choice

    pool = example_pool(loo_split, 3, 3.0, 5, seed=4)
    fixed = fixed_choice(pool, 2, seed=1)
    assert len(fixed) == 3
    outsider = next(u for u in range(loo_split.n_users) if u not in set(pool.users[fixed].tolist()))
    assert choose("random", 2, pool, outsider, fixed).tolist() == fixed[:2].tolist()
    member = int(pool.users[fixed[0]])  # a drawn user never gets itself: it takes the next draw
    assert choose("random", 2, pool, member, fixed).tolist() == fixed[1:3].tolist()
    g = np.random.default_rng(0)
    vectors = g.normal(size=(loo_split.n_items, 6)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pv = history_vectors(pool.hist, vectors)
    user = int(pool.users[0])
    query = pv[0]  # a user whose history equals its own example's: its own entry must be skipped
    sims = pv @ query
    sims[0] = -np.inf
    by_hand = np.argsort(-sims, kind="stable")[:2][::-1]  # the two nearest, nearest last
    assert choose("similar", 2, pool, user, fixed, query, pv).tolist() == by_hand.tolist()


def test_rerank_prompt_shows_the_examples_with_their_answers_before_the_user(loo_split, yesno_data, rerank_lm, tmp_path):
    m = _rerank(loo_split, yesno_data, rerank_lm, tmp_path, history=10, icl_shots=2, icl_candidates=4, icl_history=3)
    plain = _rerank(loo_split, yesno_data, rerank_lm, tmp_path, history=10)
    shown = m.candidates[0][:5]
    examples = m._examples_for(0)
    assert len(examples) == 2
    for fields, answer in examples:
        listed = fields["candidates"]
        assert answer in listed and listed.count(m.template.item_sep) == 3  # 4 candidates, the answer among them
    shots = "".join(m.template.render(f, ()) + a + m.template.example_sep for f, a in examples)
    assert m._render(0, shown) == shots + plain._render(0, shown)  # solved examples, then the user's own prompt
    scores = m.score(torch.tensor([0, 1]))
    assert torch.isfinite(scores[:, :5]).all()
    llm = m.prediction_facts()["llm"]
    assert (llm["icl_shots"], llm["icl_select"]) == (2, "random")  # as TALLRec records them
    icl = llm["icl"]
    assert icl["shots"] == 2 and icl["select"] == "random" and icl["candidates"] == 4 and icl["history"] == 3
    assert len(icl["drawn_users"]) == 3 and icl["pool_users"] > 3
    budget = _length(m, m._text([], [], shown, examples))  # the examples count: no history item fits
    tight = _rerank(loo_split, yesno_data, rerank_lm, tmp_path, history=10, icl_shots=2, icl_candidates=4, icl_history=3, history_budget=budget)
    assert tight._fit_history(*tight.histories[0], shown, tight._examples_for(0)) == ([], [])
    alone = _rerank(loo_split, yesno_data, rerank_lm, tmp_path, history=10, history_budget=budget)
    assert len(alone._fit_history(*alone.histories[0], shown)[0]) > 0  # without examples, items fit


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"icl_shots": 2, "icl_select": "balanced"}, "icl_select=balanced: a listwise example has no like/dislike label"),
        ({"icl_shots": 2, "icl_select": "best"}, "model.module.icl_select: unknown strategy 'best'"),
        ({"icl_shots": 9}, r"model.module.icl_shots: an integer in 0..8, got 9"),
        ({"icl_shots": 1, "icl_candidates": 1}, r"model.module.icl_candidates: an integer in 2..50"),
        ({"icl_shots": 1, "icl_history": 0}, r"model.module.icl_history: an integer in 1..50"),
    ],
)
def test_bad_example_settings_are_one_line(kw, message, loo_split, yesno_data, rerank_lm, tmp_path):
    with pytest.raises(ConfigError, match=message) as e:
        _rerank(loo_split, yesno_data, rerank_lm, tmp_path, **kw)
    assert len(str(e.value).splitlines()) == 1


def test_smoothed_int8_calibrates_the_reranker_on_train_prompts_only(loo_split, yesno_data, rerank_lm, tmp_path, monkeypatch):
    import dataclasses

    import benchmark.models.llm_rerank as llm_rerank
    from benchmark.models.components.listwise_icl import example_pool
    from benchmark.models.components.precision import apply_precision
    from tests.unit.test_precision import option

    seen: list[list[int]] = []
    real = llm_rerank.shared_prefix_logprobs

    def spy(lm, prompts, tails, pad, **kwargs):
        seen.extend([list(p) for p in prompts])
        return real(lm, prompts, tails, pad, **kwargs)

    monkeypatch.setattr(llm_rerank, "shared_prefix_logprobs", spy)
    m = _rerank(loo_split, yesno_data, rerank_lm, tmp_path, history=4)
    facts = m.calibrate(6)
    assert facts["part"] == "train" and facts["rows"] == len(seen) == 6
    assert m._token_stats == [0, 0, 0] and m.example_prompt == ""  # the evaluation's counts untouched
    # each prompt is a train user's history before its last train item, listing that item among its candidates
    pool = example_pool(loo_split, 4, 3.0, 5, 0)
    expected = {m.tokenizer.decode(m.tokenizer(m._text(pool.hist[p], pool.likes[p], pool.shown[p]))["input_ids"])
                for p in range(len(pool.users))}
    texts = [m.tokenizer.decode(p) for p in seen]
    assert set(texts) <= expected
    # the same calibration when valid and test change entirely (nothing of them is read)
    rng = np.random.default_rng(0)
    swapped = {k: v if k == "train" else v.assign(item=rng.permutation(v["item"].to_numpy())) for k, v in loo_split.parts.items()}
    assert not swapped["test"]["item"].equals(loo_split.test["item"])
    seen.clear()
    m2 = _rerank(dataclasses.replace(loo_split, parts=swapped), yesno_data, rerank_lm, tmp_path / "other", history=4)
    assert m2.calibrate(6) == facts and [m2.tokenizer.decode(p) for p in seen] == texts
    # the option applies: smoothing calibrated on min(64, train users) prompts, int8 layers, finite scores
    applied = apply_precision(m, option("int8_smooth"))
    cal = applied["smoothing"]["calibration"]
    assert cal["part"] == "train" and cal["rows"] == min(64, len(pool.users)) and applied["linear_quantized"] > 0
    scores = m.score(torch.tensor([0, 1]))
    assert torch.isfinite(scores[:, :5]).all()
    assert m.prediction_facts()["llm"]["precision"]["smoothing"]["calibration"] == cal


def test_rerank_runs_the_prompts_shared_examples_once_with_the_scores_of_whole_prompts(loo_split, yesno_data, rerank_lm, tmp_path):
    """Fixed in-context examples: every user's prompt starts with the instruction and the examples;
    with prefix reuse they run once for the run (two batches of users here), and every candidate's
    score equals the one from whole prompts."""
    kw = {"history": 10, "icl_shots": 2, "icl_candidates": 4, "icl_history": 3, "user_batch_size": 2}
    shared = _rerank(loo_split, yesno_data, rerank_lm, tmp_path, **kw)
    whole = _rerank(loo_split, yesno_data, rerank_lm, tmp_path, prefix_reuse=False, **kw)
    users = torch.tensor([0, 1, 2, 3])
    a, b = shared.score(users), whole.score(users)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-5) and torch.isfinite(a[:, :5]).all()
    p = shared.prompt_prefix
    seqs = [shared.tokenizer(shared._prompt(u, shared.candidates[u][:5], shared.prompt_order(u, 5)))["input_ids"] for u in range(4)]
    from benchmark.models.components.llm import common_prefix_length

    assert p.computed == 1 and len(p.tokens) == common_prefix_length(seqs) >= p.min_tokens
    assert p.reused_tokens == 3 * len(p.tokens)  # four prompts, the prefix run for the first only
    assert whole.prompt_prefix is None


def test_prefix_reuse_bench_times_the_reranker_with_and_without_the_run_wide_prefix(loo_split, yesno_data, rerank_lm, tmp_path):
    """The bench's reranker workload: the same users scored both ways, the prompt tokens the LM ran
    (the prefix once instead of once per user), and scores equal to 1e-5."""
    from benchmark.bench.prefix_reuse import rerank
    from benchmark.models.components.llm import common_prefix_length

    m = _rerank(loo_split, yesno_data, rerank_lm, tmp_path, history=10, icl_shots=2, icl_candidates=4, icl_history=3,
                user_batch_size=2).eval()
    users = [0, 1, 2, 3, 4]
    out = rerank(m, users)
    seqs = [m.tokenizer(m._prompt(u, m.candidates[u][:5], m.prompt_order(u, 5)))["input_ids"] for u in users]
    total = sum(len(q) for q in seqs)
    assert out["users"] == 5 and out["prompt_tokens_mean"] == round(total / 5, 1)
    assert out["plain"]["prompt_tokens_run"] == total
    assert out["prefix_tokens"] == common_prefix_length(seqs) > 0
    assert out["reuse"]["prompt_tokens_run"] == total - 4 * out["prefix_tokens"]  # run once, not 5 times
    assert out["max_abs_score_diff"] <= 1e-5
    assert out["speedup"] == round(out["plain"]["seconds"] / out["reuse"]["seconds"], 2)
