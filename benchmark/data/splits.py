"""Split protocols: deterministic functions of the raw interactions and the split config.

Every split maps raw ids to contiguous indices by sorted raw id (never by order
of appearance, so an index carries no information about the test part), keeps
each part in file order, and is fingerprinted by the sha256 of its canonical
text (raw ids), so the same config and data give the same fingerprint anywhere.

Protocols: ``loo`` (per user, last -> test, second last -> valid), ``temporal`` (global
timestamp cut), ``random`` (seeded ratio split) and ``tallrec_movie``, TALLRec's published
MovieLens-100K "movie" data (Bao et al., RecSys 2023), rebuilt exactly as its
``preprocess_movie.py`` does:

1. users in order of their first appearance in the ratings file (``u.data`` order; the
   bundled ``ml-100k.inter`` keeps it);
2. each user's ratings sorted by timestamp, stable (ties keep file order);
3. one row per position ``i >= history`` (10): the previous 10 items as history, each
   labelled like = rating > ``like_threshold`` (3), and item ``i`` as target with its label;
4. the last ``keep_last`` (10,000) rows of that list, in that order;
5. split 8:1:1 in that order (``int(n * 0.8)``, ``int(n * 0.9)`` cut points) into
   train, valid and test.

On ml-100k this gives 8,000 / 1,000 / 1,000 rows with 658 (valid) and 528 (test) likes.
Its rows carry their own history (:class:`SequenceSplit`); :mod:`benchmark.data.histories`
gives every split's histories.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import cached_property

import numpy as np
import pandas as pd

from benchmark.config import SplitConfig
from benchmark.data.histories import time_order
from benchmark.data.interactions import Interactions, index_of
from benchmark.errors import ConfigError, DataError
from benchmark.util import sha256_text

PARTS = ("train", "valid", "test")
TALLREC_MOVIE = "tallrec_movie"


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
        truncated_users: user indices whose train history was cut to ``truncate_to`` (the
            cold-user view), sorted.
    """

    protocol: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    parts: dict[str, pd.DataFrame]
    holdout_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    config: dict = field(default_factory=dict)
    truncated_users: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

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
        if len(self.truncated_users):  # only a cold-user view has the line: other fingerprints as before
            lines.append("[truncated_users]\t" + " ".join(self.user_ids[self.truncated_users].tolist()))
        return "\n".join(lines) + "\n"

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of :meth:`canonical_text`."""
        return sha256_text(self.canonical_text())

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
            **({"truncated_users": len(self.truncated_users)} if len(self.truncated_users) else {}),
        }


@dataclass
class SequenceSplit(Split):
    """A split whose rows carry their own history (``history``, ``history_likes``, ``label``).

    The fingerprint covers the histories and labels too, so two sequence splits with the same
    target rows but different histories never share a fingerprint.
    """

    def canonical_text(self) -> str:
        """:meth:`Split.canonical_text` plus one line per row: history raw ids, likes, label."""
        lines = [super().canonical_text().rstrip("\n")]
        for name in PARTS:
            df = self.parts[name]
            lines.append(f"[{name}:history]\t{len(df)}")
            for hist, likes, label in zip(df["history"], df["history_likes"], df["label"], strict=True):
                ids = " ".join(self.item_ids[np.asarray(hist, dtype=np.int64)].tolist())
                lines.append(f"{ids}\t{''.join(str(int(x)) for x in likes)}\t{int(label)}")
        return "\n".join(lines) + "\n"


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
    if cfg.protocol == TALLREC_MOVIE:  # TALLRec's published sequence protocol (rows carry histories)
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

    truncated = np.zeros(0, dtype=np.int64)
    if cfg.truncate_users > 0:
        part, truncated = _truncate_users(df, part, cfg)

    parts = {name: df[part == i].reset_index(drop=True) for i, name in enumerate(PARTS)}
    for name in ("train", "test"):
        if len(parts[name]) == 0:
            raise DataError(
                f"split {cfg.protocol}: the {name} part is empty ({data.name}, {len(df)} interactions)"
            )

    return Split(cfg.protocol, user_ids, item_ids, parts, holdout, asdict(cfg), truncated)


def _truncate_users(df: pd.DataFrame, part: np.ndarray, cfg: SplitConfig) -> tuple[np.ndarray, np.ndarray]:
    """The cold-user view: a seeded share of the test users keep only their last ``truncate_to``
    train interactions (by time); the others are dropped from the split (part -1).

    Returns:
        (the new part per row, the truncated users' indices, sorted).
    """
    users = np.unique(df["user"].to_numpy()[part == 2])
    n_cut = int(round(cfg.truncate_users * len(users)))
    rng = np.random.default_rng([cfg.seed, 4241])
    cut = np.sort(users[rng.permutation(len(users))[:n_cut]]).astype(np.int64)
    train = np.flatnonzero((part == 0) & np.isin(df["user"].to_numpy(), cut))
    if len(train):
        sub = df.iloc[train]
        order = time_order(sub)  # per user by (timestamp, file order)
        users_sorted = sub["user"].to_numpy()[order]
        is_last = np.r_[users_sorted[1:] != users_sorted[:-1], True]
        ends = np.flatnonzero(is_last)
        run_end = np.repeat(ends, np.diff(np.r_[-1, ends]))
        from_end = run_end - np.arange(len(order))  # 0 = the user's last train interaction
        drop = train[order[from_end >= cfg.truncate_to]]
        part = part.copy()
        part[drop] = -1
    return part, cut


# ----------------------------------------------------------------------------- tallrec_movie


def sequence_rows(
    inter: pd.DataFrame, history: int, like_threshold: float
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Every (history, target) row of TALLRec's construction, before truncation.

    Args:
        inter: canonical interactions in file order (``user``, ``item``, ``rating``, ``timestamp``).
        history: history length h.
        like_threshold: like = rating > threshold.

    Returns:
        (rows, hist_rows, likes): ``rows`` has one line per emitted row with ``user``,
        ``item``, ``rating``, ``timestamp`` of the target and ``row`` (its position in
        ``inter``); ``hist_rows`` [R, h] positions in ``inter`` of the history items
        (oldest first); ``likes`` [len(inter)] 0/1 like of every interaction.
    """
    n = len(inter)
    users = inter["user"].to_numpy().astype(str)
    # Users in order of first appearance, then each user's ratings by (timestamp, file row).
    _, first, inverse = np.unique(users, return_index=True, return_inverse=True)
    user_rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")[inverse]
    ts = inter["timestamp"].to_numpy(float)
    order = time_order(user_rank, ts)  # [n] positions in emission order
    ranks = user_rank[order]
    starts = np.r_[0, np.flatnonzero(ranks[1:] != ranks[:-1]) + 1]
    pos = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))  # index within the user's list
    emit = np.flatnonzero(pos >= history)  # positions in `order` that become a target
    hist_rows = order[emit[:, None] - history + np.arange(history)[None, :]]  # [R, h]
    target = order[emit]
    rating = inter["rating"].to_numpy(float)
    likes = (rating > like_threshold).astype(np.int64)
    rows = pd.DataFrame(
        {
            "user": users[target],
            "item": inter["item"].to_numpy().astype(str)[target],
            "rating": rating[target],
            "timestamp": ts[target],
            "row": target.astype(np.int64),
        }
    )
    return rows, hist_rows, likes


