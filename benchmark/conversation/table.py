"""The conversation results table (``results/conversation/summary.md``), from the stored runs only.

``python -m benchmark.conversation.table [RUNS_DIR] [--readme README.md]`` reads every run folder under ``RUNS_DIR``
(default ``results/conversation``; each read and checked by
:func:`~benchmark.conversation.storage.read_conversation`) and writes one markdown table per
session set: all test rows, and each seeded user subset an LLM run used. A run on all rows also
appears in a subset's table, its metrics recomputed from its stored dialogues of those rows only,
so every row of a table is measured on the same sessions. Runs whose configs differ only by the seed
(the first-stage model's training seed and the LLM simulator's sampling seed) form one row: the
mean and sample standard deviation over seeds, and the number of seeds.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections.abc import Callable
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
    """One row of a session set's table: the runs of one config (one per seed), measured on the
    set's sessions."""

    records: list[dict[str, Any]]  # by seed
    metrics: list[dict[str, Any]]  # :func:`session_metrics` of each run's sessions
    sessions: int
    recomputed: bool  # runs on all rows, their sessions of a subset's users only

    @property
    def record(self) -> dict[str, Any]:
        """The first seed's record (what the row's labels read; the config is the same for all)."""
        return self.records[0]

    def value(self, name: str) -> tuple[float | None, float | None]:
        """(mean, sample std over seeds; None with one seed) of metric ``name``; (None, None) when
        a seed has no value (e.g. turns to success when no session succeeded)."""
        vals = [m[name] for m in self.metrics]
        if any(v is None for v in vals):
            return None, None
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)

    def seconds(self) -> float | None:
        """Mean seconds per session over the seeds (None when a record has none)."""
        vals = [(r.get("timings") or {}).get("seconds_per_session") for r in self.records]
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in vals):
            return None
        return statistics.fmean(vals)

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


def _config_but_seed(record: dict[str, Any]) -> str:
    """The record's hashed config without its seeds: what the runs of one row share."""
    cfg = record["config"]
    return json.dumps(
        {part: {k: v for k, v in cfg[part].items() if k != "seed"} for part in ("conversation", "main")},
        sort_keys=True,
    )


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

        def rows_of(runs: list[tuple[dict[str, Any], list[dict[str, Any]]]], recomputed: bool) -> list[Row]:
            """One row per config, its runs by seed (two runs of one config and seed: an error)."""
            by_config: dict[str, list] = {}
            for r, s in runs:
                by_config.setdefault(_config_but_seed(r), []).append((r, s))
            out = []
            for group in by_config.values():
                group.sort(key=lambda rs: rs[0]["seed"])
                seeds = [r["seed"] for r, _ in group]
                if len(set(seeds)) < len(seeds):
                    twice = [r["run_id"] for r, _ in group if seeds.count(r["seed"]) > 1]
                    raise ConfigError(f"{runs_dir}: runs {', '.join(twice)} share one config and seed")
                metrics = [session_metrics(s, turns, k)[0] for _, s in group]  # noqa: B023
                out.append(Row([r for r, _ in group], metrics, len(group[0][1]), recomputed))
            return out

        rows = rows_of(members, False)
        if users is not None:
            wanted = {s["row"] for s in members[0][1]}
            same = [(r, s) for r, s in full if (r["protocol"]["turns"], r["protocol"]["k"]) == (turns, k)]
            rows += rows_of([(r, [x for x in s if x["row"] in wanted]) for r, s in same], True)
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

    rec, sim, ses, cfg = record.get("recommender"), record.get("simulator"), record.get("sessions"), record.get("config")
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
        "seed": isinstance(record.get("seed"), int) and not isinstance(record.get("seed"), bool),
        "config": isinstance(cfg, dict) and all(isinstance(cfg.get(p), dict) for p in ("conversation", "main")),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise ConfigError(f"{run_dir}: record field {bad[0]} is missing or of the wrong type")


def _where(record: dict[str, Any]) -> tuple[str, str]:
    """(dataset, split protocol) of a run, as its record states them."""
    return record["dataset"]["name"], record["split"]["protocol"]


def cells(row: Row, turns: int, k: int, spread: Callable[[str, str], str] = "{} ± {}".format) -> list[str]:
    """The metric cells of a row, in :func:`columns` order: over several seeds ``spread(mean, std)``."""

    def cell(name: str, digits: int = 3) -> str:
        mean, std = row.value(name)
        return _fmt(mean, digits) if std is None or mean is None else spread(_fmt(mean, digits), _fmt(std, digits))

    return [
        *(cell(f"conv/success@{t}") for t in range(1, turns + 1)),
        cell("conv/turns_to_success", 2),
        cell(f"conv/recall@{k}/turn1"),
        cell(f"conv/recall@{k}/turn{turns}"),
        cell("conv/hallucination"),
        cell("conv/repeat_questions"),
        cell("conv/prompt_tokens", 0),
        cell("conv/simulator_prompt_tokens", 0),
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
        cols = ["recommender", "simulator", "sessions", "seeds", *columns(ss.turns, ss.k), "s / session", "runs"]
        lines += [f"### {ss.title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in ss.rows:
            shown = [
                row.recommender,
                row.simulator,
                str(row.sessions) + (" *" if row.recomputed else ""),
                str(len(row.records)),
                *cells(row, ss.turns, ss.k),
                "-" if row.recomputed else _fmt(row.seconds(), 2),
                ", ".join(f"`{r['run_id']}`" for r in row.records),
            ]
            lines.append("| " + " | ".join(shown) + " |")
        lines.append("")
    lines.append(
        "`*`: the same runs' sessions of these users only, recomputed from their stored dialogues. "
        "Several seeds: mean ± sample standard deviation over the seeds (the first-stage model's "
        "training seed and the LLM simulator's sampling seed)."
    )
    return "\n".join(lines) + "\n"


def paper_values(runs_dir: Path) -> dict[str, str]:
    """``conversation/<dataset>/<split>/<set>/<recommender>/<simulator>/<metric>`` for the paper's
    text: success@t, ``turns`` (mean turns to success), ``recall-first`` and ``recall-last``
    (recall@k at turn 1 and T), means over seeds, and ``sessions`` and ``seeds``, of every row
    measured on its own sessions (``<set>``: ``all`` or ``u<N>``).
    A key two rows share is left out, so the text cannot name an ambiguous number."""
    out: dict[str, str] = {}
    seen: dict[str, int] = {}
    for ss in session_sets(runs_dir):
        for row in ss.rows:
            if row.recomputed:
                continue
            base = f"conversation/{ss.name}/{row.key}"
            seen[base] = seen.get(base, 0) + 1
            names = {f"success{t}": f"conv/success@{t}" for t in range(1, ss.turns + 1)}
            names |= {"turns": "conv/turns_to_success", "recall-first": f"conv/recall@{ss.k}/turn1",
                      "recall-last": f"conv/recall@{ss.k}/turn{ss.turns}"}
            for name, metric in names.items():
                mean = row.value(metric)[0]
                if mean is not None:
                    out[f"{base}/{name}"] = _fmt(mean, 2 if name == "turns" else 3)
            out[f"{base}/sessions"] = str(row.sessions)
            out[f"{base}/seeds"] = str(len(row.records))
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
