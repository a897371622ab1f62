"""Bounded, path-checked reading of untrusted run folders, records and predictions files.

Run folders come from strangers (submissions, a first-stage run a reranker reads): a record is
data, never code, and no path in it is used without being resolved inside its folder. Memory
stays bounded by :class:`Limits` whatever the input claims, and every failure is a
:class:`Rejected` naming the failed check with a one-line reason. Standard library only, so a
bad input is refused before any heavy module is imported; archives (tar streams) are read by
:mod:`benchmark.results.archive` on top of this module.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORD = "record.json"  # the names benchmark.results.record writes
PREDICTIONS = "predictions.jsonl.gz"
# A member or file name we write or accept: no separators, no leading dot, no spaces.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@=,-]{0,199}$")

KIB, MIB = 1024, 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Upper bounds applied while reading a submission (documented in the README).

    Attributes:
        members: tar members (files, directories, headers) per archive.
        member_bytes: bytes of one archive member (as stored in the tar, i.e. the gzip file
            for predictions), and of a record/predictions file in a run folder.
        archive_bytes: bytes of the whole tar stream after decompressing the archive.
        record_bytes: bytes of ``record.json``.
        predictions_bytes: bytes of the predictions JSON lines after decompression.
        line_bytes: bytes of one predictions line.
        header_bytes: bytes of one extended tar header (pax, GNU long name).
    """

    members: int = 16
    member_bytes: int = 64 * MIB
    archive_bytes: int = 160 * MIB
    record_bytes: int = 4 * MIB
    predictions_bytes: int = 256 * MIB
    line_bytes: int = 1 * MIB
    header_bytes: int = 64 * KIB


DEFAULT_LIMITS = Limits()


class Rejected(Exception):
    """A submission failed a check: ``check`` names it, ``reason`` says why (one line)."""

    def __init__(self, check: str, reason: str) -> None:
        reason = " ".join(str(reason).split())
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        super().__init__(f"{check}: {reason}")
        self.check, self.reason = check, reason


@dataclass
class Submission:
    """What was read from an archive or run folder (bytes only; nothing parsed but the record)."""

    source: str
    record: dict[str, Any]
    predictions: bytes
    members: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- JSON


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} (JSON has no NaN/Infinity)")


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are distinct: a repeated key would let two readers see two values."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key[:80]!r} appears twice in one object")
        out[key] = value
    return out


def loads_strict(text: bytes | str, what: str) -> Any:
    """``json.loads`` that refuses NaN/Infinity and repeated keys, and answers any failure with
    :class:`Rejected`."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=unique_keys)
    except UnicodeDecodeError as e:
        raise Rejected(what, f"not UTF-8 ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise Rejected(what, "JSON nested too deeply") from None
    except ValueError as e:
        raise Rejected(what, f"not valid JSON ({e})") from None


def parse_record(data: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The record as a JSON object (size-checked, strict JSON)."""
    if len(data) > limits.record_bytes:
        raise Rejected("record", f"{RECORD} is {len(data)} bytes, over the limit of {limits.record_bytes}")
    rec = loads_strict(data, "record")
    if not isinstance(rec, dict):
        raise Rejected("record", f"{RECORD} holds a JSON {type(rec).__name__}, not an object")
    return rec


def predictions_name(record: dict[str, Any]) -> str:
    """The predictions file name a record declares: a plain file name, never a path."""
    pred = record.get("predictions")
    name = pred.get("file", PREDICTIONS) if isinstance(pred, dict) else PREDICTIONS
    if not isinstance(name, str) or not SAFE_NAME.match(name) or name == RECORD:
        raise Rejected("files", f"predictions.file {str(name)[:80]!r} is not a plain file name")
    return name


# ----------------------------------------------------------------------------- run folders


def read_regular_file(path: Path, folder: Path, limit: int, what: str) -> bytes:
    """Bytes of a regular file that lies directly in ``folder`` (no links), at most ``limit``."""
    if path.is_symlink() or not path.is_file():
        raise Rejected("files", f"{what} {path.name!r} is missing, a link or not a regular file")
    if path.resolve().parent != folder.resolve():
        raise Rejected("files", f"{what} {path.name!r} lies outside the run folder")
    size = path.stat().st_size
    if size > limit:
        raise Rejected("limits", f"{what} {path.name!r} is {size} bytes (limit {limit})")
    with open(path, "rb") as f:
        return f.read(limit + 1)[:limit]


def read_run_dir(path: Path, limits: Limits = DEFAULT_LIMITS) -> Submission:
    """Read ``record.json`` and the predictions file it names from a run folder, within ``limits``."""
    path = Path(path)
    rec_path = path / RECORD
    if not rec_path.exists() and not rec_path.is_symlink():
        raise Rejected("files", f"{path}: no {RECORD}")
    record = parse_record(read_regular_file(rec_path, path, limits.record_bytes, RECORD), limits)
    pname = predictions_name(record)
    pred = read_regular_file(path / pname, path, limits.member_bytes, "predictions file")
    return Submission(str(path), record, pred, [RECORD, pname])


# ----------------------------------------------------------------------------- predictions


def iter_prediction_lines(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Iterator[bytes]:
    """Raw lines of a gzip predictions file, decompressed as a stream within ``limits``.

    Raises :class:`Rejected` ("predictions") for data that is not gzip, a line longer than
    ``limits.line_bytes``, or more than ``limits.predictions_bytes`` in total.
    """
    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total, pending, lineno = 0, b"", 0
    view = memoryview(data)
    pos = 0
    tail = b""
    while True:
        try:
            if tail:
                chunk = dec.decompress(tail, 64 * KIB)
            elif pos < len(view):
                chunk = dec.decompress(view[pos : pos + 64 * KIB], 64 * KIB)
                pos += 64 * KIB
            else:
                chunk = dec.flush()
        except zlib.error as e:
            raise Rejected("predictions", f"not a gzip file ({e})") from None
        tail = dec.unconsumed_tail
        total += len(chunk)
        if total > limits.predictions_bytes:
            raise Rejected("limits", f"predictions inflate to more than {limits.predictions_bytes} bytes")
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for ln in lines:
            lineno += 1
            if len(ln) > limits.line_bytes:
                raise Rejected("limits", f"predictions line {lineno} is longer than {limits.line_bytes} bytes")
            yield ln
        if len(pending) > limits.line_bytes:
            raise Rejected("limits", f"predictions line {lineno + 1} is longer than {limits.line_bytes} bytes")
        if dec.eof:
            if dec.unused_data:  # concatenated gzip members are legal; the writer never makes them
                raise Rejected("predictions", "data after the end of the gzip stream")
            break
        if not chunk and not tail and pos >= len(view):
            raise Rejected("predictions", "truncated gzip file")
    if pending:
        yield pending


def prediction_lines(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[Any]:
    """Parsed predictions lines (each a JSON value; shapes are checked by the protocol checks)."""
    out = []
    for i, ln in enumerate(iter_prediction_lines(data, limits), 1):
        if ln.strip():
            out.append(loads_strict(ln, f"predictions line {i}"))
    return out


def check_prediction_stream(data: bytes, limits: Limits = DEFAULT_LIMITS) -> int:
    """Decompress the predictions once without keeping them; the number of non-empty lines."""
    return sum(1 for ln in iter_prediction_lines(data, limits) if ln.strip())


def finite_number(x: Any) -> bool:
    """A JSON number (not a bool) that is finite."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
