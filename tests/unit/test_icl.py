"""In-context example selection (model.module.icl_select) against hand-computed choices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.data.shots import draw_rows
from benchmark.errors import ConfigError
from benchmark.models.components import icl


def test_random_is_the_original_draw_and_balanced_alternates_likes_and_dislikes():
    labels = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1])
    assert icl.fixed_examples("random", 4, labels, 7).tolist() == draw_rows(10, 4, 7, stream=1).tolist()
    rows = icl.fixed_examples("balanced", 5, labels, 7)
    assert labels[rows].tolist() == [1, 0, 1, 0, 1] and len(set(rows.tolist())) == 5
    assert icl.fixed_examples("balanced", 5, labels, 7).tolist() == rows.tolist()  # seeded
    with pytest.raises(ConfigError, match="balanced examples need 3 liked and 2 disliked"):
        icl.fixed_examples("balanced", 5, np.array([1, 1, 0, 1]), 0)
    with pytest.raises(ConfigError, match="model.module.icl_select: unknown strategy 'best'"):
        icl.check_strategy("best")


def test_similar_takes_the_nearest_histories_nearest_last_and_never_the_row_itself():
    s = 1 / np.sqrt(2)
    train = np.array([[1, 0], [s, s], [0, 1], [1, 0], [-1, 0]], dtype=np.float32)
    query = np.array([1, 0], dtype=np.float32)
    # cosines: 1, .707, 0, 1, -1 -> order 0, 3 (tie: lower position first), 1, 2, 4
    assert icl.per_row_examples("similar", 3, query, train, np.zeros(0, np.int64)).tolist() == [1, 3, 0]
    assert icl.per_row_examples("similar", 2, query, train, np.array([0])).tolist() == [1, 3]


def test_diverse_trades_similarity_for_redundancy_by_mmr():
    # row 1 is closest to the query, row 0 nearly duplicates it, row 2 is less close but different
    train = np.array([[1.0, 0.0], [0.99, 0.14], [0.5, 0.866]], dtype=np.float32)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    query = np.array([0.9, 0.44], dtype=np.float32)
    query /= np.linalg.norm(query)
    # by hand: sims ~ (0.898, 0.950, 0.829): MMR step 1 takes row 1; step 2, 0.5 * sim - 0.5 * sim(c, row 1):
    # row 0: 0.449 - 0.495 = -0.046, row 2: 0.415 - 0.308 = 0.106 -> row 2; shown first-chosen last
    assert icl.per_row_examples("diverse", 2, query, train, np.zeros(0, np.int64)).tolist() == [2, 1]
    assert icl.per_row_examples("similar", 2, query, train, np.zeros(0, np.int64)).tolist() == [0, 1]


def test_history_vectors_are_normalised_means():
    items = np.array([[3.0, 0.0], [0.0, 4.0], [1.0, 1.0]], dtype=np.float32)
    v = icl.history_vectors([[0, 1], [], [2]], items)
    assert np.allclose(v[0], np.array([1.5, 2.0]) / 2.5) and np.allclose(v[1], 0) and np.allclose(v[2], [2**-0.5] * 2)


def _tallrec(split, data, lm, select, monkeypatch):
    import benchmark.models.components.item_text as item_facts
    from benchmark.models.tallrec import TallRec
    from tests.unit.test_tallrec import load_prompt

    g = np.random.default_rng(0)
    vectors = g.normal(size=(split.n_items, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    monkeypatch.setattr(item_facts, "text_embeddings", lambda data, ids: (vectors, {"key": "test"}))
    return TallRec(
        split, data, backbone=str(lm), prompt=load_prompt("tallrec"), lora=None, shots=16,
        icl_shots=2, icl_select=select, seed=0, dtype="float32",
    ), vectors


def test_tallrec_similar_examples_are_train_rows_chosen_per_row(yesno_split, yesno_data, yesno_lm, monkeypatch):
    model, vectors = _tallrec(yesno_split, yesno_data, yesno_lm, "similar", monkeypatch)
    _, hist, likes, labels = model._train
    train_vecs = icl.history_vectors(hist, vectors)
    test = yesno_split.test
    prompts, chosen = [], set()
    for u, i in zip(test["user"][:4], test["item"][:4], strict=True):
        row_hist = model._user_rows[int(u)][0]
        expected = icl.per_row_examples("similar", 2, icl.history_vectors([row_hist], vectors)[0], train_vecs, np.zeros(0, np.int64))
        text = model._prompt(int(u), int(i))
        shown = [model.template.render(*model._example(int(r))[:1]) + model._example(int(r))[1] for r in expected]
        assert all(s in text for s in shown)  # both chosen train rows precede the row
        prompts.append(text)
        chosen.add(tuple(expected.tolist()))
    assert len(chosen) > 1  # the examples differ from row to row
    # a train row's own prompt (training, calibration) never shows itself
    r = 0
    own = model._render(hist[r], likes[r], int(model._train[0][r]), (r,))
    assert model.template.render(*model._example(r)[:1]) + model._example(r)[1] not in own
    p = model.p_yes(prompts)
    facts = model.prediction_facts()["llm"]
    assert torch.isfinite(p).all() and facts["icl_select"] == "similar" and facts["icl_rows"] == []
    lengths = [len(s) for s in model._tokens(prompts)]
    assert facts["prompt_tokens"] == {"prompts": 4, "mean": round(sum(lengths) / 4, 2), "max": max(lengths)}


def test_tallrec_balanced_examples_are_shared_and_recorded(yesno_split, yesno_data, yesno_lm, monkeypatch):
    model, _ = _tallrec(yesno_split, yesno_data, yesno_lm, "balanced", monkeypatch)
    assert model._train[3][model.icl_rows].tolist() == [1, 0]
    facts = model.prediction_facts()["llm"]
    assert facts["icl_select"] == "balanced" and facts["icl_rows"] == model.icl_rows.tolist()
    assert "icl_encoder" not in facts


@pytest.mark.parametrize("name", ["tallrec", "tallrec_role", "tallrec_json", "tallrec_terse"])
def test_template_pool_scores_and_records_its_id_and_length(name, yesno_split, yesno_data, yesno_lm):
    from benchmark.models.tallrec import TallRec
    from tests.unit.test_tallrec import load_prompt

    template = load_prompt(name)
    assert {"liked", "disliked", "target"} <= template.fields and template.answers == ["Yes.", "No."]
    model = TallRec(yesno_split, yesno_data, backbone=str(yesno_lm), prompt=template, lora=None, shots=16, seed=0, dtype="float32")
    test = yesno_split.test
    texts = [model._prompt(int(u), int(i)) for u, i in zip(test["user"][:3], test["item"][:3], strict=True)]
    assert all(model.texts[int(i)] in t for t, i in zip(texts, test["item"][:3], strict=True))  # the target is shown
    p = model.p_yes(texts)
    assert torch.isfinite(p).all()
    facts = model.prediction_facts()["llm"]
    assert facts["prompt"]["name"] == name and len(facts["prompt"]["sha256"]) == 64
    bare = template.render({f: "" for f in template.fields})
    assert facts["template_tokens"] == len(model.tokenizer(bare)["input_ids"]) > 0
    assert facts["prompt_tokens"]["max"] >= facts["prompt_tokens"]["mean"] > facts["template_tokens"]


def _history_model(split, data, lm, monkeypatch, **kw):
    import benchmark.models.components.item_text as item_facts
    from benchmark.models.tallrec import TallRec
    from tests.unit.test_tallrec import load_prompt

    g = np.random.default_rng(1)
    vectors = g.normal(size=(split.n_items, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    monkeypatch.setattr(item_facts, "text_embeddings", lambda data, ids: (vectors, {"key": "test"}))
    prompt = kw.pop("prompt", None) or load_prompt("tallrec")
    model = TallRec(split, data, backbone=str(lm), prompt=prompt, lora=None, shots=16, seed=0, dtype="float32", **kw)
    return model, vectors


def _length(model, text):
    return len(model.tokenizer(text, add_special_tokens=True)["input_ids"])


def test_history_budget_keeps_the_most_recent_items_that_fit(yesno_split, yesno_data, yesno_lm, monkeypatch):
    full, _ = _history_model(yesno_split, yesno_data, yesno_lm, monkeypatch)
    u, i = int(yesno_split.test["user"].iloc[0]), int(yesno_split.test["item"].iloc[0])
    hist, likes = full._user_rows[u]
    assert len(hist) == 10
    lengths = [_length(full, full.template.render(full._fields(hist[n:], likes[n:], i))) for n in range(11)]
    budget = (lengths[6] + lengths[5]) // 2  # the last 4 items fit, the last 5 do not
    assert lengths[6] <= budget < lengths[5]
    model, _ = _history_model(yesno_split, yesno_data, yesno_lm, monkeypatch, history_budget=budget)
    text = model._prompt(u, i)
    assert text == full.template.render(full._fields(hist[6:], likes[6:], i)) and _length(model, text) <= budget
    facts = model.prediction_facts()["llm"]["history_fit"]
    assert facts == {"select": "recent", "budget_tokens": budget, "rows": 1, "items_offered_mean": 10.0,
                     "items_kept_mean": 4.0, "rows_over_budget_without_history": 0}


def test_relevant_history_keeps_the_items_nearest_the_target_in_time_order(yesno_split, yesno_data, yesno_lm, monkeypatch):
    full, vectors = _history_model(yesno_split, yesno_data, yesno_lm, monkeypatch)
    u, i = int(yesno_split.test["user"].iloc[0]), int(yesno_split.test["item"].iloc[0])
    hist, likes = full._user_rows[u]
    sims = vectors[np.asarray(hist)] @ vectors[i]
    top2 = sorted(np.argsort(-sims, kind="stable")[:2].tolist())  # by hand: the two most similar, in time order
    n2 = _length(full, full.template.render(full._fields([hist[j] for j in top2], [likes[j] for j in top2], i)))
    model, _ = _history_model(yesno_split, yesno_data, yesno_lm, monkeypatch, history_select="relevant", history_budget=n2)
    kept_hist, kept_likes = model._fit_history(hist, likes, i, [])
    assert kept_hist == [int(hist[j]) for j in top2]
    no_budget, _ = _history_model(yesno_split, yesno_data, yesno_lm, monkeypatch, history_select="relevant")
    assert no_budget._prompt(u, i) == full._prompt(u, i)  # the whole history, in time order, either way


def test_summary_history_keeps_recent_items_and_summarizes_the_rest(yesno_split, yesno_data, yesno_lm, monkeypatch, tmp_path):
    from tests.unit.test_tallrec import load_prompt

    monkeypatch.setenv("LLM4REC_CACHE", str(tmp_path))
    template = load_prompt("tallrec_summary")
    full, _ = _history_model(yesno_split, yesno_data, yesno_lm, monkeypatch)
    u, i = int(yesno_split.test["user"].iloc[0]), int(yesno_split.test["item"].iloc[0])
    hist, likes = full._user_rows[u]
    model, _ = _history_model(yesno_split, yesno_data, yesno_lm, monkeypatch, history_select="summary", history_budget=400, prompt=template)
    lengths = [_length(model, template.render({**model._fields(hist[n:], likes[n:], i), "summary": "(none)"})) for n in range(11)]
    budget = lengths[6] + model.summary_tokens  # the last 4 items fit beside a summary, 5 do not
    assert lengths[5] > lengths[6]
    model.history_budget = budget
    text = model._prompt(u, i)
    # by hand: the 6 oldest items summarized by greedy generation, the 4 most recent shown
    left_liked = template.items([model.texts[int(x)] for x, lk in zip(hist[:6], likes[:6], strict=True) if lk])
    left_disliked = template.items([model.texts[int(x)] for x, lk in zip(hist[:6], likes[:6], strict=True) if not lk])
    prompt = model.summary_prompt.format(liked=left_liked or "(none)", disliked=left_disliked or "(none)")
    ids = torch.as_tensor([model.tokenizer(prompt)["input_ids"]])
    gen = model.lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=model.summary_tokens, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    summary = " ".join(model.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).split("\n\n")[0].split())
    assert text == template.render({**model._fields(hist[6:], likes[6:], i), "summary": summary})
    facts = model.prediction_facts()["llm"]["history_fit"]["summaries"]
    assert (facts["asked"], facts["generated"], facts["from_disk_cache"]) == (1, 1, 0)
    # a second model reads the same summary from the disk cache
    other, _ = _history_model(yesno_split, yesno_data, yesno_lm, monkeypatch, history_select="summary", history_budget=budget, prompt=template)
    again = other._prompt(u, i)
    assert again == text, (again, text)
    assert other._summary_stats == [1, 0, 0]  # its own example prompt read the disk; this row, its memory
    with pytest.raises(ConfigError, match="needs model.module.history_budget and a template with a {summary} field"):
        _history_model(yesno_split, yesno_data, yesno_lm, monkeypatch, history_select="summary")


@pytest.mark.parametrize("kw, needle", [
    ({"history_select": "oldest"}, "model.module.history_select: unknown 'oldest'"),
    ({"history_budget": 4}, "model.module.history_budget"),
    ({"icl_select": "best", "icl_shots": 1}, "model.module.icl_select"),
])
def test_bad_prompt_settings_are_one_line(kw, needle, yesno_split, yesno_data, yesno_lm, monkeypatch):
    with pytest.raises(ConfigError, match=needle) as e:
        _history_model(yesno_split, yesno_data, yesno_lm, monkeypatch, **kw)
    assert "\n" not in str(e.value)


def test_prompt_ablation_experiments_launch_the_documented_grid():
    """The template axis (four templates, random examples, seed 1) and the selection axis (random and
    balanced with seeds 1-3; similar and diverse on the command line) compose to the jobs their
    files describe, each a zero-shot TALLRec-style scorer with two examples on tallrec_movie."""
    from benchmark.compose import compose_expanded, expand_overrides
    from benchmark.launch import sweep_jobs

    def grid(*overrides):
        out = []
        for job in sweep_jobs(expand_overrides(list(overrides))):
            cfg = compose_expanded(job)
            assert (cfg.split.protocol, cfg.eval.protocol, cfg.model.name) == ("tallrec_movie", "labeled", "tallrec_zeroshot")
            assert cfg.model.module.icl_shots == 2 and cfg.model.module.lora is None and cfg.skip_existing
            out.append((cfg.model.prompt.name, cfg.model.module.icl_select, cfg.seed))
        return out

    assert grid("experiment=prompt_templates_tallrec_movie") == [
        (name, "random", 1) for name in ("tallrec", "tallrec_role", "tallrec_json", "tallrec_terse")
    ]
    assert sorted(grid("experiment=prompt_selection_tallrec_movie")) == [
        ("tallrec", s, seed) for s in ("balanced", "random") for seed in (1, 2, 3)
    ]
    assert grid("experiment=prompt_selection_tallrec_movie", "model.module.icl_select=similar,diverse", "seed=1") == [
        ("tallrec", "similar", 1), ("tallrec", "diverse", 1)
    ]


def test_history_and_pool_experiments_launch_the_documented_runs():
    from benchmark.compose import compose_expanded, expand_overrides
    from benchmark.launch import sweep_jobs

    jobs = [compose_expanded(j) for j in sweep_jobs(expand_overrides(["experiment=prompt_history_tallrec_movie"]))]
    assert [(c.model.module.history_select, c.model.module.history_budget, c.model.prompt.name) for c in jobs] == [
        ("recent", 176, "tallrec"), ("relevant", 176, "tallrec")
    ]
    (summary,) = [compose_expanded(j) for j in sweep_jobs(expand_overrides([
        "experiment=prompt_history_tallrec_movie", "model.module.history_select=summary", "prompt@model.prompt=tallrec_summary"]))]
    assert (summary.model.module.history_select, summary.model.prompt.name) == ("summary", "tallrec_summary")
    pool = [compose_expanded(j) for j in sweep_jobs(expand_overrides(["experiment=prompt_pool_tallrec_movie"]))]
    assert sorted((c.model.module.bandit, c.seed) for c in pool) == [(b, s) for b in ("linucb", "thompson") for s in (1, 2, 3)]
    assert all(c.model.module.score_cache and c.model.module.compare and c.split.protocol == "tallrec_movie" for c in pool)
