"""Recipe files: ``datasets/<name>/recipe.yaml`` parsed and validated into :class:`Recipe`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import benchmark
from benchmark.data.raw_readers import FORMATS
from benchmark.data.recipes.transforms import TRANSFORMS
from benchmark.errors import DataError
from benchmark.util import sha256_bytes

MANIFEST = "manifest.json"
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
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
        k: Archive(k, _opt_str(v, "url", path, f"archives.{k}"), _checksum(v, path, f"archives.{k}"))
        for k, v in _mapping(doc, "archives", path, required=False).items()
    }
    files = {k: _parse_file(k, v, archives, path) for k, v in _mapping(doc, "files", path).items()}
    inter = _parse_interactions(_mapping(doc, "interactions", path), files, path)
    items = _parse_side(doc, "items", files, path)
    users = _parse_side(doc, "users", files, path)
    preprocess = {
        k: _parse_preprocess(k, v, path) for k, v in _mapping(doc, "preprocess", path, required=False).items()
    }
    return Recipe(
        name=name,
        path=path,
        sha256=sha256_bytes(raw),
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


def _mapping(d: Mapping[str, Any], key: str, path: Path, where: str = "", required: bool = True) -> dict:
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
    return RawFile(key, str(_req(d, "name", path, where)), _opt_str(d, "url", path, where), sha, archive, fmt)


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
            raise DataError(f"{path}: key 'interactions.timestamp.unit' must be one of {TIME_UNITS}")
    if d.get("dedup") not in (None, "first"):
        raise DataError(f"{path}: key 'interactions.dedup' must be 'first' or null")
    rf = d.get("rating_from")
    if rf is not None:
        for key in ("file", "user_id", "item_id", "value"):
            _req(rf, key, path, "interactions.rating_from")
        if rf["file"] not in files:
            raise DataError(f"{path}: key 'interactions.rating_from.file' names unknown file '{rf['file']}'")
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
            raise DataError(f"{path}: unknown key 'preprocess.{name}.{key}' (one of {PREPROCESS_KEYS})")
    return dict(d)
