"""Frozen item features for multimodal adapters: encoders, item content, and an on-disk feature store.

Encoders (``configs/adapter/encoder``, built with ``_target_``):

- :class:`OpenCLIPEncoder`: the image and text towers of any open_clip model name
  (``ViT-B-32``, ``hf-hub:...``, ``local-dir:...``) with any pretrained tag open_clip knows or a
  local checkpoint file. ``pretrained: null`` builds the towers with random weights drawn from
  ``init_seed`` (the only choice offline: open_clip ships configs and its tokenizer, not weights);
  such features are labelled ``random_init: true``. A tag that cannot be fetched is a one-line
  :class:`ConfigError`.
- :class:`HFTextEncoder`: any Hugging Face sentence encoder, default all-MiniLM-L6-v2 from its
  offline package (:class:`benchmark.models.components.text_encoder.TextEncoder`).

Item content is side information, never interactions, so it covers cold items too: the text of
an item is ``Title (Year); Genres`` from the item side table, its image a local path (relative
paths are resolved against ``image_root``) or an http(s) URL from an image column. URLs are
downloaded once into ``<cache>/images/``. An item without a usable image (empty value, missing or
unreadable file, failed download) is marked missing in a mask -- or, with ``strict``, stops the
run with a one-line :class:`DataError` naming the item and file.

Feature store: the features of one modality are encoded once per key

    sha256(store version, modality, encoder identity (kind, model, tag, sha256 of the weights,
           preprocessing, device type), content fingerprint (item ids and their texts, or
           their image sources and the sha256 of each image's bytes))

and saved as ``features.npy`` [n_items, D] float32 + ``missing.npy`` [n_items] bool +
``meta.json`` in ``<cache>/features/<modality>-<key[:20]>/`` (written to a temporary folder and
renamed, so concurrent runs never read half a table). Later runs memory-map the arrays; nothing
is re-encoded at train time. Changing the weights or the data changes the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.errors import ConfigError, DataError

STORE_VERSION = 1
MODALITIES = ("text", "image")
URL_PREFIXES = ("http://", "https://")
DOWNLOAD_TIMEOUT_S = 10.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------- encoders


class OpenCLIPEncoder:
    """Frozen open_clip image and text towers (see the module docstring).

    Args:
        model: an open_clip model name (``open_clip.list_models()``), or ``hf-hub:``/``local-dir:``.
        pretrained: a pretrained tag of that model, a local checkpoint file, or None (random init).
        init_seed: seed of the random weights when ``pretrained`` is None.
        batch_size: items per forward pass.
        device: ``cpu``, ``cuda`` or ``auto`` (part of the cache key: kernels differ).
        cache_dir: where open_clip keeps downloaded weights (None: its default).
    """

    kind = "open_clip"
    modalities = ("image", "text")

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = None,
        init_seed: int = 0,
        batch_size: int = 64,
        device: str = "cpu",
        cache_dir: str | None = None,
    ) -> None:
        import open_clip

        schema = model.startswith(("hf-hub:", "local-dir:"))
        if not schema and model not in open_clip.list_models():
            raise ConfigError(
                f"adapter.encoder.model: open_clip does not know '{model}' "
                "(see open_clip.list_models(), e.g. ViT-B-32, ViT-S-32, RN50)"
            )
        self.pretrained = pretrained or None
        if self.pretrained and not schema and not Path(self.pretrained).is_file():
            tags = open_clip.list_pretrained_tags_by_model(model)
            if self.pretrained not in tags:
                raise ConfigError(
                    f"adapter.encoder.pretrained: '{self.pretrained}' is not a tag of {model} "
                    f"({', '.join(tags) or 'none known'}) nor a checkpoint file; null = random init"
                )
        self.model_name, self.init_seed = model, int(init_seed)
        self.batch_size, self.device = int(batch_size), _device(device)
        self.cache_dir = cache_dir
        self._loaded: tuple[Any, Any, Any] | None = None
        self._digest: str | None = None

    @property
    def random_init(self) -> bool:
        return self.pretrained is None and not self.model_name.startswith(("hf-hub:", "local-dir:"))

    def _load(self) -> tuple[Any, Any, Any]:
        if self._loaded is None:
            import open_clip

            if self.pretrained and not Path(self.pretrained).is_file():
                self._check_reachable()
            # Random weights come from init_seed, never from (or into) the run's random stream.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.init_seed)
                try:
                    model, _, preprocess = open_clip.create_model_and_transforms(
                        self.model_name, pretrained=self.pretrained, cache_dir=self.cache_dir
                    )
                except Exception as e:  # offline hub, bad checkpoint, unknown schema folder
                    raise ConfigError(
                        f"adapter.encoder.pretrained: cannot load open_clip weights "
                        f"'{self.model_name}' / '{self.pretrained}' ({_first_line(e)}); "
                        "without network use adapter.encoder.pretrained=null (random init, recorded)"
                    ) from None
            model = model.eval().to(self.device)
            for p in model.parameters():
                p.requires_grad_(False)
            self._loaded = (model, preprocess, open_clip.get_tokenizer(self.model_name))
        return self._loaded

    def _check_reachable(self) -> None:
        """Fail in one line, at once, when the weights' host cannot be reached (instead of the hub
        client's minute of retries). ``HF_HUB_OFFLINE=1`` skips the check and uses the local hub cache."""
        import open_clip

        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            return
        cfg = open_clip.get_pretrained_cfg(self.model_name, self.pretrained) or {}
        url = cfg.get("url") or ""
        host = urllib.parse.urlparse(url).hostname if url and not cfg.get("hf_hub") else "huggingface.co"
        if not _reachable(host or "huggingface.co"):
            raise ConfigError(
                f"adapter.encoder.pretrained: cannot download open_clip weights '{self.model_name}' / "
                f"'{self.pretrained}' ({host} unreachable); offline use adapter.encoder.pretrained=null "
                "(random init, recorded), a checkpoint file, or HF_HUB_OFFLINE=1 with a cached copy"
            )

    def identity(self) -> dict[str, Any]:
        """What determines the features (part of the cache key and of the run record)."""
        model = self._load()[0]
        if self._digest is None:
            self._digest = state_digest(model)
        return {
            "kind": self.kind,
            "model": self.model_name,
            "pretrained": self.pretrained,
            "random_init": self.random_init,
            "init_seed": self.init_seed if self.random_init else None,
            "weights_sha256": self._digest,
            "open_clip": _version("open_clip_torch"),
            "device": self.device.type,
            "normalized": True,
        }

    def dim(self) -> int:
        model = self._load()[0]
        return int(getattr(model, "embed_dim", None) or model.text_projection.shape[-1])

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """[N] texts -> [N, D] float32 L2-normalised text-tower embeddings."""
        model, _, tokenizer = self._load()
        out = [
            model.encode_text(tokenizer(list(texts[s : s + self.batch_size])).to(self.device), normalize=True)
            .float()
            .cpu()
            .numpy()
            for s in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim()), np.float32)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """[N] RGB PIL images -> [N, D] float32 L2-normalised image-tower embeddings."""
        model, preprocess, _ = self._load()
        out = []
        for s in range(0, len(images), self.batch_size):
            pixels = torch.stack([preprocess(im) for im in images[s : s + self.batch_size]])  # [b, 3, H, W]
            out.append(model.encode_image(pixels.to(self.device), normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim()), np.float32)


