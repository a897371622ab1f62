"""Reader for RecBole atomic files (``NAME.inter``, ``NAME.item``, ``NAME.user``).

Each file is tab-separated with a typed header, e.g. ``item_id:token``. Types:
``token``, ``token_seq`` (space-separated), ``float``, ``float_seq``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.data.interactions import Interactions, sha256_file
from benchmark.errors import DataError

TYPES = ("token", "token_seq", "float", "float_seq")


def read_header(path: Path) -> list[tuple[str, str]]:
    """Parse the typed header of an atomic file into (field, type) pairs."""
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline().rstrip("\r\n")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not line:
        raise DataError(f"{path}: empty file (expected a typed header like 'user_id:token')")
    fields = []
    for col in line.split("\t"):
        name, sep, typ = col.rpartition(":")
        if not sep or not name or typ not in TYPES:
            raise DataError(
                f"{path}: line 1: malformed header field '{col}' (expected name:type, type in {TYPES})"
            )
        fields.append((name, typ))
    return fields


def read_table(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read one atomic file; all values as str, floats converted and checked."""
    fields = read_header(path)
    names = [n for n, _ in fields]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: line 1: duplicate field names in header")
    try:
        df = pd.read_csv(
            path,
            sep="\t",
            header=0,
            names=names,
            dtype=str,
            quoting=csv.QUOTE_NONE,
            keep_default_na=False,
            na_filter=False,
            engine="c",
        )
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: malformed row ({str(e).strip().splitlines()[-1]})") from None
    types = dict(fields)
    for name, typ in fields:
        if typ == "float":
            vals = pd.to_numeric(df[name].replace("", np.nan), errors="coerce")
            bad = vals.isna() & (df[name] != "")
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"{path}: line {row + 2}: field '{name}' value '{df[name].iloc[row]}' is not a number"
                )
            df[name] = vals.astype(float)
    return df, types


def _require(path: Path, types: dict[str, str], name: str) -> None:
    if name not in types:
        raise DataError(f"{path}: missing field '{name}' (header has: {', '.join(types)})")


def _side_table(path: Path, id_field: str, index_name: str, files: dict[str, str]) -> pd.DataFrame:
    """An optional side table indexed by its id field (empty when the file is absent); ids must be unique."""
    if not path.exists():
        return pd.DataFrame(index=pd.Index([], name=index_name))
    table, types = read_table(path)
    _require(path, types, id_field)
    table = table.set_index(id_field)
    table.index.name = index_name
    if table.index.has_duplicates:
        raise DataError(f"{path}: duplicate {index_name} id '{table.index[table.index.duplicated()][0]}'")
    files[path.name] = sha256_file(path)
    return table


def read_atomic(
    directory: str | Path,
    name: str,
    user_field: str = "user_id",
    item_field: str = "item_id",
    rating_field: str | None = "rating",
    timestamp_field: str | None = "timestamp",
    item_fields: dict[str, str] | None = None,
) -> Interactions:
    """Read ``directory/name.{inter,item,user}`` into :class:`Interactions`.

    ``.inter`` is required; ``.item`` and ``.user`` are optional. A rating or
    timestamp field named in the arguments must exist when not None; pass None
    when the dataset has none.
    """
    directory = Path(directory)
    inter_path = directory / f"{name}.inter"
    if not directory.is_dir():
        raise DataError(f"{directory}: dataset directory not found")
    raw, types = read_table(inter_path)
    for f in (user_field, item_field, rating_field, timestamp_field):
        if f is not None:
            _require(inter_path, types, f)
            if f in (rating_field, timestamp_field) and types[f] != "float":
                raise DataError(f"{inter_path}: field '{f}' must be of type float, not {types[f]}")
    if len(raw) == 0:
        raise DataError(f"{inter_path}: no interactions")
    if timestamp_field and raw[timestamp_field].isna().any():
        row = int(np.flatnonzero(raw[timestamp_field].isna().to_numpy())[0])
        raise DataError(f"{inter_path}: line {row + 2}: field '{timestamp_field}' is empty")
    n = len(raw)
    inter = pd.DataFrame(
        {
            "user": raw[user_field].to_numpy(),
            "item": raw[item_field].to_numpy(),
            "rating": raw[rating_field].to_numpy(float) if rating_field else np.full(n, np.nan),
            "timestamp": raw[timestamp_field].to_numpy(float)
            if timestamp_field
            else np.arange(n, dtype=float),
        }
    )
    files = {inter_path.name: sha256_file(inter_path)}

    item_path = directory / f"{name}.item"
    items = _side_table(item_path, item_field, "item", files)
    users = _side_table(directory / f"{name}.user", user_field, "user", files)

    roles = dict(item_fields or {})
    for role, col in roles.items():
        if col not in items.columns:
            raise DataError(f"{item_path}: missing item field '{col}' (configured as {role})")
    return Interactions(name=name, inter=inter, items=items, users=users, files=files, item_fields=roles)