def build_tallrec_movie(data: Interactions, cfg: SplitConfig) -> Split:
    """TALLRec's "movie" split of ``data`` (see the module docstring).

    Args:
        data: canonical interactions in the original ratings-file order (``data=ml-100k``).
        cfg: ``history`` (10), ``keep_last`` (10000), ``like_threshold`` (3), ``ratios``
            (0.8/0.1/0.1, cut in row order); ``label_threshold`` must give the same labels
            (label = rating >= label_threshold) on every row.

    Returns:
        a :class:`SequenceSplit`; each part is a DataFrame with ``user``, ``item`` (indices
        into the sorted raw ids of the whole catalogue), ``rating``, ``timestamp``, ``row``
        (target position in ``data.inter``), ``history`` (tuple of item indices, oldest
        first), ``history_likes`` (tuple of 0/1) and ``label`` (0/1).
    """
    inter = data.inter
    if cfg.history < 1:
        raise ConfigError(f"split.history: must be >= 1, got {cfg.history}")
    if cfg.keep_last < 1:
        raise ConfigError(f"split.keep_last: must be >= 1, got {cfg.keep_last}")
    if cfg.holdout_items:
        raise ConfigError(
            f"split.holdout_items: not part of the {TALLREC_MOVIE} protocol (got {cfg.holdout_items})"
        )
    if cfg.truncate_users:
        raise ConfigError(
            f"split.truncate_users: not part of the {TALLREC_MOVIE} protocol (its rows carry their own histories)"
        )
    if inter["rating"].isna().any():
        raise DataError(f"split {TALLREC_MOVIE}: {data.name} has interactions without a rating")
    user_ids = np.unique(inter["user"].to_numpy().astype(str))
    item_ids = np.unique(inter["item"].to_numpy().astype(str))
    rows, hist_rows, likes = sequence_rows(inter, cfg.history, cfg.like_threshold)
    if len(rows) == 0:
        raise DataError(f"split {TALLREC_MOVIE}: no user of {data.name} has more than {cfg.history} ratings")
    keep = slice(max(0, len(rows) - cfg.keep_last), len(rows))
    rows, hist_rows = rows.iloc[keep].reset_index(drop=True), hist_rows[keep]
    item_index = index_of(inter["item"].astype(str), item_ids)  # [n] item index of every interaction
    labels = likes[rows["row"].to_numpy()]
    by_threshold = (rows["rating"].to_numpy() >= cfg.label_threshold).astype(np.int64)
    if (by_threshold != labels).any():
        raise ConfigError(
            f"split.label_threshold={cfg.label_threshold} and split.like_threshold={cfg.like_threshold} "
            f"disagree on {int((by_threshold != labels).sum())} rows (label = rating > like_threshold)"
        )
    df = pd.DataFrame(
        {
            "user": index_of(rows["user"], user_ids),
            "item": index_of(rows["item"], item_ids),
            "rating": rows["rating"].to_numpy(float),
            "timestamp": rows["timestamp"].to_numpy(float),
            "row": rows["row"].to_numpy(np.int64),
            "history": [tuple(int(x) for x in r) for r in item_index[hist_rows]],
            "history_likes": [tuple(int(x) for x in r) for r in likes[hist_rows]],
            "label": labels,
        }
    )
    n = len(df)
    c1 = int(n * cfg.ratios[0])
    c2 = int(n * (cfg.ratios[0] + cfg.ratios[1]))
    parts = {
        "train": df.iloc[:c1].reset_index(drop=True),
        "valid": df.iloc[c1:c2].reset_index(drop=True),
        "test": df.iloc[c2:].reset_index(drop=True),
    }
    for name in ("train", "test"):
        if len(parts[name]) == 0:
            raise DataError(f"split {TALLREC_MOVIE}: the {name} part is empty ({data.name}, {n} rows)")
    return SequenceSplit(TALLREC_MOVIE, user_ids, item_ids, parts, config=asdict(cfg))
