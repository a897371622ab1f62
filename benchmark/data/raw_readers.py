"""Streaming readers for the raw formats public recommendation datasets ship in.

Every reader is a generator of :class:`pandas.DataFrame` chunks holding only the
requested columns, so a multi-gigabyte file (the Yelp review dump is ~5 GB) is
never in memory at once; only the kept columns of one chunk are.

Formats (the ``type`` key of a recipe's ``format`` mapping):

- ``jsonl``: one strict JSON object per line (Yelp, Amazon 2014 reviews).
- ``pyliteral``: one Python literal dict per line, parsed with
  :func:`ast.literal_eval` (Steam, Amazon 2014 metadata: single quotes, ``True``).
- ``delimited``: a multi-character separator without quoting (MovieLens ``::``).
- ``csv``: a single-character separator with quoting (Book-Crossing ``;``).
- ``tsv``: tab-separated with a header and no quoting (HetRec ``.dat``).

Files ending in anything may be gzip-compressed: compression is detected from
the magic bytes, not the name. All tabular values are returned as ``str``
(missing -> ``""``); JSON values keep their parsed Python type (missing -> ``None``).
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pandas as pd

from benchmark.errors import DataError

DEFAULT_CHUNK_ROWS = 100_000
FORMATS = ("jsonl", "pyliteral", "delimited", "csv", "tsv")
_GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: str | Path) -> bool:
    """True when the file starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file for binary reading, transparently decompressing gzip."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def open_text(path: str | Path, encoding: str = "utf-8", errors: str = "strict") -> IO[str]:
    """Open a (possibly gzip-compressed) file as text with universal newlines off."""
    return io.TextIOWrapper(open_binary(path), encoding=encoding, errors=errors, newline="")


