"""Dataset recipes: obtain, verify and convert public raw datasets into RecBole atomic files.

A recipe (``datasets/<name>/recipe.yaml``) is data, not code: where each raw file
comes from (URL, optional archive), its published sha256 (or ``null`` when none
is published), its raw format, and how raw fields map to the canonical atomic
fields. :func:`prepare` is the one generic preparer for every recipe:

raw files (user's ``raw_dir`` or downloaded into ``cache_dir/raw/<name>/``)
-> sha256 check -> streamed, chunked reading of only the mapped columns, ids
mapped to ints on the fly -> named preprocessing (e.g. ``p5``: iterated 5-core,
time order) -> ``<name>.inter`` / ``<name>.item`` / ``<name>.user`` written into a
temporary directory that is renamed into place once complete.

The result directory is keyed by the recipe's content hash, the raw files'
checksums and the preprocessing name, so preparing twice reuses it. Nothing
here knows about splits.

Recipe keys (see ``datasets/*/recipe.yaml`` for complete examples):

- ``name`` (= the folder name), ``homepage``, optional ``manual_download`` (where to
  get files that have no URL);
- ``archives``: ``{file name: {url, sha256}}`` for downloads that hold raw files;
- ``files``: ``{key: {name, url | archive, sha256, format: {type, ...}}}``; the format
  options are those of :func:`benchmark.data.raw_readers.read_chunks`;
- ``interactions``: ``{file, user_id, item_id, rating, timestamp}`` with ``rating`` a
  field or null, ``timestamp`` ``{field, unit: s|ms|date, format}`` or null (row
  number), optional ``dedup: first`` and ``rating_from: {file, user_id, item_id, value}``;
- ``items`` / ``users``: ``{file, id, fields: {column: {from, type, transform, ...}}}``
  with ``from`` a field or a list of fallbacks, ``type`` token|token_seq|float and
  ``transform`` text|list|float|year (default by type);
- ``preprocess``: ``{name: {option: value}}`` with options from :data:`PREPROCESS_KEYS`.

Conventions of the written files (read them with
:func:`benchmark.data.atomic.read_atomic`):

- ``.inter`` header ``user_id:token  item_id:token  rating:float  timestamp:float``
  (tab-separated); raw dataset ids; ``timestamp`` in unix seconds (the raw row
  number when a dataset has no time); ``rating`` empty when the dataset has none.
- Text fields are single-line (tabs and line breaks become spaces); list-valued
  fields (categories, genres) are joined with ``", "``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

import benchmark
from benchmark.data.atomic import read_atomic
from benchmark.data.interactions import filter_interactions, sha256_file
from benchmark.data.raw_readers import DEFAULT_CHUNK_ROWS, FORMATS, read_chunks
from benchmark.errors import DataError

# Atomic-file rows: tab-separated, no header/index, floats round-trip, empty for missing.
_TSV: dict[str, Any] = dict(
    sep="\t", header=False, index=False, float_format="%.15g", na_rep="", quoting=csv.QUOTE_NONE, lineterminator="\n"
)

PREPARER_VERSION = 1
MANIFEST = "manifest.json"
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
FIELD_TYPES = ("token", "token_seq", "float")
TIME_UNITS = ("s", "ms", "date")
PREPROCESS_KEYS = (
    "min_time",  # keep rows with timestamp >= this date/time (UTC) or unix seconds
    "max_time",  # keep rows with timestamp <= this
    "min_rating",  # keep rows with rating >= this
    "require_item_metadata",  # drop rows whose item is absent from the item file
    "kcore",  # iterated k-core on users and items (filter_interactions)
    "min_user_interactions",  # then keep users with at least this many rows (one pass)
    "sort_by_time",  # stable sort by timestamp (ties keep raw order)
)
HASH_CACHE_MIN_BYTES = 64 << 20  # re-hash small files every time; cache big ones by size+mtime
_WRITE_ROWS = 500_000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_BREAKS = re.compile(r"[\t\r\n]+")
_YEAR = re.compile(r"(?<!\d)(1[0-9]{3}|20[0-9]{2})(?!\d)")
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


# --------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Archive:
    """A downloadable archive that holds raw files (e.g. ``ml-1m.zip``)."""

    name: str
    url: str | None
    sha256: str | None


@dataclass(frozen=True)
class RawFile:
    """One raw file a recipe reads.

    Attributes:
        key: the recipe's name for it (``ratings``, ``meta`` ...).
        name: its file name on disk.
        url: direct download URL, or None (inside an archive, or manual download).
        sha256: published checksum, or None when none is published.
        archive: name of the :class:`Archive` holding it, or None.
        format: the raw format mapping passed to :func:`raw_readers.read_chunks`.
    """

    key: str
    name: str
    url: str | None
    sha256: str | None
    archive: str | None
    format: dict[str, Any]


@dataclass(frozen=True)
class Recipe:
    """A parsed, validated ``datasets/<name>/recipe.yaml``."""

    name: str
    path: Path
    sha256: str
    files: dict[str, RawFile]
    archives: dict[str, Archive]
    interactions: dict[str, Any]
    items: dict[str, Any] | None
    users: dict[str, Any] | None
    preprocess: dict[str, dict[str, Any]]
    manual_download: str | None = None

    def preprocess_spec(self, preprocess: str | None) -> dict[str, Any]:
        """The option mapping of a named preprocessing; ``{}`` for None."""
        if preprocess is None:
            return {}
        if preprocess not in self.preprocess:
            known = ", ".join(sorted(self.preprocess)) or "none"
            raise DataError(
                f"{self.path}: no key 'preprocess.{preprocess}' (defined for {self.name}: {known})"
            )
        return dict(self.preprocess[preprocess])


def recipes_root() -> Path:
    """The repository's ``datasets/`` directory (recipes and dataset cards)."""
    return Path(benchmark.__file__).resolve().parents[1] / "datasets"


