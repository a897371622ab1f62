"""Streamed reading of a recipe's raw files: interactions as int codes, side tables transformed."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.data.raw_readers import DEFAULT_CHUNK_ROWS, read_chunks
from benchmark.data.recipes.schema import Recipe
from benchmark.data.recipes.transforms import LINE_BREAKS, is_missing, transform_for
from benchmark.errors import DataError

_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def _encode(index: dict[str, int], values: Sequence[Any]) -> np.ndarray:
    """Map raw ids to dense int codes, adding unseen ids; missing ids -> -1."""
    codes = [
        -1 if is_missing(v) else index.setdefault(v if isinstance(v, str) else str(v), len(index))
        for v in values
    ]
    return np.asarray(codes, dtype=np.int64)


def _lookup(index: Mapping[str, int], values: Sequence[Any]) -> np.ndarray:
    """Codes of known raw ids, -1 for unknown or missing (adds nothing)."""
    return np.asarray(
        [-1 if is_missing(v) else index.get(v if isinstance(v, str) else str(v), -1) for v in values],
        dtype=np.int64,
    )


def _blank(col: pd.Series) -> np.ndarray:
    return np.asarray([is_missing(v) for v in col.to_numpy(dtype=object)], dtype=bool)


def _floats(col: pd.Series, path: Path, field: str) -> np.ndarray:
    """Numbers of a column; missing -> NaN; a non-empty non-number or an infinity is a DataError."""
    num = pd.to_numeric(col.where(~_blank(col), None), errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(num) & ~_blank(col)
    if bad.any():
        v = col.iloc[int(np.flatnonzero(bad)[0])]
        raise DataError(f"{path}: field '{field}' value '{v}' is not a number")
    inf = np.isinf(num)
    if inf.any():
        v = col.iloc[int(np.flatnonzero(inf)[0])]
        raise DataError(f"{path}: field '{field}' value '{v}' is not a finite number")
    return num


def _timestamps(col: pd.Series, spec: Mapping[str, Any], path: Path) -> np.ndarray:
    """Unix seconds (float) of a timestamp column; missing -> NaN."""
    unit = spec["unit"]
    if unit in ("s", "ms"):
        secs = _floats(col, path, spec["field"])
        return secs / 1000.0 if unit == "ms" else secs
    blank = _blank(col)
    text = col.where(~blank, None)
    dt = pd.to_datetime(text, format=spec.get("format", "ISO8601"), utc=True, errors="coerce")
    secs = ((dt - _EPOCH) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)
    bad = np.isnan(secs) & ~blank
    if bad.any():
        v = col.iloc[int(np.flatnonzero(bad)[0])]
        fmt = spec.get("format", "ISO8601")
        raise DataError(f"{path}: field '{spec['field']}' value '{v}' is not a date ({fmt})")
    return secs


def _to_seconds(value: Any, path: Path, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise DataError(f"{path}: key '{key}' value '{value}' is not a date") from None
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return float((ts - _EPOCH) / pd.Timedelta(seconds=1))


def _row_mask(
    rating: np.ndarray, stamp: np.ndarray, spec: Mapping[str, Any], recipe: Recipe, pre: str | None
) -> np.ndarray:
    keep = np.ones(len(stamp), dtype=bool)
    if spec.get("min_time") is not None:
        keep &= stamp >= _to_seconds(spec["min_time"], recipe.path, f"preprocess.{pre}.min_time")
    if spec.get("max_time") is not None:
        keep &= stamp <= _to_seconds(spec["max_time"], recipe.path, f"preprocess.{pre}.max_time")
    if spec.get("min_rating") is not None:
        keep &= rating >= float(spec["min_rating"])
    return keep


@dataclass
class InteractionTable:
    """Interactions as int codes, before the whole-table preprocessing steps.

    Attributes:
        inter: columns ``user``/``item`` (int32 codes into ``users``/``items``),
            ``rating`` and ``timestamp`` (float64); raw file order.
        users: raw user id -> code (insertion order = code order).
        items: raw item id -> code.
        counts: rows read and dropped, by reason.
    """

    inter: pd.DataFrame
    users: dict[str, int]
    items: dict[str, int]
    counts: Counter


def read_interactions(
    recipe: Recipe,
    paths: Mapping[str, Path],
    preprocess: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> InteractionTable:
    """Stream the interaction file into int-coded columns, applying row filters early.

    Only the mapped columns of one chunk are in memory at a time; rows dropped by
    the time/rating filters of the preprocessing never get an id code.
    """
    spec_i = recipe.interactions
    spec = recipe.preprocess_spec(preprocess)
    rf = recipe.files[spec_i["file"]]
    path = paths[spec_i["file"]]
    ufield, ifield, rfield = spec_i["user_id"], spec_i["item_id"], spec_i.get("rating")
    ts = spec_i.get("timestamp")
    fields = list(dict.fromkeys(f for f in (ufield, ifield, rfield, ts and ts["field"]) if f))
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    counts: Counter = Counter()
    parts: list[tuple[np.ndarray, ...]] = []
    row = 0
    for chunk in read_chunks(path, rf.format, fields, chunk_rows):
        n = len(chunk)
        rating = _floats(chunk[rfield], path, rfield) if rfield else np.full(n, np.nan)
        stamp = _timestamps(chunk[ts["field"]], ts, path) if ts else np.arange(row, row + n, dtype=float)
        row += n
        no_id = _blank(chunk[ufield]) | _blank(chunk[ifield])
        no_time = np.isnan(stamp)
        keep = ~no_id & ~no_time & _row_mask(rating, stamp, spec, recipe, preprocess)
        counts.update(
            raw_rows=n, missing_id=int(no_id.sum()), missing_timestamp=int((no_time & ~no_id).sum())
        )
        u = _encode(users, chunk[ufield].to_numpy(dtype=object)[keep])
        i = _encode(items, chunk[ifield].to_numpy(dtype=object)[keep])
        parts.append((u.astype(np.int32), i.astype(np.int32), rating[keep], stamp[keep]))
    if not parts:
        raise DataError(f"{path}: no interactions")
    inter = pd.DataFrame(
        {
            name: np.concatenate([p[k] for p in parts])
            for k, name in enumerate(("user", "item", "rating", "timestamp"))
        }
    )
    del parts
    for what, index in (("user", users), ("item", items)):
        _check_ids(index, path, what)
    if spec_i.get("dedup") == "first":
        dup = inter.duplicated(["user", "item"], keep="first").to_numpy()
        counts.update(duplicates=int(dup.sum()))
        inter = inter[~dup].reset_index(drop=True)
    if spec_i.get("rating_from"):
        inter["rating"] = _joined_rating(recipe, paths, users, items, inter, chunk_rows)
    for what in ("missing_id", "missing_timestamp"):
        if counts[what]:
            warnings.warn(
                f"{path}: dropped {counts[what]} row(s) with a {what.replace('_', ' ')}",
                UserWarning,
                stacklevel=2,
            )
    return InteractionTable(inter, users, items, counts)


def _check_ids(index: Mapping[str, int], path: Path, what: str) -> None:
    joined = "\x00".join(index)
    if "\t" in joined or "\n" in joined or "\r" in joined:
        bad = next(v for v in index if LINE_BREAKS.search(v))
        raise DataError(f"{path}: {what} id {bad!r} contains a tab or line break")


def _joined_rating(
    recipe: Recipe,
    paths: Mapping[str, Path],
    users: Mapping[str, int],
    items: Mapping[str, int],
    inter: pd.DataFrame,
    chunk_rows: int,
) -> np.ndarray:
    """Rating looked up in another file by (user, item), e.g. HetRec listening counts."""
    spec = recipe.interactions["rating_from"]
    rf = recipe.files[spec["file"]]
    path = paths[spec["file"]]
    n_items = max(1, len(items))
    keys, vals = [], []
    fields = [spec["user_id"], spec["item_id"], spec["value"]]
    for chunk in read_chunks(path, rf.format, fields, chunk_rows):
        u = _lookup(users, chunk[spec["user_id"]].to_numpy(dtype=object))
        i = _lookup(items, chunk[spec["item_id"]].to_numpy(dtype=object))
        ok = (u >= 0) & (i >= 0)
        keys.append(u[ok] * n_items + i[ok])
        vals.append(_floats(chunk[spec["value"]], path, spec["value"])[ok])
    if not keys:
        return np.full(len(inter), np.nan)
    table = pd.Series(np.concatenate(vals), index=np.concatenate(keys))
    table = table[~table.index.duplicated(keep="first")]
    key = inter["user"].to_numpy(np.int64) * n_items + inter["item"].to_numpy(np.int64)
    return pd.Series(key).map(table).to_numpy(dtype=float)


def read_side(
    recipe: Recipe,
    which: str,
    paths: Mapping[str, Path],
    keep: set[str] | None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> pd.DataFrame:
    """Stream an item/user side file into a table of transformed fields.

    Args:
        recipe: the recipe.
        which: ``items`` or ``users``.
        paths: recipe file key -> path.
        keep: raw ids to keep (None: all).
        chunk_rows: rows per chunk.

    Returns:
        One row per id (first occurrence, raw file order); column ``id`` plus one
        column per recipe field (str, or float for ``float`` fields).
    """
    spec = getattr(recipe, which)
    rf = recipe.files[spec["file"]]
    path = paths[spec["file"]]
    fields = spec.get("fields") or {}
    sources = list(dict.fromkeys([spec["id"], *(s for f in fields.values() for s in _sources(f))]))
    keep_arg = (spec["id"], keep) if keep is not None else None
    out: dict[str, list[Any]] = {"id": [], **{name: [] for name in fields}}
    seen: set[str] = set()
    funcs = {name: transform_for(f) for name, f in fields.items()}
    for chunk in read_chunks(path, rf.format, sources, chunk_rows, keep=keep_arg):
        cols = {s: chunk[s].to_numpy(dtype=object) for s in sources}
        for r, raw_id in enumerate(cols[spec["id"]]):
            if is_missing(raw_id):
                continue
            rid = raw_id if isinstance(raw_id, str) else str(raw_id)
            if rid in seen or (keep is not None and rid not in keep):
                continue
            seen.add(rid)
            out["id"].append(rid)
            for name, f in fields.items():
                value = next((cols[s][r] for s in _sources(f) if not is_missing(cols[s][r])), None)
                out[name].append(funcs[name](value, f))
    table = pd.DataFrame(out)
    for name, f in fields.items():
        table[name] = table[name].astype(float if f["type"] == "float" else object)
    return table


def _sources(field: Mapping[str, Any]) -> list[str]:
    src = field["from"]
    return [src] if isinstance(src, str) else list(src)


def item_ids_in_file(recipe: Recipe, paths: Mapping[str, Path], chunk_rows: int) -> set[str]:
    spec = recipe.items
    rf = recipe.files[spec["file"]]
    ids: set[str] = set()
    for chunk in read_chunks(paths[spec["file"]], rf.format, [spec["id"]], chunk_rows):
        ids.update(str(v) for v in chunk[spec["id"]] if not is_missing(v))
    return ids
