"""TALLRec-style LLM recommender: the tallrec_movie protocol, prompts, scoring, LoRA, shots, reranking.

Everything but the SmolLM2 test runs on a tiny randomly initialised Llama with a word-level
tokenizer (``make_tiny_lm``), built in a temporary folder and loaded by local path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.config import DataConfig, SplitConfig
from benchmark.data.histories import row_histories
from benchmark.data.loading import load_dataset
from benchmark.data.splits import build_split, build_tallrec_movie
from benchmark.errors import ConfigError
from benchmark.models.components.llm import (
    continuation_logprobs,
    left_pad,
    load_causal_lm,
    next_token_logits,
    shared_prefix_logprobs,
)
from benchmark.models.components.prompts import PromptTemplate, answer_token_ids, item_texts
from benchmark.models.tallrec import TallRec

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- helpers


def load_prompt(name: str) -> PromptTemplate:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    return instantiate(OmegaConf.load(REPO / "configs" / "prompt" / f"{name}.yaml"))


def make_tiny_lm(directory: Path, texts: list[str], seed: int = 0) -> Path:
    """A randomly initialised 2-layer Llama with a word-level tokenizer over ``texts``, saved to ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]+", t)})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=None,
        tie_word_embeddings=True,  # as SmolLM2: lm_head shares the embedding matrix
    )
    model = LlamaForCausalLM(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def template_words(*names: str) -> list[str]:
    out = []
    for n in names:
        t = load_prompt(n)
        out += [t.instruction, t.input, t.layout, *t.answers, "(none)"]
    return out


@pytest.fixture(scope="module")
def tiny_data(yesno_data):
    return yesno_data  # 12 users x 30 titled items (tests/unit/yesno_fixtures.py)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, tiny_data):
    titles = [f"Title {i}" for i in range(30)]
    return make_tiny_lm(tmp_path_factory.mktemp("lm"), template_words("tallrec", "rerank_listwise") + titles)


@pytest.fixture(scope="module")
def tiny_split(tiny_data):
    return build_split(tiny_data, SplitConfig(protocol="temporal"))


def tallrec(split, data, lm, **kw):
    kw.setdefault("prompt", load_prompt("tallrec"))
    kw.setdefault("lora", {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    kw.setdefault("shots", 16)
    kw.setdefault("seed", 0)
    return TallRec(split, data, backbone=str(lm), **kw)


# ----------------------------------------------------------------------------- tallrec_movie protocol


@pytest.fixture(scope="module")
def movie():
    data = load_dataset(DataConfig(name="ml-100k", source="bundled"))
    return data, build_tallrec_movie(data, SplitConfig(protocol="loo"))


def reference_rows(inter):
    """TALLRec's construction written out plainly (dicts in first-appearance order, stable sort)."""
    per_user: dict[str, list] = {}
    for j, (u, i, r, t) in enumerate(
        zip(inter["user"], inter["item"], inter["rating"], inter["timestamp"], strict=True)
    ):
        per_user.setdefault(u, []).append((i, int(r > 3), t, j, r))
    rows = []
    for seq in per_user.values():
        seq = sorted(seq, key=lambda x: x[2])
        for k in range(10, len(seq)):
            rows.append(([x[0] for x in seq[k - 10 : k]], [x[1] for x in seq[k - 10 : k]], seq[k]))
    return rows[-10000:]


def test_tallrec_movie_counts(movie):
    _, s = movie
    assert s.protocol == "tallrec_movie"
    assert (len(s.train), len(s.valid), len(s.test)) == (8000, 1000, 1000)
    assert int(s.test["label"].sum()) == 528 and int(s.valid["label"].sum()) == 658
    assert (s.n_users, s.n_items) == (943, 1682)  # indices over the whole catalogue
    for part in ("train", "valid", "test"):
        df = s.parts[part]
        assert {"user", "item", "rating", "timestamp", "row", "history", "history_likes", "label"} <= set(
            df.columns
        )
        assert df["history"].map(len).eq(10).all() and df["history_likes"].map(len).eq(10).all()


def test_tallrec_movie_rows_follow_the_published_construction(movie):
    data, s = movie
    ref = reference_rows(data.inter)
    rows = [s.parts[p] for p in ("train", "valid", "test")]
    ours = [(df, k) for df in rows for k in range(len(df))]
    assert len(ours) == len(ref) == 10000
    inter = data.inter
    for (df, k), (hist, likes, target) in zip(ours, ref, strict=True):
        r = df.iloc[k]
        assert r["row"] == target[3] and s.item_ids[r["item"]] == target[0]
        assert r["label"] == target[1] == int(inter["rating"].iloc[r["row"]] > 3)
        assert list(s.item_ids[list(r["history"])]) == hist
        assert list(r["history_likes"]) == likes
    # Users and items are indexed by position in the sorted raw ids.
    assert list(s.user_ids) == sorted(s.user_ids) and list(s.item_ids) == sorted(s.item_ids)


def test_tallrec_movie_is_a_value_and_checks_its_labels(movie):
    data, s = movie
    again = build_tallrec_movie(data, SplitConfig(protocol="loo"))
    assert again.fingerprint == s.fingerprint
    shorter = build_tallrec_movie(data, SplitConfig(protocol="loo", history=5))
    assert shorter.fingerprint != s.fingerprint
    with pytest.raises(ConfigError, match="label_threshold"):
        build_tallrec_movie(data, SplitConfig(protocol="loo", label_threshold=3.0))
    hist, likes = row_histories(s, "test")
    assert hist[0] == s.test["history"].iloc[0] and likes[0] == s.test["history_likes"].iloc[0]


def test_histories_of_other_splits_are_leak_free(tiny_split):
    s = tiny_split
    tr = s.train.assign(pos=np.arange(len(s.train)))
    hist, likes = row_histories(s, "test", length=10)
    for k, u in enumerate(s.test["user"]):
        mine = tr[tr["user"] == u].sort_values(["timestamp", "row"], kind="stable").tail(10)
        assert list(hist[k]) == mine["item"].tolist()
        assert list(likes[k]) == (mine["rating"] > 3).astype(int).tolist()
    thist, _ = row_histories(s, "train", length=10)
    for k in range(len(tr)):
        r = tr.iloc[k]
        before = tr[
            (tr["user"] == r["user"])
            & (
                (tr["timestamp"] < r["timestamp"])
                | ((tr["timestamp"] == r["timestamp"]) & (tr["row"] < r["row"]))
            )
        ]
        assert (
            list(thist[k])
            == before.sort_values(["timestamp", "row"], kind="stable").tail(10)["item"].tolist()
        )


# ----------------------------------------------------------------------------- prompts and tokens


def test_item_texts_and_prompt_validation():
    import pandas as pd

    items = pd.DataFrame(
        {"t": ["Toy Story", "Heat", ""], "y": ["1995", "unknown", "1990"]}, index=pd.Index(["1", "2", "3"])
    )
    assert item_texts(items, {"title": "t", "year": "y"}, ["1", "2", "3", "4"], "{title} ({year})") == [
        "Toy Story (1995)",
        "Heat",
        "3",
        "4",
    ]
    with pytest.raises(ConfigError, match="layout"):
        PromptTemplate(name="x", instruction="i", input="{target}", layout="{instruction}")
    with pytest.raises(ConfigError, match="answers"):
        PromptTemplate(name="x", instruction="i", input="{target}", answers=["Yes.", "Yes."])


def test_answer_token_ids_are_derived_from_the_tokenizer(tiny_lm):
    tok = load_causal_lm(str(tiny_lm)).tokenizer
    assert answer_token_ids(tok, "### Response:\n", ["Yes.", "No."]) == [
        tok.convert_tokens_to_ids("Yes"),
        tok.convert_tokens_to_ids("No"),
    ]
    with pytest.raises(ConfigError, match="merges"):
        answer_token_ids(tok, "Response", ["Yes.", "No."])  # "ResponseYes" is one word


def test_score_is_the_yes_no_softmax_at_the_answer_position(tiny_split, tiny_data, tiny_lm):
    m = tallrec(tiny_split, tiny_data, tiny_lm).eval()
    u, i = int(tiny_split.test["user"].iloc[0]), int(tiny_split.test["item"].iloc[0])
    prompt = m._prompt(u, i)
    assert prompt.endswith("### Response:\n") and "Title" in prompt
    ids = torch.as_tensor([m.tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        logits = m.lm(input_ids=ids).logits[0, -1]
    yes, no = m.answer_ids
    manual = torch.softmax(torch.stack([logits[yes], logits[no]]), dim=0)[0]
    got = m.score_pairs(torch.tensor([u]), torch.tensor([[i]]))
    assert got.shape == (1, 1) and got[0, 0].item() == pytest.approx(manual.item(), abs=1e-6)
    assert m.outputs_probabilities


def test_chain_of_thought_scores_the_answer_after_the_reasoning_and_the_cue(tiny_split, tiny_data, tiny_lm):
    cot = load_prompt("tallrec_cot")
    m = tallrec(tiny_split, tiny_data, tiny_lm, prompt=cot, lora=None).eval()
    test = tiny_split.test
    pairs = [(int(u), int(i)) for u, i in zip(test["user"][:3], test["item"][:3], strict=True)]
    got = m.score_pairs(torch.tensor([u for u, _ in pairs]), torch.tensor([[i] for _, i in pairs]))
    yes, no = m.answer_ids
    for k, (u, i) in enumerate(pairs):
        prompt = m._prompt(u, i)
        assert prompt.endswith("Reasoning:")
        ids = torch.as_tensor([m.tokenizer(prompt)["input_ids"]])
        with torch.no_grad():  # the greedy reasoning, written by hand
            gen = m.lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=cot.reasoning_tokens, do_sample=False, pad_token_id=m.tokenizer.pad_token_id)
        reasoning = cot.cut_reasoning(m.tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True))
        assert m._reasoning[(u, i)] == reasoning
        full = torch.as_tensor([m.tokenizer(prompt + reasoning + cot.answer_cue)["input_ids"]])
        with torch.no_grad():
            logits = m.lm(input_ids=full).logits[0, -1]
        manual = torch.softmax(torch.stack([logits[yes], logits[no]]), dim=0)[0]
        assert got[k, 0].item() == pytest.approx(manual.item(), abs=1e-5)
    from benchmark.data.views import labeled_rows

    rows = labeled_rows(tiny_split, "test", 4.0)
    facts = m.row_facts(rows)
    assert len(facts) == len(rows) and facts[0]["reasoning"] == m._reasoning[pairs[0]]
    assert m.prediction_facts()["llm"]["prompt"]["chain_of_thought"]["reasoning_tokens"] == 48
    assert tallrec(tiny_split, tiny_data, tiny_lm).row_facts(rows) is None  # no reasoning, no facts


def test_reasoning_is_cut_at_the_models_own_cue_and_cot_refusals():
    cot = load_prompt("tallrec_cot")
    assert cot.cut_reasoning(" He likes thrillers.\nAnswer: Yes. More") == " He likes thrillers."
    assert cot.cut_reasoning(" no cue here  ") == " no cue here"
    with pytest.raises(ConfigError, match="reasoning_tokens must be 1..512"):
        PromptTemplate(**{**{k: getattr(cot, k) for k in ("name", "instruction", "input", "layout")}, "answer_cue": "A:", "reasoning_tokens": 0})
    with pytest.raises(ConfigError, match="answer_cue must be a non-empty text"):
        PromptTemplate(name="x", instruction="i", input="{target}", answer_cue="  ")


def test_every_yes_no_template_splits_its_answers_with_the_default_backbones_tokenizer():
    """The committed TALLRec-style templates on SmolLM2's byte-level BPE tokenizer (read from the
    offline GGUF package, no weights): each answer starts a new token after the prompt, and after
    the answer cue of a chain-of-thought template (where a cue ending in a space would merge)."""
    from transformers import AutoTokenizer

    from benchmark.models.components.llm import OFFLINE_MODELS, offline_gguf_path

    gguf = offline_gguf_path(OFFLINE_MODELS["smollm2-135m-instruct"])
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    names = sorted(p.stem for p in (REPO / "configs" / "prompt").glob("tallrec*.yaml"))
    assert {"tallrec", "tallrec_cot", "tallrec_chat", "tallrec_terse"} <= set(names)
    for name in names:
        t = load_prompt(name)
        fields = {f: '"Heat (1995)", "Fargo (1996)"' for f in t.fields}
        prompt = t.render(fields, tokenizer=tok)
        if t.chain_of_thought:
            prompt += " The viewer likes crime films." + t.answer_cue
        ids = answer_token_ids(tok, prompt, t.answers)
        assert len(set(ids)) == 2, name
    bad = load_prompt("tallrec_cot")
    with pytest.raises(ConfigError, match="merges"):  # the cue this template had before: "Answer: " + "Yes."
        answer_token_ids(tok, "Reasoning: fine.\nAnswer: ", ["Yes.", "No."])
    assert bad.answers == [" Yes.", " No."] and not bad.answer_cue.endswith(" ")


def test_templates_without_chain_of_thought_hash_as_recorded():
    run = next(iter(sorted((REPO / "results" / "runs").glob("*tallrec-64shot-s1-*"))))
    recorded = json.loads((run / "record.json").read_text())["model"]["llm"]["prompt"]
    assert load_prompt("tallrec").describe()["sha256"] == recorded["sha256"]


def test_left_padding_scores_like_single_rows(tiny_split, tiny_data, tiny_lm):
    m = tallrec(tiny_split, tiny_data, tiny_lm, score_batch_size=8, history=14).eval()
    users = torch.arange(tiny_split.n_users)  # users with different numbers of train items
    items = torch.arange(tiny_split.n_users).unsqueeze(1) % tiny_split.n_items
    lens = {
        len(m.tokenizer(m._prompt(int(u), int(i)))["input_ids"])
        for u, i in zip(users, items[:, 0], strict=True)
    }
    assert len(lens) > 1  # the batch really is padded
    batched = m.score_pairs(users, items)[:, 0]
    m.score_batch_size = 1
    alone = m.score_pairs(users, items)[:, 0]
    assert torch.allclose(batched, alone, atol=1e-5)


def test_shared_prefix_scoring_equals_separate_sequences(tiny_lm):
    lm = load_causal_lm(str(tiny_lm))
    tok = lm.tokenizer
    prompts = [
        tok("Below is an instruction Candidates : Title 1 , Title 2")["input_ids"],
        tok("Candidates : Title 3")["input_ids"],  # shorter: left-padded in the prompt batch
    ]
    texts = [('" Title 1 "', "Title", '" Title 22 " .'), ('" Title 3 "',)]
    conts = [[tok(t, add_special_tokens=False)["input_ids"] for t in ts] for ts in texts]
    shared = shared_prefix_logprobs(lm.model, prompts, conts, tok.pad_token_id)
    with torch.no_grad():
        for got, prompt, cs in zip(shared, prompts, conts, strict=True):
            assert torch.allclose(
                got, continuation_logprobs(lm.model, prompt, cs, tok.pad_token_id), atol=1e-4
            )
    batch = left_pad([[5, 6, 7], [8]], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]] and batch["position_ids"][1].tolist() == [
        0,
        0,
        0,
    ]


# ----------------------------------------------------------------------------- training


def test_lora_trains_only_adapter_parameters(tiny_split, tiny_data, tiny_lm):
    m = tallrec(tiny_split, tiny_data, tiny_lm)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m.train()
    for batch in m.train_dataset(tiny_split, 8, 0):
        loss = m.loss(batch)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
    for n, p in m.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n
    assert any(not torch.equal(p, lora_before[n]) for n, p in m.named_parameters() if n in lora_before)
    # The state dict holds the adapters only and loads back strictly.
    sd = m.state_dict()
    assert set(sd) == trainable  # no frozen weight, tied ones (lm_head = embeddings) included
    fresh = tallrec(tiny_split, tiny_data, tiny_lm)
    fresh.load_state_dict(sd)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in sd.items())


def test_loss_is_cross_entropy_of_the_answer_token(tiny_split, tiny_data, tiny_lm):
    m = tallrec(tiny_split, tiny_data, tiny_lm).eval()
    batch = next(iter(m.train_dataset(tiny_split, 4, 0)))
    assert set(batch["answer"].tolist()) <= set(m.answer_ids)
    with torch.no_grad():
        logits = m.lm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        ).logits[:, -1]
        manual = torch.nn.functional.cross_entropy(logits, batch["answer"])
        assert m.loss(batch).item() == pytest.approx(manual.item(), abs=1e-5)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_split, tiny_data, tiny_lm):
    out = []
    for on in (False, True):
        torch.manual_seed(2)  # LoRA initialisation
        lora = {"r": 4, "alpha": 8, "dropout": 0.2, "target_modules": ["q_proj", "v_proj"]}
        m = tallrec(tiny_split, tiny_data, tiny_lm, lora=lora, gradient_checkpointing=on).train()
        assert m.lm.get_base_model().is_activation_checkpointing == on
        batch = next(iter(m.train_dataset(tiny_split, 4, 0)))
        torch.manual_seed(5)  # dropout masks
        loss = m.loss(batch)
        loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}))
    (l0, g0), (l1, g1) = out
    assert torch.equal(l0, l1) and g0.keys() == g1.keys()
    assert all(torch.equal(g0[n], g1[n]) for n in g0)


