"""Item images of the multimodal adapters: where each item's image comes from, and reading it.

Item content is side information, never interactions, so it covers cold items too: an item's
image is a local path (relative paths are resolved against ``image_root``) or an http(s) URL from
an image column of the item side table. URLs are downloaded once into ``<cache>/images/``. An
item without a usable image (empty value, missing or unreadable file, failed download) is marked
missing -- or, with ``strict``, stops the run with a one-line :class:`DataError` naming the item
and file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError, DataError
from benchmark.models.components.text_encoder import column_values
from benchmark.util import FILE_MODE, sha256_file, sha256_text

URL_PREFIXES = ("http://", "https://")
DOWNLOAD_TIMEOUT_S = 10.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class ImageSources:
    """Where each item's image comes from.

    Attributes:
        files: [n_items] local file per item, or None (no usable image).
        origins: [n_items] the side-table value (path or URL; "" when empty).
        status: [n_items] ``ok``, ``empty``, ``not_found``, ``download_failed`` or ``download_skipped``.
        downloaded: URLs fetched in this run (the others came from the cache).
    """

    files: list[Path | None]
    origins: list[str]
    status: list[str]
    downloaded: int = 0
    notes: list[str] = field(default_factory=list)

    def fingerprint(self, item_ids: Sequence[str]) -> str:
        """sha256 over (item id, origin, sha256 of the image bytes or ``missing``) per item."""
        h = hashlib.sha256()
        for raw, f, origin in zip(item_ids, self.files, self.origins, strict=True):
            digest = sha256_file(f) if f is not None else "missing"
            h.update(f"{raw}\t{origin}\t{digest}\n".encode())
        return h.hexdigest()


def image_column_values(items: Any, item_ids: Sequence[str], column: str) -> list[str]:
    """[n_items] image values of the item side table ("" when an item has none)."""
    if column not in getattr(items, "columns", ()):
        have = ", ".join(map(str, getattr(items, "columns", ()))) or "no item side table"
        raise ConfigError(f"adapter.image_column: the item table has no column '{column}' ({have})")
    return column_values(items, column, item_ids)


def resolve_images(
    values: Sequence[str],
    item_ids: Sequence[str],
    root: str | Path | None,
    cache_dir: Path,
    strict: bool,
    download: bool = True,
) -> ImageSources:
    """Local files of the items' images; URLs downloaded once into ``cache_dir/images``.

    Args:
        values: [n_items] side-table values (local path, URL or "").
        item_ids: [n_items] raw item ids (for error messages).
        root: folder relative paths are resolved against (None: the working directory).
        cache_dir: cache root; downloads go to ``images/<sha256(url)[:32]><suffix>``.
        strict: a missing file or a failed download raises :class:`DataError` (else: missing).
        download: fetch URLs that are not in the cache yet.

    After the first network error no further download is tried (they are marked
    ``download_skipped``), so an offline machine does not wait once per item.
    """
    fetcher = _UrlFetcher(cache_dir / "images", strict, download)
    files: list[Path | None] = []
    status: list[str] = []
    for raw, value in zip(item_ids, values, strict=True):
        if not value:
            file, state = None, "empty"
        elif value.startswith(URL_PREFIXES):
            file, state = fetcher.fetch(raw, value)
        else:
            file, state = _local_file(raw, value, root, strict)
        files.append(file)
        status.append(state)
    return ImageSources(files, list(values), status, fetcher.downloaded)


def _local_file(raw: str, value: str, root: str | Path | None, strict: bool) -> tuple[Path | None, str]:
    """(the image file of a side-table path, ``ok``) or (None, ``not_found``)."""
    path = Path(value)
    if not path.is_absolute() and root is not None:
        path = Path(root) / path
    if path.is_file():
        return path, "ok"
    if strict:
        raise DataError(f"adapter: image file of item {raw} not found: {path}")
    return None, "not_found"


class _UrlFetcher:
    """Image URLs -> cached files, counting downloads; stops trying after the first network error."""

    def __init__(self, folder: Path, strict: bool, download: bool) -> None:
        self.folder, self.strict, self.download = folder, strict, download
        self.downloaded = 0
        self.network_down: str | None = None

    def fetch(self, raw: str, url: str) -> tuple[Path | None, str]:
        """(cached file, ``ok``), or (None, ``download_failed``/``download_skipped``)."""
        suffix = Path(url.split("?", 1)[0]).suffix[:8]
        target = self.folder / f"{sha256_text(url)[:32]}{suffix}"
        if target.is_file():
            return target, "ok"
        attempted = self.download and self.network_down is None
        if attempted:
            try:
                _download(url, target)
                self.downloaded += 1
                return target, "ok"
            except urllib.error.HTTPError as e:  # the server answered: only this file is bad
                reason = f"HTTP {e.code}"
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = f"network unavailable: {_first_line(getattr(e, 'reason', e))}"
                self.network_down = reason
        else:
            reason = self.network_down or "downloads disabled (adapter.download_images=false)"
        if self.strict:
            raise DataError(
                f"adapter: cannot fetch the image of item {raw} from {url} ({reason}); "
                "adapter.strict_images=false marks it missing"
            )
        return None, "download_failed" if attempted else "download_skipped"


def _download(url: str, target: Path) -> None:
    """Fetch ``url`` into ``target`` through a temporary file (streamed: memory stays flat).

    ``target`` is a cache entry keyed by the URL: when another process stored it first, its file
    is kept and this download dropped.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
            shutil.copyfileobj(r, f)
        os.chmod(tmp, FILE_MODE)
        if not target.is_file():
            os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_image(path: Path) -> Any:
    """An RGB PIL image, or None when the file cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError):
        return None
