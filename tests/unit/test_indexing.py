"""Item indexing schemes are built from the train part only: planting a test-only item or changing the
test part never changes a train item's id; sequential ids carry no test order; collisions resolve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmark.config import DataConfig, SplitConfig
from benchmark.data.loading import load_dataset
from benchmark.data.splits import build_split
from benchmark.errors import ConfigError
from benchmark.models.components.indexing import (
    SCHEMES,
    IndexConfig,
    _extra_codes,
    build_index,
    rq_kmeans,
    train_item_mask,
)
from tests.conftest import random_rows, write_atomic

SMALL = {"n_clusters": 3, "max_leaf": 6, "codebook": 4}


def make(directory: Path, rows: list[tuple], titles: dict[str, str] | None = None):
    titles = titles if titles is not None else {i: f"Title {i[1:]}" for i in sorted({r[1] for r in rows})}
    write_atomic(directory, "d", rows, titles)
    data = load_dataset(DataConfig(name="d", source="atomic", path=str(directory)))
    return data, build_split(data, SplitConfig())


def ids_by_raw(scheme: str, data, split, seed: int = 0) -> dict[str, str]:
    index = build_index(IndexConfig(scheme=scheme, **SMALL), split, data, seed)
    return dict(zip(split.item_ids.tolist(), index.texts, strict=True))


def last_rows(rows: list[tuple]) -> dict[str, int]:
    """Position in ``rows`` of each user's last (test) interaction under loo."""
    last: dict[str, tuple] = {}
    for pos, (u, _, _, t) in enumerate(rows):
        if u not in last or t >= last[u][0]:
            last[u] = (t, pos)
    return {u: p for u, (_, p) in last.items()}


def train_pairs(split) -> set[tuple[str, str]]:
    tr = split.train
    return set(zip(split.user_ids[tr["user"]].tolist(), split.item_ids[tr["item"]].tolist(), strict=True))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_planting_a_test_only_item_or_changing_the_test_part_keeps_every_train_id(tmp_path, scheme):
    rows = random_rows(n_users=30, n_items=40, per_user=8, seed=1)
    data, split = make(tmp_path / "a", rows)
    base = ids_by_raw(scheme, data, split)
    trained = set(split.item_ids[train_item_mask(split)].tolist())

    planted = list(rows)  # user u0's test item becomes a brand-new item
    p = last_rows(rows)["u0"]
    u, _, r, t = planted[p]
    planted[p] = (u, "i999", r, t)
    data_p, split_p = make(
        tmp_path / "b", planted, {**{f"i{i}": f"Title {i}" for i in range(40)}, "i999": "New"}
    )
    assert train_pairs(split_p) == train_pairs(split)
    got = ids_by_raw(scheme, data_p, split_p)
    assert "i999" in got and got["i999"] not in {got[i] for i in trained}
    assert {i: got[i] for i in trained} == {i: base[i] for i in trained}

    changed = list(rows)  # every test item replaced by another catalogue item the user never rated
    rng = np.random.default_rng(5)
    for pos in last_rows(rows).values():
        u, _, r, t = changed[pos]
        rated = {i for uu, i, _, _ in rows if uu == u}
        changed[pos] = (u, str(rng.choice(sorted({f"i{i}" for i in range(40)} - rated))), r, t)
    data_c, split_c = make(tmp_path / "c", changed)
    assert train_pairs(split_c) == train_pairs(split)
    got = ids_by_raw(scheme, data_c, split_c)
    assert {i: got[i] for i in trained} == {i: base[i] for i in trained}


def sequence_rows(n_users: int, length: int, swap: bool = False) -> list[tuple]:
    """Each user watches their own items in order; with ``swap`` users exchange test items."""
    rows = []
    for u in range(n_users):
        for j in range(length):
            item = f"u{u:02d}_{j}"
            if swap and j == length - 1:
                item = f"u{(u + 1) % n_users:02d}_{j}"
            rows.append((f"u{u:02d}", item, 5, 100 * j + u))
    return rows


