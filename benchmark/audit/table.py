"""The audited split as plain arrays: one layout for configured splits and external files.

Every check of the audit reads :class:`AuditData` only, so a configured split
(:func:`from_split`) and files written by another code base (:mod:`benchmark.audit.external`)
are audited by the same code. Users and items are indices into ``user_ids`` / ``item_ids``;
rows keep their file order within each part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PARTS = ("train", "valid", "test")


@dataclass
class Part:
    """One part's rows.

    Attributes:
        user: [n] user indices.
        item: [n] item indices (the target of a row).
        timestamp: [n] float; NaN when unknown (files without times).
        rating: [n] float; NaN when absent.
        label: [n] 0/1 labels of protocols that define them (sequence rows, TALLRec files), or None.
        hist_ptr: [n + 1] CSR offsets of the row's own history (sequence protocols), or None.
        hist_items: [H] history item indices, oldest first per row, or None.
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    rating: np.ndarray
    label: np.ndarray | None = None
    hist_ptr: np.ndarray | None = None
    hist_items: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user)

    @property
    def has_history(self) -> bool:
        return self.hist_ptr is not None


@dataclass
class AuditData:
    """A split under audit.

    Attributes:
        name: what is audited (``ml-100k loo`` or a folder).
        protocol: the split protocol, or the file layout (``p5``, ``tallrec``, ``export``).
        user_ids: [n_users] raw user ids; position = user index.
        item_ids: [n_items] raw item ids; position = item index.
        parts: ``train``, ``valid``, ``test`` -> :class:`Part` (valid may be empty).
        holdout_items: item indices kept out of train on purpose (strict cold start).
        negatives: (users [R], negatives [R, N]) fixed negatives of a sampled protocol, or None.
        label_threshold: label = rating >= threshold for parts without their own labels.
        facts: where the data came from (config, fingerprint, files, layout).
    """

    name: str
    protocol: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    parts: dict[str, Part]
    holdout_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    negatives: tuple[np.ndarray, np.ndarray] | None = None
    label_threshold: float | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def train(self) -> Part:
        return self.parts["train"]

    @property
    def test(self) -> Part:
        return self.parts["test"]

    @property
    def has_time(self) -> bool:
        """Whether every row has a timestamp (the timeline checks need them)."""
        return all(not np.isnan(p.timestamp).any() for p in self.parts.values()) and len(self.train) > 0

    def stats(self) -> dict[str, Any]:
        """Users, items and rows per part."""
        return {
            "users": self.n_users,
            "items": self.n_items,
            **{f"{p}_rows": len(self.parts[p]) for p in PARTS},
            "timestamps": self.has_time,
            "histories": self.test.has_history,
            "holdout_items": len(self.holdout_items),
        }


def pair_keys(user: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """[n] int64 key of each (user, item) pair: ``user * n_items + item``."""
    return user.astype(np.int64) * np.int64(n_items) + item.astype(np.int64)


def history_csr(histories: Any) -> tuple[np.ndarray, np.ndarray]:
    """Tuples of item indices per row -> (ptr [n + 1], items [H])."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    ptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr[1:])
    items = np.fromiter((int(x) for h in histories for x in h), dtype=np.int64, count=int(ptr[-1]))
    return ptr, items


def part_from_frame(df: Any) -> Part:
    """A split part (DataFrame with ``user``, ``item``, ``timestamp``, ``rating``; sequence
    protocols add ``history`` and ``label``) as a :class:`Part`."""
    hist_ptr = hist_items = label = None
    if "history" in df.columns:
        hist_ptr, hist_items = history_csr(list(df["history"]))
    if "label" in df.columns:
        label = df["label"].to_numpy().astype(np.int8)
    return Part(  # views of the frame's columns where their dtypes match (no copy of a big split)
        user=np.asarray(df["user"].to_numpy(), dtype=np.int64),
        item=np.asarray(df["item"].to_numpy(), dtype=np.int64),
        timestamp=np.asarray(df["timestamp"].to_numpy(), dtype=np.float64),
        rating=np.asarray(df["rating"].to_numpy(), dtype=np.float64),
        label=label,
        hist_ptr=hist_ptr,
        hist_items=hist_items,
    )


def from_split(split: Any, name: str = "", label_threshold: float | None = None) -> AuditData:
    """A built :class:`benchmark.data.splits.Split` as :class:`AuditData` (arrays shared, not copied;
    the split's fingerprint, costly on a big split, is the caller's to add to ``facts``)."""
    return AuditData(
        name=name or split.protocol,
        protocol=split.protocol,
        user_ids=np.asarray(split.user_ids),
        item_ids=np.asarray(split.item_ids),
        parts={p: part_from_frame(split.parts[p]) for p in PARTS},
        holdout_items=np.asarray(split.holdout_items, dtype=np.int64),
        label_threshold=label_threshold,
    )


def user_order(part: Part) -> np.ndarray:
    """[n] row positions of ``part`` ordered by (user, timestamp, file order); unknown times sort
    by file order alone."""
    ts = np.where(np.isnan(part.timestamp), -np.inf, part.timestamp)
    return np.lexsort((np.arange(len(part)), ts, part.user))


def last_per_user(parts: list[Part], n_users: int) -> np.ndarray:
    """[n_users] the item of each user's last row over ``parts``: latest time, then the later part
    (in the given order), then the later file position; -1 if none.

    Three passes of ``np.maximum.at`` (O(n)) instead of a sort: the latest time per user, then the
    latest part among the rows at that time, then the latest position among those.
    """
    users = np.concatenate([p.user for p in parts])
    items = np.concatenate([p.item for p in parts])
    ts = np.concatenate([np.where(np.isnan(p.timestamp), -np.inf, p.timestamp) for p in parts])
    rank = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    pos = np.arange(len(users))
    keep = np.ones(len(users), bool)
    for key in (ts, rank, pos):
        top = np.full(n_users, -np.inf)
        np.maximum.at(top, users[keep], key[keep])
        keep &= key == top[users]
    out = np.full(n_users, -1, dtype=np.int64)
    out[users[keep]] = items[keep]
    return out