def available_recipes(root: str | Path | None = None) -> list[str]:
    """Names of the datasets that have a ``recipe.yaml``."""
    base = Path(root) if root is not None else recipes_root()
    return sorted(p.parent.name for p in base.glob("*/recipe.yaml"))


def load_recipe(name: str, root: str | Path | None = None) -> Recipe:
    """Read and validate ``<root>/<name>/recipe.yaml`` (root: :func:`recipes_root`).

    Raises:
        DataError: naming the file and key when the recipe or a key is missing or invalid.
    """
    base = Path(root) if root is not None else recipes_root()
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise DataError(f"data.name: '{name}' is not a dataset name")
    path = base / name / "recipe.yaml"
    if not path.is_file():
        known = ", ".join(available_recipes(base)) or "none"
        raise DataError(f"{path}: no recipe for dataset '{name}' (available: {known})")
    raw = path.read_bytes()
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping at the top level")
    if _req(doc, "name", path) != name:
        raise DataError(f"{path}: key 'name' is '{doc['name']}', expected '{name}'")
    archives = {
        k: Archive(
            k, _opt_str(v, "url", path, f"archives.{k}"), _checksum(v, path, f"archives.{k}")
        )
        for k, v in _mapping(doc, "archives", path, required=False).items()
    }
    files = {k: _parse_file(k, v, archives, path) for k, v in _mapping(doc, "files", path).items()}
    inter = _parse_interactions(_mapping(doc, "interactions", path), files, path)
    items = _parse_side(doc, "items", files, path)
    users = _parse_side(doc, "users", files, path)
    preprocess = {
        k: _parse_preprocess(k, v, path)
        for k, v in _mapping(doc, "preprocess", path, required=False).items()
    }
    return Recipe(
        name=name,
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        files=files,
        archives=archives,
        interactions=inter,
        items=items,
        users=users,
        preprocess=preprocess,
        manual_download=doc.get("manual_download"),
    )


def _req(d: Mapping[str, Any], key: str, path: Path, where: str = "") -> Any:
    if not isinstance(d, Mapping) or key not in d or d[key] is None:
        raise DataError(f"{path}: missing key '{where + '.' if where else ''}{key}'")
    return d[key]


def _mapping(
    d: Mapping[str, Any], key: str, path: Path, where: str = "", required: bool = True
) -> dict:
    full = f"{where + '.' if where else ''}{key}"
    if key not in d or d[key] is None:
        if required:
            raise DataError(f"{path}: missing key '{full}'")
        return {}
    if not isinstance(d[key], Mapping):
        raise DataError(f"{path}: key '{full}' must be a mapping")
    return dict(d[key])


