"""Soft tokens of the multimodal adapters inside the P5 and TALLRec models: placeholder positions equal
a manual ``inputs_embeds`` construction, beam search (trie-constrained, T5 and causal with LoRA) reads
the embeddings, missing images use the learned embedding (and train it), an adapter without
modalities is the plain model bit for bit, and bad settings are one-line errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.data.views import ranking_rows
from benchmark.errors import ConfigError
from benchmark.models.components.adapter import AdapterConfig, ItemAdapter, adapter_config, adapter_label
from benchmark.models.components.feature_store import FeatureTable
from benchmark.models.components.projector import (
    PLACEHOLDER,
    LinearProjector,
    MLPProjector,
    ResamplerProjector,
    add_placeholder_token,
    expand_mentions,
    mention_marker,
    soft_token_slots,
)
from tests.conftest import random_rows, write_atomic
from tests.unit.test_adapter_features import register_tiny_clip
from tests.unit.test_indexing import make
from tests.unit.test_p5 import FILMS, p5, prompts
from tests.unit.test_tallrec import load_prompt, make_tiny_lm, template_words

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROJECTORS = {
    "linear": {"_target_": "benchmark.models.components.projector.LinearProjector", "_partial_": True},
    "mlp": {"_target_": "benchmark.models.components.projector.MLPProjector", "_partial_": True},
    "resampler": {
        "_target_": "benchmark.models.components.projector.ResamplerProjector",
        "_partial_": True,
        "heads": 2,
    },
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """20 users x 10 films (the P5 unit tests' data set)."""
    rows = random_rows(n_users=20, n_items=10, per_user=7, seed=3)
    return make(tmp_path_factory.mktemp("films"), rows, {f"i{i}": t for i, t in enumerate(FILMS)})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from benchmark.data.atomic import read_atomic

    d = tmp_path_factory.mktemp("tiny")
    titles = {f"i{i}": f"Title {i}" for i in range(30)}
    write_atomic(d, "tiny", random_rows(n_users=12, n_items=30, per_user=14), titles)
    return read_atomic(d, "tiny")


@pytest.fixture(scope="module")
def tiny_split(tiny_data):
    from benchmark.config import SplitConfig
    from benchmark.data.splits import build_split

    return build_split(tiny_data, SplitConfig(protocol="temporal"))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    register_tiny_clip(tmp_path_factory.mktemp("clip_configs"))
    return tmp_path_factory.mktemp("adapter_cache")


def node(store: Path, modalities=("text",), projector="linear", **kw) -> dict:
    """An adapter config (tiny random open_clip text tower unless ``encoder`` is given)."""
    return {
        "name": "clip_proj",
        "modalities": list(modalities),
        "k": 2,
        "encoder": {
            "_target_": "benchmark.models.components.features.OpenCLIPEncoder",
            "model": "tiny-test-clip",
        },
        "projector": PROJECTORS[projector],
        "cache_dir": str(store),
        **kw,
    }


def identity_projection(model, adapter: ItemAdapter) -> None:
    """Make every soft token equal the placeholder's own embedding row (a linear projector)."""
    row = model.get_input_embeddings().weight[adapter.placeholder_id].detach()
    with torch.no_grad():
        adapter.projector.proj.weight.zero_()
        adapter.projector.proj.bias.copy_(row.repeat(adapter.k))


# ----------------------------------------------------------------------------- pure pieces


@pytest.mark.parametrize("kind", ["linear", "mlp", "resampler"])
def test_projectors_map_modality_features_to_k_tokens(kind):
    torch.manual_seed(0)
    cls = {"linear": LinearProjector, "mlp": MLPProjector, "resampler": ResamplerProjector}[kind]
    proj = cls([16, 8], d_model=12, k=3, **({"heads": 2} if kind == "resampler" else {}))
    out = proj([torch.randn(5, 16), torch.randn(5, 8)])
    assert out.shape == (5, 3, 12) and proj.kind == kind
    out.sum().backward()
    assert all(p.grad is not None for p in proj.parameters())
    with pytest.raises(ConfigError, match="divisible by heads"):
        ResamplerProjector([4], d_model=10, k=2, heads=4)


def test_markers_expand_in_prompt_order_and_slots_survive_left_truncation():
    text = f"liked {mention_marker(7)} and {mention_marker(3)}; target {mention_marker(7)}"
    expanded, items = expand_mentions(text, 2, "<p>")
    assert items == [7, 3, 7] and expanded == "liked <p><p> and <p><p>; target <p><p>"
    ph = 9
    ids = torch.tensor(
        [
            [0, 0, 5, ph, ph, 6, ph, ph],  # left-padded, two mentions
            [ph, 6, ph, ph, 5, 5, 5, 5],  # truncated from the left: the first mention lost a slot
        ]
    )
    out = soft_token_slots(ids, [[4, 2], [8, 1, 3]], ph, 2)
    assert out["soft_items"].tolist() == [[-1, -1, -1, 4, 4, -1, 2, 2], [1, -1, 3, 3, -1, -1, -1, -1]]
    assert out["soft_slots"].tolist() == [[-1, -1, -1, 0, 1, -1, 0, 1], [1, -1, 0, 1, -1, -1, -1, -1]]
    with pytest.raises(ValueError, match="placeholder tokens for 1 mentions"):
        soft_token_slots(ids[:1], [[4]], ph, 1)


def test_placeholder_token_is_added_without_random_draws(tiny):
    model = p5(tiny, indexing={"scheme": "random"})
    lm, tok = model.lm, model.tokenizer
    rows, n = lm.get_input_embeddings().weight.shape[0], len(tok)
    state = torch.get_rng_state()
    ph = add_placeholder_token(lm, tok)
    assert torch.equal(torch.get_rng_state(), state)
    assert ph == n and len(tok) == n + 1 and lm.get_input_embeddings().weight.shape[0] == max(rows, n + 1)
    assert tok(f"a {PLACEHOLDER}{PLACEHOLDER} b", add_special_tokens=False)["input_ids"].count(ph) == 2
    assert add_placeholder_token(lm, tok) == ph  # idempotent


def test_missing_image_uses_the_learned_embedding_and_trains_it():
    feats = np.arange(20, dtype=np.float32).reshape(5, 4) / 10
    missing = np.array([False, True, False, True, False])
    feats[missing] = 0.0
    torch.manual_seed(0)
    table = FeatureTable("image", feats, missing, {})
    ad = ItemAdapter([table], LinearProjector([4], 6, 2), 2, "alongside", 0, {})
    assert torch.allclose(ad.missing[0].detach(), torch.from_numpy(feats[~missing].mean(0)))
    out = ad(torch.tensor([1, 3, 0]))  # [3, 2, 6]
    assert torch.equal(out[0], out[1])  # both missing: the same learned input
    assert torch.allclose(out[0], ad.projector([ad.missing[0].unsqueeze(0)])[0])
    assert torch.allclose(out[2], ad.projector([torch.from_numpy(feats[:1])])[0])
    out.pow(2).sum().backward()
    assert ad.missing[0].grad is not None and ad.missing[0].grad.abs().sum() > 0
    ad.zero_grad(set_to_none=True)
    ad(torch.tensor([0, 2])).sum().backward()  # no missing item: in the graph, zero gradient
    assert ad.missing[0].grad is not None and not ad.missing[0].grad.any()


# ----------------------------------------------------------------------------- P5


def test_p5_soft_tokens_land_where_a_manual_inputs_embeds_puts_them(tiny, store):
    data, split = tiny
    model = p5(tiny, adapter=node(store))
    ad, k, ph = model.adapter, model.adapter.k, model.adapter.placeholder_id
    users, ends = np.array([0, 3, 5]), np.array([4, 1, 2])
    batch = model.collate(users, ends, np.array([1, 0, 2]))
    ids = batch["input_ids"]
    table = model.lm.get_input_embeddings()
    manual = table(ids).detach().clone()
    for r, (u, e) in enumerate(zip(users, ends, strict=True)):
        hist = model.train_seq[u][max(0, e - model.history) : e]
        pos = torch.nonzero(ids[r] == ph).flatten().tolist()
        assert len(pos) == k * len(hist)
        for j, p in enumerate(pos):
            item, slot = int(hist[j // k]), j % k
            manual[r, p] = ad(torch.tensor([item]))[0, slot].detach()
            if slot == 0:  # alongside: the item's id tokens come right before its soft tokens
                id_tokens = model.item_tokens[item][:-1]
                assert ids[r, p - len(id_tokens) : p].tolist() == id_tokens
    got = ad.embed(model.lm, batch)
    keep = ids != ph
    assert torch.equal(got[keep], table(ids)[keep])
    assert torch.allclose(got, manual, atol=1e-6)
    loss = model.loss(batch)
    with torch.no_grad():
        expect = model.lm(
            inputs_embeds=manual, attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
    assert loss.item() == pytest.approx(expect.item(), abs=1e-5)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ad.projector.parameters())
    # mention=instead: the id tokens are gone, the soft tokens stay.
    instead = p5(tiny, adapter=node(store, mention="instead"))
    text = instead.adapter.expand(instead._eval_prompt(0, "test"))[0]
    assert text.count(PLACEHOLDER) == 2 * min(
        model.history, len(model.train_seq[0]) + len(model.valid_seq[0])
    )
    assert not any(t in text for t in instead.index.texts)


def test_p5_constrained_beam_search_reads_the_soft_tokens(tiny, store):
    data, split = tiny
    model = p5(tiny, adapter=node(store)).eval()
    rows = ranking_rows(split, "test")
    ranked = model.rank_rows(rows, np.arange(len(rows)), 5, "cpu")
    for r in range(len(rows)):
        banned = set(rows.exclude[rows.exclude_ptr[r] : rows.exclude_ptr[r + 1]].tolist())
        got = [x for x in ranked[r].tolist() if x >= 0]
        assert len(set(got)) == len(got) == min(5, split.n_items - len(banned)) and not set(got) & banned
    assert model.slot_stats()["hallucination_rate"] == 0.0
    # Soft tokens equal to the placeholder's own row: beams equal plain decoding of the same text.
    identity_projection(model.lm, model.adapter)
    prompts_ = [model._eval_prompt(int(u), "test") for u in rows.users[:8]]
    excluded = [rows.exclude[rows.exclude_ptr[r] : rows.exclude_ptr[r + 1]] for r in range(8)]
    with_embeds = model.generate_items(prompts_, excluded, 5, "cpu")
    adapter, model.adapter = model.adapter, None
    plain = model.generate_items([adapter.expand(p)[0] for p in prompts_], excluded, 5, "cpu")
    model.adapter = adapter
    assert np.array_equal(with_embeds[0], plain[0]) and np.array_equal(with_embeds[1], plain[1])
    facts = model.prediction_facts()["adapter"]
    assert facts["modalities"] == ["text"] and facts["k"] == 2 and facts["random_init"] is True
    assert facts["encoder"]["model"] == "tiny-test-clip" and facts["projector"]["kind"] == "linear"
    assert (
        facts["features"]["text"]["cache"] in ("hit", "created")
        and len(facts["features"]["text"]["key"]) == 64
    )


def test_p5_causal_lora_with_soft_tokens_trains_and_decodes(tiny, store, tmp_path):
    data, split = tiny
    lm = make_tiny_lm(tmp_path / "lm", [*prompts().corpus(), *FILMS, "Answer", ":"])
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    kw = {"backbone": str(lm), "lora": lora, "prompts": prompts(suffix=" Answer: ")}
    model = p5(tiny, **kw, adapter=node(store, projector="mlp"))
    assert model.kind == "causal"
    batch = model.collate(np.array([0, 3]), np.array([2, 1]), np.array([1, 0]))
    assert (batch["soft_items"] >= 0).sum() == 2 * (2 + 1)  # k x history items of both windows
    loss = model.loss(batch)
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("adapter.projector") for n in grads) and any("lora_" in n for n in grads)
    # Only what trains is saved, the adapter included; it loads back strictly.
    trainable = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    assert set(model.state_dict()) == trainable and any(n.startswith("adapter.") for n in trainable)
    rows = ranking_rows(split, "test")
    ranked = model.eval().rank_rows(rows, np.arange(4), 5, "cpu")
    free = split.n_items - np.diff(rows.exclude_ptr)[:4]
    assert ((ranked >= 0).sum(axis=1) == np.minimum(free, 5)).all()
    # The prompt (soft tokens included) prefilled once per row gives the beams of plain generate.
    plain = p5(tiny, **kw, adapter=node(store, projector="mlp"), shared_prompt_cache=False)
    plain.load_state_dict(model.state_dict())
    assert np.array_equal(plain.eval().rank_rows(rows, np.arange(4), 5, "cpu"), ranked)
    # A frozen LLM: only the projector and the missing embeddings train.
    frozen = p5(tiny, **kw, adapter=node(store, projector="mlp", train_llm=False))
    assert {n.split(".")[0] for n, p in frozen.named_parameters() if p.requires_grad} == {"adapter"}


def test_an_adapter_without_modalities_is_the_plain_model(tiny, store):
    data, split = tiny
    torch.manual_seed(0)
    plain = p5(tiny).eval()
    torch.manual_seed(0)
    empty = p5(tiny, adapter=node(store, modalities=())).eval()
    assert empty.adapter is None and len(empty.tokenizer) == len(plain.tokenizer)
    assert plain.state_dict().keys() == empty.state_dict().keys()
    assert all(torch.equal(v, empty.state_dict()[k]) for k, v in plain.state_dict().items())
    a = plain.collate(np.array([1, 2]), np.array([1, 3]), np.array([0, 1]))
    b = empty.collate(np.array([1, 2]), np.array([1, 3]), np.array([0, 1]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = ranking_rows(split, "test")
    assert np.array_equal(
        plain.rank_rows(rows, np.arange(6), 5, "cpu"), empty.rank_rows(rows, np.arange(6), 5, "cpu")
    )
    assert (
        empty.prediction_facts()["adapter"]["active"] is False and "adapter" not in plain.prediction_facts()
    )


# ----------------------------------------------------------------------------- TALLRec


@pytest.fixture(scope="module")
def tallrec_lm(tmp_path_factory):
    titles = [f"Title {i}" for i in range(30)]
    return make_tiny_lm(tmp_path_factory.mktemp("lm"), template_words("tallrec") + titles)


def tallrec_model(split, data, lm, **kw):
    from benchmark.models.tallrec import TallRec

    kw.setdefault("lora", {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    return TallRec(split, data, backbone=str(lm), prompt=load_prompt("tallrec"), shots=16, seed=0, **kw)


def test_tallrec_scores_read_soft_tokens_like_a_manual_inputs_embeds(
    tiny_split, tiny_data, tallrec_lm, store
):
    m = tallrec_model(tiny_split, tiny_data, tallrec_lm, adapter=node(store, projector="resampler")).eval()
    u, i = int(tiny_split.test["user"].iloc[0]), int(tiny_split.test["item"].iloc[0])
    text, items = m.adapter.expand(m._prompt(u, i))
    assert items[-1] == i and text.count(PLACEHOLDER) == 2 * len(items) and text.endswith("### Response:\n")
    ids = torch.as_tensor([m.tokenizer(text)["input_ids"]])
    manual = m.lm.get_input_embeddings()(ids).detach().clone()
    pos = torch.nonzero(ids[0] == m.adapter.placeholder_id).flatten().tolist()
    for j, p in enumerate(pos):
        manual[0, p] = m.adapter(torch.tensor([items[j // 2]]))[0, j % 2].detach()
    with torch.no_grad():
        logits = m.lm(inputs_embeds=manual).logits[0, -1]
    yes, no = m.answer_ids
    expect = torch.softmax(torch.stack([logits[yes], logits[no]]), dim=0)[0]
    got = m.score_pairs(torch.tensor([u]), torch.tensor([[i]]))
    assert got[0, 0].item() == pytest.approx(expect.item(), abs=1e-5)
    # Scores of a padded batch equal single rows (placeholders found per row).
    users = torch.arange(6)
    items6 = (torch.arange(6) % tiny_split.n_items).unsqueeze(1)
    batched = m.score_pairs(users, items6)[:, 0]
    m.score_batch_size = 1
    assert torch.allclose(batched, m.score_pairs(users, items6)[:, 0], atol=1e-5)
    assert "<item_feat><item_feat>" in m.prediction_facts()["llm"]["prompt"]["example"]


def test_tallrec_trains_the_projector_with_or_without_the_llm(tiny_split, tiny_data, tallrec_lm, store):
    m = tallrec_model(tiny_split, tiny_data, tallrec_lm, adapter=node(store))
    batch = next(iter(m.train_dataset(tiny_split, 8, 0)))
    assert "soft_items" in batch and (batch["soft_items"] >= 0).any()
    m.loss(batch).backward()
    grads = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("adapter.projector") for n in grads) and any("lora_" in n for n in grads)
    sd = m.state_dict()
    assert any(k.startswith("adapter.") for k in sd)
    fresh = tallrec_model(tiny_split, tiny_data, tallrec_lm, adapter=node(store))
    fresh.load_state_dict(sd)  # strict: adapters and projector only
    frozen = tallrec_model(tiny_split, tiny_data, tallrec_lm, adapter=node(store, train_llm=False))
    assert {n.split(".")[0] for n, p in frozen.named_parameters() if p.requires_grad} == {"adapter"}
    no_lora = tallrec_model(tiny_split, tiny_data, tallrec_lm, lora=None, adapter=node(store))
    assert len(list(no_lora.train_dataset(tiny_split, 8, 0))) == 2  # the projector alone can train


# ----------------------------------------------------------------------------- bad input


def test_bad_adapter_settings_are_one_line_config_errors(tiny, store):
    base = node(store)
    cases = [
        ({"modalities": ["audio"]}, "unknown modality 'audio'"),
        ({"modalities": ["text", "text"]}, "at most once"),
        ({"k": 0}, "adapter.k"),
        ({"mention": "around"}, "adapter.mention"),
        ({"encoder": "open_clip"}, "adapter.encoder: expected a config with _target_"),
        ({"modalitiez": ["text"]}, "unknown key"),
    ]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message) as e:
            adapter_config({**base, **change})
        assert len(str(e.value).splitlines()) == 1
    with pytest.raises(ConfigError, match="encoder 'hf' has no image tower"):
        p5(
            tiny,
            adapter=node(
                store,
                modalities=("image",),
                encoder={"_target_": "benchmark.models.components.features.HFTextEncoder"},
            ),
        )
    with pytest.raises(ConfigError, match="adapter.projector"):
        p5(
            tiny,
            adapter={
                **base,
                "projector": {"_target_": "benchmark.models.components.projector.NoSuchProjector"},
            },
        )
    with pytest.raises(ConfigError, match="adapter.image_column: the item table has no column 'image'"):
        p5(tiny, adapter=node(store, modalities=("image",)))
    assert isinstance(adapter_config(base), AdapterConfig) and adapter_config(None) is None
    assert (
        adapter_label(base) == "+clip_proj-text-tiny-test-clip-rand" and adapter_label({"name": "none"}) == ""
    )


def test_few_shot_examples_carry_soft_tokens_in_prompt_order(tiny, store):
    model = p5(tiny, prompts=prompts(few_shot=2), adapter=node(store))
    text, items = model.adapter.expand(model._eval_prompt(1, "valid"))
    hist = model.train_seq[1][-model.history :]
    shown = [int(i) for ex in model._example_items for i in ex] + [int(i) for i in hist]
    assert items == shown and text.count(PLACEHOLDER) == 2 * len(shown)
    ids, mentions = model._tokenize([model._eval_prompt(1, "valid")])
    assert mentions == [shown] and ids[0].count(model.adapter.placeholder_id) == 2 * len(shown)
