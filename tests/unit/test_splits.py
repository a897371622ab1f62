"""Split protocols against their definitions."""

from pathlib import Path

import numpy as np
import pytest

from benchmark.config import SplitConfig
from benchmark.data.atomic import read_atomic
from benchmark.data.splits import build_split
from benchmark.errors import ConfigError, DataError
from tests.conftest import random_rows, write_atomic


def _raw_rows(split, part):
    df = split.parts[part]
    return set(df["row"].tolist())


def test_loo_takes_latest_as_test_and_second_latest_as_valid(tiny_dir):
    data = read_atomic(tiny_dir, "tiny")
    s = build_split(data, SplitConfig(protocol="loo"))
    inter = data.inter
    for u, g in inter.groupby("user"):
        g = g.sort_values("timestamp", kind="stable")
        uidx = int(np.searchsorted(s.user_ids, u))
        test = s.test[s.test["user"] == uidx]
        valid = s.valid[s.valid["user"] == uidx]
        assert s.item_ids[test["item"]].tolist() == [g["item"].iloc[-1]]
        assert s.item_ids[valid["item"]].tolist() == [g["item"].iloc[-2]]
    assert len(s.test) == len(s.valid) == inter["user"].nunique()
    assert len(s.train) + len(s.valid) + len(s.test) == len(inter)


def test_parts_are_disjoint_and_cover_everything(tiny_dir):
    data = read_atomic(tiny_dir, "tiny")
    for protocol in ("loo", "temporal", "random"):
        s = build_split(data, SplitConfig(protocol=protocol))
        tr, va, te = (_raw_rows(s, p) for p in ("train", "valid", "test"))
        assert not tr & te and not tr & va and not va & te
        assert len(tr | va | te) == len(data.inter)


def test_loo_ties_keep_file_order(tmp_path: Path):
    # Same timestamp: the row later in the file is the "last" one.
    rows = [("a", "x", 5, 1), ("a", "y", 5, 2), ("a", "z", 5, 3), ("a", "w", 5, 3)]
    data = read_atomic(write_atomic(tmp_path / "d", "d", rows), "d")
    s = build_split(data, SplitConfig(protocol="loo"))
    assert s.item_ids[s.test["item"]].tolist() == ["w"]
    assert s.item_ids[s.valid["item"]].tolist() == ["z"]
    assert sorted(s.item_ids[s.train["item"]].tolist()) == ["x", "y"]


def test_temporal_cut_respected(tiny_dir):
    data = read_atomic(tiny_dir, "tiny")
    s = build_split(data, SplitConfig(protocol="temporal", ratios=[0.8, 0.1, 0.1]))
    assert s.train["timestamp"].max() < s.valid["timestamp"].min()
    assert s.valid["timestamp"].max() < s.test["timestamp"].min()
    ts = np.sort(data.inter["timestamp"].to_numpy())
    assert s.train["timestamp"].max() < ts[int(0.8 * len(ts))] <= s.valid["timestamp"].min()
    # Cold users (no train history) are counted, not dropped.
    assert s.stats()["test_users_without_train"] >= 0
    assert len(s.test) == (data.inter["timestamp"] >= ts[int(0.9 * len(ts))]).sum()


def test_random_split_ratio_and_seed(tiny_dir):
    data = read_atomic(tiny_dir, "tiny")
    a = build_split(data, SplitConfig(protocol="random", seed=1))
    b = build_split(data, SplitConfig(protocol="random", seed=1))
    c = build_split(data, SplitConfig(protocol="random", seed=2))
    n = len(data.inter)
    assert len(a.train) == int(0.8 * n) and len(a.valid) == int(0.9 * n) - int(0.8 * n)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


def test_fingerprint_is_deterministic_and_content_sensitive(tmp_path: Path):
    rows = random_rows(seed=3)
    d1 = read_atomic(write_atomic(tmp_path / "a", "d", rows), "d")
    d2 = read_atomic(write_atomic(tmp_path / "b", "d", rows), "d")
    assert build_split(d1, SplitConfig()).fingerprint == build_split(d2, SplitConfig()).fingerprint
    changed = list(rows)
    changed[0] = (changed[0][0], changed[0][1], changed[0][2], changed[0][3] + 100_000)
    d3 = read_atomic(write_atomic(tmp_path / "c", "d", changed), "d")
    assert build_split(d3, SplitConfig()).fingerprint != build_split(d1, SplitConfig()).fingerprint


def test_indices_follow_sorted_raw_ids(tiny_dir):
    data = read_atomic(tiny_dir, "tiny")
    s = build_split(data, SplitConfig())
    assert list(s.item_ids) == sorted(data.inter["item"].unique())
    assert list(s.user_ids) == sorted(data.inter["user"].unique())


