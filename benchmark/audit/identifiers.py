"""Identifier leakage of an item index (the ids a generative recommender reads and generates).

An index must be a function of the train part only. Three ways it can leak the test part:

- refit: rebuilt from the train part alone, its ids must not change (``index_refit_changes``).
  A built index is refit by the caller; an external numeric index is compared with the
  sequential numbering (first appearance, users in order) of the train part and of all parts.
- order: P5's original code numbered items by first appearance over whole user sequences, so a
  user's test item got the number right after their history's (``consecutive_test_ids``: the
  target's id is the id of the user's item just before it (train or valid) + 1;
  ``next_after_user_max``: the largest id of the user's train and valid items + 1). For structured ids (``<c0_3><c1_12>``) consecutive means the same prefix and
  the last code + 1. By chance either happens for about 1 row in n_items.
- time: ids ordered like the items' first appearance in time (``id_time_correlation``, Spearman).

:func:`p5_original_sequential` builds the leaky index of the original P5 code, for the tests and
the committed audit that show what these checks catch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmark.audit.findings import Finding, Thresholds, pct, share
from benchmark.audit.table import PARTS, AuditData, Part, last_per_user, user_order
from benchmark.audit.timeline import item_first_seen

_NUMBER = re.compile(r"\d+")
_STRUCTURED = re.compile(r"(<[^<>]*\d+>)+")


@dataclass
class AuditIndex:
    """An item index under audit.

    Attributes:
        name: its label in the report (the scheme, or the file name).
        ids: [n_items] id text per item index (None: the item has no id).
        refit: [n_items] ids when rebuilt from the train part alone, or None (cannot refit).
        scheme: the scheme when known (``semantic`` ids are read as codes per level).
        facts: the index's own facts (options, sha256) for the report.
    """

    name: str
    ids: list[str | None]
    refit: list[str] | None = None
    scheme: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)


def id_codes(ids: list[str | None]) -> tuple[str, np.ndarray]:
    """The ids as integer codes.

    Returns:
        (kind, codes): ``numeric`` with codes [n_items, 1] (the number), ``structured`` with
        codes [n_items, L] (the last number of each ``<..>`` token, -1 padded), or ``text`` with
        an empty [n_items, 0] array. Items without an id get -1 everywhere.
    """
    present = [s for s in ids if s is not None]
    if present and all(s.isdigit() for s in present):
        return "numeric", np.array([[int(s)] if s is not None else [-1] for s in ids], dtype=np.int64)
    if present and all(_STRUCTURED.fullmatch(s) for s in present):
        rows = [
            [int(_NUMBER.findall(tok)[-1]) for tok in re.findall(r"<[^<>]*>", s)] if s else [] for s in ids
        ]
        width = max(len(r) for r in rows)
        out = np.full((len(ids), width), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return "structured", out
    return "text", np.zeros((len(ids), 0), dtype=np.int64)


def previous_items(data: AuditData, part: Part) -> np.ndarray:
    """[n] the item just before each row: the last of its own history, else the user's last train
    item (for test rows: train or valid item; a user's history at test time holds both) by
    (time, part, file order); -1 when there is none."""
    if part.has_history:
        ends = part.hist_ptr[1:]
        has = ends > part.hist_ptr[:-1]
        out = np.full(len(part), -1, dtype=np.int64)
        out[has] = part.hist_items[ends[has] - 1]
        return out
    before = [data.train] + ([data.parts["valid"]] if part is data.test else [])
    return last_per_user(before, data.n_users)[part.user]


def consecutive(codes: np.ndarray, prev: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[n] bool: the target's code is the previous item's + 1 (same length and prefix)."""
    ok = (prev >= 0) & (codes[target, 0] >= 0)
    a, b = codes[np.maximum(prev, 0)], codes[target]  # [n, L]
    la, lb = (a >= 0).sum(1), (b >= 0).sum(1)
    last = np.maximum(lb - 1, 0)
    rows = np.arange(len(target))
    cols = np.arange(codes.shape[1])[None, :]
    prefix_same = ((a == b) | (cols >= last[:, None])).all(1)
    return ok & (la == lb) & prefix_same & (b[rows, last] == a[rows, last] + 1)


def next_after_user_max(data: AuditData, number: np.ndarray, part: Part) -> np.ndarray:
    """[n] bool: the target's number is the largest number among the user's train items (and, for
    test rows, valid items; or the row's own history) + 1."""
    if part.has_history:
        rows = np.repeat(np.arange(len(part)), np.diff(part.hist_ptr))
        top = np.full(len(part), -1, dtype=np.int64)
        np.maximum.at(top, rows, number[part.hist_items])
    else:
        per_user = np.full(data.n_users, -1, dtype=np.int64)
        for before in [data.train] + ([data.parts["valid"]] if part is data.test else []):
            np.maximum.at(per_user, before.user, number[before.item])
        top = per_user[part.user]
    return (top >= 0) & (number[part.item] >= 0) & (number[part.item] == top + 1)


def sequential_numbers(data: AuditData, parts: tuple[str, ...]) -> np.ndarray:
    """[n_items] numbers 1.. by first appearance over the given parts' rows (users in index order;
    per user the parts in the given order, each by time then file order); 0 for unseen items."""
    chunks = []
    for rank, name in enumerate(parts):
        p = data.parts[name]
        order = user_order(p)
        chunks.append((p.user[order], np.full(len(order), rank), np.arange(len(order)), p.item[order]))
    users, ranks, pos, items = (np.concatenate(c) for c in zip(*chunks, strict=True))
    flat = items[np.lexsort((pos, ranks, users))]
    _, first = np.unique(flat, return_index=True)
    number = np.zeros(data.n_items, dtype=np.int64)
    number[flat[np.sort(first)]] = np.arange(1, len(first) + 1)
    return number


def p5_original_sequential(data: AuditData) -> list[str]:
    """The leaky sequential index of the original P5 code: items numbered 1.. by first appearance
    over each user's WHOLE sequence (train, then valid, then test), users in index order; items
    in no part get the next numbers in index order. A user's test item that is new at that point
    gets the number right after their history's newest item."""
    number = sequential_numbers(data, PARTS)
    unseen = np.flatnonzero(number == 0)
    number[unseen] = number.max() + 1 + np.arange(len(unseen))
    return [str(int(x)) for x in number]


def numbering_agreement(number: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of ``mask`` items whose number is the reference number plus the most common offset."""
    sel = mask & (number >= 0) & (reference > 0)
    if not sel.any():
        return None
    diff = number[sel] - reference[sel]
    values, counts = np.unique(diff, return_counts=True)
    return share(int(counts.max()), int(sel.sum()))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """[n] ranks 1..n of ``x``, ties sharing their average rank (as scipy's ``rankdata``)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    start = np.cumsum(counts) - counts  # first rank - 1 of each distinct value
    return (start + (counts + 1) / 2.0)[np.asarray(inverse).ravel()]


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho of two [n] arrays (average ranks for ties); None for n < 3 or a constant."""
    if len(x) < 3:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return share(float(np.corrcoef(rx, ry)[0, 1]), 1)


def id_order(kind: str, codes: np.ndarray) -> np.ndarray | None:
    """[n_items] position of each item when items are sorted by id (numbers, or code tuples)."""
    if kind == "text":
        return None
    order = np.lexsort(codes.T[::-1])  # first code most significant
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes))
    return rank


def refit_changes(data: AuditData, index: AuditIndex, kind: str, codes: np.ndarray) -> dict[str, Any]:
    """How many ids change when the index is rebuilt from the train part alone.

    A built index is compared with its refit; an external numeric index with the sequential
    numbering of the train part (when it follows a sequential numbering at all); other external
    indexes cannot be refit (None).
    """
    trained = np.bincount(data.train.item, minlength=data.n_items) > 0
    if index.refit is not None:
        changed = np.array([a != b for a, b in zip(index.ids, index.refit, strict=True)])
        return {
            "method": "rebuilt from the train part alone",
            "share": share(int(changed.sum()), len(changed)),
            "train_items_changed": int(changed[trained].sum()),
        }
    if kind != "numeric":
        return {"method": "none: an external index of unknown scheme cannot be refit", "share": None}
    number = codes[:, 0]
    on_train = sequential_numbers(data, ("train",))
    on_all = sequential_numbers(data, PARTS)
    agree_train = numbering_agreement(number, on_train, trained)
    agree_all = numbering_agreement(number, on_all, trained)
    out = {"follows_sequential_train_only": agree_train, "follows_sequential_all_parts": agree_all}
    if max(agree_train or 0, agree_all or 0) < 0.5:
        return {**out, "method": "none: not a sequential numbering", "share": None}
    return {
        **out,
        "method": "compared with the sequential numbering of the train part (train items)",
        "share": None if agree_train is None else share(1 - agree_train, 1),
    }


def index_checks(
    data: AuditData, index: AuditIndex, limits: Thresholds
) -> tuple[dict[str, Any], list[Finding]]:
    """Every identifier check of one index (figures and findings, scope ``index:<name>``)."""
    scope = f"index:{index.name}"
    kind, codes = id_codes(index.ids)
    missing = sum(1 for s in index.ids if s is None)
    present = [s for s in index.ids if s is not None]
    _, counts = np.unique(np.asarray(present, dtype=object).astype(str), return_counts=True)
    dup_items = int(counts[counts > 1].sum())
    out: dict[str, Any] = {"kind": kind, "scheme": index.scheme, "items": len(index.ids), **index.facts}
    out["missing_ids"] = share(missing, len(index.ids))
    out["duplicate_ids"] = share(dup_items, len(index.ids))
    out["refit"] = refit_changes(data, index, kind, codes)
    test = data.test
    prev = previous_items(data, test)
    rows = int((prev >= 0).sum())
    out["chance"] = share(1, data.n_items)
    if kind == "text":
        out["consecutive_test_ids"] = out["next_after_user_max"] = None
    else:
        out["consecutive_test_ids"] = share(int(consecutive(codes, prev, test.item).sum()), rows)
        out["next_after_user_max"] = (
            share(int(next_after_user_max(data, codes[:, 0], test).sum()), len(test))
            if kind == "numeric"
            else None
        )
    out["id_time_correlation"] = _time_correlation(data, kind, codes)
    rho = out["id_time_correlation"]["all_items"]
    findings = [
        limits.judge(
            "missing_ids", scope, out["missing_ids"], f"{missing} of {len(index.ids)} items have no id"
        ),
        limits.judge(
            "duplicate_ids",
            scope,
            out["duplicate_ids"],
            f"{dup_items} items share their id with another item",
        ),
        limits.judge(
            "index_refit_changes",
            scope,
            out["refit"]["share"],
            f"{pct(out['refit']['share'])} of ids change when the index is refit on train alone ({out['refit']['method']})",
        ),
        limits.judge(
            "consecutive_test_ids",
            scope,
            out["consecutive_test_ids"],
            f"{pct(out['consecutive_test_ids'])} of test targets have the id right after the user's item before them "
            f"(chance {pct(out['chance'])}; P5's sequential-indexing leak)",
        ),
        limits.judge(
            "next_after_user_max",
            scope,
            out["next_after_user_max"],
            f"{pct(out['next_after_user_max'])} of test targets have the id right after the user's largest earlier id",
        ),
        limits.judge(
            "id_time_correlation",
            scope,
            None if rho is None else abs(rho),
            f"Spearman rho {rho if rho is not None else 'n/a'} between id order and first appearance in time",
        ),
    ]
    return out, findings


def _time_correlation(data: AuditData, kind: str, codes: np.ndarray) -> dict[str, Any]:
    """Spearman rho between id order and first appearance, over all items and over non-train items."""
    rank = id_order(kind, codes)
    if rank is None or not data.has_time:
        return {"all_items": None, "non_train_items": None}
    first = item_first_seen(data)
    have = np.isfinite(first) & (codes[:, 0] >= 0)
    trained = np.bincount(data.train.item, minlength=data.n_items) > 0
    cold = have & ~trained
    return {
        "all_items": spearman(rank[have], first[have]),
        "non_train_items": spearman(rank[cold], first[cold]) if cold.sum() >= 10 else None,
    }
