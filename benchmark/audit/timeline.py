"""Timeline leakage: how much of the training data lies in the future of an evaluated row.

A model trained on the train part has seen every train interaction, including those of other
users that happened after a test row's target. For each test (and valid) row, the share of
train interactions strictly later than the row's target time is that row's exposure to the
future; the audit reports it per row (mean), per user and overall, with the worst users.

A test target whose item first appears in the global timeline (all parts) after the row's
history ends did not exist when the user's history ended: predicting it needs the future.
A row's history ends at the user's last train interaction, or, for sequence protocols whose
rows carry their own history, at the latest known time of those history interactions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmark.audit.findings import Finding, Thresholds, pct, share
from benchmark.audit.table import PARTS, AuditData, Part, pair_keys

WORST_USERS = 5


def later_train_share(train_ts: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """[n] share of train interactions strictly later than each time in ``ts``.

    Args:
        train_ts: [N] train timestamps, sorted ascending.
        ts: [n] target timestamps.
    """
    if not len(train_ts):
        return np.zeros(len(ts))
    later = len(train_ts) - np.searchsorted(train_ts, ts, side="right")
    return later / len(train_ts)


def per_user(users: np.ndarray, values: np.ndarray, user_ids: np.ndarray) -> dict[str, Any]:
    """Mean of ``values`` per user, summarised: mean, median, p90, max over users, the share of
    users above 0 and the worst users (raw id, value)."""
    counts = np.bincount(users, minlength=len(user_ids))
    sums = np.bincount(users, weights=values, minlength=len(user_ids))
    have = np.flatnonzero(counts)
    means = sums[have] / counts[have]
    worst = have[np.argsort(-means, kind="stable")[:WORST_USERS]]
    return {
        "users": len(have),
        "mean": share(means.sum(), len(have)),
        "median": share(float(np.median(means)), 1) if len(have) else None,
        "p90": share(float(np.quantile(means, 0.9)), 1) if len(have) else None,
        "max": share(float(means.max()), 1) if len(have) else None,
        "users_above_0": share(int((means > 0).sum()), len(have)),
        "worst": [[str(user_ids[u]), share(sums[u], counts[u])] for u in worst],
    }


def item_first_seen(data: AuditData) -> np.ndarray:
    """[n_items] earliest timestamp of each item over every row of every part (inf if never seen)."""
    first = np.full(data.n_items, np.inf)
    for p in data.parts.values():
        if len(p):
            np.minimum.at(first, p.item, p.timestamp)
    return first


def history_end(data: AuditData, part: Part) -> np.ndarray:
    """[n] when each row's history ends (NaN when unknown).

    Rows with their own history: the latest time of a history interaction found among the rows
    of any part (a history interaction that is no row of the split has no known time). Other
    rows: the user's last train interaction (NaN for users without train rows).
    """
    if not part.has_history:
        end = np.full(data.n_users, -np.inf)
        tr = data.train
        np.maximum.at(end, tr.user, tr.timestamp)
        out = end[part.user]
        return np.where(np.isinf(out), np.nan, out)
    keys = np.concatenate([pair_keys(p.user, p.item, data.n_items) for p in data.parts.values()])
    times = np.concatenate([p.timestamp for p in data.parts.values()])
    order = np.argsort(keys, kind="stable")
    keys, times = keys[order], times[order]
    rows = np.repeat(np.arange(len(part)), np.diff(part.hist_ptr))  # [H] row of each history entry
    hk = pair_keys(part.user[rows], part.hist_items, data.n_items)
    pos = np.clip(np.searchsorted(keys, hk), 0, max(len(keys) - 1, 0))
    known = (keys[pos] == hk) if len(keys) else np.zeros(len(hk), bool)
    end = np.full(len(part), -np.inf)
    np.maximum.at(end, rows[known], times[pos[known]])
    return np.where(np.isinf(end), np.nan, end)


def timeline(data: AuditData, limits: Thresholds) -> tuple[dict[str, Any], list[Finding]]:
    """Timeline figures and findings (none applicable without timestamps)."""
    if not data.has_time:
        why = "no timestamps: the timeline checks do not apply"
        findings = [
            limits.judge(c, "split", None, why)
            for c in ("train_after_test", "train_after_valid", "future_test_items")
        ]
        return {"applicable": False, "reason": why}, findings
    train_ts = np.sort(data.train.timestamp)
    out: dict[str, Any] = {"applicable": True}
    findings = []
    for name in PARTS[1:]:
        part = data.parts[name]
        check = f"train_after_{name}"
        if not len(part):
            out[name] = None
            findings.append(limits.judge(check, "split", None, f"the {name} part is empty"))
            continue
        rows = later_train_share(train_ts, part.timestamp)
        fig = {
            "rows": len(part),
            "mean_over_rows": share(rows.sum(), len(rows)),
            "rows_with_later_train": share(int((rows > 0).sum()), len(rows)),
            "train_rows_later_than_every_target": share(
                len(train_ts) - np.searchsorted(train_ts, part.timestamp.max(), side="right"), len(train_ts)
            ),
            "per_user": per_user(part.user, rows, data.user_ids),
        }
        out[name] = fig
        findings.append(
            limits.judge(
                check,
                "split",
                fig["mean_over_rows"],
                f"{pct(fig['mean_over_rows'])} of train interactions are later than the {name} target they are "
                f"evaluated against (mean over {len(rows)} rows; {pct(fig['rows_with_later_train'])} of rows and "
                f"{pct(fig['per_user']['users_above_0'])} of users have at least one)",
            )
        )
    out["future_test_items"], finding = future_items(data)
    findings.append(limits.judge("future_test_items", "split", out["future_test_items"]["share"], finding))
    return out, findings


def future_items(data: AuditData) -> tuple[dict[str, Any], str]:
    """Share of test targets whose item first appears after the row's history ends."""
    test = data.test
    end = history_end(data, test)
    known = ~np.isnan(end)
    first = item_first_seen(data)[test.item]
    later = known & (first > np.where(known, end, np.inf))
    fig = {
        "rows": len(test),
        "rows_with_known_history_end": int(known.sum()),
        "share": share(int(later.sum()), int(known.sum())),
    }
    msg = (
        f"{pct(fig['share'])} of test targets are items that first appear in the timeline after the row's "
        f"history ends ({fig['rows_with_known_history_end']} of {len(test)} rows have a known history end)"
    )
    return fig, msg