def _opt_str(d: Mapping[str, Any], key: str, path: Path, where: str) -> str | None:
    v = d.get(key) if isinstance(d, Mapping) else None
    if v is not None and not isinstance(v, str):
        raise DataError(f"{path}: key '{where}.{key}' must be a string or null")
    return v


def _checksum(d: Mapping[str, Any], path: Path, where: str) -> str | None:
    if not isinstance(d, Mapping):
        raise DataError(f"{path}: key '{where}' must be a mapping")
    if "sha256" not in d:
        raise DataError(f"{path}: missing key '{where}.sha256' (write null when none is published)")
    v = d["sha256"]
    if v is not None and not (isinstance(v, str) and _SHA256.match(v.lower())):
        raise DataError(f"{path}: key '{where}.sha256' must be 64 hex digits or null")
    return v.lower() if v else None


def _parse_file(key: str, d: Any, archives: dict[str, Archive], path: Path) -> RawFile:
    where = f"files.{key}"
    sha = _checksum(d, path, where)
    fmt = _mapping(d, "format", path, where)
    if fmt.get("type") not in FORMATS:
        raise DataError(f"{path}: key '{where}.format.type' must be one of {FORMATS}")
    archive = d.get("archive")
    if archive is not None and archive not in archives:
        raise DataError(f"{path}: key '{where}.archive' names unknown archive '{archive}'")
    return RawFile(
        key, str(_req(d, "name", path, where)), _opt_str(d, "url", path, where), sha, archive, fmt
    )


def _parse_interactions(d: dict, files: dict[str, RawFile], path: Path) -> dict:
    for key in ("file", "user_id", "item_id"):
        _req(d, key, path, "interactions")
    if d["file"] not in files:
        raise DataError(f"{path}: key 'interactions.file' names unknown file '{d['file']}'")
    ts = d.get("timestamp")
    if ts is not None:
        if not isinstance(ts, Mapping):
            raise DataError(f"{path}: key 'interactions.timestamp' must be a mapping or null")
        _req(ts, "field", path, "interactions.timestamp")
        if ts.get("unit") not in TIME_UNITS:
            raise DataError(
                f"{path}: key 'interactions.timestamp.unit' must be one of {TIME_UNITS}"
            )
    if d.get("dedup") not in (None, "first"):
        raise DataError(f"{path}: key 'interactions.dedup' must be 'first' or null")
    rf = d.get("rating_from")
    if rf is not None:
        for key in ("file", "user_id", "item_id", "value"):
            _req(rf, key, path, "interactions.rating_from")
        if rf["file"] not in files:
            raise DataError(
                f"{path}: key 'interactions.rating_from.file' names unknown file '{rf['file']}'"
            )
    return d


def _parse_side(doc: dict, key: str, files: dict[str, RawFile], path: Path) -> dict | None:
    d = _mapping(doc, key, path, required=False)
    if not d:
        return None
    _req(d, "id", path, key)
    if _req(d, "file", path, key) not in files:
        raise DataError(f"{path}: key '{key}.file' names unknown file '{d['file']}'")
    for name, spec in _mapping(d, "fields", path, key).items():
        where = f"{key}.fields.{name}"
        _req(spec, "from", path, where)
        if spec.get("type") not in FIELD_TYPES:
            raise DataError(f"{path}: key '{where}.type' must be one of {FIELD_TYPES}")
        if spec.get("transform", "default") not in (*TRANSFORMS, "default"):
            raise DataError(f"{path}: key '{where}.transform' must be one of {tuple(TRANSFORMS)}")
        if name in ("user_id", "item_id"):
            raise DataError(f"{path}: key '{where}' clashes with the id field")
    return d


def _parse_preprocess(name: str, d: Any, path: Path) -> dict[str, Any]:
    if not isinstance(d, Mapping):
        raise DataError(f"{path}: key 'preprocess.{name}' must be a mapping")
    for key in d:
        if key not in PREPROCESS_KEYS:
            raise DataError(
                f"{path}: unknown key 'preprocess.{name}.{key}' (one of {PREPROCESS_KEYS})"
            )
    return dict(d)


# --------------------------------------------------------------------------- field transforms


def _missing(v: Any) -> bool:
    return (
        v is None
        or (isinstance(v, float) and math.isnan(v))
        or (isinstance(v, str) and not v.strip())
    )


def _flatten(v: Any) -> Iterable[Any]:
    if isinstance(v, (list, tuple)):
        for x in v:
            yield from _flatten(x)
    elif not _missing(v):
        yield v