def test_shots_are_drawn_from_train_by_seed(tiny_split, tiny_data, tiny_lm):
    m = tallrec(tiny_split, tiny_data, tiny_lm, shots=16)
    n = len(tiny_split.train)
    a, b, c = m.shot_rows(n, 1), m.shot_rows(n, 1), m.shot_rows(n, 2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == len(set(a.tolist())) == 16 and a.max() < n
    # The stream's prompts are exactly those train rows (targets and labels of the train part).
    stream = m.train_dataset(tiny_split, 64, 1)
    items, hist, likes, labels = m._train
    expect = sorted(tuple(m._tokens([m._render(hist[r], likes[r], int(items[r]))])[0]) for r in a)
    assert sorted(tuple(s) for s in stream.sequences) == expect
    yes, no = m.answer_ids
    assert stream.answers.tolist() == [yes if labels[r] else no for r in a]
    assert (
        len(m.shot_rows(n, 0)) == 16
        and len(tallrec(tiny_split, tiny_data, tiny_lm, shots="all").shot_rows(n, 0)) == n
    )
    with pytest.raises(ConfigError, match="shots"):
        tallrec(tiny_split, tiny_data, tiny_lm, shots=0)


def test_zero_shot_and_in_context_examples(tiny_split, tiny_data, tiny_lm):
    zs = tallrec(tiny_split, tiny_data, tiny_lm, lora=None, icl_shots=0)
    assert not any(p.requires_grad for p in zs.parameters()) and zs.state_dict() == {}
    icl = tallrec(tiny_split, tiny_data, tiny_lm, lora=None, icl_shots=2, seed=3)
    again = tallrec(tiny_split, tiny_data, tiny_lm, lora=None, icl_shots=2, seed=3)
    assert icl.icl_rows.tolist() == again.icl_rows.tolist() and icl.icl_rows.max() < len(tiny_split.train)
    u, i = int(tiny_split.test["user"].iloc[0]), int(tiny_split.test["item"].iloc[0])
    p = icl._prompt(u, i)
    assert p.count("### Response:") == 3 and p.endswith(zs._prompt(u, i))
    extra = icl.prediction_facts()["llm"]
    assert (
        extra["icl_shots"] == 2
        and extra["shots"] == 0
        and extra["lora"] is None
        and extra["dequantized"] is False
    )


# ----------------------------------------------------------------------------- reranking


def fake_first_stage(directory: Path, split, fingerprint: str | None = None, protocol: str = "full") -> Path:
    """A run folder like a committed one: record.json + predictions ranking items by index."""
    from benchmark.results.record import encode_predictions

    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        {
            "row": r,
            "user": str(u),
            "targets": [],
            "target_slices": [],
            "ranked": [str(x) for x in split.item_ids[:20]],
        }
        for r, u in enumerate(split.user_ids)
    ]
    (directory / "predictions.jsonl.gz").write_bytes(encode_predictions(lines))
    rec = {
        "run_id": "first-stage",
        "split": {"protocol": split.protocol, "fingerprint": fingerprint or split.fingerprint},
        "eval": {"protocol": protocol, "list_length": 20},
        "model": {"name": "pop"},
        "metrics": {},
        "predictions": {"file": "predictions.jsonl.gz"},
    }
    (directory / "record.json").write_text(json.dumps(rec))
    return directory


