"""Overlap between parts, duplicate rows, fixed negatives and label balance.

- overlap: (user, item) pairs of valid/test that are train pairs too; test rows whose target is
  one of the user's train items (or, for rows with their own history, in that history); train
  rows of items held out of train (strict cold start).
- duplicates: rows repeating an earlier row of the same part (same user, item, time and rating),
  and test rows identical to a train row (the same interaction on both sides).
- sampling: fixed negatives of a sampled protocol that the user interacted with in any part.
- labels: positive share per part (the protocol's own labels, or rating >= label threshold).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmark.audit.findings import Finding, Thresholds, pct, share
from benchmark.audit.table import PARTS, AuditData, Part, pair_keys


def overlap(data: AuditData, limits: Thresholds) -> tuple[dict[str, Any], list[Finding]]:
    """Pairs shared between train and valid/test, targets in history, held-out items in train."""
    n_items = data.n_items
    train_keys = np.unique(pair_keys(data.train.user, data.train.item, n_items))
    out: dict[str, Any] = {}
    findings = []
    for name in PARTS[1:]:
        part = data.parts[name]
        keys = np.unique(pair_keys(part.user, part.item, n_items))
        both = int(np.isin(keys, train_keys, assume_unique=True).sum())
        out[f"{name}_pairs"] = len(keys)
        out[f"{name}_pairs_in_train"] = share(both, len(keys))
        findings.append(
            limits.judge(
                f"{name}_pairs_in_train",
                "split",
                out[f"{name}_pairs_in_train"],
                f"{both} of {len(keys)} distinct {name} (user, item) pairs are train pairs too",
            )
        )
    in_hist = targets_in_history(data, data.test, train_keys)
    out["test_targets_in_history"] = share(int(in_hist.sum()), len(in_hist))
    where = "the row's own history" if data.test.has_history else "the user's train items"
    findings.append(
        limits.judge(
            "test_targets_in_history",
            "split",
            out["test_targets_in_history"],
            f"{int(in_hist.sum())} of {len(in_hist)} test rows have a target that is in {where}",
        )
    )
    held = int(np.isin(data.train.item, data.holdout_items).sum()) if len(data.holdout_items) else 0
    out["holdout_items_in_train"] = held
    findings.append(
        limits.judge(
            "holdout_items_in_train",
            "split",
            float(held),
            f"{held} train rows are of the {len(data.holdout_items)} items held out of train",
        )
    )
    return out, findings


def targets_in_history(data: AuditData, part: Part, train_keys: np.ndarray) -> np.ndarray:
    """[n] bool: the row's target is in its own history (rows with one) or a train pair of the user."""
    if not part.has_history:
        return np.isin(pair_keys(part.user, part.item, data.n_items), train_keys)
    rows = np.repeat(np.arange(len(part)), np.diff(part.hist_ptr))  # [H] row of each history entry
    hit = part.hist_items == part.item[rows]
    return np.bincount(rows[hit], minlength=len(part)) > 0