class HFTextEncoder:
    """A frozen Hugging Face sentence encoder (mean pooling, L2-normalised); text only.

    Args:
        path: a local model folder or hub name; None = all-MiniLM-L6-v2 from its offline package.
        max_length: tokens per text (every text is padded to it, so batches never change a row).
        batch_size: texts per forward pass.
    """

    kind = "hf"
    modalities = ("text",)
    random_init = False

    def __init__(self, path: str | None = None, max_length: int = 64, batch_size: int = 128) -> None:
        from benchmark.models.components.text_encoder import TextEncoder

        self.text = TextEncoder(path, max_length, batch_size)
        self._digest: str | None = None

    def _model(self) -> Any:
        from benchmark.models.components.text_encoder import _load

        return _load(self.text.path)[1]

    def identity(self) -> dict[str, Any]:
        if self._digest is None:
            self._digest = state_digest(self._model())
        return {
            "kind": self.kind,
            "model": self.text.name,
            "pretrained": "local" if Path(self.text.path).is_dir() else "hub",
            "random_init": False,
            "weights_sha256": self._digest,
            "max_length": self.text.max_length,
            "pooling": "mean, L2-normalised",
            "device": "cpu",
        }

    def dim(self) -> int:
        return int(self._model().config.hidden_size)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.text.encode(texts)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        raise ConfigError(
            "adapter.modalities: encoder 'hf' encodes text only; use adapter/encoder=open_clip for images"
        )


