"""Reader for RecBole atomic files (``NAME.inter``, ``NAME.item``, ``NAME.user``).

Each file is UTF-8 text, tab-separated, with a typed header, e.g. ``item_id:token``.
Types: ``token``, ``token_seq`` (space-separated), ``float``, ``float_seq``. No
quoting: a value is everything between two tabs.

Atomic files may come from anywhere, so the reader checks them before trusting
them and answers every problem with one line naming the file, the line and the
field (:class:`~benchmark.errors.DataError`):

- a UTF-8 byte order mark before the header is stripped;
- the header: every column ``name:type`` with a known type, no name twice, the
  configured user/item (``token``) and rating/timestamp (``float``) fields present;
- every line: valid UTF-8, at most :data:`MAX_LINE_BYTES` bytes, no NUL byte, no
  carriage return except in a CRLF line end, not empty, exactly as many
  tab-separated fields as the header;
- ``float`` values are finite numbers (or empty); ids are not empty or blank;
- a (user, item) pair that occurs on more than one line is an error, or one of its
  rows is kept by the rule ``duplicates`` (see ``benchmark.config.DUPLICATE_RULES``); the number
  of rows removed is part of :meth:`Interactions.stats`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.config import DUPLICATE_RULES
from benchmark.data.interactions import Interactions
from benchmark.errors import DataError
from benchmark.util import sha256_file

TYPES = ("token", "token_seq", "float", "float_seq")

#: Longest line accepted in an atomic file, in bytes (1 MiB; ml-100k's longest is 92).
MAX_LINE_BYTES = 1 << 20

# Rules for repeated (user, item) rows (DUPLICATE_RULES, the values of data.duplicates).
# ``error``: refuse the file (the default); ``first`` / ``last``: keep the row with the
# earliest / latest timestamp (ties: the earlier / later line); ``max_rating``: keep the
# row with the highest rating (ties, and rows without a rating: the earliest timestamp,
# then the earlier line). The kept row stays where it is in file order.

_BLOCK = 1 << 24  # bytes read at a time while checking the lines of a file


def read_header(path: Path) -> list[tuple[str, str]]:
    """Parse the typed header of an atomic file into (field, type) pairs (a UTF-8 BOM is stripped)."""
    try:
        with open(path, "rb") as f:
            raw = f.readline(MAX_LINE_BYTES + 3).removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not an atomic file") from None
    if len(raw) > MAX_LINE_BYTES:
        raise DataError(f"{path}: line 1: longer than {MAX_LINE_BYTES} bytes")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: line 1: not UTF-8 text ({e.reason})") from None
    if not line:
        raise DataError(f"{path}: empty file (expected a typed header like 'user_id:token')")
    fields = []
    for col in line.split("\t"):
        name, sep, typ = col.rpartition(":")
        if not sep or not name or typ not in TYPES:
            raise DataError(
                f"{path}: line 1: malformed header field {col!r} (expected name:type, type in {TYPES})"
            )
        fields.append((name, typ))
    return fields


def _check_lines(path: Path, chunk: bytes, first_line: int, n_fields: int) -> None:
    """Check complete lines (``chunk`` ends with ``\\n``) numbered from ``first_line``."""

    def line_at(pos: int) -> int:
        return first_line + chunk.count(b"\n", 0, pos)

    if (pos := chunk.find(b"\0")) >= 0:
        raise DataError(f"{path}: line {line_at(pos)}: NUL byte")
    a = np.frombuffer(chunk, dtype=np.uint8)
    if b"\r" in chunk:
        cr = np.flatnonzero(a == 13)
        lone = cr[a[cr + 1] != 10]  # chunk ends with \n, so cr + 1 is in range
        if len(lone):
            raise DataError(f"{path}: line {line_at(int(lone[0]))}: carriage return inside a line")
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: line {line_at(e.start)}: not UTF-8 text ({e.reason})") from None
    seps = np.flatnonzero((a == 9) | (a == 10))  # tabs and line ends, in order
    kinds = a[seps]
    ends = seps[kinds == 10]
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts - (a[np.maximum(ends - 1, 0)] == 13)  # without the line end
    long = np.flatnonzero(lengths > MAX_LINE_BYTES)
    if len(long):
        raise DataError(f"{path}: line {first_line + long[0]}: longer than {MAX_LINE_BYTES} bytes")
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        raise DataError(
            f"{path}: line {first_line + empty[0]}: empty line "
            f"(every line after the header needs {n_fields} tab-separated field(s))"
        )
    # Every line has n_fields - 1 tabs <=> the separators come in groups of n_fields ending in a line end.
    if len(kinds) == n_fields * len(ends) and (kinds[n_fields - 1 :: n_fields] == 10).all():
        return
    tabs = np.bincount(np.searchsorted(ends, seps[kinds == 9]), minlength=len(ends))
    j = int(np.flatnonzero(tabs != n_fields - 1)[0])
    raise DataError(
        f"{path}: line {first_line + j}: {tabs[j] + 1} tab-separated field(s), the header has {n_fields}"
    )


def check_lines(path: Path, n_fields: int) -> None:
    """Check every line of an atomic file before it is parsed, reading it in bounded blocks.

    Args:
        path: the file.
        n_fields: number of fields in its header.

    Raises:
        DataError: one line naming the file and line: not UTF-8, too long
            (> :data:`MAX_LINE_BYTES`), a NUL byte, a lone carriage return, an
            empty line, or a number of tab-separated fields that is not ``n_fields``.
    """
    line, carry = 1, b""
    with open(path, "rb") as f:
        while True:
            block = f.read(_BLOCK)
            data = carry + block
            if not block:
                if data:  # last line without a line end
                    _check_lines(path, data + b"\n", line, n_fields)
                return
            end = data.rfind(b"\n") + 1
            if end:
                _check_lines(path, data[:end], line, n_fields)
                line += data.count(b"\n", 0, end)
            carry = data[end:]
            if len(carry) > MAX_LINE_BYTES + 1:
                raise DataError(f"{path}: line {line}: longer than {MAX_LINE_BYTES} bytes")


def _line(row: int) -> int:
    """Line number of data row ``row`` (0-based): the header is line 1 and no line is skipped."""
    return int(row) + 2


def read_table(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read one atomic file; all values as str, floats converted and checked.

    Args:
        path: the file.

    Returns:
        The table (row ``r`` is line ``r + 2`` of the file) and field -> type.

    Raises:
        DataError: a problem with the header or a line (see :func:`check_lines`), or
            a ``float`` value that is not a finite number.
    """
    fields = read_header(path)
    names = [n for n, _ in fields]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: line 1: field name {dup!r} appears twice in the header")
    check_lines(path, len(names))
    try:
        df = pd.read_csv(
            path,
            sep="\t",
            header=0,
            names=names,
            index_col=False,
            dtype=str,
            quoting=csv.QUOTE_NONE,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,
            encoding="utf-8",
            engine="c",
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as e:  # check_lines leaves nothing for these
        raise DataError(f"{path}: malformed file ({str(e).strip().splitlines()[-1]})") from None
    types = dict(fields)
    for name, typ in fields:
        if typ == "float":
            vals = pd.to_numeric(df[name].replace("", np.nan), errors="coerce")
            bad = vals.isna() & (df[name] != "")
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"{path}: line {_line(row)}: field '{name}' value {df[name].iloc[row]!r} is not a number"
                )
            inf = np.isinf(vals.to_numpy(dtype=float))
            if inf.any():
                row = int(np.flatnonzero(inf)[0])
                raise DataError(
                    f"{path}: line {_line(row)}: field '{name}' value {df[name].iloc[row]!r} is not a finite number"
                )
            df[name] = vals.astype(float)
    return df, types


