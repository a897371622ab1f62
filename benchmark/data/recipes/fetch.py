"""Raw files of a recipe: found in ``raw_dir`` or the cache, downloaded, extracted, sha256-checked."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from benchmark.data.recipes.schema import MANIFEST, RawFile, Recipe
from benchmark.errors import DataError
from benchmark.util import atomic_write, sha256_file

HASH_CACHE_MIN_BYTES = 64 << 20  # re-hash small files every time; cache big ones by size+mtime


@dataclass(frozen=True)
class Checked:
    """A raw file found and hashed: its path, observed sha256 and the expected one (None: none published)."""

    path: Path
    sha256: str
    expected: str | None


def cached_sha256(path: Path, cache_dir: Path) -> str:
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
    atomic_write(db_path, json.dumps(db, indent=1, sort_keys=True))
    return digest


def _verify(path: Path, expected: str | None, cache_dir: Path) -> Checked:
    digest = cached_sha256(path, cache_dir)
    if expected is not None and digest != expected.lower():
        raise DataError(f"{path}: sha256 mismatch (expected {expected}, got {digest})")
    return Checked(path, digest, expected)


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
            f"{url}: download failed ({reason}); fetch the raw files yourself and pass data.raw_dir=PATH"
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


def _missing_file_error(recipe: Recipe, rf: RawFile, where: Path, expected: str | None) -> DataError:
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
) -> tuple[dict[str, Path], dict[str, Checked]]:
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
    checked: dict[str, Checked] = {}
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
                    checked[arch.name] = _verify(apath, overrides.get(arch.name, arch.sha256), cache_dir)
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