def _reachable(host: str, port: int = 443, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- item content


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
        from benchmark.data.interactions import sha256_file

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
    col = items[column]
    out = []
    for raw in item_ids:
        v = col.get(raw)
        out.append("" if v is None or v != v else str(v).strip())  # v != v: NaN
    return out


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
    files: list[Path | None] = []
    status: list[str] = []
    downloaded, network_down = 0, None
    folder = cache_dir / "images"
    for raw, value in zip(item_ids, values, strict=True):
        if not value:
            files.append(None)
            status.append("empty")
            continue
        if value.startswith(URL_PREFIXES):
            suffix = Path(value.split("?", 1)[0]).suffix[:8]
            target = folder / f"{hashlib.sha256(value.encode()).hexdigest()[:32]}{suffix}"
            if target.is_file():
                files.append(target)
                status.append("ok")
                continue
            attempted = download and network_down is None
            if attempted:
                try:
                    _download(value, target)
                    downloaded += 1
                    files.append(target)
                    status.append("ok")
                    continue
                except urllib.error.HTTPError as e:  # the server answered: only this file is bad
                    reason = f"HTTP {e.code}"
                except (urllib.error.URLError, OSError, ValueError) as e:
                    reason = f"network unavailable: {_first_line(getattr(e, 'reason', e))}"
                    network_down = reason
            else:
                reason = network_down or "downloads disabled (adapter.download_images=false)"
            if strict:
                raise DataError(
                    f"adapter: cannot fetch the image of item {raw} from {value} ({reason}); "
                    "adapter.strict_images=false marks it missing"
                )
            files.append(None)
            status.append("download_failed" if attempted else "download_skipped")
            continue
        path = Path(value)
        if not path.is_absolute() and root is not None:
            path = Path(root) / path
        if path.is_file():
            files.append(path)
            status.append("ok")
        elif strict:
            raise DataError(f"adapter: image file of item {raw} not found: {path}")
        else:
            files.append(None)
            status.append("not_found")
    return ImageSources(files, list(values), status, downloaded)


def _download(url: str, target: Path) -> None:
    """Fetch ``url`` into ``target`` atomically (temporary file + rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
            shutil.copyfileobj(r, f)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_image(path: Path) -> Any:
    """An RGB PIL image, or None when the file cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def text_fingerprint(item_ids: Sequence[str], texts: Sequence[str]) -> str:
    """sha256 over (item id, text) per item, in index order."""
    h = hashlib.sha256()
    for raw, t in zip(item_ids, texts, strict=True):
        h.update(f"{raw}\t{t}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- feature store


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
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


def default_store_dir() -> Path:
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
        encoder: an :class:`OpenCLIPEncoder` or :class:`HFTextEncoder`.
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
    t0 = time.perf_counter()
    unreadable: list[dict[str, str]] = []
    if modality == "text":
        feats = encoder.encode_texts(list(texts))  # [N, D]
        missing = np.zeros(len(item_ids), dtype=bool)
    else:
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
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        np.save(tmp / "features.npy", np.ascontiguousarray(feats, dtype=np.float32))
        np.save(tmp / "missing.npy", missing)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process stored the same key first: keep its table
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
