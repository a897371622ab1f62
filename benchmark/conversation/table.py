"""The conversation results table (``results/conversation/summary.md``), from the stored runs only.

``python -m benchmark.conversation.table [RUNS_DIR] [--readme README.md]`` reads every run folder under ``RUNS_DIR``
(default ``results/conversation``; each read and checked by
:func:`~benchmark.conversation.storage.read_conversation`) and writes one markdown table per
session set: all test rows, and each seeded user subset an LLM run used. A run on all rows also
appears in a subset's table, its metrics recomputed from its stored dialogues of those rows only,
so every row of a table is measured on the same sessions.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.conversation.metrics import session_metrics
from benchmark.conversation.storage import RECORD, read_conversation
from benchmark.errors import ConfigError
from benchmark.util import atomic_write, write_marked_block

SUMMARY = "summary.md"


def _fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


@dataclass
class Row:
    """One row of a session set's table: a run, measured on the set's sessions."""

    record: dict[str, Any]
    metrics: dict[str, Any]  # :func:`session_metrics` of the sessions
    sessions: int
    recomputed: bool  # a run on all rows, its sessions of a subset's users only

    @property
    def recommender(self) -> str:
        rec = self.record["recommender"]
        stage = (rec.get("first_stage") or {}).get("model")
        return {
            "ranker": f"ranker in the loop ({stage})",
            "llm": f"LLM ({rec.get('decoding')})",
            "hybrid": f"hybrid ({stage} top-{rec.get('top_n')} + LLM)",
        }[rec["name"]]

    @property
    def simulator(self) -> str:
        sim = self.record["simulator"]
        return sim["name"] + (" + hint" if sim.get("hint") else "")

    @property
    def key(self) -> str:
        """``<recommender>-<first stage or decoding>/<simulator>``, for the paper's values."""
        rec = self.record["recommender"]
        kind = (rec.get("first_stage") or {}).get("model") if rec["name"] != "llm" else rec.get("decoding")
        return _part(f"{rec['name']}-{kind}") + "/" + _part(self.simulator.replace(" + ", "-"))


@dataclass
class SessionSet:
    """The runs measured on one set of sessions: all test rows, or a seeded user subset."""

    dataset: str
    split: str
    users: int | None
    users_seed: int | None
    turns: int
    k: int
    sessions: int
    rows: list[Row]

    @property
    def title(self) -> str:
        who = "all test rows" if self.users is None else f"a seeded subset of {self.users} test users (users_seed={self.users_seed})"
        return f"{self.dataset} {self.split}, {self.sessions} sessions: {who}; T={self.turns}, k={self.k}"

    @property
    def name(self) -> str:
        """``<dataset>/<split>/all`` or ``.../u<users>`` (the paper's value prefix)."""
        return f"{_part(self.dataset)}/{_part(self.split)}/" + ("all" if self.users is None else f"u{self.users}")


def _part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", str(text)).strip("-")


def session_sets(runs_dir: Path) -> list[SessionSet]:
    """Every session set of the runs under ``runs_dir`` (see the module docstring), all rows first."""
    runs = []
    for path in sorted(Path(runs_dir).glob(f"*/{RECORD}")):
        record, sessions = read_conversation(path.parent)
        _check_facts(record, path.parent)
        runs.append((record, sessions))
    groups: dict[tuple, list] = {}
    for record, sessions in runs:
        s, proto = record["sessions"], record["protocol"]
        key = (_where(record), s.get("users"), s.get("users_seed"), proto["turns"], proto["k"])
        groups.setdefault(key, []).append((record, sessions))
    out = []
    order = sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] is not None, kv[0][1] or 0))
    for (where, users, seed, turns, k), members in order:
        turns, k = int(turns), int(k)
        full = [(r, s) for r, s in runs if r["sessions"].get("users") is None and _where(r) == where]

        def row(record: dict[str, Any], sessions: list[dict[str, Any]], recomputed: bool) -> Row:
            return Row(record, session_metrics(sessions, turns, k)[0], len(sessions), recomputed)  # noqa: B023

        rows = [row(r, s, False) for r, s in members]
        if users is not None:
            wanted = {s["row"] for s in members[0][1]}
            for r, s in full:
                if (r["protocol"]["turns"], r["protocol"]["k"]) == (turns, k):
                    rows.append(row(r, [x for x in s if x["row"] in wanted], True))
        count = len(members[0][1]) if users is None else int(users)
        out.append(SessionSet(*where, users, seed, turns, k, count, rows))
    return out


RECOMMENDERS = ("ranker", "llm", "hybrid")