def test_holdout_items_never_in_train(tiny_dir):
    data = read_atomic(tiny_dir, "tiny")
    s = build_split(data, SplitConfig(protocol="loo", holdout_items=0.2))
    assert len(s.holdout_items) == round(0.2 * s.n_items)
    assert not np.isin(s.train["item"], s.holdout_items).any()
    # Their valid/test interactions stay; their train interactions are dropped.
    full = build_split(data, SplitConfig(protocol="loo"))
    assert len(s.test) == len(full.test)
    assert len(s.train) == (~np.isin(full.train["item"], s.holdout_items)).sum()


def test_bad_split_config_is_rejected():
    with pytest.raises(ConfigError, match="split.ratios"):
        SplitConfig(ratios=[0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match="split.protocol"):
        SplitConfig(protocol="nope")


def test_empty_train_is_an_error(tmp_path: Path):
    rows = [("a", "x", 5, 1)]  # one interaction per user: loo puts it in test
    data = read_atomic(write_atomic(tmp_path / "d", "d", rows), "d")
    with pytest.raises(DataError, match="train part is empty"):
        build_split(data, SplitConfig(protocol="loo"))


def test_cold_user_view_keeps_the_last_n_train_interactions_of_a_seeded_share(tiny_dir):
    data = read_atomic(tiny_dir, "tiny")
    full = build_split(data, SplitConfig(protocol="loo"))
    s = build_split(data, SplitConfig(protocol="loo", truncate_users=0.5, truncate_to=2))
    test_users = np.unique(full.test["user"])
    assert len(s.truncated_users) == round(0.5 * len(test_users)) and np.isin(s.truncated_users, test_users).all()
    assert s.stats()["truncated_users"] == len(s.truncated_users) and "truncated_users" not in full.stats()
    for part in ("valid", "test"):  # only train rows are cut
        assert _raw_rows(s, part) == _raw_rows(full, part)
    for u in range(full.n_users):
        # by definition: the user's train rows in (timestamp, file row) order, then the last 2
        mine = full.train[full.train["user"] == u].sort_values(["timestamp", "row"], kind="stable")
        expected = set(mine["row"].tolist()[-2:]) if u in s.truncated_users else set(mine["row"].tolist())
        assert set(s.train[s.train["user"] == u]["row"].tolist()) == expected, u
    again = build_split(data, SplitConfig(protocol="loo", truncate_users=0.5, truncate_to=2))
    other = build_split(data, SplitConfig(protocol="loo", truncate_users=0.5, truncate_to=2, seed=1))
    assert again.fingerprint == s.fingerprint != full.fingerprint
    assert not np.array_equal(other.truncated_users, s.truncated_users) and other.fingerprint != s.fingerprint
    none_left = build_split(data, SplitConfig(protocol="loo", truncate_users=0.5, truncate_to=0))
    assert not np.isin(none_left.train["user"], none_left.truncated_users).any()  # no train row left
    assert none_left.stats()["test_users_without_train"] == len(none_left.truncated_users)


def test_cold_user_view_leaves_other_splits_and_hashes_as_before():
    from omegaconf import OmegaConf

    from benchmark.compose import compose
    from benchmark.results.identity import config_hashes

    # defaults (truncate_users 0) hash as before the option: the committed loo BPR run's hash
    cfg = compose(["experiment=leaderboard_ml100k", "model=bpr", "seed=1"])
    assert "truncate_users" in OmegaConf.to_container(cfg.split)
    cut = compose(["experiment=leaderboard_ml100k", "model=bpr", "seed=1", "split=cold_user"])
    assert cut.split.truncate_users == 0.2 and cut.split.truncate_to == 3
    assert config_hashes(cut)[0] != config_hashes(cfg)[0]
    from benchmark.results.identity import run_id_for

    assert run_id_for(cut, config_hashes(cut)[0]).startswith("ml-100k-loo-cold_user-full-bpr-s1-")
    assert run_id_for(cfg, config_hashes(cfg)[0]).startswith("ml-100k-loo-full-bpr-s1-")
    changed = compose(["experiment=leaderboard_ml100k", "model=bpr", "seed=1", "split.truncate_to=4"])
    assert config_hashes(changed)[0] == config_hashes(cfg)[0]  # truncate_to alone changes nothing


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"truncate_users": 1.5}, "split.truncate_users"),
        ({"truncate_users": -0.1}, "split.truncate_users"),
        ({"truncate_users": 0.2, "truncate_to": -1}, "split.truncate_to"),
        ({"truncate_to": 2.5}, "split.truncate_to"),
    ],
)
def test_bad_cold_user_settings_are_one_line(kw, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        SplitConfig(protocol="loo", **kw)
    assert "\n" not in str(e.value)


def test_cold_user_view_is_not_part_of_tallrec_movie(tiny_dir):
    data = read_atomic(tiny_dir, "tiny")
    with pytest.raises(ConfigError, match="split.truncate_users: not part of the tallrec_movie"):
        build_split(data, SplitConfig(protocol="tallrec_movie", truncate_users=0.2))