def test_rerank_checks_the_first_stage_split(tmp_path, tiny_data, tiny_lm):
    from benchmark.models.llm_rerank import LLMRerank

    split = build_split(tiny_data, SplitConfig(protocol="loo"))
    prompt = load_prompt("rerank_listwise")
    bad = fake_first_stage(tmp_path / "bad", split, fingerprint="0" * 64)
    with pytest.raises(ConfigError, match="same split") as e:
        LLMRerank(split, tiny_data, first_stage=str(bad), backbone=str(tiny_lm), prompt=prompt)
    assert len(str(e.value).splitlines()) == 1
    sampled = fake_first_stage(tmp_path / "sampled", split, protocol="sampled")
    with pytest.raises(ConfigError, match="eval=full"):
        LLMRerank(split, tiny_data, first_stage=str(sampled), backbone=str(tiny_lm), prompt=prompt)
    good = fake_first_stage(tmp_path / "good", split)
    m = LLMRerank(
        split,
        tiny_data,
        first_stage=str(good),
        backbone=str(tiny_lm),
        prompt=prompt,
        top_n=5,
        order="random",
        seed=0,
    )
    scores = m.score(torch.tensor([0, 1]))
    assert scores.shape == (2, split.n_items)
    assert torch.isfinite(scores[:, :5]).all() and torch.isneginf(scores[:, 5:]).all()
    bias = m.prediction_facts()["rerank"]["position_bias"]
    assert len(bias["mean_llm_rank_by_prompt_position"]) == 5
    assert sorted(m.prompt_order(0, 5).tolist()) == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- the real backbone


