"""P5-style model: train-only windows, output mapping (exact / invalid / title grounding), new id
tokens and resized embeddings, LoRA on a causal LM, constrained ranking and its validity facts.

Backbones are tiny and random: the ``t5-tiny-scratch`` preset, a tiny T5 saved to a folder and
loaded by path (the pretrained code path), and the tiny Llama of ``tests/unit/test_tallrec.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.data.views import ranking_rows
from benchmark.errors import ConfigError
from benchmark.models.components.backbones import scratch_t5, scratch_tokenizer
from benchmark.models.components.seq_prompts import SeqPromptSet
from benchmark.models.components.windows import WindowStream
from benchmark.models.p5 import (
    DUPLICATE,
    EXCLUDED,
    GROUNDED,
    NO_ITEM,
    P5,
    UNFILLED,
    VALID,
)
from tests.conftest import random_rows
from tests.unit.test_indexing import make

REPO = Path(__file__).resolve().parents[2]
FILMS = ["Toy Story", "Heat", "Casino", "Babe", "Jumanji", "Sabrina", "Nixon", "Balto", "Othello", "Clueless"]
SMALL_INDEX = {"n_clusters": 3, "max_leaf": 5}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prompts(**kw) -> SeqPromptSet:
    from omegaconf import OmegaConf

    node = OmegaConf.load(REPO / "configs" / "p5_prompt" / "sequential.yaml")
    return SeqPromptSet.from_config({**OmegaConf.to_container(node), **kw})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """20 users x 10 films (distinct titles)."""
    rows = random_rows(n_users=20, n_items=10, per_user=7, seed=3)
    return make(tmp_path_factory.mktemp("films"), rows, {f"i{i}": t for i, t in enumerate(FILMS)})


def p5(tiny, **kw) -> P5:
    data, split = tiny
    kw.setdefault("backbone", "t5-tiny-scratch")
    kw.setdefault("indexing", {"scheme": "collaborative", **SMALL_INDEX})
    kw.setdefault("prompts", prompts())
    kw.setdefault("num_beams", 6)
    kw.setdefault("seed", 0)
    return P5(split, data, **kw)


def tokens(model: P5, item: int) -> list[int]:
    return model.item_tokens[item]


def padded(seqs: list[list[int]], width: int = 12) -> torch.Tensor:
    return torch.tensor([s + [0] * (width - len(s)) for s in seqs])


# ----------------------------------------------------------------------------- training data


def test_training_windows_come_from_train_sequences_only(tmp_path):
    # Every valid/test item is a film no train row has; its title word must never be read or written.
    rows = random_rows(n_users=12, n_items=8, per_user=6, seed=4)
    last: dict[str, list] = {}
    for pos, (u, _, _, t) in enumerate(rows):
        last.setdefault(u, []).append((t, pos))
    for u, lst in last.items():
        for rank, (_, pos) in enumerate(sorted(lst)[-2:]):
            uu, _, r, t = rows[pos]
            rows[pos] = (uu, f"s{u}{rank}", r, t)
    titles = {f"i{i}": f"Film {i}" for i in range(8)} | {
        f"s{u}{k}": f"Zzsentinel {u} {k}" for u in last for k in range(2)
    }
    data, split = make(tmp_path, rows, titles)
    model = P5(
        split, data, backbone="t5-tiny-scratch", indexing={"scheme": "title"}, prompts=prompts(), seed=0
    )
    sentinel = model.tokenizer.convert_tokens_to_ids("Zzsentinel")
    stream = model.train_dataset(split, batch_size=8, seed=0)
    n = 0
    for batch in stream:
        assert not (batch["input_ids"] == sentinel).any() and not (batch["labels"] == sentinel).any()
        n += len(batch["labels"])
    assert n == len(split.train) - split.n_users  # every train item after the first, once per epoch
    # ...while a test prompt does show the valid item (train + valid history at test time).
    assert "Zzsentinel" in model._eval_prompt(0, "test") and "Zzsentinel" not in model._eval_prompt(
        0, "valid"
    )


def test_window_stream_splits_every_global_batch_across_ranks():
    def collate(u, e, t):
        return {"u": torch.as_tensor(u), "e": torch.as_tensor(e), "t": torch.as_tensor(t)}

    users, ends = np.arange(23), np.ones(23, dtype=np.int64)
    one = list(WindowStream(users, ends, 3, collate, 5, seed=1))
    parts = []
    for rank in range(2):
        s = WindowStream(users, ends, 3, collate, 5, seed=1)
        s.rank, s.world = rank, 2
        parts.append(list(s))
    assert len(parts[0]) == len(parts[1]) == len(one) == 5
    for whole, a, b in zip(one, *parts, strict=True):
        assert sorted(whole["u"].tolist()) == sorted(a["u"].tolist() + b["u"].tolist())
        assert (
            whole["t"][whole["u"].argsort()]
            == torch.cat([a["t"], b["t"]])[torch.cat([a["u"], b["u"]]).argsort()]
        ).all()


# ----------------------------------------------------------------------------- output mapping


def test_generated_sequences_map_to_items_exactly_or_not_at_all(tiny):
    model = p5(tiny, constrained=False)
    eos = model.eos_id
    a, b, c = tokens(model, 0), tokens(model, 1), tokens(model, 2)
    gen = padded(
        [
            a,  # exact: item 0
            a[:-1],  # no EOS: not an id
            [a[0], eos],  # a prefix closed early
            b,  # item 1, but excluded for this row
            a,  # item 0 again: a repeat
            c + [a[0]],  # item 2; tokens after EOS are ignored
        ]
    ).unsqueeze(0)
    items, codes = model.map_outputs(gen, [np.array([1])])
    assert items[0].tolist() == [0, -1, -1, -1, -1, 2]
    assert codes[0].tolist() == [VALID, NO_ITEM, NO_ITEM, EXCLUDED, DUPLICATE, VALID]


def test_free_title_outputs_are_grounded_by_exact_text_then_embedding(tiny):
    model = p5(tiny, indexing={"scheme": "title"}, constrained=False)
    tok, eos = model.tokenizer, model.eos_id
    toy = FILMS.index("Toy Story")
    near = tok("Toy Story Story", add_special_tokens=False)["input_ids"] + [eos]
    words = tok("predict the item", add_special_tokens=False)["input_ids"] + [eos]
    nothing = [tok.unk_token_id, eos]  # decodes to no text at all
    gen = padded([tokens(model, toy), near, words, nothing]).unsqueeze(0)
    items, codes = model.map_outputs(gen, [np.array([], dtype=np.int64)])
    assert items[0, 0] == toy and codes[0, 0] == VALID
    assert codes[0, 1] == DUPLICATE  # grounded to Toy Story, already listed above
    items, codes = model.map_outputs(gen[:, 1:], [np.array([], dtype=np.int64)])
    assert items[0, 0] == toy and codes[0, 0] == GROUNDED
    assert codes[0, 1] == GROUNDED and items[0, 1] >= 0  # any text maps to its nearest title
    assert codes[0, 2] == NO_ITEM and items[0, 2] == -1


def test_constrained_ranking_is_valid_distinct_and_respects_exclusions(tiny):
    data, split = tiny
    model = p5(tiny).eval()
    rows = ranking_rows(split, "test")
    ranked = model.rank_rows(rows, np.arange(len(rows)), 5, "cpu")
    assert ranked.shape == (len(rows), 5)
    for r in range(len(rows)):
        got = ranked[r].tolist()
        banned = set(rows.exclude[rows.exclude_ptr[r] : rows.exclude_ptr[r + 1]].tolist())
        free = split.n_items - len(banned)
        assert len(set(x for x in got if x >= 0)) == min(5, free)
        assert not set(got) & banned
    facts = model.prediction_facts()["generation"]
    assert facts["part"] == "test" and facts["rows"] == len(rows) and facts["hallucination_rate"] == 0.0
    assert len(facts["validity_at_rank"]) == 5
    # Validation scores are the constrained valid ranking, in order.
    valid = ranking_rows(split, "valid")
    scores = model.score(torch.as_tensor(valid.users[:4]))
    again = model.rank_rows(valid, np.arange(4), 5, "cpu")
    top = scores.topk(5, dim=1)
    ok = torch.isfinite(top.values)
    assert (top.indices[ok] == torch.as_tensor(again)[ok]).all()


def test_free_decoding_counts_outputs_that_are_no_item(tiny):
    data, split = tiny
    model = p5(tiny, indexing={"scheme": "sequential"}, constrained=False).eval()
    rows = ranking_rows(split, "test")
    ranked = model.rank_rows(rows, np.arange(len(rows)), 5, "cpu")
    facts = model.slot_stats()
    share = sum(
        facts[f"{n}_rate"] for n in ("valid", "no_item", "excluded", "duplicate", "unfilled", "grounded")
    )
    assert share == pytest.approx(1.0)
    assert facts["hallucination_rate"] == pytest.approx(facts["no_item_rate"])
    assert (ranked >= 0).mean(axis=0) == pytest.approx(facts["validity_at_rank"], abs=1e-6)
    assert facts["unfilled_rate"] == 0.0 and UNFILLED not in (VALID, NO_ITEM)


# ----------------------------------------------------------------------------- backbones


@pytest.fixture(scope="module")
def local_t5(tmp_path_factory, tiny):
    """A small T5 with its own tokenizer saved to a folder: the code path of any pretrained model."""
    data, split = tiny
    tok = scratch_tokenizer([*prompts().corpus(), *FILMS, *split.user_ids.tolist(), "0123456789"])
    torch.manual_seed(1)
    model = scratch_t5("t5-tiny-scratch", len(tok))
    d = tmp_path_factory.mktemp("t5")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model


def test_new_id_tokens_are_added_and_embeddings_resized_and_initialised(tiny, local_t5):
    folder, original = local_t5
    model = p5(tiny, backbone=str(folder))
    facts = model.backbone_facts
    assert facts["init"] == "pretrained" and facts["source"] == "local"
    new = model.index.new_tokens
    added = facts["new_tokens"]
    assert added["added"] == len(new) and added["vocab_after"] == added["vocab_before"] + len(new)
    emb = model.lm.get_input_embeddings().weight
    assert emb.shape[0] == len(model.tokenizer) == added["embedding_rows_after"]
    old = original.get_input_embeddings().weight
    assert torch.equal(emb[: old.shape[0]], old)  # existing rows untouched
    fresh = emb[old.shape[0] :]
    assert torch.isfinite(fresh).all() and len(torch.unique(fresh, dim=0)) == len(new)
    assert (fresh.mean(0) - old.mean(0)).abs().max() < 4 * old.std(0).max()
    ids = set(model.tokenizer.convert_tokens_to_ids(new))
    assert all(set(s[:-1]) <= ids for s in model.item_tokens)  # an item id is new tokens only
    batch = model.collate(np.array([0, 1]), np.array([1, 2]), np.array([0, 1]))
    loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and emb.grad is not None and emb.grad[old.shape[0] :].abs().sum() > 0


def test_causal_backbone_with_lora_trains_adapters_and_new_token_rows(tiny, tmp_path):
    from tests.unit.test_tallrec import make_tiny_lm

    data, split = tiny
    lm = make_tiny_lm(tmp_path / "lm", [*prompts().corpus(), *FILMS])
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    model = p5(tiny, backbone=str(lm), lora=lora, prompts=prompts(suffix=" Answer: "))
    assert model.kind == "causal" and model.backbone_facts["new_tokens"]["added"] == len(
        model.index.new_tokens
    )
    trainable = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("trainable_tokens" in n for n in trainable)
    assert set(model.state_dict()) == trainable  # only what trains is saved (tied aliases included)
    fresh = p5(tiny, backbone=str(lm), lora=lora, prompts=prompts(suffix=" Answer: "))
    fresh.load_state_dict(model.state_dict())  # strict: frozen weights are not expected
    batch = model.collate(np.array([0, 3]), np.array([2, 1]), np.array([1, 0]))
    assert (batch["labels"] >= 0).sum() == sum(
        len(model.item_tokens[model.train_seq[u][e]]) for u, e in ((0, 2), (3, 1))
    )
    loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    rows = ranking_rows(split, "test")
    ranked = model.eval().rank_rows(rows, np.arange(4), 5, "cpu")
    free = split.n_items - np.diff(rows.exclude_ptr)[:4]  # 4 items left per row: the 5th slot is unfilled
    assert ((ranked >= 0).sum(axis=1) == np.minimum(free, 5)).all()
    stats = model.slot_stats()
    assert stats["hallucination_rate"] == 0.0 and stats["valid_rate"] + stats["unfilled_rate"] == 1.0


# ----------------------------------------------------------------------------- bad input


def test_bad_configs_are_one_line_config_errors(tiny):
    with pytest.raises(ConfigError, match="cannot load 'no-such-model-xyz'"):
        p5(tiny, backbone="no-such-model-xyz")
    with pytest.raises(ConfigError, match="from scratch"):
        p5(tiny, lora={"r": 4})
    with pytest.raises(ConfigError, match="unknown key"):
        p5(tiny, indexing={"scheme": "random", "clusters": 3})
    with pytest.raises(ConfigError, match="eval template"):
        prompts(eval="unseen-9")
    with pytest.raises(ConfigError, match="history"):
        SeqPromptSet(name="x", seen=[{"name": "a", "text": "no field"}])
    with pytest.raises(ConfigError, match="eval=full"):
        p5(tiny).score_pairs(torch.zeros(1), torch.zeros(1, 1))


def test_shared_cross_attention_cache_gives_the_same_beams(tiny):
    """Encoder-decoder: one cross-attention cache per row, not reordered per beam."""
    data, split = tiny
    rows = ranking_rows(split, "test")
    fast = p5(tiny, indexing={"scheme": "random"}, constrained=False).eval()
    slow = p5(tiny, indexing={"scheme": "random"}, constrained=False, shared_prompt_cache=False).eval()
    slow.load_state_dict(fast.state_dict())
    prompts = [fast._eval_prompt(int(u), "test") for u in rows.users[:6]]
    enc = fast._inputs(fast._prompt_ids(prompts))
    a = fast._generate(enc, 6, fast.trie.depth + 2, [])
    b = slow._generate(enc, 6, slow.trie.depth + 2, [])
    assert torch.equal(a, b)


def test_causal_beam_search_reads_each_prompt_once_per_row_with_the_same_beams(tiny, tmp_path):
    """Decoder-only: the prompt is prefilled once per row and its cache repeated per beam."""
    from tests.unit.test_tallrec import make_tiny_lm

    data, split = tiny
    lm = make_tiny_lm(tmp_path / "lm", [*prompts().corpus(), *FILMS])
    kw = {"backbone": str(lm), "prompts": prompts(suffix=" Answer: ")}
    fast = p5(tiny, **kw).eval()
    slow = p5(tiny, **kw, shared_prompt_cache=False).eval()
    slow.load_state_dict(fast.state_dict())
    rows = ranking_rows(split, "test")
    texts = [fast._eval_prompt(int(u), "test") for u in rows.users[:6]]
    enc = fast._inputs(fast._prompt_ids(texts))
    assert (enc["attention_mask"] == 0).any()  # prompts of different lengths: left padding is exercised
    enc = {n: t for n, t in enc.items() if n != "position_ids"}
    read: dict[str, int] = {}

    def counter(name):
        def hook(module, args, out):
            read[name] = read.get(name, 0) + args[0].numel()

        return hook

    handles = [
        m.lm.get_input_embeddings().register_forward_hook(counter(n)) for n, m in (("fast", fast), ("slow", slow))
    ]
    a = fast._generate(enc, 6, fast.trie.depth + 2, [])
    b = slow._generate(enc, 6, slow.trie.depth + 2, [])
    for h in handles:
        h.remove()
    assert torch.equal(a, b)
    prompt_tokens = enc["input_ids"].numel()
    # plain: every prompt once per beam; shared: all but the last position once per row, then the
    # last position once per beam (the decoding steps after it are the same for both)
    assert read["slow"] - read["fast"] == 6 * prompt_tokens - (prompt_tokens + 6 * len(texts) - len(texts))
    # Constrained ranking through the public path gives the same lists.
    assert np.array_equal(fast.rank_rows(rows, np.arange(6), 5, "cpu"), slow.rank_rows(rows, np.arange(6), 5, "cpu"))


def test_few_shot_examples_are_train_windows_and_templates_are_recorded(tiny):
    data, split = tiny
    model = p5(tiny, prompts=prompts(few_shot=2, eval="unseen-1"))
    assert len(model.examples) == 2
    texts = model.index.texts
    for hist, user, answer in model.examples:
        seq = [texts[i] for i in model.train_seq[split.user_ids.tolist().index(user)]]
        pos = seq.index(answer)
        assert pos >= 1 and hist == seq[max(0, pos - model.history) : pos]  # history -> next, inside train
    prompt = model._eval_prompt(0, "test")
    assert prompt.count("According to the interaction history") == 3  # two examples and the row
    desc = model.prediction_facts()["p5"]["prompt"]
    assert desc["eval_template"] == "unseen-1" and desc["eval_kind"] == "unseen" and desc["few_shot"] == 2
    assert desc["train_templates"] == ["seen-1", "seen-2", "seen-3", "seen-4", "seen-5"]


def test_window_subsample_changes_every_epoch():
    def collate(u, e, t):
        return {"u": torch.as_tensor(u)}

    s = WindowStream(np.arange(50), np.ones(50, dtype=np.int64), 2, collate, 4, seed=0, sample=10)
    first = torch.cat([b["u"] for b in s])
    s.epoch = 1
    second = torch.cat([b["u"] for b in s])
    assert len(first) == len(second) == 10 and len(s) == 3 and set(first.tolist()) != set(second.tolist())


@pytest.mark.slow
def test_smollm2_from_the_offline_package_is_a_decoder_only_backbone(tiny):
    data, split = tiny
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    model = p5(tiny, backbone="smollm2-135m-instruct", lora=lora, prompts=prompts(suffix="\nAnswer: "))
    facts = model.prediction_facts()["p5"]["backbone"]
    assert model.kind == "causal" and facts["dequantized"] is True and facts["quantization"] == "Q4_1"
    assert facts["backbone"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and facts["init"] == "pretrained"
    loss = model.loss(model.collate(np.array([0, 1]), np.array([1, 2]), np.array([0, 1])))
    loss.backward()
    assert torch.isfinite(loss)
    rows = ranking_rows(split, "test")
    ranked = model.eval().rank_rows(rows, np.arange(2), 3, "cpu")
    assert (ranked >= 0).all() and model.slot_stats()["hallucination_rate"] == 0.0