def iter_line_batches(
    path: str | Path,
    batch_lines: int = DEFAULT_CHUNK_ROWS,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(first_line_number, lines)`` batches; line numbers are 1-based.

    Trailing ``\\r\\n``/``\\n`` are stripped; blank lines are kept so that line
    numbers stay exact (callers skip them).
    """
    batch: list[str] = []
    first = 1
    try:
        with open_text(path, encoding, errors) as f:
            for lineno, line in enumerate(f, start=1):
                if not batch:
                    first = lineno
                batch.append(line.rstrip("\r\n"))
                if len(batch) >= batch_lines:
                    yield first, batch
                    batch = []
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not {encoding} text ({e.reason})") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if batch:
        yield first, batch


def _id_prefilter(key: str) -> re.Pattern[str]:
    """Regex finding the string value of a top-level ``key`` in a JSON/literal line."""
    return re.compile(r"""["']""" + re.escape(key) + r"""["']\s*:\s*["']([^"']*)["']""")


def read_records(
    path: str | Path,
    fields: Sequence[str],
    literal: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    encoding: str = "utf-8",
    errors: str = "strict",
    keep: tuple[str, set[str]] | None = None,
) -> Iterator[pd.DataFrame]:
    """Stream a JSON-lines or Python-literal-lines file as DataFrame chunks.

    Args:
        path: the file (plain or gzip).
        fields: keys to keep; a record lacking a key gets ``None`` there.
        literal: parse lines with :func:`ast.literal_eval` instead of :func:`json.loads`.
        chunk_rows: lines per chunk.
        encoding: text encoding.
        errors: decoding error policy (``strict`` or ``replace``).
        keep: optional ``(key, ids)``: only records whose ``str(record[key])`` is in
            ``ids`` are parsed and returned. A cheap regex on the raw line skips the
            others without parsing them (metadata files are mostly other items).

    Yields:
        DataFrames with columns ``fields`` (object dtype), one row per kept record.
    """
    parse: Callable[[str], Any] = ast.literal_eval if literal else json.loads
    key, ids = keep if keep is not None else (None, None)
    pattern = _id_prefilter(key) if key is not None else None
    for first, lines in iter_line_batches(path, chunk_rows, encoding, errors):
        # Keep only the requested values of each record, so that the unused fields
        # (review text ...) are freed line by line.
        cols: dict[str, list[Any]] = {f: [] for f in fields}
        for offset, line in enumerate(lines):
            if not line.strip():
                continue
            if pattern is not None:
                m = pattern.search(line)
                if m is not None and m.group(1) not in ids:
                    continue
            try:
                rec = parse(line)
            except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
                kind = "a Python literal" if literal else "valid JSON"
                msg = getattr(e, "msg", None) or type(e).__name__
                raise DataError(f"{path}: line {first + offset}: not {kind} ({msg})") from None
            if not isinstance(rec, dict):
                raise DataError(
                    f"{path}: line {first + offset}: expected an object, got {type(rec).__name__}"
                )
            if key is not None and str(rec.get(key)) not in ids:
                continue
            for f in fields:
                cols[f].append(rec.get(f))
        del lines
        if fields and cols[fields[0]]:
            yield pd.DataFrame(cols, dtype=object)


def read_delimited(
    path: str | Path,
    sep: str,
    fields: Sequence[str],
    names: Sequence[str] | None = None,
    header: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> Iterator[pd.DataFrame]:
    """Stream a file whose columns are split by a (multi-character) separator, no quoting.

    This is MovieLens' ``::`` format. The last column takes the rest of the line,
    so a separator inside it cannot shift the columns.

    Args:
        path: the file.
        sep: the separator, e.g. ``"::"``.
        fields: column names to return.
        names: all column names in file order; required when ``header`` is False.
        header: the first line holds the column names.
        chunk_rows: lines per chunk.
        encoding: text encoding (MovieLens 1M is latin-1).
        errors: decoding error policy.

    Yields:
        DataFrames with columns ``fields`` (str values).
    """
    cols = list(names) if names else None
    for first, lines in iter_line_batches(path, chunk_rows, encoding, errors):
        if cols is None:
            if not header:
                raise DataError(f"{path}: format needs 'names' when the file has no header")
            cols = lines[0].split(sep)
            lines = lines[1:]
            first += 1
        elif header and first == 1:
            lines = lines[1:]
            first += 1
        idx = _column_positions(path, cols, fields)
        rows = []
        for offset, line in enumerate(lines):
            if not line:
                continue
            parts = line.split(sep, len(cols) - 1)
            if len(parts) != len(cols):
                raise DataError(
                    f"{path}: line {first + offset}: expected {len(cols)} fields separated by "
                    f"'{sep}', got {len(parts)}"
                )
            rows.append([parts[i] for i in idx])
        if rows:
            yield pd.DataFrame(rows, columns=list(fields), dtype=object)


def _column_positions(path: str | Path, columns: Sequence[str], fields: Sequence[str]) -> list[int]:
    missing = [f for f in fields if f not in columns]
    if missing:
        raise DataError(f"{path}: missing field '{missing[0]}' (file has: {', '.join(columns)})")
    return [list(columns).index(f) for f in fields]


def _bad_line_options(on_bad_lines: str, skipped: list[list[str]]) -> dict[str, Any]:
    """pandas' engine and bad-line handler: ``skip`` appends each skipped line to ``skipped``."""
    if on_bad_lines != "skip":
        return {"engine": "c", "on_bad_lines": "error"}

    def skip(bad: list[str]) -> None:
        skipped.append(bad)
        return None

    return {"engine": "python", "on_bad_lines": skip}  # only the python engine lets us count them


def read_csv_chunks(
    path: str | Path,
    fields: Sequence[str],
    sep: str = ",",
    header: bool = True,
    names: Sequence[str] | None = None,
    quoting: str = "minimal",
    quotechar: str = '"',
    escapechar: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    encoding: str = "utf-8",
    errors: str = "strict",
    on_bad_lines: str = "error",
) -> Iterator[pd.DataFrame]:
    """Stream a delimited file with an optional quoting convention through pandas.

    Args:
        path: the file (plain or gzip).
        fields: columns to return.
        sep: single-character separator (``;`` for Book-Crossing, ``\\t`` for HetRec).
        header: the first line holds the column names.
        names: column names when there is no header.
        quoting: ``minimal`` (quoted fields allowed) or ``none`` (quotes are data).
        quotechar: the quote character.
        escapechar: escape character inside quoted fields (Book-Crossing uses ``\\``).
        chunk_rows: rows per chunk.
        encoding: text encoding.
        errors: decoding error policy (``strict`` or ``replace``).
        on_bad_lines: ``error`` or ``skip``; skipped lines are counted and reported
            in one warning at the end.

    Yields:
        DataFrames with columns ``fields`` (str values, missing -> ``""``).
    """
    if quoting not in ("minimal", "none"):
        raise DataError(f"{path}: unknown quoting '{quoting}' (minimal or none)")
    if on_bad_lines not in ("error", "skip"):
        raise DataError(f"{path}: unknown on_bad_lines '{on_bad_lines}' (error or skip)")
    if not header and not names:
        raise DataError(f"{path}: format needs 'names' when the file has no header")
    skipped: list[list[str]] = []
    kwargs: dict[str, Any] = dict(
        sep=sep,
        header=0 if header else None,
        names=list(names) if names else None,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL,
        quotechar=quotechar,
        escapechar=escapechar,
        chunksize=chunk_rows,
        encoding=encoding,
        encoding_errors=errors,
        **_bad_line_options(on_bad_lines, skipped),
    )
    try:
        with open_binary(path) as fh:
            reader = pd.read_csv(fh, **kwargs)
            for chunk in reader:
                _column_positions(path, [str(c) for c in chunk.columns], fields)
                yield chunk[list(fields)].reset_index(drop=True)
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: malformed row ({str(e).strip().splitlines()[-1]})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not {encoding} text ({e.reason})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file") from None
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} malformed line(s)", UserWarning, stacklevel=2)


def read_chunks(
    path: str | Path,
    fmt: Mapping[str, Any],
    fields: Sequence[str],
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    keep: tuple[str, set[str]] | None = None,
) -> Iterator[pd.DataFrame]:
    """Stream ``fields`` of a raw file described by a recipe ``format`` mapping.

    Args:
        path: the raw file.
        fmt: ``{"type": one of FORMATS, ...options}``; options are those of the
            specific reader (``sep``, ``names``, ``header``, ``encoding``,
            ``encoding_errors``, ``quotechar``, ``escapechar``, ``on_bad_lines``).
        fields: columns/keys to return.
        chunk_rows: rows per chunk.
        keep: for ``jsonl``/``pyliteral``: ``(key, ids)`` record filter (see
            :func:`read_records`); for tabular formats rows are filtered on the
            ``key`` column after reading.

    Yields:
        DataFrames with exactly the columns ``fields``.
    """
    kind = fmt.get("type")
    encoding = fmt.get("encoding", "utf-8")
    errors = fmt.get("encoding_errors", "strict")
    if kind in ("jsonl", "pyliteral"):
        yield from read_records(
            path,
            fields,
            literal=kind == "pyliteral",
            chunk_rows=chunk_rows,
            encoding=encoding,
            errors=errors,
            keep=keep,
        )
        return
    if kind == "delimited":
        chunks = read_delimited(
            path,
            fmt.get("sep", "::"),
            _with_key(fields, keep),
            names=fmt.get("names"),
            header=bool(fmt.get("header", False)),
            chunk_rows=chunk_rows,
            encoding=encoding,
            errors=errors,
        )
    elif kind in ("csv", "tsv"):
        chunks = read_csv_chunks(
            path,
            _with_key(fields, keep),
            sep=fmt.get("sep", "\t" if kind == "tsv" else ","),
            header=bool(fmt.get("header", True)),
            names=fmt.get("names"),
            quoting=fmt.get("quoting", "none" if kind == "tsv" else "minimal"),
            quotechar=fmt.get("quotechar", '"'),
            escapechar=fmt.get("escapechar"),
            chunk_rows=chunk_rows,
            encoding=encoding,
            errors=errors,
            on_bad_lines=fmt.get("on_bad_lines", "error"),
        )
    else:
        raise DataError(f"{path}: unknown raw format '{kind}' (one of {FORMATS})")
    for chunk in chunks:
        if keep is not None:
            chunk = chunk[chunk[keep[0]].isin(keep[1])]
        if len(chunk):
            yield chunk[list(fields)].reset_index(drop=True)


def _with_key(fields: Sequence[str], keep: tuple[str, set[str]] | None) -> list[str]:
    cols = list(fields)
    if keep is not None and keep[0] not in cols:
        cols.append(keep[0])
    return cols