@pytest.mark.slow
def test_smollm2_dequantized_once_and_reloaded(tmp_path):
    from transformers import AutoModelForCausalLM, GgufConfig

    from benchmark.models.components.llm import OFFLINE_MODELS, offline_gguf_path

    first = load_causal_lm("smollm2-135m-instruct", cache_dir=tmp_path)
    assert first.facts["dequantized"] is True and first.facts["cache"] == "created"
    assert (
        first.facts["backbone"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        and first.facts["params_total"] > 100e6
    )
    second = load_causal_lm("smollm2-135m-instruct", cache_dir=tmp_path)
    assert second.facts["cache"] == "hit"
    (folder,) = (tmp_path / "models").iterdir()
    assert (folder / "model.safetensors").is_file()
    gguf = offline_gguf_path(OFFLINE_MODELS["smollm2-135m-instruct"])
    direct = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    ids = second.tokenizer("### Response:\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(second.model(input_ids=ids).logits, direct(input_ids=ids).logits, atol=1e-5)
    tmpl = load_prompt("tallrec")
    prompt = tmpl.render({"liked": '"Heat (1995)"', "disliked": "", "target": '"Toy Story (1995)"'})
    yes, no = answer_token_ids(second.tokenizer, prompt, tmpl.answers)
    assert second.tokenizer.convert_ids_to_tokens([yes, no]) == ["Yes", "No"]


def test_shared_prefix_next_logits_equal_separate_sequences(tiny_lm):
    from benchmark.models.components.llm import common_prefix_length, shared_prefix_next_logits

    lm = load_causal_lm(str(tiny_lm))
    tok = lm.tokenizer
    prefixes = [tok("Below is an instruction Candidates :")["input_ids"], tok("Title 3")["input_ids"]]
    suffixes = [
        [tok(t, add_special_tokens=False)["input_ids"] for t in ("Title 1 , Title 2", "Title", "")],
        [tok(" Title 22 .", add_special_tokens=False)["input_ids"]],
    ]
    got = shared_prefix_next_logits(lm.model, prefixes, suffixes, tok.pad_token_id)
    with torch.no_grad():
        for g, prefix, ss in zip(got, prefixes, suffixes, strict=True):
            want = next_token_logits(lm.model, left_pad([prefix + q for q in ss], tok.pad_token_id))
            assert g.shape == want.shape and torch.allclose(g, want.float(), atol=1e-5)
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[1], [2]]) == 0 and common_prefix_length([]) == 0


