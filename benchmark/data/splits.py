"""Split protocols: deterministic functions of the raw interactions and the split config.

Every split maps raw ids to contiguous indices by sorted raw id (never by order
of appearance, so an index carries no information about the test part), keeps
each part in file order, and is fingerprinted by the sha256 of its canonical
text (raw ids), so the same config and data give the same fingerprint anywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property

import numpy as np
import pandas as pd

from benchmark.config import SplitConfig
from benchmark.data.histories import time_order
from benchmark.data.interactions import Interactions, index_of
from benchmark.errors import DataError

PARTS = ("train", "valid", "test")


@dataclass
class Split:
    """Train/valid/test parts over a shared catalogue.

    Attributes:
        protocol: the split protocol name.
        user_ids: sorted raw user ids; position = user index.
        item_ids: sorted raw item ids; position = item index.
        parts: name -> DataFrame with ``user``, ``item`` (indices), ``rating``,
            ``timestamp``, ``row`` (position in the filtered raw table), in file order.
        holdout_items: item indices kept out of train (strict cold-start), sorted.
        config: the split config as a plain dict.
    """

    protocol: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    parts: dict[str, pd.DataFrame]
    holdout_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    config: dict = field(default_factory=dict)

    @property
    def train(self) -> pd.DataFrame:
        return self.parts["train"]

    @property
    def valid(self) -> pd.DataFrame:
        return self.parts["valid"]

    @property
    def test(self) -> pd.DataFrame:
        return self.parts["test"]

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def canonical_text(self) -> str:
        """The canonical content the fingerprint is computed over (raw ids)."""
        lines = [f"protocol\t{self.protocol}"]
        for name in PARTS:
            df = self.parts[name]
            body = (
                pd.Series(self.user_ids[df["user"].to_numpy()]).str.cat(
                    [
                        pd.Series(self.item_ids[df["item"].to_numpy()]),
                        pd.Series(df["timestamp"].to_numpy()).map(repr),
                        pd.Series(df["rating"].to_numpy()).map(repr),
                    ],
                    sep="\t",
                )
                if len(df)
                else pd.Series([], dtype=str)
            )
            lines.append(f"[{name}]\t{len(df)}")
            lines.extend(body.tolist())
        lines.append("[holdout_items]\t" + " ".join(self.item_ids[self.holdout_items].tolist()))
        return "\n".join(lines) + "\n"

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of :meth:`canonical_text`."""
        return hashlib.sha256(self.canonical_text().encode()).hexdigest()

    def stats(self) -> dict[str, int]:
        """Row counts per part, catalogue size and cold users/items of the test part."""
        train_users = np.unique(self.train["user"].to_numpy())
        train_items = np.unique(self.train["item"].to_numpy())
        test = self.test
        return {
            "users": self.n_users,
            "items": self.n_items,
            **{f"{p}_rows": len(self.parts[p]) for p in PARTS},
            "test_users_without_train": int((~np.isin(np.unique(test["user"]), train_users)).sum()),
            "test_items_unseen_in_train": int((~np.isin(np.unique(test["item"]), train_items)).sum()),
            "holdout_items": len(self.holdout_items),
        }


def _assign_loo(df: pd.DataFrame) -> np.ndarray:
    """Part per row for leave-one-out: last -> test, second last -> valid, rest -> train."""
    # Stable order per user by (timestamp, file order).
    order = time_order(df)
    users_sorted = df["user"].to_numpy()[order]
    # Position from the end within each user's run.
    n = len(order)
    is_last_of_user = np.r_[users_sorted[1:] != users_sorted[:-1], True]
    end_idx = np.flatnonzero(is_last_of_user)
    run_end = np.repeat(end_idx, np.diff(np.r_[-1, end_idx]))
    from_end = run_end - np.arange(n)
    part = np.where(from_end == 0, 2, np.where(from_end == 1, 1, 0))
    out = np.empty(n, dtype=np.int64)
    out[order] = part
    return out


def _assign_temporal(df: pd.DataFrame, ratios: list[float]) -> np.ndarray:
    """Global timeline cut at timestamp quantiles; equal timestamps stay on one side."""
    ts = np.sort(df["timestamp"].to_numpy(), kind="stable")
    n = len(ts)
    c1 = int(np.floor(ratios[0] * n))
    c2 = int(np.floor((ratios[0] + ratios[1]) * n))
    t1 = ts[min(c1, n - 1)] if c1 < n else np.inf
    t2 = ts[min(c2, n - 1)] if c2 < n else np.inf
    t = df["timestamp"].to_numpy()
    return np.where(t < t1, 0, np.where(t < t2, 1, 2)).astype(np.int64)


def _assign_random(df: pd.DataFrame, ratios: list[float], seed: int) -> np.ndarray:
    """Seeded random ratio split over all interactions."""
    n = len(df)
    perm = np.random.default_rng(seed).permutation(n)
    c1 = int(np.floor(ratios[0] * n))
    c2 = int(np.floor((ratios[0] + ratios[1]) * n))
    part = np.empty(n, dtype=np.int64)
    part[perm[:c1]] = 0
    part[perm[c1:c2]] = 1
    part[perm[c2:]] = 2
    return part


def build_split(data: Interactions, cfg: SplitConfig, inter: pd.DataFrame | None = None) -> Split:
    """Build the split ``cfg`` of ``data`` (or of the already-filtered table ``inter``)."""
    inter = data.inter if inter is None else inter
    if len(inter) == 0:
        raise DataError(f"{data.name}: no interactions left after filtering; the split would be empty")
    if cfg.protocol == "tallrec_movie":  # TALLRec's published sequence protocol (rows carry histories)
        from benchmark.data.tallrec import build_tallrec_movie  # imports this module: import on use

        return build_tallrec_movie(replace(data, inter=inter), cfg)
    user_ids = np.unique(inter["user"].to_numpy().astype(str))
    item_ids = np.unique(inter["item"].to_numpy().astype(str))
    df = pd.DataFrame(
        {
            "user": index_of(inter["user"].astype(str), user_ids),
            "item": index_of(inter["item"].astype(str), item_ids),
            "rating": inter["rating"].to_numpy(float),
            "timestamp": inter["timestamp"].to_numpy(float),
            "row": np.arange(len(inter), dtype=np.int64),
        }
    )
    if cfg.protocol == "loo":
        part = _assign_loo(df)
    elif cfg.protocol == "temporal":
        part = _assign_temporal(df, cfg.ratios)
    elif cfg.protocol == "random":
        part = _assign_random(df, cfg.ratios, cfg.seed)
    else:  # guarded by SplitConfig
        raise DataError(f"split.protocol: unknown protocol '{cfg.protocol}'")

    holdout = np.zeros(0, dtype=np.int64)
    if cfg.holdout_items > 0:
        n_hold = int(round(cfg.holdout_items * len(item_ids)))
        rng = np.random.default_rng([cfg.seed, 7919])
        holdout = np.sort(rng.permutation(len(item_ids))[:n_hold]).astype(np.int64)
        in_train_held = (part == 0) & np.isin(df["item"].to_numpy(), holdout)
        part = np.where(in_train_held, -1, part)  # dropped: never seen in training

    parts = {name: df[part == i].reset_index(drop=True) for i, name in enumerate(PARTS)}
    for name in ("train", "test"):
        if len(parts[name]) == 0:
            raise DataError(
                f"split {cfg.protocol}: the {name} part is empty ({data.name}, {len(df)} interactions)"
            )

    return Split(cfg.protocol, user_ids, item_ids, parts, holdout, asdict(cfg))
