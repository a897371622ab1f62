"""A conversation run folder: ``record.json`` and ``dialogues.jsonl.gz``, written atomically, read
back within limits, and checked by recomputing every metric from the stored dialogues.

``<out>/<run_id>/record.json`` holds the config, dataset and split fingerprints, the sessions
(count, user subset and its seed), the protocol, the recommender and simulator (models, prompts,
seeds), metrics with their support, leakage counts, timings, the device and the environment, and
the dialogues file's name and sha256. ``dialogues.jsonl.gz`` holds one session per line (format:
:mod:`benchmark.conversation.protocol`), gzip with mtime 0, so the same sessions give the same bytes.

Reading is as strict as ``llm4rec validate`` (:mod:`benchmark.untrusted`): regular files inside
the folder, bounded sizes, strict JSON; a bad folder is a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmark.conversation.metrics import rounded, session_metrics, success_turn
from benchmark.errors import ConfigError
from benchmark.util import sha256_bytes, sha256_text, staged_dir

RECORD = "record.json"
DIALOGUES = "dialogues.jsonl.gz"
SCHEMA_VERSION = 1
TOLERANCE = 1e-9


def encode_dialogues(sessions: list[dict[str, Any]]) -> bytes:
    """gzip (mtime 0) of one JSON line per session."""
    from benchmark.results.record import encode_predictions

    return encode_predictions(sessions)


def write_conversation(
    out_dir: Path, run_id: str, record: dict[str, Any], sessions: list[dict[str, Any]]
) -> tuple[dict[str, Any], Path]:
    """Write ``out_dir/run_id`` as a whole (a staged folder renamed into place).

    Returns:
        (the record as written, with its ``dialogues`` file name, sha256 and count; the folder).
    """
    data = encode_dialogues(sessions)
    record = {
        **record,
        "dialogues": {"file": DIALOGUES, "sha256": sha256_bytes(data), "sessions": len(sessions)},
    }
    final = Path(out_dir) / run_id
    with staged_dir(final) as tmp:
        (tmp / DIALOGUES).write_bytes(data)
        (tmp / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record, final


def read_conversation(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The record and sessions of a run folder, read within limits and checked for shape.

    Raises:
        ConfigError: one line naming the folder and what is wrong.
    """
    from benchmark.untrusted import (
        DEFAULT_LIMITS,
        Rejected,
        iter_prediction_lines,
        loads_strict,
        parse_record,
        read_regular_file,
    )

    run_dir = Path(run_dir)
    try:
        record = parse_record(
            read_regular_file(run_dir / RECORD, run_dir, DEFAULT_LIMITS.record_bytes, RECORD)
        )
        meta = record.get("dialogues")
        if not isinstance(meta, dict) or meta.get("file") != DIALOGUES:
            raise Rejected("files", f"the record names no {DIALOGUES}")
        data = read_regular_file(run_dir / DIALOGUES, run_dir, DEFAULT_LIMITS.member_bytes, "dialogues file")
        if sha256_bytes(data) != meta.get("sha256"):
            raise Rejected("dialogues", f"{DIALOGUES} does not match the sha256 in the record")
        sessions = [
            loads_strict(ln, f"dialogues line {i}")
            for i, ln in enumerate(iter_prediction_lines(data, DEFAULT_LIMITS), 1)
            if ln.strip()
        ]
        protocol = record.get("protocol") or {}
        check_sessions(sessions, int(protocol.get("turns", 0)), int(protocol.get("k", 0)))
    except Rejected as e:
        raise ConfigError(f"{run_dir}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{run_dir}: malformed record ({e})") from None
    return record, sessions


def _bad(what: str) -> Exception:
    from benchmark.untrusted import Rejected

    return Rejected("dialogues", what)


