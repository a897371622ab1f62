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

The listwise reranker's pool (``model=llm_rerank_pool``) is compared the same way on its test
users (:func:`compare_rank_policies`): per user, each template's order of the user's candidates
(its scores, stored in the predictions line) gives an NDCG@10 against the user's targets, and each
policy's value is the mean over users; the template best on the feedback tasks (train part) takes
the place of the one best on valid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmark.eval.metrics import auc, ndcg_at_k, per_group_auc

ORACLE_NOTE = "per group, the template best on that group's test labels: an upper bound, not a method"
ORACLE_NOTE_RANK = "per group, the template best on that group's test targets: an upper bound, not a method"
RANK_K = 10


def _r(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 6)


def _random_arms(seed: int, arms: int, n: int) -> np.ndarray:
    """The random policy's template per row: uniform, seeded by the run seed."""
    return np.random.default_rng([int(seed) % (2**63), 7_211]).integers(arms, size=n)


def _policies(
    value: Callable[[np.ndarray, np.ndarray], float],
    n: int,
    arms: int,
    groups: np.ndarray,
    chosen: np.ndarray,
    arm_ids: Sequence[str],
    seed: int,
) -> dict[str, Any]:
    """The policies' values on the same rows; ``value(rows, arm_per_row)`` is the metric of ``rows``
    each scored by its arm. Returns bandit, single, random, the arm best overall and the oracle."""
    rows = np.arange(n)
    single = [value(rows, np.full(n, a)) for a in range(arms)]
    random_arm = _random_arms(seed, arms, n)
    best_overall = 0 if np.isnan(single).all() else int(np.nanargmax(single))
    per_group: dict[str, str] = {}
    oracle = np.full(n, best_overall)
    for g in np.unique(groups):
        sel = np.flatnonzero(groups == g)
        values = [value(sel, np.full(len(sel), a)) for a in range(arms)]
        a = best_overall if np.isnan(values).all() else int(np.nanargmax(values))
        per_group[str(int(g))] = arm_ids[a]
        oracle[sel] = a
    return {
        "bandit": _r(value(rows, chosen)),
        "single": {tid: _r(x) for tid, x in zip(arm_ids, single, strict=True)},
        "random": _r(value(rows, random_arm)),
        "oracle": (_r(value(rows, oracle)), per_group),
    }


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
    p = _policies(lambda rows, arm: auc(labels[rows], scores[rows, arm]), n, arms, groups, chosen, arm_ids, seed)
    oracle, per_group = p["oracle"]
    return {
        "rows": int(n),
        "bandit": p["bandit"],
        "single": p["single"],
        "best_on_valid": {"template": best_on_valid, "auc": p["single"][best_on_valid]},
        "random": p["random"],
        "oracle_per_group": {"auc": oracle, "templates": per_group, "note": ORACLE_NOTE},
    }


def rank_gain(order: Sequence[Any], targets: Sequence[Any], k: int = RANK_K) -> float:
    """NDCG@k of one ranked list against its targets (gain 1/log2(rank + 1), rank 1-based)."""
    hits = np.isin(np.asarray(list(order)[:k], dtype=object), np.asarray(list(targets), dtype=object))
    return float(ndcg_at_k(hits[None, :].astype(float), np.array([len(targets)]), k)[0])


def compare_rank_policies(
    gains: np.ndarray, groups: np.ndarray, chosen: np.ndarray, arm_ids: Sequence[str], best_on_feedback: str, seed: int
) -> dict[str, Any]:
    """Mean NDCG@10 over users of every policy of the reranker's pool (see the module docstring).

    Args:
        gains: [N, arms] NDCG@10 of each user's candidates in each template's order.
        groups, chosen, arm_ids, seed: as :func:`compare_policies`.
        best_on_feedback: id of the template best on the feedback (train) tasks.
    """
    n, arms = gains.shape
    p = _policies(lambda rows, arm: float(gains[rows, arm].mean()) if len(rows) else float("nan"), n, arms, groups, chosen, arm_ids, seed)
    oracle, per_group = p["oracle"]
    return {
        "rows": int(n),
        "metric": f"ndcg@{RANK_K}",
        "bandit": p["bandit"],
        "single": p["single"],
        "best_on_feedback": {"template": best_on_feedback, f"ndcg@{RANK_K}": p["single"][best_on_feedback]},
        "random": p["random"],
        "oracle_per_group": {f"ndcg@{RANK_K}": oracle, "templates": per_group, "note": ORACLE_NOTE_RANK},
    }


def _choices(
    lines: Sequence[dict[str, Any]], arm_ids: Sequence[str], best: str, best_key: str
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray] | None:
    """The lines' prompt facts, chosen template index and group per line; None when the lines carry
    no per-template scores. Raises ValueError on an unknown template or group, or a ``best``
    (named ``best_key``) outside the pool."""
    facts = [ln.get("prompt") for ln in lines]
    if not facts or not all(isinstance(f, dict) and isinstance(f.get("scores"), list) for f in facts):
        return None
    index = {tid: a for a, tid in enumerate(arm_ids)}
    if best not in index:
        raise ValueError(f"{best_key} template {best!r} is not in the pool")
    try:
        chosen = np.array([index[f["template"]] for f in facts], dtype=np.int64)
        groups = np.array([int(f["group"]) for f in facts], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"a predictions line names an unknown template or group ({e})") from None
    return facts, chosen, groups