def _row_groups(parts: list[Part], n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``parts`` grouped by identical (user, item, timestamp, rating).

    Only rows whose (user, item) pair occurs more than once can share a group, so one integer
    sort finds them and only those few are sorted by time and rating too.

    Returns:
        (group [n] id of each row's group, part [n] index into ``parts`` of each row), rows in
        the order of ``parts`` concatenated.
    """
    key = np.concatenate([pair_keys(p.user, p.item, n_items) for p in parts])
    which = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    group = np.arange(len(key), dtype=np.int64)  # a row of its own unless it repeats a pair
    if len(key) < 2:
        return group, which
    order = np.argsort(key, kind="stable")
    k = key[order]
    same = k[1:] == k[:-1]
    cand = order[np.r_[same, False] | np.r_[False, same]]  # rows whose pair repeats
    if len(cand):
        ts = np.concatenate([np.nan_to_num(p.timestamp, nan=-np.inf) for p in parts])[cand]
        rating = np.concatenate([np.nan_to_num(p.rating, nan=-np.inf) for p in parts])[cand]
        sub = np.lexsort((rating, ts, key[cand]))
        c, t, r = key[cand][sub], ts[sub], rating[sub]
        new = np.r_[True, (c[1:] != c[:-1]) | (t[1:] != t[:-1]) | (r[1:] != r[:-1])]
        first = cand[sub][np.flatnonzero(new)]  # a representative row per group
        group[cand[sub]] = first[np.cumsum(new) - 1]
    return group, which


def duplicates(data: AuditData, limits: Thresholds) -> tuple[dict[str, Any], list[Finding]]:
    """Repeated rows within each part, repeated pairs within each part, test rows found in train."""
    out: dict[str, Any] = {}
    total = dup = 0
    for name in PARTS:
        part = data.parts[name]
        group, _ = _row_groups([part], data.n_items)
        n_dup = len(part) - len(np.unique(group))
        keys = pair_keys(part.user, part.item, data.n_items)
        out[name] = {"duplicate_rows": n_dup, "repeated_pairs": len(part) - len(np.unique(keys))}
        total, dup = total + len(part), dup + n_dup
    out["duplicate_rows"] = share(dup, total)
    group, which = _row_groups([data.train, data.test], data.n_items)
    in_train = np.zeros(len(group), bool)
    in_train[group[which == 0]] = True
    same = int(in_train[group[which == 1]].sum())
    out["test_rows_in_train"] = share(same, len(data.test))
    findings = [
        limits.judge(
            "duplicate_rows",
            "split",
            out["duplicate_rows"],
            f"{dup} of {total} rows repeat an earlier row of their part (same user, item, time and rating)",
        ),
        limits.judge(
            "test_rows_in_train",
            "split",
            out["test_rows_in_train"],
            f"{same} of {len(data.test)} test rows are also train rows (same user, item, time and rating)",
        ),
    ]
    return out, findings


def sampling(data: AuditData, limits: Thresholds) -> tuple[dict[str, Any], list[Finding]]:
    """Fixed negatives that the user interacted with in any part (sampled protocols only)."""
    if data.negatives is None:
        return {"applicable": False}, [
            limits.judge("negatives_interacted", "split", None, "no fixed negatives (not a sampled protocol)")
        ]
    users, neg = data.negatives
    every = np.unique(np.concatenate([pair_keys(p.user, p.item, data.n_items) for p in data.parts.values()]))
    keys = pair_keys(np.repeat(users, neg.shape[1]), neg.ravel(), data.n_items)
    hit = int(np.isin(keys, every).sum())
    per_row = np.sort(neg, axis=1)
    repeated = int((per_row[:, 1:] == per_row[:, :-1]).sum()) if neg.shape[1] > 1 else 0
    out = {
        "applicable": True,
        "rows": int(neg.shape[0]),
        "per_row": int(neg.shape[1]),
        "negatives_interacted": share(hit, neg.size),
        "repeated_in_row": repeated,
    }
    msg = f"{hit} of {neg.size} fixed negatives are items the user interacted with ({repeated} repeated within a row)"
    return out, [limits.judge("negatives_interacted", "split", out["negatives_interacted"], msg)]


def part_labels(data: AuditData, part: Part) -> np.ndarray | None:
    """[n] 0/1 labels of a part: its own, or rating >= the label threshold; None without either."""
    if part.label is not None:
        return part.label.astype(np.int64)
    if data.label_threshold is None or np.isnan(part.rating).any():
        return None
    return (part.rating >= data.label_threshold).astype(np.int64)


def labels(data: AuditData, limits: Thresholds) -> tuple[dict[str, Any], list[Finding]]:
    """Positive share per part, the largest gap to train, and parts with a single class."""
    per = {name: part_labels(data, data.parts[name]) for name in PARTS}
    if any(v is None for name, v in per.items() if len(data.parts[name])) or per["train"] is None:
        why = "no labels (a ranking protocol without a label threshold, or rows without ratings)"
        return {"applicable": False}, [
            limits.judge(c, "split", None, why) for c in ("label_gap", "single_class_parts")
        ]
    out: dict[str, Any] = {"applicable": True}
    for name, y in per.items():
        out[name] = {"rows": len(y), "positives": int(y.sum()), "positive_share": share(int(y.sum()), len(y))}
    base = out["train"]["positive_share"]
    gaps = [abs(out[n]["positive_share"] - base) for n in PARTS[1:] if out[n]["positive_share"] is not None]
    single = [n for n, y in per.items() if len(y) and len(np.unique(y)) < 2]
    out["label_gap"] = share(max(gaps, default=0.0), 1)
    out["single_class_parts"] = single
    balance = ", ".join(f"{n} {pct(out[n]['positive_share'])}" for n in PARTS)
    return out, [
        limits.judge("label_gap", "split", out["label_gap"], f"positive share per part: {balance}"),
        limits.judge(
            "single_class_parts",
            "split",
            float(len(single)),
            f"parts whose labels are all one class (AUC undefined): {', '.join(single) or 'none'}",
        ),
    ]
