"""Preprocess, write and cache: :func:`prepare` turns a recipe's raw files into atomic files once.

The result directory is keyed by the recipe's content hash, the raw files' checksums and
the preprocessing name, so preparing twice reuses it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.data.atomic import read_atomic
from benchmark.data.interactions import filter_interactions
from benchmark.data.raw_readers import DEFAULT_CHUNK_ROWS
from benchmark.data.recipes.fetch import Checked, resolve_raw_files
from benchmark.data.recipes.read import InteractionTable, item_ids_in_file, read_interactions, read_side
from benchmark.data.recipes.schema import MANIFEST, Recipe, load_recipe
from benchmark.errors import DataError
from benchmark.util import sha256_text, staged_dir

# Atomic-file rows: tab-separated, no header/index, floats round-trip, empty for missing.
_TSV: dict[str, Any] = dict(
    sep="\t",
    header=False,
    index=False,
    float_format="%.15g",
    na_rep="",
    quoting=csv.QUOTE_NONE,
    lineterminator="\n",
)

PREPARER_VERSION = 1
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
_WRITE_ROWS = 500_000


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


def _write_inter(path: Path, inter: pd.DataFrame, users: Mapping[str, int], items: Mapping[str, int]) -> None:
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
    with staged_dir(out, exists="keep") as tmp:  # another process that finished first wins
        manifest = _build(recipe, paths, preprocess, spec, tmp, chunk_rows)
        manifest.update(
            cache_key=key,
            recipe_sha256=recipe.sha256,
            files={
                n: {"sha256": c.sha256, "expected": c.expected, "verified": c.expected is not None}
                for n, c in sorted(checked.items())
            },
        )
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    if not (out / MANIFEST).is_file():
        raise DataError(f"{out}: a prepared folder without {MANIFEST} is in the way; remove it")
    return out


def _cache_key(recipe: Recipe, checked: Mapping[str, Checked], preprocess: str | None) -> str:
    doc = {
        "preparer": PREPARER_VERSION,
        "recipe": recipe.sha256,
        "files": {n: c.sha256 for n, c in sorted(checked.items())},
        "preprocess": preprocess,
    }
    return sha256_text(json.dumps(doc, sort_keys=True))


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
        with_meta = item_ids_in_file(recipe, paths, chunk_rows)
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
