"""Conversation metrics, computed from stored sessions only (so a stored run can be recomputed).

Over N sessions with at most T turns and lists of at most k items:

- ``conv/success@t`` (t = 1..T): share of sessions whose target was in a list recommended at a
  turn <= t (from the lists and the target, not from the stored accept flags).
- ``conv/turns_to_success``: mean turn of success over the successful sessions (None if none).
- ``conv/recall@k/turn{t}``: over sessions that recommended at turn t, the share whose list holds
  the target (one target per session, so recall@k = hit@k); None when none recommended then.
- ``conv/hallucination``: share of recommended entries that are not catalogue items (``null``
  entries, and ids outside ``catalogue`` when it is given).
- ``conv/repeat_questions``: share of questions that ask an attribute already asked in the session.
- ``conv/questions``: questions per session.
- ``conv/prompt_tokens``, ``conv/simulator_prompt_tokens``: LLM prompt tokens per session read by
  the recommender and by the simulator.
- ``conv/replaced``: share of simulator utterances replaced by the leakage guard.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def success_turn(session: dict[str, Any]) -> int | None:
    """The first turn whose recommended list holds the session's target, None when none did."""
    target = session["target"]
    for t in session["turns"]:
        if (
            t.get("speaker") == "recommender"
            and t.get("action") == "recommend"
            and target in (t.get("items") or [])
        ):
            return int(t["turn"])
    return None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def session_metrics(
    sessions: Sequence[dict[str, Any]], turns: int, k: int, catalogue: Iterable[str] | None = None
) -> tuple[dict[str, float | None], dict[str, int]]:
    """Metrics (see the module docstring) and their support counts.

    Args:
        sessions: stored sessions (:mod:`benchmark.conversation.protocol`).
        turns: T of the protocol.
        k: list length of the protocol (the name of the recall metric).
        catalogue: raw ids of the catalogue; when given, an id outside it counts as hallucinated.

    Returns:
        (metrics by name, support by name: sessions, successes, recommendations per turn,
        recommended entries, questions, simulator utterances).
    """
    known = None if catalogue is None else set(catalogue)
    won = [success_turn(s) for s in sessions]
    n = len(sessions)
    metrics: dict[str, float | None] = {}
    for t in range(1, turns + 1):
        metrics[f"conv/success@{t}"] = (sum(1 for w in won if w is not None and w <= t) / n) if n else None
    metrics["conv/turns_to_success"] = _mean([w for w in won if w is not None])
    hits: list[list[float]] = [[] for _ in range(turns)]
    entries = bad = questions = repeats = replaced = said = 0
    rec_tokens, sim_tokens = [], []
    for s in sessions:
        asked: set[str] = set()
        rt = st = 0
        for t in s["turns"]:
            if t.get("speaker") == "user":
                said += 1
                replaced += bool(t.get("replaced"))
                st += int(t.get("prompt_tokens") or 0)
                continue
            rt += int(t.get("prompt_tokens") or 0)
            if t.get("action") == "ask":
                questions += 1
                repeats += t.get("attribute") in asked
                asked.add(t.get("attribute"))
                continue
            items = t.get("items") or []
            if 1 <= int(t["turn"]) <= turns:
                hits[int(t["turn"]) - 1].append(float(s["target"] in items))
            entries += len(items)
            bad += sum(1 for i in items if i is None or (known is not None and i not in known))
        rec_tokens.append(rt)
        sim_tokens.append(st)
    for t in range(turns):
        metrics[f"conv/recall@{k}/turn{t + 1}"] = _mean(hits[t])
    metrics["conv/hallucination"] = bad / entries if entries else None
    metrics["conv/repeat_questions"] = repeats / questions if questions else None
    metrics["conv/questions"] = questions / n if n else None
    metrics["conv/prompt_tokens"] = _mean(rec_tokens)
    metrics["conv/simulator_prompt_tokens"] = _mean(sim_tokens)
    metrics["conv/replaced"] = replaced / said if said else None
    support = {
        "sessions": n,
        "successes": sum(1 for w in won if w is not None),
        "recommended_entries": entries,
        "questions": questions,
        "simulator_utterances": said,
        **{f"recommendations/turn{t + 1}": len(hits[t]) for t in range(turns)},
    }
    return metrics, support


def rounded(metrics: dict[str, float | None], digits: int = 10) -> dict[str, float | None]:
    """Metrics rounded for the record (recomputation compares at this precision)."""
    return {k: (None if v is None else round(float(v), digits)) for k, v in metrics.items()}