def _check_facts(record: dict[str, Any], run_dir: Path) -> None:
    """The record facts a table row reads, of the expected types (a record may come from anyone).

    Raises:
        ConfigError: one line naming the run folder and the field.
    """

    def text(v: Any) -> bool:
        return isinstance(v, str) and 0 < len(v) <= 200

    def count(v: Any) -> bool:
        return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)

    rec, sim, ses = record.get("recommender"), record.get("simulator"), record.get("sessions")
    stage = rec.get("first_stage") if isinstance(rec, dict) else None
    checks = {
        "run_id": text(record.get("run_id")),
        "dataset.name": isinstance(record.get("dataset"), dict) and text(record["dataset"].get("name")),
        "split.protocol": isinstance(record.get("split"), dict) and text(record["split"].get("protocol")),
        "recommender.name": isinstance(rec, dict) and rec.get("name") in RECOMMENDERS,
        "recommender.first_stage.model": stage is None or (isinstance(stage, dict) and text(stage.get("model"))),
        "recommender.decoding": not isinstance(rec, dict) or rec.get("decoding") is None or text(rec.get("decoding")),
        "recommender.top_n": not isinstance(rec, dict) or count(rec.get("top_n")),
        "simulator.name": isinstance(sim, dict) and text(sim.get("name")),
        "simulator.hint": not isinstance(sim, dict) or isinstance(sim.get("hint", False), bool),
        "sessions.users": isinstance(ses, dict) and count(ses.get("users")) and count(ses.get("users_seed")),
        "timings": record.get("timings") is None or isinstance(record["timings"], dict),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise ConfigError(f"{run_dir}: record field {bad[0]} is missing or of the wrong type")


def _where(record: dict[str, Any]) -> tuple[str, str]:
    """(dataset, split protocol) of a run, as its record states them."""
    return record["dataset"]["name"], record["split"]["protocol"]


def cells(row: Row, turns: int, k: int) -> list[str]:
    """The metric cells of a row, in :func:`columns` order."""
    m = row.metrics
    return [
        *(_fmt(m[f"conv/success@{t}"]) for t in range(1, turns + 1)),
        _fmt(m["conv/turns_to_success"], 2),
        _fmt(m[f"conv/recall@{k}/turn1"]),
        _fmt(m[f"conv/recall@{k}/turn{turns}"]),
        _fmt(m["conv/hallucination"]),
        _fmt(m["conv/repeat_questions"]),
        _fmt(m["conv/prompt_tokens"], 0),
        _fmt(m["conv/simulator_prompt_tokens"], 0),
    ]


def columns(turns: int, k: int) -> list[str]:
    """The metric column names of a session set's table."""
    return [
        *(f"success@{t}" for t in range(1, turns + 1)),
        "turns to success",
        f"recall@{k} turn 1",
        f"recall@{k} turn {turns}",
        "hallucination",
        "repeated questions",
        "prompt tokens",
        "simulator prompt tokens",
    ]


def summary(runs_dir: Path) -> str:
    """The markdown of every session set's table (see the module docstring)."""
    sets = session_sets(runs_dir)
    if not sets:
        return "No conversation runs.\n"
    lines = []
    for ss in sets:
        cols = ["recommender", "simulator", "sessions", *columns(ss.turns, ss.k), "s / session", "run"]
        lines += [f"### {ss.title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in ss.rows:
            seconds = (row.record.get("timings") or {}).get("seconds_per_session")
            seconds = seconds if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None
            shown = [
                row.recommender,
                row.simulator,
                str(row.sessions) + (" *" if row.recomputed else ""),
                *cells(row, ss.turns, ss.k),
                "-" if row.recomputed else _fmt(seconds, 2),
                f"`{row.record['run_id']}`",
            ]
            lines.append("| " + " | ".join(shown) + " |")
        lines.append("")
    lines.append("`*`: the same run's sessions of these users only, recomputed from its stored dialogues.")
    return "\n".join(lines) + "\n"


def paper_values(runs_dir: Path) -> dict[str, str]:
    """``conversation/<dataset>/<split>/<set>/<recommender>/<simulator>/<metric>`` for the paper's
    text: success@t, ``turns`` (mean turns to success), ``recall-first`` and ``recall-last``
    (recall@k at turn 1 and T), ``sessions``, of every run measured on its own sessions (``<set>``:
    ``all`` or ``u<N>``).
    A key two runs share is left out, so the text cannot name an ambiguous number."""
    out: dict[str, str] = {}
    seen: dict[str, int] = {}
    for ss in session_sets(runs_dir):
        for row in ss.rows:
            if row.recomputed:
                continue
            base = f"conversation/{ss.name}/{row.key}"
            seen[base] = seen.get(base, 0) + 1
            m = row.metrics
            facts = {f"success{t}": m[f"conv/success@{t}"] for t in range(1, ss.turns + 1)}
            facts |= {"turns": m["conv/turns_to_success"], "recall-first": m[f"conv/recall@{ss.k}/turn1"],
                      "recall-last": m[f"conv/recall@{ss.k}/turn{ss.turns}"]}
            for name, v in facts.items():
                if v is not None:
                    out[f"{base}/{name}"] = _fmt(v, 2 if name == "turns" else 3)
            out[f"{base}/sessions"] = str(row.sessions)
    ambiguous = {b for b, n in seen.items() if n > 1}
    return {k: v for k, v in out.items() if k.rsplit("/", 1)[0] not in ambiguous}


START, END = "<!-- conversation:start -->", "<!-- conversation:end -->"


def readme_block(runs_dir: Path) -> str:
    """The README's conversation tables: the summary with its headings one level down."""
    return re.sub(r"^### ", "#### ", summary(runs_dir), flags=re.M)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_dir", nargs="?", type=Path, default=Path("results/conversation"))
    ap.add_argument("--readme", type=Path, help=f"also write the tables between {START} and {END} of this file")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        text = summary(a.runs_dir)
    except ConfigError as e:  # a run folder that fails its checks: one line, nothing written
        print(f"conversation table: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    atomic_write(a.runs_dir / SUMMARY, text)
    if a.readme is not None:
        write_marked_block(a.readme, START, END, readme_block(a.runs_dir))
    print(text, end="")


if __name__ == "__main__":
    main()
