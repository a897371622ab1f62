"""The prompt pool's comparison on the test rows: the bandit against its baselines, same rows.

Input per test row: its label, its user group, the template the bandit chose and every template's
P(yes) (``model=tallrec_pool`` with ``compare: true`` stores them in each predictions line), and
the template that was best on the feedback (valid) rows. Output, AUC over all rows of:

- ``bandit``: each row scored by the template the bandit chose for it;
- ``single``: each template alone;
- ``best_on_valid``: the template best on the feedback rows (a choice made on valid only);
- ``random``: a template drawn uniformly per row (seeded);
- ``oracle_per_group``: per group, the template with the best AUC on that group's TEST rows
  (the best template overall for a group with one class): chosen on the test labels, so an upper
  bound of per-group selection, not a method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmark.eval.metrics import auc

ORACLE_NOTE = "per group, the template best on that group's test labels: an upper bound, not a method"


def _r(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 6)


def compare_policies(
    labels: np.ndarray,
    groups: np.ndarray,
    chosen: np.ndarray,
    scores: np.ndarray,
    arm_ids: Sequence[str],
    best_on_valid: str,
    seed: int,
) -> dict[str, Any]:
    """AUC of every policy on the same rows (see the module docstring).

    Args:
        labels: [N] 0/1.
        groups: [N] user group per row.
        chosen: [N] index of the template the bandit chose.
        scores: [N, arms] P(yes) of every template.
        arm_ids: template ids, in the columns' order.
        best_on_valid: id of the template chosen on the feedback rows.
        seed: the draw of the random policy.
    """
    labels = np.asarray(labels).astype(int)
    n, arms = scores.shape
    rows = np.arange(n)
    single = [auc(labels, scores[:, a]) for a in range(arms)]
    random_arm = np.random.default_rng([int(seed) % (2**63), 7_211]).integers(arms, size=n)
    best_overall = 0 if np.isnan(single).all() else int(np.nanargmax(single))
    per_group: dict[str, str] = {}
    oracle = scores[:, best_overall].copy()
    for g in np.unique(groups):
        sel = groups == g
        values = [auc(labels[sel], scores[sel, a]) for a in range(arms)]
        a = best_overall if np.isnan(values).all() else int(np.nanargmax(values))
        per_group[str(int(g))] = arm_ids[a]
        oracle[sel] = scores[sel, a]
    b = list(arm_ids).index(best_on_valid)
    return {
        "rows": int(n),
        "bandit": _r(auc(labels, scores[rows, chosen])),
        "single": {tid: _r(x) for tid, x in zip(arm_ids, single, strict=True)},
        "best_on_valid": {"template": best_on_valid, "auc": _r(single[b])},
        "random": _r(auc(labels, scores[rows, random_arm])),
        "oracle_per_group": {"auc": _r(auc(labels, oracle)), "templates": per_group, "note": ORACLE_NOTE},
    }


def comparison_from_lines(lines: Sequence[dict[str, Any]], arm_ids: Sequence[str], best_on_valid: str, seed: int) -> dict[str, Any] | None:
    """:func:`compare_policies` from predictions lines (``label`` and ``prompt``: group, template,
    scores); None when the lines carry no per-template scores. Raises ValueError on a line whose
    prompt facts do not fit ``arm_ids``."""
    facts = [ln.get("prompt") for ln in lines]
    if not facts or not all(isinstance(f, dict) and isinstance(f.get("scores"), list) for f in facts):
        return None
    index = {tid: a for a, tid in enumerate(arm_ids)}
    if best_on_valid not in index:
        raise ValueError(f"best_on_valid template {best_on_valid!r} is not in the pool")
    scores = np.array([f["scores"] for f in facts], dtype=float)
    if scores.shape != (len(lines), len(arm_ids)) or not np.isfinite(scores).all():
        raise ValueError("per-template scores are not one finite score per template and row")
    try:
        chosen = np.array([index[f["template"]] for f in facts])
        groups = np.array([int(f["group"]) for f in facts])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"a predictions line names an unknown template or group ({e})") from None
    labels = np.array([int(ln["label"]) for ln in lines])
    return compare_policies(labels, groups, chosen, scores, arm_ids, best_on_valid, seed)
