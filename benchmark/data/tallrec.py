"""TALLRec's published MovieLens-100K "movie" data, rebuilt exactly, and per-row histories.

``build_tallrec_movie`` reproduces TALLRec's ``preprocess_movie.py`` (Bao et al., RecSys 2023):

1. users in order of their first appearance in the ratings file (``u.data`` order; the
   bundled ``ml-100k.inter`` keeps it);
2. each user's ratings sorted by timestamp, stable (ties keep file order);
3. one row per position ``i >= history`` (10): the previous 10 items as history, each
   labelled like = rating > ``like_threshold`` (3), and item ``i`` as target with its label;
4. the last ``keep_last`` (10,000) rows of that list, in that order;
5. split 8:1:1 in that order (``int(n * 0.8)``, ``int(n * 0.9)`` cut points) into
   train, valid and test.

On ml-100k this gives 8,000 / 1,000 / 1,000 rows with 658 (valid) and 528 (test) likes.

:func:`row_histories` gives the history of any labeled row: a ``tallrec_movie`` row's own
history, or, for the framework's other splits, a leak-free one built from train only
(valid/test rows: the user's last ``length`` train items; train rows: the user's train
items before that row).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from benchmark.config import SplitConfig
from benchmark.data.histories import time_order
from benchmark.data.interactions import Interactions, index_of
from benchmark.data.splits import PARTS, Split
from benchmark.errors import ConfigError, DataError

PROTOCOL = "tallrec_movie"
HISTORY_COLUMNS = ("history", "history_likes", "label")


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
            f"split.holdout_items: not part of the {PROTOCOL} protocol (got {cfg.holdout_items})"
        )
    if inter["rating"].isna().any():
        raise DataError(f"split {PROTOCOL}: {data.name} has interactions without a rating")
    user_ids = np.unique(inter["user"].to_numpy().astype(str))
    item_ids = np.unique(inter["item"].to_numpy().astype(str))
    rows, hist_rows, likes = sequence_rows(inter, cfg.history, cfg.like_threshold)
    if len(rows) == 0:
        raise DataError(f"split {PROTOCOL}: no user of {data.name} has more than {cfg.history} ratings")
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
            raise DataError(f"split {PROTOCOL}: the {name} part is empty ({data.name}, {n} rows)")
    return SequenceSplit(PROTOCOL, user_ids, item_ids, parts, config=asdict(cfg))


def has_histories(split: Split) -> bool:
    """Whether the split's rows carry their own histories (a sequence protocol)."""
    return all(c in split.train.columns for c in HISTORY_COLUMNS)


def row_histories(
    split: Split, part: str, length: int = 10, like_threshold: float = 3.0
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """The history (item indices, oldest first) and likes of every row of ``part``.

    A sequence split gives each row's own history. Otherwise, from the train part only:
    a valid/test row gets the user's last ``length`` train items by (timestamp, file row);
    a train row gets the user's train items strictly before it in that order (never itself).

    Args:
        split: any split.
        part: ``train``, ``valid`` or ``test``.
        length: history length for splits without their own histories.
        like_threshold: like = rating > threshold (train ratings; NaN counts as not liked).

    Returns:
        (histories, likes): one tuple per row of ``split.parts[part]``, in row order.
    """
    df = split.parts[part]
    if has_histories(split):
        return list(df["history"]), list(df["history_likes"])
    tr = split.train
    order, items, liked, start = _train_order(split, like_threshold)
    hist: list[tuple[int, ...]] = []
    likes: list[tuple[int, ...]] = []
    if part == "train":
        where = np.empty(len(tr), dtype=np.int64)
        where[order] = np.arange(len(tr))  # train row -> position in the sorted order
        for u, p in zip(tr["user"].to_numpy(), where, strict=True):
            a = max(start[u], p - length)
            hist.append(tuple(int(x) for x in items[a:p]))
            likes.append(tuple(int(x) for x in liked[a:p]))
        return hist, likes
    per_user = user_histories(split, length, like_threshold)
    for u in df["user"].to_numpy():
        hist.append(per_user[u][0])
        likes.append(per_user[u][1])
    return hist, likes


def user_histories(
    split: Split, length: int = 10, like_threshold: float = 3.0
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every user's last ``length`` train items (oldest first) and their likes, from train only.

    Args:
        split: any split.
        length: history length.
        like_threshold: like = rating > threshold (NaN counts as not liked).

    Returns:
        [n_users] (items, likes) tuples; empty for users without train interactions.
    """
    _, items, liked, start = _train_order(split, like_threshold)
    out = []
    for u in range(split.n_users):
        a, b = start[u], start[u + 1]
        a = max(a, b - length)
        out.append((tuple(int(x) for x in items[a:b]), tuple(int(x) for x in liked[a:b])))
    return out


def _train_order(
    split: Split, like_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train rows ordered by (user, timestamp, file row).

    Returns:
        (order [N] train row positions, items [N], likes [N], start [n_users + 1] CSR offsets per user).
    """
    tr = split.train
    order = time_order(tr)
    users = tr["user"].to_numpy()[order]
    items = tr["item"].to_numpy()[order]
    liked = (np.nan_to_num(tr["rating"].to_numpy(float), nan=-np.inf) > like_threshold)[order].astype(
        np.int64
    )
    start = np.searchsorted(users, np.arange(split.n_users + 1))  # [n_users + 1]
    return order, items, liked, start


def history_digest(split: Split, part: str, length: int = 10, like_threshold: float = 3.0) -> str:
    """sha256 of the histories of ``part`` (raw ids), e.g. for a run record."""
    h = hashlib.sha256()
    for items, likes in zip(*row_histories(split, part, length, like_threshold), strict=True):
        h.update((" ".join(split.item_ids[list(items)]) + "\t" + "".join(map(str, likes)) + "\n").encode())
    return h.hexdigest()