def test_sequential_ids_follow_train_order_and_never_test_order(tmp_path):
    data, split = make(tmp_path / "a", sequence_rows(30, 6))
    ids = ids_by_raw("sequential", data, split)
    # Train items: numbered by first appearance in the train sequences (users in index order).
    expected = {f"u{u:02d}_{j}": str(1 + 4 * u + j) for u in range(30) for j in range(4)}
    assert {i: ids[i] for i in expected} == expected
    # P5's original indexing gave the valid/test items the numbers right after the history; here they
    # are cold items, numbered after all train items in a permutation by seed.
    n = [(int(ids[f"u{u:02d}_3"]), int(ids[f"u{u:02d}_4"]), int(ids[f"u{u:02d}_5"])) for u in range(30)]
    assert all(v > 120 and t > 120 for _, v, t in n)
    adjacent = sum(v == h + 1 or t == v + 1 for h, v, t in n)
    assert adjacent <= 3, n  # chance level, not "every user" as with whole-sequence numbering
    # Which user a test item belongs to (the test order) does not change any id.
    data_s, split_s = make(tmp_path / "b", sequence_rows(30, 6, swap=True))
    assert ids_by_raw("sequential", data_s, split_s) == ids


def test_random_ids_depend_on_the_seed_only(tmp_path):
    data, split = make(tmp_path / "a", random_rows(n_users=20, n_items=30, per_user=6))
    a, b = ids_by_raw("random", data, split, 0), ids_by_raw("random", data, split, 1)
    assert a == ids_by_raw("random", data, split, 0) and a != b
    assert sorted(int(x) for x in a.values()) == list(range(1, len(a) + 1))


def test_collisions_resolve_train_first_and_cold_items_never_move_train_ids():
    keys = [("A",), ("A",), ("B",), ("C",), ("A",), ("B",), ("D",)]
    trained = np.array([True, True, True, False, False, False, False])
    extra, facts = _extra_codes(keys, trained)
    assert extra == [0, 1, None, None, 2, 1, None]
    assert facts["train_collision_groups"] == 1 and facts["cold_items_with_extra_code"] == 2
    only_train, _ = _extra_codes(keys[:3], trained[:3])
    assert only_train == extra[:3]


def test_title_duplicates_get_suffixes(tmp_path):
    rows = random_rows(n_users=15, n_items=12, per_user=6, seed=2)
    titles = {f"i{i}": ("Same" if i in (0, 1) else f"Film {i}") for i in range(12)}
    data, split = make(tmp_path, rows, titles)
    ids = ids_by_raw("title", data, split)
    assert {ids["i0"], ids["i1"]} == {"Same", "Same [2]"}


def test_rq_kmeans_codebooks_are_fitted_on_train_rows_only():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8))
    fit = np.arange(50) < 35
    a = rq_kmeans(emb, fit, levels=2, codebook=4, seed=0)
    other = emb.copy()
    other[~fit] = rng.normal(size=(15, 8)) * 3
    b = rq_kmeans(other, fit, levels=2, codebook=4, seed=0)
    assert (a[fit] == b[fit]).all() and a.shape == (50, 2)


def test_collaborative_ids_are_hierarchical_tokens(tmp_path):
    data, split = make(tmp_path, random_rows(n_users=30, n_items=40, per_user=8))
    index = build_index(IndexConfig(scheme="collaborative", **SMALL), split, data, 0)
    assert index.new_tokens and all(t.startswith("<c") for t in index.new_tokens)
    assert index.facts["largest_leaf"] <= SMALL["max_leaf"] and index.facts["depth_max"] >= 2
    assert len(set(index.texts)) == split.n_items


def test_bad_index_config_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown scheme"):
        IndexConfig(scheme="semantik")
    with pytest.raises(ConfigError, match="n_clusters"):
        IndexConfig(n_clusters=1)


def test_text_encoder_memoized_encodes_each_catalogue_once_and_only_inside_the_block(monkeypatch):
    import numpy as np

    from benchmark.models.components import text_encoder as te

    calls = []

    def fake(self, texts):
        calls.append(tuple(texts))
        return np.arange(len(texts), dtype=np.float32)[:, None]

    monkeypatch.setattr(te.TextEncoder, "_encode", fake)
    enc = te.TextEncoder(path="/nonexistent/encoder")
    with te.memoized():
        a = enc.encode(["x", "y"])
        a[0, 0] = 99.0  # a caller's change never reaches the kept copy
        b = enc.encode(["x", "y"])
        enc.encode(["z"])
    enc.encode(["x", "y"])  # outside the block: encoded again
    assert calls == [("x", "y"), ("z",), ("x", "y")]
    assert b.tolist() == [[0.0], [1.0]]
    assert te._MEMO is None