def _require(path: Path, types: dict[str, str], name: str) -> None:
    if name not in types:
        raise DataError(f"{path}: missing field '{name}' (header has: {', '.join(types)})")


def _require_ids(path: Path, table: pd.DataFrame, types: dict[str, str], name: str) -> None:
    """An id field: present, of type token, never empty or blank."""
    _require(path, types, name)
    if types[name] != "token":
        raise DataError(f"{path}: field '{name}' must be of type token, not {types[name]}")
    blank = (table[name].str.strip() == "").to_numpy()
    if blank.any():
        raise DataError(f"{path}: line {_line(np.flatnonzero(blank)[0])}: field '{name}' is empty")


def _side_table(path: Path, id_field: str, index_name: str, files: dict[str, str]) -> pd.DataFrame:
    """An optional side table indexed by its id field (empty when the file is absent); ids must be unique."""
    if not path.exists():
        return pd.DataFrame(index=pd.Index([], name=index_name))
    table, types = read_table(path)
    _require_ids(path, table, types, id_field)
    dup = table[id_field].duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise DataError(f"{path}: line {_line(row)}: duplicate {index_name} id {table[id_field].iloc[row]!r}")
    table = table.set_index(id_field)
    table.index.name = index_name
    files[path.name] = sha256_file(path)
    return table


