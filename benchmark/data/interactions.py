"""The canonical interaction table every dataset is read into."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from benchmark.util import sha256_text

CANONICAL = ("user", "item", "rating", "timestamp")


@dataclass(frozen=True)
class Interactions:
    """A dataset in canonical form.

    Attributes:
        name: dataset name.
        inter: one row per interaction in file order; columns ``user`` and ``item``
            (raw ids as str), ``rating`` (float, NaN if absent) and ``timestamp``
            (float, the row number if absent).
        items: item side table indexed by raw item id (str); text/feature columns.
        users: user side table indexed by raw user id (str); feature columns.
        files: source file name -> sha256 of its bytes.
        item_fields: role -> column in ``items`` (e.g. ``title``, ``year``, ``genres``).
        duplicates_removed: rows dropped by the reader's rule for repeated
            (user, item) pairs (``data.duplicates``); 0 when every pair is unique.
    """

    name: str
    inter: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    files: dict[str, str] = field(default_factory=dict)
    item_fields: dict[str, str] = field(default_factory=dict)
    duplicates_removed: int = 0

    @property
    def fingerprint(self) -> str:
        """sha256 over the names and hashes of the source files."""
        return sha256_text("".join(f"{name}\t{self.files[name]}\n" for name in sorted(self.files)))

    def stats(self) -> dict[str, float]:
        """Users, items, interactions and density of the interaction table, and the
        repeated (user, item) rows the reader removed before any filter."""
        n_users = int(self.inter["user"].nunique())
        n_items = int(self.inter["item"].nunique())
        n = len(self.inter)
        return {
            "users": n_users,
            "items": n_items,
            "interactions": n,
            "density": n / max(1, n_users * n_items),
            "duplicates_removed": int(self.duplicates_removed),
        }


def filter_interactions(
    inter: pd.DataFrame, rating_threshold: float | None = None, kcore: int = 0
) -> pd.DataFrame:
    """Keep interactions with ``rating >= rating_threshold``, then apply iterative k-core.

    k-core repeatedly drops users and items with fewer than ``kcore`` interactions
    until every remaining user and item has at least ``kcore``. File order is kept.
    """
    if rating_threshold is not None:
        inter = inter[inter["rating"] >= rating_threshold]
    if kcore and kcore > 1:
        while True:
            uc = inter["user"].map(inter["user"].value_counts())
            ic = inter["item"].map(inter["item"].value_counts())
            keep = (uc >= kcore) & (ic >= kcore)
            if keep.all():
                break
            inter = inter[keep.to_numpy()]
    return inter.reset_index(drop=True)


def index_of(raw: pd.Series, ids: np.ndarray) -> np.ndarray:
    """Map raw id strings to positions in the sorted array ``ids``."""
    pos = np.searchsorted(ids, raw.to_numpy())
    return pos.astype(np.int64)