def test_candidate_pairs_score_the_same_with_and_without_prefix_reuse(tiny_split, tiny_data, tiny_lm, monkeypatch):
    """A user's candidate prompts share their history; computing it once per user changes no
    P("Yes") by more than 1e-5, and the prompt-length counts are those of the full prompts."""
    import benchmark.models.components.llm as llm

    calls = []
    real = llm.shared_prefix_next_logits
    monkeypatch.setattr(llm, "shared_prefix_next_logits", lambda m, p, q, pad: calls.append(len(p[0])) or real(m, p, q, pad))
    users = torch.as_tensor(tiny_split.test["user"].to_numpy()[:3])
    items = torch.as_tensor(np.stack([np.arange(5) + k for k in range(3)]))
    shared = tallrec(tiny_split, tiny_data, tiny_lm).eval()
    plain = tallrec(tiny_split, tiny_data, tiny_lm, prefix_reuse=False).eval()
    plain.load_state_dict(shared.state_dict())
    a, b = shared.score_pairs(users, items), plain.score_pairs(users, items)
    assert a.shape == (3, 5) and torch.allclose(a, b, atol=1e-5)
    assert not torch.equal(a[:, 0], a[:, 1])  # the target part differs, so do the scores
    assert shared._token_stats == plain._token_stats
    assert len(calls) == 3 and min(calls) > 10  # once per user, with a real shared prefix


