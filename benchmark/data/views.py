"""Task views of a split: ranking rows, labeled (CTR) rows, fixed negatives, slices.

Everything here that is learned from data (counts behind the cold-start slices,
exclusion lists) is computed from the train part (and, for test-time exclusion,
the valid part) only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from benchmark.config import SliceConfig
from benchmark.data.splits import Split
from benchmark.errors import ConfigError


def csr_from_pairs(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Group ``cols`` by ``rows`` (stable): returns (ptr [n_rows+1], values)."""
    order = np.argsort(rows, kind="stable")
    counts = np.bincount(rows, minlength=n_rows)
    ptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr, cols[order].astype(np.int64)


@dataclass
class RankingRows:
    """One row per user with at least one interaction in the evaluated part.

    Attributes:
        part: "valid" or "test".
        users: [R] user indices, ascending.
        target_ptr, targets: CSR of the row's target items (file order, duplicates removed).
        exclude_ptr, exclude: CSR of items not to rank for the row (train, plus
            valid at test time), excluding the row's own targets.
        slices: name -> [T] bool over targets (a slice keeps the targets it marks).
        negatives: [R, N] fixed negatives of the sampled protocol, or None.
    """

    part: str
    users: np.ndarray
    target_ptr: np.ndarray
    targets: np.ndarray
    exclude_ptr: np.ndarray
    exclude: np.ndarray
    slices: dict[str, np.ndarray] = field(default_factory=dict)
    negatives: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)

    def targets_of(self, r: int) -> np.ndarray:
        return self.targets[self.target_ptr[r] : self.target_ptr[r + 1]]

    def row_of_target(self) -> np.ndarray:
        """[T] row index of each target."""
        return np.repeat(np.arange(len(self.users)), np.diff(self.target_ptr))


def _unique_pairs(users: np.ndarray, items: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs, keeping first-occurrence order."""
    key = users.astype(np.int64) * n_items + items
    _, first = np.unique(key, return_index=True)
    first = np.sort(first)
    return users[first], items[first]


def ranking_rows(split: Split, part: str) -> RankingRows:
    """Ranking rows of ``part`` with their exclusion lists."""
    df = split.parts[part]
    n_users, n_items = split.n_users, split.n_items
    tu, ti = _unique_pairs(df["user"].to_numpy(), df["item"].to_numpy(), n_items)
    users = np.unique(tu)
    row_of_user = np.full(n_users, -1, dtype=np.int64)
    row_of_user[users] = np.arange(len(users))
    target_ptr, targets = csr_from_pairs(row_of_user[tu], ti, len(users))

    seen = [split.train] + ([split.valid] if part == "test" else [])
    su = np.concatenate([d["user"].to_numpy() for d in seen])
    si = np.concatenate([d["item"].to_numpy() for d in seen])
    su, si = _unique_pairs(su, si, n_items)
    keep = row_of_user[su] >= 0
    su, si = su[keep], si[keep]
    # Never exclude the row's own targets (a repeated item stays rankable).
    target_keys = row_of_user[tu].astype(np.int64) * n_items + ti
    seen_keys = row_of_user[su].astype(np.int64) * n_items + si
    keep = ~np.isin(seen_keys, target_keys)
    exclude_ptr, exclude = csr_from_pairs(row_of_user[su[keep]], si[keep], len(users))
    return RankingRows(part, users, target_ptr, targets, exclude_ptr, exclude)


def train_counts(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Train interactions per user [n_users] and per item [n_items]."""
    tr = split.train
    return (
        np.bincount(tr["user"].to_numpy(), minlength=split.n_users),
        np.bincount(tr["item"].to_numpy(), minlength=split.n_items),
    )


def slice_masks(
    split: Split, users: np.ndarray, items: np.ndarray, cfg: SliceConfig
) -> dict[str, np.ndarray]:
    """Cold-start slice membership of (user, item) evaluation pairs, from train counts.

    - ``cold_user``: the user has <= ``cold_user_max`` train interactions;
    - ``cold_item``: the item has <= ``cold_item_max`` train interactions (unseen included);
    - ``strict_cold_item``: the item was held out of train entirely (only with holdout).
    """
    ucount, icount = train_counts(split)
    masks = {
        "cold_user": ucount[users] <= cfg.cold_user_max,
        "cold_item": icount[items] <= cfg.cold_item_max,
    }
    if len(split.holdout_items):
        masks["strict_cold_item"] = np.isin(items, split.holdout_items)
    return masks


def attach_slices(rows: RankingRows, split: Split, cfg: SliceConfig) -> RankingRows:
    """Set per-target slice masks on ranking rows."""
    row_users = rows.users[rows.row_of_target()]
    rows.slices = slice_masks(split, row_users, rows.targets, cfg)
    return rows


def sample_negatives(
    split: Split, rows: RankingRows, n: int, seed: int, parts: tuple[str, ...] = ("train", "valid", "test")
) -> np.ndarray:
    """[R, n] negatives per row, uniform without replacement over items the user never
    interacted with in any of ``parts`` (every part for test rows). Drawn once per split by
    ``seed``; validation draws with ``parts=("train", "valid")`` and its own stream, so the test
    part is never read while training.
    """
    n_items = split.n_items
    every = np.concatenate([split.parts[p][["user", "item"]].to_numpy() for p in parts])
    row_of_user = np.full(split.n_users, -1, dtype=np.int64)
    row_of_user[rows.users] = np.arange(len(rows.users))
    r = row_of_user[every[:, 0]]
    ok = r >= 0
    ptr, seen = csr_from_pairs(r[ok], every[ok, 1], len(rows.users))
    stream = 104729 if "test" in parts else 104723
    rng = np.random.default_rng([seed, stream])
    out = np.empty((len(rows.users), n), dtype=np.int64)
    for i in range(len(rows.users)):
        excl = np.unique(seen[ptr[i] : ptr[i + 1]])
        free = n_items - len(excl)
        if free < n:
            raise ConfigError(
                f"eval.num_negatives={n}: user {split.user_ids[rows.users[i]]} has only {free} non-interacted items"
            )
        pos = np.sort(rng.choice(free, size=n, replace=False))
        # Map positions in the complement of `excl` back to item indices.
        shift = np.searchsorted(excl - np.arange(len(excl)), pos, side="right")
        out[i] = rng.permutation(pos + shift)
    return out


def array_fingerprint(*arrays: np.ndarray) -> str:
    """sha256 over the bytes of integer arrays (shape included)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a, dtype=np.int64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class LabeledRows:
    """CTR rows: every interaction of the evaluated part with a binary label."""

    part: str
    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    slices: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)


def labeled_rows(split: Split, part: str, threshold: float, slices: SliceConfig | None = None) -> LabeledRows:
    """Labeled view of ``part``: label = rating >= threshold, or the part's own ``label`` column
    (protocols that define labels themselves, e.g. tallrec_movie: rating > like_threshold)."""
    df = split.parts[part]
    if df["rating"].isna().any():
        raise ConfigError(
            f"eval.protocol=labeled needs ratings; the dataset has rows without a rating ({part})"
        )
    users, items = df["user"].to_numpy().copy(), df["item"].to_numpy().copy()
    if "label" in df.columns:
        labels = df["label"].to_numpy().astype(np.int64)
    else:
        labels = (df["rating"].to_numpy() >= threshold).astype(np.int64)
    out = LabeledRows(part, users, items, labels)
    if slices is not None:
        out.slices = slice_masks(split, users, items, slices)
    return out
