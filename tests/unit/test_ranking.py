"""Top-K ranking: deterministic tie-breaking, exclusions, chunk invariance."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.config import SplitConfig
from benchmark.data.atomic import read_atomic
from benchmark.data.splits import build_split
from benchmark.data.views import ranking_rows, sample_negatives
from benchmark.eval.ranking import rank_candidates, rank_full, topk_deterministic


def brute_topk(scores: np.ndarray, k: int) -> np.ndarray:
    out = []
    for row in scores:
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        out.append([j if np.isfinite(row[j]) else -1 for j in order])
    return np.array(out)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6), st.integers(1, 30), st.integers(1, 12), st.integers(0, 2**31 - 1), st.integers(1, 5)
)
def test_topk_matches_brute_force_with_ties(b, n, k, seed, levels):
    k = min(k, n)
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, size=(b, n)).astype(np.float32)  # many ties
    scores[rng.random((b, n)) < 0.2] = -np.inf
    got = topk_deterministic(torch.as_tensor(scores), k).numpy()
    assert (got == brute_topk(scores, k)).all()


def test_rank_full_excludes_history_and_is_chunk_invariant(tiny_dir):
    s = build_split(read_atomic(tiny_dir, "tiny"), SplitConfig(protocol="temporal"))
    rows = ranking_rows(s, "test")
    g = torch.Generator().manual_seed(0)
    table = torch.randint(0, 4, (s.n_users, s.n_items), generator=g).float()

    def scorer(u):
        return table[u]

    a = rank_full(scorer, rows, 10, chunk_users=3)
    b = rank_full(scorer, rows, 10, chunk_users=1000)
    assert (a == b).all()
    for r in range(len(rows)):
        excl = set(rows.exclude[rows.exclude_ptr[r] : rows.exclude_ptr[r + 1]].tolist())
        assert not excl & set(a[r].tolist())
        masked = table[rows.users[r]].numpy().copy()
        masked[list(excl)] = -np.inf
        assert (a[r] == brute_topk(masked[None], 10)[0]).all()


def test_rank_candidates_only_ranks_targets_and_negatives(tiny_dir):
    s = build_split(read_atomic(tiny_dir, "tiny"), SplitConfig(protocol="loo"))
    rows = ranking_rows(s, "test")
    rows.negatives = sample_negatives(s, rows, 9, 0)
    item_score = torch.arange(s.n_items).float()  # higher index scores higher
    ranked = rank_candidates(lambda u, c: item_score[c], rows, 20)
    assert ranked.shape == (len(rows), 20)
    for r in range(len(rows)):
        cand = set(rows.targets_of(r).tolist()) | set(rows.negatives[r].tolist())
        valid = ranked[r][ranked[r] >= 0]
        assert set(valid.tolist()) == cand and len(valid) == 10
        assert (np.diff(valid) < 0).all()


def test_rank_full_pads_with_minus_one_when_the_catalogue_is_shorter_than_the_list():
    from benchmark.data.views import RankingRows

    # 2 rows over a 3-item catalogue, list length 5: row 0 excludes item 1, row 1 nothing.
    rows = RankingRows(
        "test",
        np.array([0, 1]),
        np.array([0, 1, 2]),
        np.array([2, 0]),
        np.array([0, 1, 1]),
        np.array([1]),
        {},
        None,
    )
    table = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.7]])
    got = rank_full(lambda u: table[u], rows, 5, chunk_users=1)
    # row 0: item 1 excluded -> 2 (0.5), 0 (0.1); row 1: 2 (0.7), 0 (0.3), 1 (0.2)
    assert got.tolist() == [[2, 0, -1, -1, -1], [2, 0, 1, -1, -1]]
