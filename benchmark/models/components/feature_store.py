"""The on-disk feature store of the multimodal adapters: each modality's item features encoded once.

The features of one modality are stored under the key

    sha256(store version, modality, encoder identity (kind, model, tag, sha256 of the weights,
           preprocessing, device type), content fingerprint (item ids and their texts, or
           their image sources and the sha256 of each image's bytes))

as ``features.npy`` [n_items, D] float32 + ``missing.npy`` [n_items] bool + ``meta.json`` in
``<cache>/features/<modality>-<key[:20]>/`` (written to a temporary folder and renamed, so
concurrent runs never read half a table). Later runs memory-map the arrays; nothing is
re-encoded at train time. Changing the weights or the data changes the key.

Encoders: :mod:`benchmark.models.components.encoders`; images: :mod:`benchmark.models.components.images`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import ConfigError, DataError
from benchmark.models.components.images import ImageSources, read_image
from benchmark.util import sha256_text, staged_dir

STORE_VERSION = 1
MODALITIES = ("text", "image")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def text_fingerprint(item_ids: Sequence[str], texts: Sequence[str]) -> str:
    """sha256 over (item id, text) per item, in index order."""
    h = hashlib.sha256()
    for raw, t in zip(item_ids, texts, strict=True):
        h.update(f"{raw}\t{t}\n".encode())
    return h.hexdigest()


@dataclass
class FeatureTable:
    """Frozen features of one modality.

    Attributes:
        modality: ``text`` or ``image``.
        features: [n_items, D] float32 (memory-mapped from the store).
        missing: [n_items] bool, True = no usable input (its row is zeros; the adapter replaces it).
        facts: key, cache (``hit`` or ``created``), items, dim, missing counts, encoder identity.
    """

    modality: str
    features: np.ndarray
    missing: np.ndarray
    facts: dict[str, Any]


def feature_key(
    modality: str, identity: dict[str, Any], content: str, extra: dict[str, Any] | None = None
) -> str:
    """The cache key of one modality's features (see the module docstring)."""
    body = {
        "store_version": STORE_VERSION,
        "modality": modality,
        "encoder": identity,
        "content": content,
        **(extra or {}),
    }
    return sha256_text(_canonical(body))


def default_store_dir() -> Path:
    """``<cache>/features`` (``<cache>`` = ``$LLM4REC_CACHE`` or ``.cache/llm4rec``)."""
    from benchmark.models.components.llm import default_cache_dir

    return default_cache_dir() / "features"


def encode_features(
    modality: str,
    encoder: Any,
    item_ids: Sequence[str],
    texts: Sequence[str] | None = None,
    images: ImageSources | None = None,
    store_dir: str | Path | None = None,
    strict: bool = False,
) -> FeatureTable:
    """The features of one modality: from the store on a hit, else encoded once and stored.

    Args:
        modality: ``text`` or ``image``.
        encoder: an encoder of :mod:`benchmark.models.components.encoders`.
        item_ids: [n_items] raw ids in index order.
        texts: [n_items] item texts (``text``).
        images: resolved image sources (``image``).
        store_dir: the store folder (default ``<cache>/features``).
        strict: an image file that cannot be decoded raises :class:`DataError` (also on a hit).

    Returns:
        the table, memory-mapped read-only from the store.
    """
    if modality not in encoder.modalities:
        raise ConfigError(
            f"adapter.modalities: encoder '{encoder.kind}' has no {modality} tower "
            f"(it encodes {', '.join(encoder.modalities)}); choose adapter/encoder=open_clip"
        )
    if modality == "text":
        if texts is None:
            raise ValueError("text features need texts")
        content = text_fingerprint(item_ids, texts)
    else:
        if images is None:
            raise ValueError("image features need image sources")
        content = images.fingerprint(item_ids)
    identity = encoder.identity()
    key = feature_key(modality, identity, content)
    root = Path(store_dir) if store_dir is not None else default_store_dir()
    folder = root / f"{modality}-{key[:20]}"
    hit = (folder / "meta.json").is_file()
    if not hit:
        _write_table(folder, modality, encoder, identity, key, content, item_ids, texts, images, strict)
    meta = json.loads((folder / "meta.json").read_text())
    if strict and meta["unreadable"]:
        first = meta["unreadable"][0]
        raise DataError(f"adapter: image file of item {first['item']} cannot be decoded: {first['file']}")
    features = np.load(folder / "features.npy", mmap_mode="r")
    missing = np.load(folder / "missing.npy")
    if features.shape[0] != len(item_ids):
        raise DataError(f"feature store {folder}: {features.shape[0]} rows for {len(item_ids)} items")
    facts = {
        "key": key,
        "cache": "hit" if hit else "created",
        "items": int(features.shape[0]),
        "dim": int(features.shape[1]),
        "content_sha256": content,
        "missing": int(missing.sum()),
        "missing_share": round(float(missing.mean()), 6) if len(missing) else 0.0,
    }
    if modality == "image":
        facts["unreadable"] = len(meta["unreadable"])
        facts["status_counts"] = {s: images.status.count(s) for s in sorted(set(images.status))}
        facts["downloaded_now"] = images.downloaded
    return FeatureTable(modality, features, missing, facts)


def _write_table(
    folder: Path,
    modality: str,
    encoder: Any,
    identity: dict[str, Any],
    key: str,
    content: str,
    item_ids: Sequence[str],
    texts: Sequence[str] | None,
    images: ImageSources | None,
    strict: bool,
) -> None:
    """Encode one modality and store it under ``folder`` (a store entry: a table of the same key
    that another process stored first is kept)."""
    t0 = time.perf_counter()
    if modality == "text":
        feats = encoder.encode_texts(list(texts))  # [N, D]
        missing, unreadable = np.zeros(len(item_ids), dtype=bool), []
    else:
        feats, missing, unreadable = _encode_images(encoder, item_ids, images, strict)
    meta = {
        "key": key,
        "modality": modality,
        "encoder": identity,
        "content_sha256": content,
        "items": len(item_ids),
        "dim": int(feats.shape[1]),
        "missing": int(missing.sum()),
        "unreadable": unreadable,
        "encode_seconds": round(time.perf_counter() - t0, 3),
    }
    with staged_dir(folder, exists="keep") as tmp:
        np.save(tmp / "features.npy", np.ascontiguousarray(feats, dtype=np.float32))
        np.save(tmp / "missing.npy", missing)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def _encode_images(
    encoder: Any, item_ids: Sequence[str], images: ImageSources, strict: bool
) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Image features of the items with a decodable image.

    Returns:
        ([N, D] float32 features, zeros where missing; [N] bool missing; unreadable files).
    """
    unreadable: list[dict[str, str]] = []
    decoded, rows = [], []
    for r, (raw, f) in enumerate(zip(item_ids, images.files, strict=True)):
        if f is None:
            continue
        im = read_image(f)
        if im is None:
            if strict:
                raise DataError(f"adapter: image file of item {raw} cannot be decoded: {f}")
            unreadable.append({"item": str(raw), "file": str(f)})
            continue
        decoded.append(im)
        rows.append(r)
    feats = np.zeros((len(item_ids), encoder.dim()), dtype=np.float32)
    if decoded:
        feats[np.asarray(rows)] = encoder.encode_images(decoded)
    missing = np.ones(len(item_ids), dtype=bool)
    missing[np.asarray(rows, dtype=np.int64)] = False
    return feats, missing, unreadable
