"""Task views: exclusion lists, slices and fixed negatives against their definitions."""

import numpy as np

from benchmark.config import SliceConfig, SplitConfig
from benchmark.data.atomic import read_atomic
from benchmark.data.splits import build_split
from benchmark.data.views import attach_slices, labeled_rows, ranking_rows, sample_negatives


def _split(tiny_dir, **kw):
    return build_split(read_atomic(tiny_dir, "tiny"), SplitConfig(**kw))


def test_exclusions_are_history_minus_targets(tiny_dir):
    s = _split(tiny_dir, protocol="temporal")
    for part, seen_parts in (("valid", ["train"]), ("test", ["train", "valid"])):
        rows = ranking_rows(s, part)
        for r, u in enumerate(rows.users):
            seen = set()
            for p in seen_parts:
                df = s.parts[p]
                seen |= set(df.loc[df["user"] == u, "item"].tolist())
            targets = set(rows.targets_of(r).tolist())
            df = s.parts[part]
            assert targets == set(df.loc[df["user"] == u, "item"].tolist())
            excl = set(rows.exclude[rows.exclude_ptr[r] : rows.exclude_ptr[r + 1]].tolist())
            assert excl == seen - targets


def test_slices_match_definitions(tiny_dir):
    s = _split(tiny_dir, protocol="temporal", holdout_items=0.1)
    cfg = SliceConfig(cold_user_max=6, cold_item_max=3)
    rows = attach_slices(ranking_rows(s, "test"), s, cfg)
    tr = s.train
    row_of = rows.row_of_target()
    for t, item in enumerate(rows.targets):
        u = rows.users[row_of[t]]
        assert rows.slices["cold_user"][t] == ((tr["user"] == u).sum() <= 6)
        assert rows.slices["cold_item"][t] == ((tr["item"] == item).sum() <= 3)
        assert rows.slices["strict_cold_item"][t] == (item in set(s.holdout_items.tolist()))
    assert rows.slices["strict_cold_item"].any()


def test_slices_use_train_counts_only(tiny_dir):
    # The valid/test parts must not change slice membership: recompute from train alone.
    s = _split(tiny_dir, protocol="loo")
    rows = attach_slices(ranking_rows(s, "test"), s, SliceConfig(cold_item_max=2))
    counts = np.bincount(s.train["item"], minlength=s.n_items)
    assert (rows.slices["cold_item"] == (counts[rows.targets] <= 2)).all()


def test_negatives_are_unseen_distinct_and_fixed(tiny_dir):
    s = _split(tiny_dir, protocol="loo")
    rows = ranking_rows(s, "test")
    neg = sample_negatives(s, rows, 20, seed=5)
    assert neg.shape == (len(rows), 20)
    every = np.concatenate([s.parts[p][["user", "item"]].to_numpy() for p in ("train", "valid", "test")])
    for r, u in enumerate(rows.users):
        seen = set(every[every[:, 0] == u, 1].tolist())
        assert len(set(neg[r].tolist())) == 20
        assert not seen & set(neg[r].tolist())
    assert (neg == sample_negatives(s, rows, 20, seed=5)).all()
    assert not (neg == sample_negatives(s, rows, 20, seed=6)).all()


def test_negatives_are_uniform_over_the_complement(tiny_dir):
    s = _split(tiny_dir, protocol="loo")
    rows = ranking_rows(s, "test")
    r = 0
    counts = np.zeros(s.n_items)
    for seed in range(300):
        counts[sample_negatives(s, rows, 5, seed)[r]] += 1
    every = np.concatenate([s.parts[p][["user", "item"]].to_numpy() for p in ("train", "valid", "test")])
    seen = np.unique(every[every[:, 0] == rows.users[r], 1])
    free = np.setdiff1d(np.arange(s.n_items), seen)
    assert counts[seen].sum() == 0
    expected = 300 * 5 / len(free)
    assert abs(counts[free].mean() - expected) < 1e-9
    assert counts[free].min() > 0.2 * expected  # every free item gets drawn


def test_labeled_view(tiny_dir):
    s = _split(tiny_dir, protocol="random")
    rows = labeled_rows(s, "test", 4.0, SliceConfig())
    assert (rows.labels == (s.test["rating"].to_numpy() >= 4)).all()
    assert len(rows) == len(s.test)