def t_text(v: Any, spec: Mapping[str, Any]) -> str:
    """Single-line text; lists are joined like :func:`t_list`."""
    if isinstance(v, (list, tuple)):
        return t_list(v, spec)
    return "" if _missing(v) else _BREAKS.sub(" ", str(v)).strip()


def t_list(v: Any, spec: Mapping[str, Any]) -> str:
    """Flatten (nested) lists, or split a string on ``spec['split']`` (default ``,``);
    strip, drop duplicates keeping order, join with ``", "``."""
    if isinstance(v, str):
        parts: Iterable[Any] = v.split(spec.get("split", ","))
    else:
        parts = _flatten(v)
    seen: dict[str, None] = {}
    for p in parts:
        s = t_text(p, spec)
        if s:
            seen.setdefault(s)
    return ", ".join(seen)


def t_float(v: Any, spec: Mapping[str, Any]) -> float:
    """A number; strings like ``$4.99`` are parsed, ``Free...`` is 0.0, anything else NaN."""
    if isinstance(v, bool) or _missing(v):
        return math.nan
    if isinstance(v, (int, float)):
        return float(v)
    s = str(v).strip().replace("$", "").replace(",", "")
    if s.lower().startswith("free"):
        return 0.0
    try:
        return float(s)
    except ValueError:
        return math.nan


def t_year(v: Any, spec: Mapping[str, Any]) -> float:
    """A year as float: group 1 of ``spec['pattern']`` if given, else the last
    4-digit number in 1000-2099; NaN when none (Book-Crossing writes 0)."""
    if _missing(v):
        return math.nan
    s = str(v)
    if spec.get("pattern"):
        m = re.search(spec["pattern"], s)
        return float(m.group(1)) if m else math.nan
    found = _YEAR.findall(s)
    return float(found[-1]) if found else math.nan


TRANSFORMS = {"text": t_text, "list": t_list, "float": t_float, "year": t_year}


def _transform(spec: Mapping[str, Any]):
    name = spec.get("transform", "default")
    if name == "default":
        name = "float" if spec["type"] == "float" else "text"
    return TRANSFORMS[name]


# --------------------------------------------------------------------------- raw files


@dataclass(frozen=True)
class _Checked:
    path: Path
    sha256: str
    expected: str | None


