"""The test rows a run is scored on: the protocol's rows, their slices, fixed negatives, a user subset.

One home for the rows of evaluation, shared by the run (:mod:`benchmark.run`), validation and
reproduction (:mod:`benchmark.results`): every consumer scores exactly the same rows.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from benchmark.config import EvalConfig, SliceConfig
from benchmark.data.splits import Split
from benchmark.data.views import (
    LabeledRows,
    RankingRows,
    array_fingerprint,
    attach_slices,
    labeled_rows,
    ranking_rows,
    sample_negatives,
)
from benchmark.errors import ConfigError

# Protocols whose rows rank their targets among fixed negatives drawn once per split by seed.
NEGATIVE_PROTOCOLS = ("sampled", "candidates")
# Seed of the eval.test_users draw: fixed, so every run with the same N on a split scores the same users.
TEST_USERS_SEED = 20_240_601


def eval_rows(
    split: Split, ev: EvalConfig, slices: SliceConfig
) -> tuple[RankingRows | LabeledRows, dict[str, Any]]:
    """The test rows of the configured protocol (with slices, and fixed negatives when sampled or candidates).

    With ``eval.test_users=N`` only the rows of N test users are kept (see :func:`pick_test_users`);
    negatives are drawn for all rows first, so a kept row has the same negatives as in a full run.

    Returns:
        (rows, facts): the rows, and what the record states about them (``test_users``,
        ``test_users_fingerprint``, ``negatives_fingerprint`` where they apply).
    """
    facts: dict[str, Any] = {}
    if ev.protocol == "labeled":
        rows = labeled_rows(split, "test", split.config["label_threshold"], slices)
    else:
        rows = attach_slices(ranking_rows(split, "test"), split, slices)
        if ev.protocol in NEGATIVE_PROTOCOLS:
            rows.negatives = sample_negatives(split, rows, ev.num_negatives, ev.negatives_seed)
    if ev.test_users is not None:
        chosen = pick_test_users(rows.users, ev.test_users)
        rows = take_rows(rows, np.isin(rows.users, chosen))
        facts["test_users"] = ev.test_users
        facts["test_users_fingerprint"] = array_fingerprint(chosen)
    if ev.protocol in NEGATIVE_PROTOCOLS:
        facts["negatives_fingerprint"] = array_fingerprint(rows.users, rows.negatives)
    return rows, facts


def candidate_view(split: Split, rows: RankingRows, ev: EvalConfig) -> tuple[RankingRows, dict[str, Any]]:
    """The candidates view of full-ranking test rows (``eval.also_candidates``).

    The same rows with ``eval.candidates_negatives`` fixed negatives each, drawn exactly as
    ``eval=candidates`` draws them (same function, same seed; for a user subset, drawn for all
    rows first), so a full run's view and an ``eval=candidates`` run with as many negatives rank
    the same candidates.

    Returns:
        (rows with negatives, facts: ``num_negatives``, ``negatives_fingerprint``).
    """
    everyone = ranking_rows(split, "test")
    try:
        negatives = sample_negatives(split, everyone, ev.candidates_negatives, ev.negatives_seed)
    except ConfigError as e:  # name the key of the view
        raise ConfigError(str(e).replace("eval.num_negatives", "eval.candidates_negatives")) from None
    negatives = negatives[np.searchsorted(everyone.users, rows.users)]
    view = replace(rows, negatives=negatives)
    facts = {
        "num_negatives": ev.candidates_negatives,
        "negatives_fingerprint": array_fingerprint(view.users, view.negatives),
    }
    return view, facts


def candidate_ks(ks: list[int], n_candidates: int) -> list[int]:
    """Cut-offs of a candidates view of a full run: 1 and every K of ``eval.ks`` shorter than the list."""
    return sorted({1} | {k for k in ks if k < n_candidates})


def pick_test_users(users: np.ndarray, n: int) -> np.ndarray:
    """[n] distinct user indices drawn (fixed seed) from the users of the test rows, ascending.

    The draw depends only on the test rows' user indices (which the split fixes), never on a model.
    """
    pool = np.unique(users)
    if n > len(pool):
        raise ConfigError(f"eval.test_users={n}: the test part has only {len(pool)} users")
    pick = np.random.default_rng(TEST_USERS_SEED).choice(len(pool), size=n, replace=False)
    return np.sort(pool[pick])


def take_rows(rows: RankingRows | LabeledRows, keep: np.ndarray) -> RankingRows | LabeledRows:
    """The rows where ``keep`` [R] is true (targets, exclusions, slices and negatives follow)."""
    if isinstance(rows, LabeledRows):
        return LabeledRows(
            rows.part,
            rows.users[keep],
            rows.items[keep],
            rows.labels[keep],
            {k: v[keep] for k, v in rows.slices.items()},
        )
    r = np.flatnonzero(keep)

    def csr(ptr: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sizes = np.diff(ptr)[r]
        idx = np.concatenate([np.arange(ptr[i], ptr[i + 1]) for i in r]) if len(r) else np.zeros(0, np.int64)
        return np.r_[0, np.cumsum(sizes)].astype(np.int64), values[idx.astype(np.int64)], idx.astype(np.int64)

    target_ptr, targets, t_idx = csr(rows.target_ptr, rows.targets)
    exclude_ptr, exclude, _ = csr(rows.exclude_ptr, rows.exclude)
    return RankingRows(
        rows.part,
        rows.users[r],
        target_ptr,
        targets,
        exclude_ptr,
        exclude,
        {k: v[t_idx] for k, v in rows.slices.items()},
        None if rows.negatives is None else rows.negatives[r],
    )