def test_labeled_rows_share_the_instruction_and_fixed_examples_once_per_batch(tiny_split, tiny_data, tiny_lm, monkeypatch):
    """Labeled rows (one pair each) in a batch share the instruction and the run's fixed in-context
    examples: that prefix runs once per scoring batch, P("Yes") moves by at most 1e-5, and with two
    examples the shared prefix is longer than without them by at least the examples' tokens."""
    import benchmark.models.components.llm as llm

    calls = []
    real = llm.shared_prefix_next_logits
    monkeypatch.setattr(llm, "shared_prefix_next_logits", lambda m, p, q, pad: calls.append(len(p[0])) or real(m, p, q, pad))
    test = tiny_split.test.iloc[:10]
    users = torch.as_tensor(test["user"].to_numpy())
    items = torch.as_tensor(test["item"].to_numpy())[:, None]  # [B, 1]: one pair per row, eval=labeled
    prefix, lengths = {}, {}
    for shots in (0, 2):
        shared = tallrec(tiny_split, tiny_data, tiny_lm, lora=None, icl_shots=shots, score_batch_size=4).eval()
        plain = tallrec(tiny_split, tiny_data, tiny_lm, lora=None, icl_shots=shots, score_batch_size=4, prefix_reuse=False).eval()
        plain.load_state_dict(shared.state_dict())
        calls.clear()
        a = shared.score_pairs(users, items)
        assert calls and len(calls) == 3  # 10 rows in batches of 4: once per batch
        b = plain.score_pairs(users, items)
        assert len(calls) == 3  # reuse off: never called
        assert a.shape == (10, 1) and torch.allclose(a, b, atol=1e-5) and a.std() > 0
        assert shared._token_stats == plain._token_stats
        prefix[shots] = min(calls)
        lengths[shots] = len(shared._tokens([shared._prompt(int(users[0]), int(items[0, 0]))])[0])
    # the examples' tokens (the same row's prompt with and without them) all lie in the shared part
    assert prefix[0] > 5 and abs((prefix[2] - prefix[0]) - (lengths[2] - lengths[0])) <= 2


def test_prefix_reuse_bench_measures_both_modes_on_the_same_pairs(tiny_split, tiny_data, tiny_lm):
    """Both workloads of the bench: a user's candidates (C > 1) and labeled rows (C = 1) with fixed
    examples; tokens the LM ran come from the model and equal the shared prefix once + the rest."""
    from benchmark.bench.prefix_reuse import measure
    from benchmark.models.components.llm import common_prefix_length

    m = tallrec(tiny_split, tiny_data, tiny_lm).eval()
    users = torch.as_tensor(tiny_split.test["user"].to_numpy()[:2])
    items = torch.as_tensor(np.stack([np.arange(4), np.arange(4) + 3]))
    out = measure(m, users, items)
    assert out["pairs"] == 8 and m.prefix_reuse is True
    seqs = m._tokens([m._prompt(int(u), int(i)) for u, row in zip(users.tolist(), items.tolist(), strict=True) for i in row])
    cuts = [common_prefix_length(seqs[g * 4 : (g + 1) * 4]) for g in range(2)]
    assert out["plain"]["tokens_run"] == sum(len(q) for q in seqs)
    assert out["reuse"]["tokens_run"] == sum(len(q) for q in seqs) - 3 * sum(cuts)  # each prefix once, not 4 times
    assert abs(out["plain"]["tokens_run"] / 8 - out["prompt_tokens_mean"]) <= 0.05
    assert out["max_abs_p_yes_diff"] <= 1e-5 and out["max_abs_p_yes_diff_copied"] <= 1e-5
    for path in ("reuse_copied", "reuse_in_place"):  # the same tokens, another attention
        assert out[path]["tokens_run"] == out["reuse"]["tokens_run"]
    assert out["speedup"] == round(out["plain"]["seconds"] / out["reuse"]["seconds"], 2)
    assert out["speedup_in_place"] == round(out["reuse_copied"]["seconds"] / out["reuse_in_place"]["seconds"], 2)
    labeled = tallrec(tiny_split, tiny_data, tiny_lm, lora=None, icl_shots=2, score_batch_size=16).eval()
    test = tiny_split.test.iloc[:6]
    out = measure(labeled, torch.as_tensor(test["user"].to_numpy(copy=True)), torch.as_tensor(test["item"].to_numpy(copy=True))[:, None])
    assert out["pairs"] == 6 and out["max_abs_p_yes_diff"] <= 1e-5
    assert out["reuse"]["tokens_run"] < out["plain"]["tokens_run"] - 5 * 200  # two examples' tokens run once, not 6 times