def _check_turn(entry: Any, where: str, k: int) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
        raise _bad(f"{where}: not a turn with a text")
    tokens = entry.get("prompt_tokens", 0)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise _bad(f"{where}: prompt_tokens must be a count")
    if entry.get("speaker") == "user":
        if not isinstance(entry.get("accepted"), bool):
            raise _bad(f"{where}: a user turn needs accepted true/false")
        return
    if entry.get("speaker") != "recommender":
        raise _bad(f"{where}: speaker must be recommender or user")
    if entry.get("action") == "ask":
        if not isinstance(entry.get("attribute"), str):
            raise _bad(f"{where}: a question needs its attribute")
    elif entry.get("action") == "recommend":
        items = entry.get("items")
        if (
            not isinstance(items, list)
            or not 1 <= len(items) <= k
            or any(i is not None and not isinstance(i, str) for i in items)
        ):
            raise _bad(f"{where}: items must be 1..{k} ids (null for a title that names no item)")
    else:
        raise _bad(f"{where}: action must be ask or recommend")


def check_sessions(sessions: list[Any], turns: int, k: int) -> None:
    """Every session well formed: distinct rows, turns 1..T with a recommender then a user
    utterance each, lists of at most k ids, accept flags and ``success_turn`` that agree with
    the lists and the target, and nothing after an accepted list."""
    if turns < 1 or k < 1:
        raise _bad("the record's protocol has no turns/k")
    rows: set[int] = set()
    for n, s in enumerate(sessions, 1):
        if (
            not isinstance(s, dict)
            or not isinstance(s.get("turns"), list)
            or not isinstance(s.get("target"), str)
        ):
            raise _bad(f"line {n}: not a session (row, user, target, turns)")
        if not isinstance(s.get("row"), int) or s["row"] in rows or not isinstance(s.get("user"), str):
            raise _bad(f"line {n}: row missing or repeated, or user missing")
        rows.add(s["row"])
        ts = s["turns"]
        if not ts or len(ts) % 2 or len(ts) > 2 * turns:
            raise _bad(f"line {n}: a session has 1..{turns} turns of a recommender and a user utterance")
        for j, entry in enumerate(ts):
            _check_turn(entry, f"line {n} utterance {j + 1}", k)
            want = ("recommender", "user")[j % 2]
            if entry.get("speaker") != want or entry.get("turn") != j // 2 + 1:
                raise _bad(f"line {n} utterance {j + 1}: expected the {want} at turn {j // 2 + 1}")
        won = success_turn(s)
        if s.get("success_turn") != won:
            raise _bad(
                f"line {n}: success_turn {s.get('success_turn')} but the target was listed at turn {won}"
            )
        for j in range(0, len(ts), 2):
            listed = ts[j].get("action") == "recommend" and s["target"] in ts[j]["items"]
            if ts[j + 1]["accepted"] != listed:
                raise _bad(f"line {n} turn {j // 2 + 1}: accepted does not match the list")
        if won is not None and won != len(ts) // 2:
            raise _bad(f"line {n}: turns after the accepted list")


def config_digest(config: Any) -> str:
    """A conversation run's config hash: sha256 of its hashed config as canonical JSON."""
    return sha256_text(json.dumps(config, sort_keys=True, separators=(",", ":"), default=str))


def recompute(
    record: dict[str, Any], sessions: list[dict[str, Any]], catalogue: Iterable[str] | None = None
) -> list[tuple[str, Any, Any, bool]]:
    """Every recorded metric next to its value recomputed from ``sessions``.

    Returns:
        (name, recorded, recomputed, agrees) per metric, plus the session count and the config
        hash (a config edited after the run no longer matches it).
    """
    proto = record.get("protocol") or {}
    metrics, support = session_metrics(sessions, int(proto["turns"]), int(proto["k"]), catalogue)
    fresh = rounded(metrics)
    stored = record.get("metrics") or {}
    rows = []
    for key in sorted(set(stored) | set(fresh)):
        a, b = stored.get(key), fresh.get(key)
        same = (
            a is None
            and b is None
            or (
                a is not None
                and b is not None
                and isinstance(a, int | float)
                and abs(float(a) - float(b)) <= TOLERANCE
            )
        )
        rows.append((key, a, b, bool(same)))
    n = (record.get("sessions") or {}).get("count")
    rows.append(("sessions", n, support["sessions"], n == support["sessions"]))
    digest = config_digest(record.get("config"))
    rows.append(("config_hash", record.get("config_hash"), digest, record.get("config_hash") == digest))
    return rows


PARTIAL_LIMIT = 256 * 1024 * 1024  # bytes of a session log (943 LLM sessions take a few MB)


