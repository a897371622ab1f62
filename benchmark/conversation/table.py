"""The conversation results table (``results/conversation/summary.md``), from the stored runs only.

``python -m benchmark.conversation.table [RUNS_DIR]`` reads every run folder under ``RUNS_DIR``
(default ``results/conversation``; each read and checked by
:func:`~benchmark.conversation.storage.read_conversation`) and writes one markdown table per
session set: all test rows, and each seeded user subset an LLM run used. A run on all rows also
appears in a subset's table, its metrics recomputed from its stored dialogues of those rows only,
so every row of a table is measured on the same sessions.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from benchmark.conversation.metrics import session_metrics
from benchmark.conversation.storage import RECORD, read_conversation
from benchmark.util import atomic_write

SUMMARY = "summary.md"


def _fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _row(record: dict[str, Any], sessions: list[dict[str, Any]], recomputed: bool) -> str:
    proto = record["protocol"]
    turns, k = int(proto["turns"]), int(proto["k"])
    m = session_metrics(sessions, turns, k)[0]
    rec, sim = record["recommender"], record["simulator"]
    who = rec.get("first_stage", {}).get("model") if rec["name"] == "ranker" else None
    name = {
        "ranker": f"ranker in the loop ({who})",
        "llm": f"LLM ({rec.get('decoding')})",
        "hybrid": f"hybrid ({(rec.get('first_stage') or {}).get('model')} top-{rec.get('top_n')} + LLM)",
    }[rec["name"]]
    timing = record.get("timings") or {}
    cells = [
        name,
        sim["name"] + (" + hint" if sim.get("hint") else ""),
        str(len(sessions)) + (" *" if recomputed else ""),
        *(_fmt(m[f"conv/success@{t}"]) for t in range(1, turns + 1)),
        _fmt(m["conv/turns_to_success"], 2),
        _fmt(m[f"conv/recall@{k}/turn1"]),
        _fmt(m[f"conv/recall@{k}/turn{turns}"]),
        _fmt(m["conv/hallucination"]),
        _fmt(m["conv/repeat_questions"]),
        _fmt(m["conv/prompt_tokens"], 0),
        _fmt(m["conv/simulator_prompt_tokens"], 0),
        "-" if recomputed else _fmt(timing.get("seconds_per_session"), 2),
        f"`{record['run_id']}`",
    ]
    return "| " + " | ".join(cells) + " |"


def _header(turns: int, k: int) -> list[str]:
    cols = [
        "recommender",
        "simulator",
        "sessions",
        *(f"success@{t}" for t in range(1, turns + 1)),
        "turns to success",
        f"recall@{k} turn 1",
        f"recall@{k} turn {turns}",
        "hallucination",
        "repeated questions",
        "prompt tokens",
        "simulator prompt tokens",
        "s / session",
        "run",
    ]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def summary(runs_dir: Path) -> str:
    """The markdown of every session set's table (see the module docstring)."""
    runs = []
    for path in sorted(p.parent for p in Path(runs_dir).glob(f"*/{RECORD}")):
        record, sessions = read_conversation(path)
        runs.append((record, sessions))
    if not runs:
        return "No conversation runs.\n"
    sets: dict[tuple, list] = {}
    for record, sessions in runs:
        s = record["sessions"]
        key = (s.get("users"), s.get("users_seed"), record["protocol"]["turns"], record["protocol"]["k"])
        sets.setdefault(key, []).append((record, sessions))
    lines = []
    full = [(r, s) for r, s in runs if r["sessions"].get("users") is None]
    for (users, seed, turns, k), members in sorted(
        sets.items(), key=lambda kv: (kv[0][0] is not None, kv[0][0] or 0)
    ):
        title = (
            "all test rows" if users is None else f"a seeded subset of {users} test users (users_seed={seed})"
        )
        lines += [
            f"### {len(members[0][1]) if users is None else users} sessions: {title}; T={turns}, k={k}",
            "",
        ]
        lines += _header(turns, k)
        lines += [_row(r, s, False) for r, s in members]
        if users is not None:
            rows = {s["row"] for s in members[0][1]}
            for r, s in full:
                if (r["protocol"]["turns"], r["protocol"]["k"]) == (turns, k):
                    lines.append(_row(r, [x for x in s if x["row"] in rows], True))
        lines.append("")
    lines.append("`*`: the same run's sessions of these users only, recomputed from its stored dialogues.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    runs_dir = Path(args[0] if args else "results/conversation")
    text = summary(runs_dir)
    atomic_write(runs_dir / SUMMARY, text)
    print(text, end="")


if __name__ == "__main__":
    main()