def test_prefix_reuse_bench_times_continuations_in_place_and_copied_on_the_same_rows(tiny_lm):
    from benchmark.bench.prefix_reuse import continuations

    out = continuations(prompts=3, prompt_tokens=40, per_prompt=5, backbone=str(tiny_lm))
    assert out["continuations"] == 15 and out["prompt_tokens_mean"] == 33.0  # 40, 33, 26
    assert out["continuation_tokens"] == sum(2 + (i * 7 + b) % 12 for b in range(3) for i in range(5))
    assert out["max_rel_logprob_diff"] <= 1e-5
    assert out["speedup_in_place"] == round(out["copied"]["seconds"] / out["in_place"]["seconds"], 2)


def test_prefix_reuse_readme_sentences_come_from_the_result(tmp_path):
    from benchmark.bench.prefix_reuse import END, START, summary
    from benchmark.util import write_marked_block

    def workload(pps, plain, run, full):
        return {"pairs": 100, "prompt_tokens_mean": 228.6, "speedup": round(pps / plain, 2), "speedup_vs_floor": 5.9,
                "reuse": {"pairs_per_second": pps, "tokens_run": run}, "plain": {"pairs_per_second": plain, "tokens_run": full},
                "reuse_copied": {"pairs_per_second": 1.25}, "reuse_in_place": {"pairs_per_second": 2.5},
                "speedup_in_place": 2.0,
                "floor": {"prompt_tokens_per_second": 122.7}, "max_abs_p_yes_diff": 5.066e-06,
                "max_abs_p_yes_diff_copied": 3.1e-07}

    continuations = {"prompts": 8, "prompt_tokens_mean": 425.5, "continuations": 192, "continuation_tokens": 1440,
                     "in_place": {"seconds": 20.5}, "copied": {"seconds": 41.0}, "speedup_in_place": 2.0,
                     "max_rel_logprob_diff": 2.04e-7}
    rerank = {"users": 12, "user_batch_size": 4, "top_n": 20, "icl_shots": 2, "prompt_tokens_mean": 861.3,
              "prefix_tokens": 402, "speedup": 1.52, "max_abs_score_diff": 3.2e-6, "load_average": [2.1, 2.9],
              "reuse": {"users_per_second": 0.304, "prompt_tokens_run": 5912},
              "plain": {"users_per_second": 0.2, "prompt_tokens_run": 10336, "prompt_tokens_per_second": 172.2}}
    result = {"machine": {"load_average_start": 1.96, "load_average_end": 3.82}, "backbone": "b",
              "candidates": {"users": 5, **workload(3.162, 0.565, 2848, 22855), "load_average": [1.96, 2.5]},
              "labeled": {"rows": 32, "split": "tallrec_movie", "icl_shots": 2, **workload(2.0, 0.5, 9000, 20000),
                          "load_average": [2.5, 3.82]},
              "continuations": {**continuations, "load_average": [3.0, 3.1]}, "rerank": rerank}
    text = summary(result)
    assert "- reranker (load 2.1-2.9; 12 ml-100k `loo` test users, the SASRec top 20 in random order after 2" in text
    assert "861.3 prompt tokens on average): 0.304 users/s with the 402-token prefix" in text
    assert "against 0.2 with every prompt run whole (1.52x; the LM ran 5,912 instead of 10,336 prompt tokens" in text
    assert "172.2 prompt tokens/s whole); candidate scores differ by 3.2e-06 at most." in text
    assert "- continuations (load 3.0-3.1; 8 prompts" in text
    assert "in place: 2.5 pairs/s against 1.25 with it repeated per row (2.0x; P(\"Yes\") differs by 3.1e-07" in text
    assert "8 prompts of 425.5 tokens on average, 192 continuations of 1,440 tokens in all" in text
    assert "20.5 s with the prompts' cache read in place against 41.0 s" in text and "(2.0x;" in text
    assert "differ by 2.0e-07 relative at most" in text
    assert "candidate lists (5 users, 1 + 19 each) (load 1.96-2.5), 100 pairs of 228.6 prompt tokens" in text
    assert "3.162 pairs/s with the shared prefix against 0.565 without (5.6x; the LM ran 2,848 instead of 22,855 tokens)" in text
    assert "(122.7 prompt tokens/s)" in text and "each workload's load average in parentheses" in text and "5.1e-06 at most" in text
    assert "candidate lists (5 users, 1 + 19 each) (load 1.96-2.5)" in text and "(load 2.5-3.82)" in text
    assert "32 tallrec_movie test rows, 2 fixed in-context examples" in text and "(4.0x;" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{START}\nold\n{END}\nb\n")
    write_marked_block(readme, START, END, text)
    assert readme.read_text() == f"a\n{START}\n{text}{END}\nb\n"