class SessionLog:
    """The finished batches of a conversation run, so that a stopped run resumes where it stopped.

    ``path`` (``<paths.outputs>/conversation/partial/<run_id>.jsonl``) holds a header line (the
    config hash, the batch size and the planned rows) and then one line per finished batch of
    sessions (its first position, its sessions, its seconds), appended and flushed as each batch
    ends. Sessions run in fixed batches and every random draw depends on the run seed, the row and
    the turn only, so a resumed run's dialogues equal an uninterrupted run's. A last line cut short
    by a kill is dropped; anything else that does not match the plan is a one-line error naming
    the file (delete it to start over). The file is removed once the run folder is written.
    """

    def __init__(self, path: Path, config_hash: str, rows: list[int], targets: list[str], batch_size: int, k: int, turns: int) -> None:
        self.path = Path(path)
        self.rows, self.targets = [int(r) for r in rows], [str(t) for t in targets]
        self.batch_size, self.k, self.turns = int(batch_size), int(k), int(turns)
        self.header = {"config_hash": config_hash, "batch_size": self.batch_size, "rows": self.rows}

    def resume(self) -> tuple[list[dict[str, Any]], float, int]:
        """(the sessions already finished, in row order; their seconds; how many earlier processes
        wrote them). Starts a new log when there is none."""
        from benchmark.untrusted import Rejected, loads_strict

        if not self.path.exists() and not self.path.is_symlink():
            self._write_header()
            return [], 0.0, 0
        name = str(self.path)
        if self.path.is_symlink() or not self.path.is_file():
            raise ConfigError(f"{name}: a session log must be a regular file; delete it to start over")
        size = self.path.stat().st_size
        if size > PARTIAL_LIMIT:
            raise ConfigError(f"{name}: {size} bytes, over the session-log limit of {PARTIAL_LIMIT}")
        data = self.path.read_bytes()[:PARTIAL_LIMIT]
        lines = data.split(b"\n")
        complete = lines[:-1]  # the part after the last newline was cut short (or is empty)
        sessions: list[dict[str, Any]] = []
        seconds, parts, kept = 0.0, set(), 0
        try:
            if not complete or loads_strict(complete[0], "header") != self.header:
                raise ConfigError(f"{name}: written for another config, batch size or sample of rows; delete it to start over")
            kept = len(complete[0]) + 1
            for n, line in enumerate(complete[1:], 2):
                entry = loads_strict(line, f"line {n}")
                start = len(sessions)
                want = self.rows[start : start + self.batch_size]
                got = entry.get("sessions") if isinstance(entry, dict) else None
                if not isinstance(got, list) or entry.get("start") != start or [s.get("row") if isinstance(s, dict) else None for s in got] != want:
                    raise ConfigError(f"{name} line {n}: not the batch of rows {start}..{start + len(want) - 1} of this run; delete it to start over")
                if [s.get("target") for s in got] != self.targets[start : start + len(want)]:
                    raise ConfigError(f"{name} line {n}: a session's target is not its row's; delete it to start over")
                check_sessions(got, self.turns, self.k)
                took = entry.get("seconds")
                if isinstance(took, bool) or not isinstance(took, int | float) or not 0 <= took < 1e7:
                    raise ConfigError(f"{name} line {n}: seconds must be a duration")
                seconds += float(took)
                parts.add(str(entry.get("process", "")))
                sessions += got
                kept += len(line) + 1
        except Rejected as e:
            raise ConfigError(f"{name}: {e}") from None
        if kept < len(data):  # drop a batch line cut short by a kill before appending after it
            with open(self.path, "r+b") as f:
                f.truncate(kept)
        return sessions, seconds, len(parts)

    def _write_header(self) -> None:
        from benchmark.util import atomic_write

        atomic_write(self.path, json.dumps(self.header, separators=(",", ":")) + "\n")

    def append(self, start: int, sessions: list[dict[str, Any]], seconds: float, process: str) -> None:
        """Add one finished batch (flushed to disk before returning)."""
        import os

        line = json.dumps(
            {"start": int(start), "seconds": round(float(seconds), 3), "process": process, "sessions": sessions},
            separators=(",", ":"),
        )
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
