"""Per-user time order and per-user histories: the one home for both.

Every history in the framework is read in one order: by user, then timestamp, then
file row (:func:`time_order`), so ties in time keep file order and the same data give
the same histories everywhere.

Two families, by consumer:

- history tuples for prompts (:func:`row_histories`, :func:`user_histories`): item
  indices and 0/1 likes per row or per user, built from train only (or a sequence
  split's own per-row histories);
- padded arrays for RecBole (:func:`padded_train_histories`, :func:`padded_user_histories`,
  :func:`padded_row_histories`): ``[N, max_len]`` item indices, -1 after the last, plus
  lengths; a test row's history also holds the user's valid items.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from benchmark.util import sha256_text

if TYPE_CHECKING:  # annotations only: splits imports this module
    from benchmark.data.splits import Split


def time_order(
    data: pd.DataFrame | np.ndarray,
    timestamp: np.ndarray | None = None,
    row: np.ndarray | None = None,
) -> np.ndarray:
    """The stable per-user time order: sort by user, then timestamp, then row.

    Args:
        data: a DataFrame with ``user``, ``timestamp`` and ``row`` columns, or the [n]
            user keys (any sortable values, e.g. indices or a first-appearance rank).
        timestamp: [n] timestamps when ``data`` is an array.
        row: [n] tie-breaking rows when ``data`` is an array (default: ``0..n-1``, file order).

    Returns:
        [n] positions into ``data`` in that order (``np.lexsort((row, timestamp, user))``).
    """
    if isinstance(data, pd.DataFrame):
        user, timestamp, row = data["user"].to_numpy(), data["timestamp"].to_numpy(), data["row"].to_numpy()
    else:
        user = np.asarray(data)
        if timestamp is None:
            raise TypeError("time_order: timestamps are required when users are given as an array")
        row = np.arange(len(user)) if row is None else row
    return np.lexsort((row, timestamp, user))


# ----------------------------------------------------------------------------- history tuples (LLM prompts)

HISTORY_COLUMNS = ("history", "history_likes", "label")


def has_histories(split: Split) -> bool:
    """Whether the split's rows carry their own histories (a sequence protocol such as ``tallrec_movie``)."""
    return all(c in split.train.columns for c in HISTORY_COLUMNS)


def row_histories(
    split: Split, part: str, length: int = 10, like_threshold: float = 3.0
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """The history (item indices, oldest first) and likes of every row of ``part``.

    A sequence split gives each row's own history. Otherwise, from the train part only:
    a valid/test row gets the user's last ``length`` train items in :func:`time_order`;
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

    Unlike :func:`padded_user_histories`, valid and test both see train only.

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
    """Train rows in :func:`time_order`.

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
    text = "".join(
        " ".join(split.item_ids[list(items)]) + "\t" + "".join(map(str, likes)) + "\n"
        for items, likes in zip(*row_histories(split, part, length, like_threshold), strict=True)
    )
    return sha256_text(text)


# ----------------------------------------------------------------------------- padded histories (RecBole)


def padded_train_histories(split: Split, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """History of every train row: the user's train items strictly before it in :func:`time_order`.

    Returns:
        hist: [N_train, max_len] item indices, oldest first, -1 after the last.
        length: [N_train] history lengths (<= max_len).
    """
    tr = split.train
    n = len(tr)
    order = time_order(tr)
    users = tr["user"].to_numpy()[order]
    items = tr["item"].to_numpy()[order]
    new_user = np.r_[True, users[1:] != users[:-1]] if n else np.zeros(0, dtype=bool)
    run_start = (
        np.maximum.accumulate(np.where(new_user, np.arange(n), 0)) if n else np.zeros(0, dtype=np.int64)
    )
    length = np.minimum(np.arange(n) - run_start, max_len)
    j = np.arange(max_len)
    idx = np.arange(n)[:, None] - length[:, None] + j[None, :]
    hist = np.where(j[None, :] < length[:, None], items[np.clip(idx, 0, max(n - 1, 0))], -1)
    out_h = np.empty_like(hist)
    out_l = np.empty_like(length)
    out_h[order], out_l[order] = hist, length
    return out_h.astype(np.int64), out_l.astype(np.int64)


def padded_user_histories(split: Split, part: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user history when ``part`` is evaluated: train items (``valid``), train + valid (``test``).

    Unlike :func:`user_histories`, a test row also sees the user's valid items.

    Returns:
        hist: [n_users, max_len] item indices, oldest first, -1 after the last.
        length: [n_users] history lengths (<= max_len).
    """
    seen = pd.concat([split.train] + ([split.valid] if part == "test" else []), ignore_index=True)
    order = time_order(seen)
    users = seen["user"].to_numpy()[order]
    items = seen["item"].to_numpy()[order]
    counts = np.bincount(users, minlength=split.n_users)
    end = np.cumsum(counts)
    length = np.minimum(counts, max_len)
    j = np.arange(max_len)
    idx = (end - length)[:, None] + j[None, :]
    hist = np.where(j[None, :] < length[:, None], items[np.clip(idx, 0, max(len(items) - 1, 0))], -1)
    return hist.astype(np.int64), length.astype(np.int64)


def padded_row_histories(split: Split, part: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's own history on a sequence split (its ``history`` column, last ``max_len``).

    Returns:
        hist: [N_part, max_len] item indices, oldest first, -1 after the last.
        length: [N_part] history lengths (<= max_len).
    """
    seqs = [tuple(h)[-max_len:] if max_len else () for h in split.parts[part]["history"]]
    length = np.array([len(h) for h in seqs], dtype=np.int64)
    hist = np.full((len(seqs), max_len), -1, dtype=np.int64)
    for r, h in enumerate(seqs):
        hist[r, : len(h)] = h
    return hist, length