def test_the_readme_states_the_committed_prefix_reuse_result():
    """The README's prefix-reuse sentences are those of results/perf/prefix_reuse.json."""
    from benchmark.bench.prefix_reuse import END, OUT_NAME, START, summary

    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text()
    block = readme[readme.index(START) + len(START) + 1 : readme.index(END)]
    assert block == summary(json.loads((repo / "results" / "perf" / OUT_NAME).read_text()))


def test_score_cache_reads_back_what_an_untrained_scorer_computed(tiny_split, tiny_data, tiny_lm, tmp_path, monkeypatch):
    """With score_cache on, a second zero-shot scorer on the same weights reads every P("Yes") from
    disk without running the LM; other weights, a trained (LoRA) scorer, or score_cache off never
    read it; the record counts what was read and computed."""
    monkeypatch.setenv("LLM4REC_CACHE", str(tmp_path))
    test = tiny_split.test.iloc[:6]
    users = torch.as_tensor(test["user"].to_numpy(copy=True))
    items = torch.as_tensor(test["item"].to_numpy(copy=True))[:, None]
    first = tallrec(tiny_split, tiny_data, tiny_lm, lora=None, score_cache=True).eval()
    a = first.score_pairs(users, items)
    assert first.prediction_facts()["llm"]["score_cache"]["computed"] == 6
    second = tallrec(tiny_split, tiny_data, tiny_lm, lora=None, score_cache=True).eval()
    second.load_state_dict(first.state_dict())
    monkeypatch.setattr(second, "_p_yes_tokens", lambda *a, **k: pytest.fail("the LM ran on cached prompts"))
    b = second.score_pairs(users, items)
    assert torch.equal(a, b)
    assert {k: v for k, v in second.prediction_facts()["llm"]["score_cache"].items() if k != "identity"} == {"read": 6, "computed": 0}
    with torch.no_grad():  # other weights: a new identity, scored again
        next(second.lm.parameters()).add_(0.01)
    monkeypatch.undo()
    monkeypatch.setenv("LLM4REC_CACHE", str(tmp_path))
    c = second.score_pairs(users, items)
    facts = second.prediction_facts()["llm"]["score_cache"]
    assert facts["read"] == 0 and facts["computed"] == 6 and not torch.equal(a, c)
    assert len(list((tmp_path / "scores").iterdir())) == 2
    trained = tallrec(tiny_split, tiny_data, tiny_lm, score_cache=True).eval()  # LoRA: never cached
    off = tallrec(tiny_split, tiny_data, tiny_lm, lora=None).eval()
    for m in (trained, off):
        m.score_pairs(users, items)
        assert m._scores_cached() is None and "score_cache" not in m.prediction_facts()["llm"]


def test_score_cache_file_is_bounded_and_skips_bad_lines(tmp_path, monkeypatch):
    import benchmark.models.components.score_cache as sc

    store = sc.ScoreCache(tmp_path, {"w": 1})
    store.put([[1, 2, 3], [4, 5]], [0.25, 0.75])
    assert store.get([[1, 2, 3], [4, 5], [6]]) == [0.25, 0.75, None]
    with store.path.open("a") as f:  # a foreign value, out-of-range and non-finite values, a cut line
        f.write(json.dumps({"k": sc.prompt_key([6]), "p": 1.5}) + "\n" + '{"k": "' + sc.prompt_key([7]) + '", "p": NaN}\n')
        f.write('{"k": "' + sc.prompt_key([8]) + '", "p": 0.5')
    again = sc.ScoreCache(tmp_path, {"w": 1})
    assert again.get([[1, 2, 3], [4, 5], [6], [7], [8]]) == [0.25, 0.75, None, None, None]
    assert sc.ScoreCache(tmp_path, {"w": 2}).get([[1, 2, 3]]) == [None]  # another identity
    monkeypatch.setattr(sc, "LIMIT", 10)
    with pytest.raises(ConfigError, match=r"scores\.jsonl: \d+ bytes, over the score-cache limit"):
        sc.ScoreCache(tmp_path, {"w": 1})
    store.path.unlink()
    store.path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="must be a regular file"):
        sc.ScoreCache(tmp_path, {"w": 1})