def comparison_from_lines(lines: Sequence[dict[str, Any]], arm_ids: Sequence[str], best_on_valid: str, seed: int) -> dict[str, Any] | None:
    """:func:`compare_policies` from predictions lines (``label`` and ``prompt``: group, template,
    scores); None when the lines carry no per-template scores. Raises ValueError on a line whose
    prompt facts do not fit ``arm_ids``."""
    parsed = _choices(lines, arm_ids, best_on_valid, "best_on_valid")
    if parsed is None:
        return None
    facts, chosen, groups = parsed
    scores = np.array([f["scores"] for f in facts], dtype=float)
    if scores.shape != (len(lines), len(arm_ids)) or not np.isfinite(scores).all():
        raise ValueError("per-template scores are not one finite score per template and row")
    labels = np.array([int(ln["label"]) for ln in lines])
    return compare_policies(labels, groups, chosen, scores, arm_ids, best_on_valid, seed)


def _rank_gains(
    lines: Sequence[dict[str, Any]], arm_ids: Sequence[str], best_on_feedback: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """[N, arms] NDCG@10 of each line's candidates in each template's order (sorted by its score,
    ties in the listed order), with the chosen template and group per line; None without scores."""
    parsed = _choices(lines, arm_ids, best_on_feedback, "best_on_feedback")
    if parsed is None:
        return None
    facts, chosen, groups = parsed
    gains = np.zeros((len(lines), len(arm_ids)))
    for r, (ln, f) in enumerate(zip(lines, facts, strict=True)):
        cands = f.get("candidates")
        if not isinstance(cands, list) or not isinstance(ln.get("targets"), list):
            raise ValueError(f"predictions line {r + 1}: no candidate list or targets")
        scores = np.array(f["scores"], dtype=float)
        if scores.shape != (len(arm_ids), len(cands)) or not np.isfinite(scores).all():
            raise ValueError(f"predictions line {r + 1}: per-template scores are not one finite score per template and candidate")
        for a in range(len(arm_ids)):
            order = [cands[j] for j in np.argsort(-scores[a], kind="stable")]
            gains[r, a] = rank_gain(order, ln["targets"])
    return gains, chosen, groups


def rank_comparison_from_lines(
    lines: Sequence[dict[str, Any]], arm_ids: Sequence[str], best_on_feedback: str, seed: int
) -> dict[str, Any] | None:
    """:func:`compare_rank_policies` from ranking predictions lines (``targets`` and ``prompt``:
    group, template, the user's ``candidates`` and every template's ``scores`` of them; a template's
    order sorts the candidates by its score, ties in the listed order); None when the lines carry
    no per-template scores. Raises ValueError on a line whose prompt facts do not fit ``arm_ids``."""
    found = _rank_gains(lines, arm_ids, best_on_feedback)
    if found is None:
        return None
    gains, chosen, groups = found
    return compare_rank_policies(gains, groups, chosen, arm_ids, best_on_feedback, seed)


def paired_policy_values(
    lines: Sequence[dict[str, Any]], arm_ids: Sequence[str], best: str, seed: int, rank: bool
) -> tuple[list[str], dict[str, np.ndarray]] | None:
    """Per-user values of three policies on the same users, for a paired test: ``bandit`` (each row
    scored by the template the bandit chose), ``fixed`` (the template ``best`` on the feedback rows)
    and ``random`` (the same seeded draw as the comparison's). Ranking lines (``rank``): NDCG@10
    per user (one line each); labeled lines: AUC over each user's rows (users with both classes).

    Returns:
        (user ids, {policy: [U] values}) in the same user order; None when the lines carry no
        per-template scores. Raises ValueError as :func:`rank_comparison_from_lines`.
    """
    n, rows = len(lines), np.arange(len(lines))
    if rank:
        found = _rank_gains(lines, arm_ids, best)
        if found is None:
            return None
        gains, chosen, _ = found
    else:
        parsed = _choices(lines, arm_ids, best, "best_on_valid")
        if parsed is None:
            return None
        facts, chosen, _ = parsed
        scores = np.array([f["scores"] for f in facts], dtype=float)
        if scores.shape != (n, len(arm_ids)) or not np.isfinite(scores).all():
            raise ValueError("per-template scores are not one finite score per template and row")
        labels = np.array([int(ln["label"]) for ln in lines])
        users = np.array([str(ln.get("user")) for ln in lines])
    arms = {"bandit": chosen, "fixed": np.full(n, arm_ids.index(best)), "random": _random_arms(seed, len(arm_ids), n)}
    if rank:
        return [str(ln.get("user", r)) for r, ln in enumerate(lines)], {k: gains[rows, a] for k, a in arms.items()}
    out: dict[str, np.ndarray] = {}
    for k, a in arms.items():
        ids, out[k], _ = per_group_auc(labels, scores[rows, a], users)
    return [str(u) for u in ids], out