def _sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of a file; big files are cached by (size, mtime) in ``cache_dir/raw``."""
    st = path.stat()
    if st.st_size < HASH_CACHE_MIN_BYTES:
        return sha256_file(path)
    db_path = cache_dir / "raw" / "sha256-cache.json"
    try:
        db = json.loads(db_path.read_text())
    except (OSError, ValueError):
        db = {}
    key = str(path.resolve())
    entry = db.get(key)
    if isinstance(entry, list) and entry[:2] == [st.st_size, st.st_mtime_ns]:
        return entry[2]
    digest = sha256_file(path)
    db[key] = [st.st_size, st.st_mtime_ns, digest]
    _write_atomic(db_path, json.dumps(db, indent=1, sort_keys=True))
    return digest


def _verify(path: Path, expected: str | None, cache_dir: Path) -> _Checked:
    digest = _sha256(path, cache_dir)
    if expected is not None and digest != expected.lower():
        raise DataError(f"{path}: sha256 mismatch (expected {expected}, got {digest})")
    return _Checked(path, digest, expected)


def _locate(directory: Path, filename: str, nested: bool) -> Path | None:
    candidates = [directory / filename]
    if nested:
        candidates += sorted(directory.glob(f"*/{filename}"))
    return next((c for c in candidates if c.is_file()), None)


def _download(url: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as f:
            shutil.copyfileobj(resp, f, 1 << 20)
    except (OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"{url}: download failed ({reason}); "
            "fetch the raw files yourself and pass data.raw_dir=PATH"
        ) from None
    os.replace(part, dest)
    return dest


def _extract(archive: Path, member: str, dest_dir: Path) -> Path:
    out = dest_dir / member
    if out.is_file():
        return out
    try:
        with zipfile.ZipFile(archive) as zf:
            names = sorted((n for n in zf.namelist() if Path(n).name == member), key=len)
            if not names:
                raise DataError(f"{archive}: archive has no member '{member}'")
            dest_dir.mkdir(parents=True, exist_ok=True)
            part = out.with_name(out.name + ".part")
            with zf.open(names[0]) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile:
        raise DataError(f"{archive}: not a zip archive") from None
    os.replace(part, out)
    return out


def _missing_file_error(
    recipe: Recipe, rf: RawFile, where: Path, expected: str | None
) -> DataError:
    exp = expected or "none published"
    if rf.archive:
        url = recipe.archives[rf.archive].url
        hint = f"get {rf.archive} (it holds {rf.name}) from {url or recipe.manual_download}"
    else:
        hint = f"get it from {rf.url or recipe.manual_download or 'the dataset source'}"
    return DataError(
        f"{where / rf.name}: raw file of '{recipe.name}' not found (expected sha256 {exp}); "
        f"{hint} and pass data.raw_dir=PATH"
    )


def resolve_raw_files(
    recipe: Recipe,
    raw_dir: str | Path | None,
    cache_dir: str | Path,
    download: bool = True,
    checksums: Mapping[str, str] | None = None,
) -> tuple[dict[str, Path], dict[str, _Checked]]:
    """Find (or download, or extract) and verify every raw file of a recipe.

    Args:
        recipe: the recipe.
        raw_dir: the user's directory with the raw files (directly or one folder
            down), or None to use/download into ``cache_dir/raw/<name>/``.
        cache_dir: cache root.
        download: allow downloading when ``raw_dir`` is None.
        checksums: file name -> sha256 overriding the recipe's value.

    Returns:
        (recipe file key -> path, file name -> checked record).
    """
    overrides = {k: v.lower() for k, v in (checksums or {}).items()}
    cache_dir = Path(cache_dir)
    store = cache_dir / "raw" / recipe.name
    if raw_dir is not None:
        search = Path(raw_dir).expanduser()
        if not search.is_dir():
            raise DataError(f"{search}: raw directory not found (data.raw_dir)")
    else:
        search = store
    can_fetch = raw_dir is None and download
    paths: dict[str, Path] = {}
    checked: dict[str, _Checked] = {}
    for key, rf in recipe.files.items():
        expected = overrides.get(rf.name, rf.sha256)
        path = _locate(search, rf.name, nested=raw_dir is not None)
        if path is None and rf.archive is not None:
            arch = recipe.archives[rf.archive]
            apath = _locate(search, arch.name, nested=raw_dir is not None)
            if apath is None and can_fetch and arch.url:
                apath = _download(arch.url, store / arch.name)
            if apath is not None:
                if arch.name not in checked:
                    checked[arch.name] = _verify(
                        apath, overrides.get(arch.name, arch.sha256), cache_dir
                    )
                extract_dir = store / f"extracted-{checked[arch.name].sha256[:16]}"
                path = _extract(apath, rf.name, extract_dir)
        elif path is None and can_fetch and rf.url:
            path = _download(rf.url, store / rf.name)
        if path is None:
            raise _missing_file_error(recipe, rf, search, expected)
        checked[rf.name] = _verify(path, expected, cache_dir)
        paths[key] = path
    for name, rec in checked.items():
        if rec.expected is None:
            warnings.warn(
                f"{rec.path}: no published sha256 for '{name}' in {recipe.path.name}; "
                f"observed {rec.sha256} (recorded in {MANIFEST})",
                UserWarning,
                stacklevel=3,
            )
    return paths, checked


# --------------------------------------------------------------------------- reading


def _encode(index: dict[str, int], values: Sequence[Any]) -> np.ndarray:
    """Map raw ids to dense int codes, adding unseen ids; missing ids -> -1."""
    codes = [
        -1 if _missing(v) else index.setdefault(v if isinstance(v, str) else str(v), len(index))
        for v in values
    ]
    return np.asarray(codes, dtype=np.int64)


def _lookup(index: Mapping[str, int], values: Sequence[Any]) -> np.ndarray:
    """Codes of known raw ids, -1 for unknown or missing (adds nothing)."""
    return np.asarray(
        [-1 if _missing(v) else index.get(v if isinstance(v, str) else str(v), -1) for v in values],
        dtype=np.int64,
    )


def _blank(col: pd.Series) -> np.ndarray:
    return np.asarray([_missing(v) for v in col.to_numpy(dtype=object)], dtype=bool)


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
        stamp = (
            _timestamps(chunk[ts["field"]], ts, path)
            if ts
            else np.arange(row, row + n, dtype=float)
        )
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
        bad = next(v for v in index if _BREAKS.search(v))
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
    funcs = {name: _transform(f) for name, f in fields.items()}
    for chunk in read_chunks(path, rf.format, sources, chunk_rows, keep=keep_arg):
        cols = {s: chunk[s].to_numpy(dtype=object) for s in sources}
        for r, raw_id in enumerate(cols[spec["id"]]):
            if _missing(raw_id):
                continue
            rid = raw_id if isinstance(raw_id, str) else str(raw_id)
            if rid in seen or (keep is not None and rid not in keep):
                continue
            seen.add(rid)
            out["id"].append(rid)
            for name, f in fields.items():
                value = next((cols[s][r] for s in _sources(f) if not _missing(cols[s][r])), None)
                out[name].append(funcs[name](value, f))
    table = pd.DataFrame(out)
    for name, f in fields.items():
        table[name] = table[name].astype(float if f["type"] == "float" else object)
    return table


def _sources(field: Mapping[str, Any]) -> list[str]:
    src = field["from"]
    return [src] if isinstance(src, str) else list(src)


def _item_ids_in_file(recipe: Recipe, paths: Mapping[str, Path], chunk_rows: int) -> set[str]:
    spec = recipe.items
    rf = recipe.files[spec["file"]]
    ids: set[str] = set()
    for chunk in read_chunks(paths[spec["file"]], rf.format, [spec["id"]], chunk_rows):
        ids.update(str(v) for v in chunk[spec["id"]] if not _missing(v))
    return ids


# --------------------------------------------------------------------------- preprocessing


def apply_preprocess(
    table: InteractionTable,
    spec: Mapping[str, Any],
    item_ids_with_metadata: set[str] | None = None,
) -> pd.DataFrame:
    """Apply the whole-table steps of a preprocessing (row filters ran while reading).

    Order: item metadata filter -> iterated k-core -> user minimum -> time sort.
    """
    inter = table.inter
    if spec.get("require_item_metadata"):
        has = np.fromiter(
            (raw in item_ids_with_metadata for raw in table.items),
            dtype=bool,
            count=len(table.items),
        )
        inter = inter[has[inter["item"].to_numpy()]]
    if spec.get("kcore"):
        inter = filter_interactions(inter, kcore=int(spec["kcore"]))
    if spec.get("min_user_interactions"):
        counts = inter["user"].map(inter["user"].value_counts())
        inter = inter[(counts >= int(spec["min_user_interactions"])).to_numpy()]
    if spec.get("sort_by_time"):
        inter = inter.sort_values("timestamp", kind="stable")
    return inter.reset_index(drop=True)


# --------------------------------------------------------------------------- writing


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_inter(
    path: Path, inter: pd.DataFrame, users: Mapping[str, int], items: Mapping[str, int]
) -> None:
    user_raw = np.asarray(list(users), dtype=object)
    item_raw = np.asarray(list(items), dtype=object)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(INTER_HEADER + "\n")
        for start in range(0, len(inter), _WRITE_ROWS):
            part = inter.iloc[start : start + _WRITE_ROWS]
            pd.DataFrame(
                {
                    "u": user_raw[part["user"].to_numpy()],
                    "i": item_raw[part["item"].to_numpy()],
                    "r": part["rating"].to_numpy(),
                    "t": part["timestamp"].to_numpy(),
                }
            ).to_csv(f, **_TSV)


def _write_side(path: Path, id_field: str, table: pd.DataFrame, fields: Mapping[str, Any]) -> None:
    header = "\t".join([f"{id_field}:token", *(f"{n}:{f['type']}" for n, f in fields.items())])
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(header + "\n")
        table.to_csv(f, **_TSV)


# --------------------------------------------------------------------------- prepare


def prepare(
    name: str,
    raw_dir: str | Path | None,
    cache_dir: str | Path,
    preprocess: str | None = None,
    download: bool = True,
    checksums: Mapping[str, str] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Path:
    """Prepare a recipe's dataset as RecBole atomic files; reuse a previous result.

    Args:
        name: dataset (``datasets/<name>/recipe.yaml``).
        raw_dir: directory holding the raw files (or their archive), or None to
            use ``cache_dir/raw/<name>/``, downloading what is missing.
        cache_dir: cache root; results go to ``cache_dir/prepared/<name>/``.
        preprocess: a preprocessing defined in the recipe (e.g. ``p5``), or None
            for the full raw table.
        download: allow downloads when ``raw_dir`` is None.
        checksums: file name -> sha256 overriding the recipe (for copies whose
            checksum you know, and for tests).
        chunk_rows: rows per streamed chunk.

    Returns:
        A directory with ``<name>.inter``, ``<name>.item`` (when the recipe has
        items), ``<name>.user`` (when it has user features) and ``manifest.json``.

    Raises:
        DataError: missing recipe/key, missing raw file, checksum mismatch,
            unreachable network, malformed raw data.
    """
    recipe = load_recipe(name)
    spec = recipe.preprocess_spec(preprocess)
    cache_dir = Path(cache_dir).expanduser()
    paths, checked = resolve_raw_files(recipe, raw_dir, cache_dir, download, checksums)
    key = _cache_key(recipe, checked, preprocess)
    out = cache_dir / "prepared" / name / f"{preprocess or 'raw'}-{key[:16]}"
    if (out / MANIFEST).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the prepared dataset is not
        manifest = _build(recipe, paths, preprocess, spec, tmp, chunk_rows)
        manifest.update(
            cache_key=key,
            recipe_sha256=recipe.sha256,
            files={
                n: {"sha256": c.sha256, "expected": c.expected, "verified": c.expected is not None}
                for n, c in sorted(checked.items())
            },
        )
        (tmp / MANIFEST).write_text(
            json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
        )
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / MANIFEST).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _cache_key(recipe: Recipe, checked: Mapping[str, _Checked], preprocess: str | None) -> str:
    doc = {
        "preparer": PREPARER_VERSION,
        "recipe": recipe.sha256,
        "files": {n: c.sha256 for n, c in sorted(checked.items())},
        "preprocess": preprocess,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _build(
    recipe: Recipe,
    paths: Mapping[str, Path],
    preprocess: str | None,
    spec: Mapping[str, Any],
    out: Path,
    chunk_rows: int,
) -> dict[str, Any]:
    table = read_interactions(recipe, paths, preprocess, chunk_rows)
    with_meta = None
    if spec.get("require_item_metadata"):
        if recipe.items is None:
            raise DataError(
                f"{recipe.path}: key 'preprocess.{preprocess}.require_item_metadata' needs 'items'"
            )
        with_meta = _item_ids_in_file(recipe, paths, chunk_rows)
    inter = apply_preprocess(table, spec, with_meta)
    if len(inter) == 0:
        raise DataError(f"{recipe.path}: no interactions left after preprocess '{preprocess}'")
    _write_inter(out / f"{recipe.name}.inter", inter, table.users, table.items)
    counts = dict(table.counts, interactions=len(inter))
    for which, col, index in (("items", "item", table.items), ("users", "user", table.users)):
        spec_side = getattr(recipe, which)
        if spec_side is None:
            continue
        raw = np.asarray(list(index), dtype=object)
        used = set(raw[np.unique(inter[col].to_numpy())])
        side = read_side(recipe, which, paths, used, chunk_rows)
        _write_side(out / f"{recipe.name}.{col}", f"{col}_id", side, spec_side.get("fields") or {})
        counts[f"{which}_with_features"] = len(side)
    counts["users"] = int(inter["user"].nunique())
    counts["items"] = int(inter["item"].nunique())
    return {
        "dataset": recipe.name,
        "preparer_version": PREPARER_VERSION,
        "preprocess": preprocess,
        "preprocess_spec": dict(spec),
        "counts": counts,
    }


def dataset_stats(directory: str | Path, name: str) -> dict[str, float]:
    """Users, items, interactions and density of prepared atomic files.

    Args:
        directory: a directory returned by :func:`prepare` (or any atomic dataset).
        name: the dataset name (file stem).

    Returns:
        ``{"users", "items", "interactions", "density"}`` with
        density = interactions / (users * items), counted over every row of the
        files: a (user, item) pair on several rows counts each time (a run refuses
        or deduplicates such rows by ``data.duplicates``).
    """
    data = read_atomic(directory, name, duplicates="first")  # removes rows, never a user or an item
    stats = data.stats()
    n = stats["interactions"] + data.duplicates_removed
    users, items = stats["users"], stats["items"]
    return {"users": users, "items": items, "interactions": n, "density": n / max(1, users * items)}
