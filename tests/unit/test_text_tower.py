"""The ID-free text tower (model=text_tower): scores every item through its text, trains on train
sequences only, reads train (valid part) or train + valid (test part) histories, records its facts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmark.config import SplitConfig
from benchmark.data.atomic import read_atomic
from benchmark.data.splits import build_split
from benchmark.errors import ConfigError
from tests.conftest import random_rows, write_atomic
from tests.smoke.test_cli import llm4rec, runs, tiny_args


@pytest.fixture
def vectors(monkeypatch):
    """Stand-in text embeddings (the real ones come from MiniLM in the feature store)."""
    import benchmark.models.components.item_text as item_facts

    def fake(data, ids, store_dir=None):
        g = np.random.default_rng(5)
        v = g.normal(size=(len(ids), 16)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True), {"key": "test"}

    monkeypatch.setattr(item_facts, "text_embeddings", fake)


def _model(tmp_path, holdout=0.0, **kw):
    from benchmark.models.text_tower import TextTower

    d = write_atomic(tmp_path / "d", "tiny", random_rows(), {f"i{i}": f"Title {i}" for i in range(60)})
    data = read_atomic(d, "tiny")
    split = build_split(data, SplitConfig(protocol="loo", holdout_items=holdout))
    torch.manual_seed(0)
    settings = {"dim": 8, "layers": 1, "heads": 2, "max_len": 6, "dropout": 0.0, **kw}
    return TextTower(split, data, **settings), split


def test_train_sequences_are_the_last_items_of_train_only(tmp_path, vectors):
    from benchmark.models.text_tower import train_sequences

    model, split = _model(tmp_path)
    seqs = train_sequences(split, 6)
    tr = split.train.sort_values(["user", "timestamp", "row"], kind="stable")
    for u, g in tr.groupby("user"):
        items = g["item"].tolist()[-7:]
        row = seqs[u][: len(items)].tolist()
        assert row == items and (seqs[u][len(items):] == -1).all()
    held_out = set(split.valid["row"]) | set(split.test["row"])
    assert held_out and not set(split.train["row"]) & held_out  # valid/test items never in a train sequence


def test_scores_come_from_the_part_history_and_cover_unseen_items(tmp_path, vectors):
    model, split = _model(tmp_path, holdout=0.2)
    model.eval()
    users = torch.arange(5)
    with torch.no_grad():
        valid_scores = model.score(users)
        items = model.item_vectors()
        hist, length = model._hist["valid"]
        out = model.encode(hist[:5], items)
        by_hand = out[torch.arange(5), length[:5] - 1] @ items.T
        assert torch.allclose(valid_scores, by_hand, atol=1e-5)
        model.load_state_dict(model.state_dict())  # weights loaded: the test part is scored next
        assert model.eval_part == "test"
        test_scores = model.score(users)
    assert not torch.allclose(valid_scores, test_scores)  # the valid item joined the history
    held = torch.as_tensor(split.holdout_items)
    assert torch.isfinite(test_scores[:, held]).all() and test_scores[:, held].abs().sum() > 0  # scored by text


def test_id_embedding_is_absent_for_items_not_in_train(tmp_path, vectors):
    model, split = _model(tmp_path, holdout=0.2, id_embedding=True)
    with torch.no_grad():
        model.ids.weight.fill_(5.0)
        held = torch.as_tensor(split.holdout_items)
        diff = model.item_vectors() - model.proj(model.features)
    assert torch.allclose(diff[held], torch.zeros_like(diff[held]))
    seen = torch.as_tensor(np.unique(split.train["item"]))
    assert torch.allclose(diff[seen], torch.full_like(diff[seen], 5.0))
    assert model.prediction_facts()["text_tower"]["items_without_id"] == split.n_items - len(seen)


def test_loss_is_next_item_cross_entropy_by_hand(tmp_path, vectors):
    model, split = _model(tmp_path)
    model.eval()
    batch = next(iter(model.train_dataset(split, 4, seed=0)))
    with torch.no_grad():
        loss = model.loss(batch)
        items = model.item_vectors()
        out = model.encode(batch["inputs"], items)
        terms = []
        for b in range(len(batch["inputs"])):
            for t in range(batch["inputs"].shape[1]):
                y = int(batch["targets"][b, t])
                if y >= 0:
                    logits = out[b, t] @ items.T
                    terms.append(-torch.log_softmax(logits, 0)[y])
    assert loss == pytest.approx(float(torch.stack(terms).mean()), abs=1e-5)


def test_bad_settings_are_one_line(tmp_path, vectors):
    with pytest.raises(ConfigError, match="dim % heads") as e:
        _model(tmp_path, **{"heads": 3})
    assert "\n" not in str(e.value)


@pytest.mark.slow  # ~1 min: MiniLM item texts, a few epochs and a full-ranking evaluation
def test_text_tower_runs_and_validates_on_strict_cold_items(tiny_dir, tmp_path):
    args = ["model=text_tower_id", "split=strict_cold_item", "split.holdout_items=0.3", "model.train.max_epochs=2", *tiny_args(tiny_dir, tmp_path)]
    llm4rec("run", *args)
    (run_dir,) = runs(tmp_path)
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["model"]["label"] == "text_tower+id" and rec["model"]["text_tower"]["id_embedding"] is True
    assert 0.0 <= rec["metrics"]["test/heldout@20"] <= 1.0
    llm4rec("validate", str(run_dir), "--data", str(tiny_dir))


def test_open_clip_features_concatenate_with_a_learned_missing_image_vector(tmp_path):
    """features=: open_clip text + image towers (a tiny random-init CLIP) through the feature store;
    items without an image read a learned vector in the image columns, text columns untouched."""
    from benchmark.models.text_tower import TextTower
    from tests.unit.test_adapter_features import draw_images, register_tiny_clip

    clip = register_tiny_clip(tmp_path / "clip")
    d = write_atomic(tmp_path / "d", "tiny", random_rows())
    names = draw_images(d / "img", 30)
    lines = ["item_id:token\ttitle:token_seq\timage:token"]
    lines += [f"i{i}\tTitle {i}\t" + (f"img/{names[i]}" if i < 30 else "") for i in range(60)]
    (d / "tiny.item").write_text("\n".join(lines) + "\n")
    data = read_atomic(d, "tiny")
    split = build_split(data, SplitConfig(protocol="loo", holdout_items=0.2))
    encoder = {"_target_": "benchmark.models.components.features.OpenCLIPEncoder", "model": clip, "pretrained": None, "init_seed": 0}
    node = {"encoder": encoder, "modalities": ["text", "image"], "image_root": str(d), "cache_dir": str(tmp_path / "cache"), "download_images": False}
    torch.manual_seed(0)
    model = TextTower(split, data, dim=8, layers=1, heads=2, max_len=6, dropout=0.0, features=node)
    facts = model.encoder_facts
    assert facts["dims"] == [16, 16] and facts["random_init"] is True and facts["modalities"] == ["text", "image"]
    assert model.features.shape == (split.n_items, 32) and model.missing_rows.shape == (split.n_items, 1)
    raw = np.asarray([str(i) for i in split.item_ids])
    without_image = torch.as_tensor([int(r[1:]) >= 30 for r in raw])
    assert torch.equal(model.missing_rows[:, 0], without_image)
    with torch.no_grad():
        model.missing[0].fill_(7.0)
        x = model.item_inputs()
    assert torch.all(x[without_image][:, 16:] == 7.0)
    assert torch.equal(x[~without_image][:, 16:], model.features[~without_image][:, 16:])
    assert torch.equal(x[:, :16], model.features[:, :16])
    batch = next(iter(model.train_dataset(split, 4, seed=0)))
    model.loss(batch).backward()
    assert model.missing[0].grad is not None and model.missing[0].grad.abs().sum() > 0
    # the same features again come from the store, not the encoder
    again = TextTower(split, data, dim=8, layers=1, heads=2, max_len=6, dropout=0.0, features=node)
    assert torch.equal(again.features, model.features)
    # text only: nothing is missing, no learned vector
    text_only = TextTower(split, data, dim=8, layers=1, heads=2, max_len=6, dropout=0.0, features={**node, "modalities": ["text"]})
    assert len(text_only.missing) == 0 and torch.equal(text_only.item_inputs(), text_only.features)
    with pytest.raises(ConfigError, match="model.module.features: unknown key 'encodr'") as e:
        TextTower(split, data, features={"encodr": encoder})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="has no image tower"):
        minilm = {"_target_": "benchmark.models.components.features.HFTextEncoder"}
        TextTower(split, data, features={"encoder": minilm, "modalities": ["image"]})


def test_the_label_and_hash_name_the_feature_encoder():
    from benchmark.compose import compose_expanded
    from benchmark.results.identity import config_hashes, model_label

    cfg = compose_expanded(["model=text_tower_clip"])
    assert model_label(cfg) == "text_tower+text-ViT-B-32-rand"
    assert model_label(compose_expanded(["model=text_tower"])) == "text_tower"
    moved = compose_expanded(["model=text_tower_clip", "model.module.features.cache_dir=/elsewhere"])
    assert config_hashes(moved) == config_hashes(cfg)  # where features are cached is not a result
    other = compose_expanded(["model=text_tower_clip", "model.module.features.encoder.init_seed=1"])
    assert config_hashes(other) != config_hashes(cfg)
