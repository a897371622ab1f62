"""The RecBole bridge: exact round trip of rows, ids and features; leak-free histories;
the wrapper's streams, scoring and errors; RecBole's side effects contained."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from baselines import bridge as B
from baselines import compat
from benchmark.config import DataConfig, SplitConfig
from benchmark.data.histories import padded_train_histories, padded_user_histories
from benchmark.data.loading import load_dataset
from benchmark.data.splits import build_split
from benchmark.errors import ConfigError
from tests.conftest import random_rows, write_atomic

pytest.importorskip("recbole")

GENRES = ["Action", "Comedy", "Drama", "Sci-Fi", "NA", "None", "x"]


def write_features(directory: Path, name: str, n_users: int = 40, n_items: int = 60, seed: int = 0) -> None:
    """``name.item`` (genre token_seq, year token, price float, title) and ``name.user`` (age, gender,
    occupation tokens), with awkward values: 'NA'/'None' tokens, empty cells, repeated spaces."""
    rng = np.random.default_rng(seed)
    items = ["item_id:token\ttitle:token_seq\tgenre:token_seq\tyear:token\tprice:float"]
    for i in range(n_items):
        genres = "  ".join(rng.choice(GENRES, size=int(rng.integers(0, 3)), replace=False))
        year = "" if i % 13 == 0 else ("NA" if i % 17 == 0 else str(1980 + i % 20))
        price = "" if i % 11 == 0 else f"{rng.random() * 10:.3f}"
        items.append(f"i{i}\tTitle {i}\t{genres}\t{year}\t{price}")
    (directory / f"{name}.item").write_text("\n".join(items) + "\n")
    users = ["user_id:token\tage:token\tgender:token\toccupation:token"]
    for u in range(n_users - 3):  # the last users have no row: their features are missing
        users.append(f"u{u}\t{18 + u % 7}\t{'MF'[u % 2]}\t{['student', 'none', 'None'][u % 3]}")
    (directory / f"{name}.user").write_text("\n".join(users) + "\n")


@pytest.fixture(scope="module")
def feat_dir(tmp_path_factory) -> Path:
    d = write_atomic(tmp_path_factory.mktemp("feat") / "tiny", "tiny", random_rows())
    write_features(d, "tiny")
    return d


def tiny(feat_dir: Path, protocol: str = "random"):
    data = load_dataset(
        DataConfig(name="tiny", source="atomic", path=str(feat_dir), item_fields={"title": "title"})
    )
    return data, build_split(data, SplitConfig(protocol=protocol))


def recbole_cls(name: str):
    from baselines.recbole_model import recbole_class

    return recbole_class(name)


# ----------------------------------------------------------------------------- round trip


def test_every_row_and_feature_round_trips_exactly(feat_dir, tmp_path):
    data, split = tiny(feat_dir)
    cls = recbole_cls("DeepFM")
    spec = B.spec_for(cls, split, data)
    assert {(f.name, f.type) for f in spec.features} == {
        ("age", "token"),
        ("gender", "token"),
        ("occupation", "token"),
        ("genre", "token_seq"),
        ("year", "token"),
        ("price", "float"),
    }  # the title (item_fields role) is left out by default
    directory = tmp_path / B.NAME
    with compat.recbole_session():
        vocab = B.write_files(split, data, directory, spec)
        config = B.recbole_config(cls, directory, spec, "labeled")
        dataset = B.load_recbole_dataset(config)
    # Before RecBole builds tensors: ratings and timestamps exactly, part by part, in our order.
    frame = dataset.inter_feat
    sizes = [len(split.parts[p]) for p in B.PARTS]
    assert len(frame) == sum(sizes)
    ours = pd.concat([split.parts[p] for p in B.PARTS], ignore_index=True)
    np.testing.assert_array_equal(frame[B.RATING].to_numpy(), ours["rating"].to_numpy())
    np.testing.assert_array_equal(frame[B.TIME].to_numpy(), ours["timestamp"].to_numpy())
    # Float features exactly too (RecBole fills a missing value with the column mean).
    rb = [dataset.field2token_id[B.IID][str(i)] for i in range(split.n_items)]
    price = data.items["price"].reindex(pd.Index(split.item_ids, dtype=object)).to_numpy(float)
    ok = ~np.isnan(price)
    np.testing.assert_array_equal(dataset.item_feat["price"].to_numpy()[rb][ok], price[ok])
    np.testing.assert_allclose(dataset.item_feat["price"].to_numpy()[rb][~ok], np.nanmean(price))

    bridge = B.Bridge.from_dataset(config, dataset, spec, vocab, split.n_users, split.n_items)
    # Exact id maps: a bijection onto 1..n with 0 = padding, the token being our index.
    for ours_to_rb, rb_to_ours, fld, n in (
        (bridge.user_rb, bridge.rb_user, B.UID, split.n_users),
        (bridge.item_rb, bridge.rb_item, B.IID, split.n_items),
    ):
        assert sorted(ours_to_rb) == list(range(1, n + 1)) and rb_to_ours[0] == -1
        np.testing.assert_array_equal(rb_to_ours[ours_to_rb], np.arange(n))
        assert [dataset.field2id_token[fld][r] for r in ours_to_rb] == [str(i) for i in range(n)]
    for part in B.PARTS:
        back = bridge.decode_part(part)
        df = split.parts[part]
        np.testing.assert_array_equal(back["user"], df["user"])
        np.testing.assert_array_equal(back["item"], df["item"])
        np.testing.assert_array_equal(back["label"], (df["rating"] >= 4).astype(int))
    # Features: raw values back for every user and item (token_seq whitespace normalised).
    for source, ids, table in (("user", split.user_ids, data.users), ("item", split.item_ids, data.items)):
        back = bridge.decode_features(source)
        raw = table.reindex(pd.Index(ids, dtype=object))
        for f in (f for f in spec.features if f.source == source):
            if f.type == "float":  # RecBole's tensors hold float32
                have = raw[f.name].to_numpy(float)
                np.testing.assert_allclose(
                    back[f.name], np.where(np.isnan(have), np.nanmean(have), have), rtol=1e-6
                )
            else:
                expect = [" ".join(str(v).split()) if isinstance(v, str) else "" for v in raw[f.name]]
                assert back[f.name].tolist() == expect, f.name
    assert "NA" in bridge.vocab["year"] and "None" in bridge.vocab["occupation"]  # not read as missing


def test_histories_hold_only_earlier_train_items(feat_dir):
    data, split = tiny(feat_dir, "loo")
    max_len = 4
    cls = recbole_cls("SASRec")
    spec = B.spec_for(cls, split, data, [], [], max_len=max_len)
    bridge = B.build_bridge(split, data, cls, spec, "full")
    tr = split.train
    key = tr["timestamp"].to_numpy() * 1e6 + tr["row"].to_numpy()
    hist, length = padded_train_histories(split, max_len)
    for r in range(len(tr)):
        u = tr["user"].iat[r]
        earlier = tr[(tr["user"] == u) & (key < key[r])]
        earlier = earlier.iloc[np.argsort(key[earlier.index], kind="stable")]["item"].to_numpy()
        assert hist[r, : length[r]].tolist() == earlier[-max_len:].tolist()
        assert (hist[r, length[r] :] == -1).all()
    # RecBole's train part: exactly the rows with a non-empty history, with those histories.
    back = bridge.decode_part("train")
    keep = length >= 1
    np.testing.assert_array_equal(back["user"], tr["user"].to_numpy()[keep])
    np.testing.assert_array_equal(back["item"], tr["item"].to_numpy()[keep])
    assert back["history"].tolist() == [h[:n].tolist() for h, n in zip(hist[keep], length[keep], strict=True)]
    # Valid rows: the user's last train items; test rows: train + valid (loo: the valid item last).
    for part in ("valid", "test"):
        back = bridge.decode_part(part)
        uh, ul = padded_user_histories(split, part, max_len)
        for u, h in zip(back["user"], back["history"], strict=True):
            assert h == uh[u, : ul[u]].tolist()
            seen = split.train[split.train["user"] == u]
            if part == "test":
                seen = pd.concat([seen, split.valid[split.valid["user"] == u]])
            seen = seen.sort_values(["timestamp", "row"], kind="stable")["item"].tolist()
            assert h == seen[-max_len:]
    valid_item = dict(zip(split.valid["user"], split.valid["item"], strict=True))
    test = bridge.decode_part("test")
    assert all(h[-1] == valid_item[u] for u, h in zip(test["user"], test["history"], strict=True) if h)


def test_recbole_side_effects_are_contained(feat_dir):
    data, split = tiny(feat_dir)
    argv = list(sys.argv)
    cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
    sys.argv = [argv[0], "--learning_rate=99"]  # RecBole would read this as a setting
    try:
        cls = recbole_cls("DeepFM")
        bridge = B.build_bridge(split, data, cls, B.spec_for(cls, split, data), "labeled")
        assert bridge.config["learning_rate"] != 99
        assert sys.argv == [argv[0], "--learning_rate=99"]
    finally:
        sys.argv = argv
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == cuda
    for alias in ("float", "long", "int", "bool", "object", "str", "unicode", "complex"):
        assert alias not in np.__dict__, alias


@pytest.mark.parametrize(
    "name,needle",
    [
        ("KGAT", "knowledge graph"),
        ("Pop", "closed form"),
        ("MultiVAE", "user batches"),
        ("S3Rec", "S3RecTrainer"),
        ("DIEN", "DIENDataset"),
        ("lightgbm", "decision-tree"),
        ("NoSuchModel", "no model"),
    ],
)
def test_unsupported_recbole_models_are_one_line_errors(name, needle):
    with pytest.raises(ConfigError) as e:
        recbole_cls(name)
    msg = str(e.value)
    assert name in msg and needle in msg and "\n" not in msg


def test_feature_selection_errors_are_one_line(feat_dir):
    data, _ = tiny(feat_dir)
    with pytest.raises(ConfigError, match="'zip' is not a user column"):
        B.feature_fields(data, ["zip"], [])
    with pytest.raises(ConfigError, match="field_types"):
        B.feature_fields(data, ["age"], [], {"age": "bogus"})


# ----------------------------------------------------------------------------- the wrapper


@pytest.fixture(scope="module")
def sasrec(feat_dir):
    from baselines.recbole_model import RecBoleModel

    data, split = tiny(feat_dir, "loo")
    torch.manual_seed(0)
    params = {"n_layers": 1, "n_heads": 1, "hidden_size": 8, "inner_size": 16}
    return split, RecBoleModel(split, data, "SASRec", params, [], [], max_len=5)


def test_stream_is_seeded_epoch_dependent_and_split_across_ranks(feat_dir):
    from baselines.recbole_model import RecBoleModel

    data, split = tiny(feat_dir)
    torch.manual_seed(0)
    model = RecBoleModel(split, data, "BPR", {"embedding_size": 4}, [], [])
    a = list(model.train_dataset(split, 64, seed=3))
    b = list(model.train_dataset(split, 64, seed=3))
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)
    s = model.train_dataset(split, 64, seed=3)
    s.epoch = 1
    assert not torch.equal(next(iter(s))["user_id"], a[0]["user_id"])
    # Negatives are never a train positive of the user (RecBole ids).
    pos = set(
        zip(
            split.train["user"].map(lambda u: model._user_rb[u].item()),
            split.train["item"].map(lambda i: model._item_rb[i].item()),
            strict=True,
        )
    )
    assert all(
        (int(u), int(n)) not in pos for x in a for u, n in zip(x["user_id"], x["neg_item_id"], strict=True)
    )
    assert sum(len(x["user_id"]) for x in a) == len(split.train) and len(s) == len(a)
    # Two ranks split every batch: together they see the batch once.
    r0, r1 = model.train_dataset(split, 64, 3), model.train_dataset(split, 64, 3)
    r0.rank, r0.world, r1.rank, r1.world = 0, 2, 1, 2
    for full, x, y in zip(a, r0, r1, strict=True):
        assert sorted(torch.cat([x["user_id"], y["user_id"]]).tolist()) == sorted(full["user_id"].tolist())


def test_sequential_scores_the_valid_history_until_weights_are_loaded(sasrec):
    split, model = sasrec
    model.eval()
    users = torch.arange(split.n_users)
    assert model.eval_part == "valid"
    with torch.no_grad():
        valid_scores = model.score(users)
    assert valid_scores.shape == (split.n_users, split.n_items)
    model.load_state_dict(model.state_dict())  # what fit() does with the best checkpoint
    assert model.eval_part == "test"
    with torch.no_grad():
        test_scores = model.score(users)
        pairs = model.score_pairs(users[:3], torch.tensor([[0, 5, 7]] * 3))
    assert not torch.allclose(valid_scores, test_scores)  # loo: the test history adds the valid item
    torch.testing.assert_close(pairs, test_scores[:3][:, [0, 5, 7]])
    batch = next(iter(model.train_dataset(split, 32, 0)))
    model.train()
    model.loss(batch).backward()
    assert model.eval_part == "valid"


def test_plain_tensor_attributes_follow_the_module(feat_dir):
    from baselines.recbole_model import RecBoleModel

    data, split = tiny(feat_dir)
    model = RecBoleModel(split, data, "LightGCN", {"embedding_size": 4, "n_layers": 1}, [], [])
    model.to(torch.float64)  # a dtype move reaches LightGCN's adjacency matrix like a device move would
    assert model.recbole.norm_adj_matrix.dtype == torch.float64
    assert model._user_rb.dtype == torch.int64
    with torch.no_grad():
        assert model.score(torch.arange(3)).dtype == torch.float64


def test_pointwise_general_model_trains_on_sampled_negatives(feat_dir):
    from baselines.recbole_model import RecBoleModel

    data, split = tiny(feat_dir)
    torch.manual_seed(0)
    model = RecBoleModel(
        split,
        data,
        "NeuMF",
        {"mf_embedding_size": 4, "mlp_embedding_size": 4, "mlp_hidden_size": [8]},
        [],
        [],
    )
    assert not model.outputs_probabilities  # a ranking model: scores, not calibrated probabilities
    batch = next(iter(model.train_dataset(split, 16, seed=0)))
    assert batch["label"].tolist() == [1.0] * 16 + [0.0] * 16
    assert torch.equal(batch["user_id"][:16], batch["user_id"][16:])
    loss = model.loss(batch)
    assert torch.isfinite(loss) and loss.requires_grad
    with torch.no_grad():
        assert model.score(torch.arange(4)).shape == (4, split.n_items)


def test_sequence_split_rows_keep_their_own_histories(feat_dir, tmp_path):
    """On a split whose rows carry a history (tallrec_movie), every RecBole row of every part gets
    that row's history, and DIN scores a labeled row with it (checked against RecBole's own
    ``predict`` on a hand-built interaction), not with a per-user history."""
    from baselines.recbole_model import RecBoleModel

    data = load_dataset(DataConfig(name="tiny", source="atomic", path=str(feat_dir)))
    split = build_split(data, SplitConfig(protocol="tallrec_movie", history=3, keep_last=100_000))
    spec = B.spec_for(recbole_cls("DIN"), split, data, [], [], max_len=2)
    B.write_files(split, data, tmp_path, spec)
    for part in ("train", "valid", "test"):
        lines = (tmp_path / f"bench.{part}.inter").read_text().splitlines()[1:]
        df = split.parts[part]
        assert len(lines) == len(df)
        for line, hist in zip(lines, df["history"], strict=True):
            assert line.split("\t")[-1].split() == [str(i) for i in hist[-2:]]  # last max_len items

    model = RecBoleModel(split, data, "DIN", {"embedding_size": 4, "mlp_hidden_size": [8]}, [], [], max_len=3)
    model.eval().load_state_dict(model.state_dict())  # -> scores the test part
    test = split.test
    users = torch.as_tensor(test["user"].to_numpy())
    items = torch.as_tensor(test["item"].to_numpy())
    with torch.no_grad():
        got = model.score_pairs(users, items[:, None]).squeeze(1)
        hist = torch.as_tensor([[model._item_rb[i].item() for i in h] for h in test["history"]])
        manual = model.recbole.predict(model._inter({
            B.UID: model._user_rb[users], B.IID: model._item_rb[items],
            B.ITEM_LIST: hist, B.ITEM_LEN: torch.full((len(test),), 3),
        }))
    torch.testing.assert_close(got, manual)
    # Some user has test rows with different histories: no per-user history could give `manual`.
    by_user = test.groupby("user")["history"].agg(lambda h: len(set(h)))
    assert (by_user > 1).any()
    with pytest.raises(ConfigError, match="eval=labeled"):
        model.score(users[:2])
    with pytest.raises(ConfigError, match="no test row"):
        model.score_pairs(users[:1], (items[:1] + 1)[:, None] % split.n_items)


def test_shots_train_on_the_rows_a_tallrec_model_draws(feat_dir):
    from baselines.recbole_model import RecBoleModel
    from benchmark.data.shots import draw_rows, rows_digest

    data, split = tiny(feat_dir)
    model = RecBoleModel(split, data, "DeepFM", {"embedding_size": 4, "mlp_hidden_size": [8]}, [], [], shots=16)
    rows = draw_rows(len(split.train), 16, seed=3, stream=0)
    batches = list(model.train_dataset(split, 5, seed=3))
    seen = torch.cat([b[B.IID] for b in batches])
    want = model._item_rb[torch.as_tensor(split.train["item"].to_numpy()[rows])]
    assert sorted(seen.tolist()) == sorted(want.tolist()) and len(seen) == 16
    facts = model.prediction_facts()["recbole"]
    assert facts["shots"] == 16 and facts["shot_rows_sha256"] == rows_digest(rows)
    other = list(model.train_dataset(split, 5, seed=4))  # another seed, other rows
    assert sorted(torch.cat([b[B.IID] for b in other]).tolist()) != sorted(want.tolist())
    every = RecBoleModel(split, data, "DeepFM", {"embedding_size": 4}, [], [], shots="all")
    assert sum(len(b[B.IID]) for b in every.train_dataset(split, 64, 3)) == len(split.train)
    for bad in (0, -2, "many", 1.5):
        with pytest.raises(ConfigError, match="model.module.shots"):
            RecBoleModel(split, data, "DeepFM", {"embedding_size": 4}, [], [], shots=bad)
    with pytest.raises(ConfigError, match="only"):
        RecBoleModel(split, data, "DeepFM", {"embedding_size": 4}, [], [], shots=10**6).train_dataset(split, 5, 0)
