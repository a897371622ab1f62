"""Protocol checks of submitted predictions against the canonical test rows, before any metric.

A predictions file is a stranger's claim about what a model output. These functions turn its
lines into :class:`~benchmark.eval.evaluator.Predictions` over the *canonical* rows (rebuilt from
the raw data with the run's own :func:`benchmark.eval.rows.eval_rows`), so metrics are recomputed from
the canonical targets, labels and slices; the lines' own copies of those must agree with them.

Ranked lists: one line per test row, no duplicate item within a row, only catalogue ids (only
the row's candidates under ``sampled`` and ``candidates``), exactly ``list_length`` entries (``null`` marks an output
that maps to no item, as the writer stores it), and under ``full`` none of the row's excluded items
(train items, and valid items at test time, as :func:`benchmark.eval.ranking.rank_full` excludes).
Labeled predictions: one finite score per test row, in [0, 1] when the record claims probabilities.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from benchmark.data.views import LabeledRows, RankingRows
from benchmark.eval.evaluator import Predictions
from benchmark.untrusted import Rejected, finite_number


def _str_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(v, str) for v in x)


def _field(line: Any, i: int, key: str, ok: Any, what: str) -> Any:
    if not isinstance(line, dict):
        raise Rejected("predictions", f"line {i + 1} is a JSON {type(line).__name__}, not an object")
    v = line.get(key)
    if not ok(v):
        raise Rejected("predictions", f"line {i + 1}: field '{key}' must be {what}, got {str(v)[:60]!r}")
    return v


def ranking_predictions(
    lines: list[Any],
    rows: RankingRows,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    protocol: str,
    list_length: int,
) -> Predictions:
    """Check ranked lists against the protocol; the ranking as item indices over ``rows``.

    Args:
        lines: parsed predictions lines (untrusted JSON values).
        rows: the canonical test rows (targets, exclusions, slices, fixed negatives).
        user_ids, item_ids: raw id of each user / item index.
        protocol: ``full``, ``sampled`` or ``candidates``.
        list_length: the list length the record states (and the eval config implies).

    Returns:
        Predictions over ``rows`` with ``ranked`` [R, list_length] (-1 for ``null``).

    Raises:
        Rejected: the first violated check (rows, item_ids, duplicates, list_length,
            excluded_items, candidates, slices).
    """
    item_index = {str(x): i for i, x in enumerate(item_ids.tolist())}
    row_of_user = {str(user_ids[u]): r for r, u in enumerate(rows.users.tolist())}
    slice_names = sorted(rows.slices)
    ranked = np.full((len(rows), list_length), -1, dtype=np.int64)
    seen = np.zeros(len(rows), dtype=bool)
    for i, ln in enumerate(lines):
        user = _field(ln, i, "user", lambda v: isinstance(v, str), "a string")
        targets = _field(ln, i, "targets", _str_list, "a list of strings")
        tslices = _field(ln, i, "target_slices", lambda v: isinstance(v, list) and all(_str_list(s) for s in v), "a list of lists of strings")
        lst = _field(ln, i, "ranked", lambda v: isinstance(v, list) and all(x is None or isinstance(x, str) for x in v), "a list of item ids or nulls")
        r = row_of_user.get(user)
        if r is None:
            raise Rejected("rows", f"line {i + 1}: user {user[:40]!r} has no test row")
        if seen[r]:
            raise Rejected("rows", f"line {i + 1}: user {user[:40]!r} appears twice")
        seen[r] = True
        a, b = rows.target_ptr[r], rows.target_ptr[r + 1]
        want = [str(item_ids[t]) for t in rows.targets[a:b]]
        if sorted(targets) != sorted(want):
            raise Rejected("rows", f"line {i + 1}: targets of user {user[:40]!r} differ from the canonical test row")
        if len(tslices) != len(targets):
            raise Rejected("slices", f"line {i + 1}: {len(tslices)} target_slices for {len(targets)} targets")
        want_sl = {str(item_ids[rows.targets[t]]): sorted(n for n in slice_names if rows.slices[n][t]) for t in range(a, b)}
        if any(sorted(s) != want_sl[t] for t, s in zip(targets, tslices, strict=True)):
            raise Rejected("slices", f"line {i + 1}: slice membership differs from the canonical one")
        if len(lst) != list_length:
            raise Rejected("list_length", f"line {i + 1}: {len(lst)} items, the record states list_length {list_length}")
        idx = [-1 if x is None else item_index.get(x, -2) for x in lst]
        if -2 in idx:
            bad = lst[idx.index(-2)]
            raise Rejected("item_ids", f"line {i + 1}: {bad[:40]!r} is not a catalogue item id")
        got = [x for x in idx if x >= 0]
        if len(set(got)) != len(got):
            dup = next(x for x in got if got.count(x) > 1)
            raise Rejected("duplicates", f"line {i + 1}: item {str(item_ids[dup])!r} ranked {got.count(dup)} times")
        if protocol in ("sampled", "candidates"):
            cand = set(rows.targets[a:b].tolist()) | set(rows.negatives[r].tolist())
            out = [x for x in got if x not in cand]
            if out:
                raise Rejected("candidates", f"line {i + 1}: {str(item_ids[out[0]])!r} is not one of the row's fixed candidates")
        else:
            excl = set(rows.exclude[rows.exclude_ptr[r] : rows.exclude_ptr[r + 1]].tolist())
            out = [x for x in got if x in excl]
            if out:
                raise Rejected(
                    "excluded_items",
                    f"line {i + 1}: {str(item_ids[out[0]])!r} is a train/valid item of user {user[:40]!r}, excluded under eval=full",
                )
        ranked[r] = idx
    if not seen.all():
        raise Rejected("rows", f"{int((~seen).sum())} of {len(rows)} test rows missing")
    return Predictions(rows, ranked=ranked)


def labeled_predictions(
    lines: list[Any],
    rows: LabeledRows,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    probabilities: bool,
) -> Predictions:
    """Check labeled predictions (one finite score per canonical test row); scores over ``rows``.

    Lines are matched to rows by (user, item, label); rows repeating the same triple take the
    lines' scores in order (metrics do not depend on which of two identical rows gets which).

    Raises:
        Rejected: the first violated check (rows, scores, slices).
    """
    slice_names = sorted(rows.slices)
    keys: dict[tuple[str, str, int], list[int]] = defaultdict(list)
    for r, (u, it, y) in enumerate(zip(rows.users.tolist(), rows.items.tolist(), rows.labels.tolist(), strict=True)):
        keys[(str(user_ids[u]), str(item_ids[it]), int(y))].append(r)
    scores = np.full(len(rows), np.nan)
    for i, ln in enumerate(lines):
        u = _field(ln, i, "user", lambda v: isinstance(v, str), "a string")
        it = _field(ln, i, "item", lambda v: isinstance(v, str), "a string")
        y = _field(ln, i, "label", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")
        sl = _field(ln, i, "slices", _str_list, "a list of strings")
        s = _field(ln, i, "score", finite_number, "a finite number")
        if probabilities and not 0.0 <= s <= 1.0:
            raise Rejected("scores", f"line {i + 1}: score {s} outside [0, 1] but the record claims probabilities")
        free = keys.get((u, it, y))
        if not free:
            raise Rejected("rows", f"line {i + 1}: ({u[:40]!r}, {it[:40]!r}, label {y}) is not a (remaining) test row")
        r = free.pop(0)
        if sorted(sl) != [n for n in slice_names if rows.slices[n][r]]:
            raise Rejected("slices", f"line {i + 1}: slice membership differs from the canonical one")
        scores[r] = float(s)
    missing = int(np.isnan(scores).sum())
    if missing:
        raise Rejected("rows", f"{missing} of {len(rows)} test rows have no score")
    return Predictions(rows, scores=scores, probabilities=probabilities)