def deduplicate(
    inter: pd.DataFrame, rule: str, path: Path, fields: tuple[str, str] = ("user_id", "item_id")
) -> tuple[pd.DataFrame, int]:
    """Apply a :data:`DUPLICATE_RULES` rule to repeated (user, item) rows.

    Args:
        inter: canonical interactions (``user``, ``item``, ``rating``, ``timestamp``);
            row ``r`` is line ``r + 2`` of ``path``.
        rule: one of :data:`DUPLICATE_RULES`.
        path: the file the rows come from (for the error message).
        fields: names of the user and item fields in that file (for the error message).

    Returns:
        The rows kept, in their original order (index reset), and the number removed.

    Raises:
        DataError: ``rule="error"`` and a pair occurs twice (names both lines).
        ValueError: an unknown rule.
    """
    if rule not in DUPLICATE_RULES:
        raise ValueError(f"duplicates: unknown rule {rule!r} (one of {DUPLICATE_RULES})")
    repeated = inter.duplicated(["user", "item"], keep=False).to_numpy()
    if not repeated.any():
        return inter, 0
    if rule == "error":
        again = int(np.flatnonzero(inter.duplicated(["user", "item"], keep="first").to_numpy())[0])
        u, i = inter["user"].iat[again], inter["item"].iat[again]
        first = int(np.flatnonzero(((inter["user"] == u) & (inter["item"] == i)).to_numpy())[0])
        raise DataError(
            f"{path}: line {_line(again)}: ({fields[0]}, {fields[1]}) = ({u!r}, {i!r}) also on line {_line(first)}; "
            f"set data.duplicates to one of {DUPLICATE_RULES[1:]} to keep one row per pair"
        )
    rows = inter.assign(_row=np.arange(len(inter)))
    if rule == "max_rating":
        order = rows.sort_values(
            ["rating", "timestamp", "_row"], ascending=[False, True, True], na_position="last", kind="stable"
        )
        kept = order.drop_duplicates(["user", "item"], keep="first")
    else:
        order = rows.sort_values(["timestamp", "_row"], kind="stable")
        kept = order.drop_duplicates(["user", "item"], keep="first" if rule == "first" else "last")
    keep = np.sort(kept["_row"].to_numpy())
    return inter.iloc[keep].reset_index(drop=True), len(inter) - len(keep)


def _read_inter(
    inter_path: Path, user_field: str, item_field: str, rating_field: str | None, timestamp_field: str | None
) -> pd.DataFrame:
    """The ``.inter`` file as the canonical table (``user``, ``item``, ``rating``, ``timestamp``), checked."""
    raw, types = read_table(inter_path)
    for f in (user_field, item_field):
        _require_ids(inter_path, raw, types, f)
    for f in (rating_field, timestamp_field):
        if f is not None:
            _require(inter_path, types, f)
            if types[f] != "float":
                raise DataError(f"{inter_path}: field '{f}' must be of type float, not {types[f]}")
    if len(raw) == 0:
        raise DataError(f"{inter_path}: no interactions")
    if timestamp_field and raw[timestamp_field].isna().any():
        row = int(np.flatnonzero(raw[timestamp_field].isna().to_numpy())[0])
        raise DataError(f"{inter_path}: line {_line(row)}: field '{timestamp_field}' is empty")
    n = len(raw)
    return pd.DataFrame(
        {
            "user": raw[user_field].to_numpy(),
            "item": raw[item_field].to_numpy(),
            "rating": raw[rating_field].to_numpy(float) if rating_field else np.full(n, np.nan),
            "timestamp": raw[timestamp_field].to_numpy(float)
            if timestamp_field
            else np.arange(n, dtype=float),
        }
    )


def read_atomic(
    directory: str | Path,
    name: str,
    user_field: str = "user_id",
    item_field: str = "item_id",
    rating_field: str | None = "rating",
    timestamp_field: str | None = "timestamp",
    item_fields: dict[str, str] | None = None,
    duplicates: str = "error",
) -> Interactions:
    """Read ``directory/name.{inter,item,user}`` into :class:`Interactions`.

    ``.inter`` is required; ``.item`` and ``.user`` are optional. A rating or
    timestamp field named in the arguments must exist when not None; pass None
    when the dataset has none.

    Args:
        directory: folder holding the files.
        name: the dataset name (file stem).
        user_field: user id field of ``.inter`` (and id field of ``.user``).
        item_field: item id field of ``.inter`` (and id field of ``.item``).
        rating_field: rating field (type float) or None.
        timestamp_field: timestamp field (type float) or None (the row number is used).
        item_fields: role -> column of ``.item`` (each must exist).
        duplicates: what to do with a (user, item) pair on several lines, one of
            :data:`DUPLICATE_RULES`; the rows removed are counted in
            ``Interactions.duplicates_removed``.

    Raises:
        DataError: one line naming the file, line and field (see the module docstring).
    """
    if duplicates not in DUPLICATE_RULES:
        raise DataError(f"data.duplicates: unknown rule {duplicates!r} (one of {DUPLICATE_RULES})")
    if duplicates == "max_rating" and rating_field is None:
        raise DataError("data.duplicates=max_rating needs a rating field (data.rating_field is null)")
    directory = Path(directory)
    inter_path = directory / f"{name}.inter"
    if not directory.is_dir():
        raise DataError(f"{directory}: dataset directory not found")
    inter = _read_inter(inter_path, user_field, item_field, rating_field, timestamp_field)
    inter, removed = deduplicate(inter, duplicates, inter_path, (user_field, item_field))
    files = {inter_path.name: sha256_file(inter_path)}

    item_path = directory / f"{name}.item"
    items = _side_table(item_path, item_field, "item", files)
    users = _side_table(directory / f"{name}.user", user_field, "user", files)

    roles = dict(item_fields or {})
    for role, col in roles.items():
        if col not in items.columns:
            raise DataError(f"{item_path}: missing item field '{col}' (configured as {role})")
    return Interactions(
        name=name,
        inter=inter,
        items=items,
        users=users,
        files=files,
        item_fields=roles,
        duplicates_removed=removed,
    )
