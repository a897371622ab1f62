"""Frozen item encoders of the multimodal adapters (``configs/adapter/encoder``, built with ``_target_``).

- :class:`OpenCLIPEncoder`: the image and text towers of any open_clip model name
  (``ViT-B-32``, ``hf-hub:...``, ``local-dir:...``) with any pretrained tag open_clip knows or a
  local checkpoint file. ``pretrained: null`` builds the towers with random weights drawn from
  ``init_seed`` (the only choice offline: open_clip ships configs and its tokenizer, not weights);
  such features are labelled ``random_init: true``. A tag that cannot be fetched is a one-line
  :class:`ConfigError`.
- :class:`HFTextEncoder`: any Hugging Face sentence encoder, default all-MiniLM-L6-v2 from its
  offline package (:class:`benchmark.models.components.text_encoder.TextEncoder`).

An encoder's :meth:`identity` (kind, model, tag, sha256 of the weights, preprocessing, device
type) is part of the feature store's cache key (:mod:`benchmark.models.components.feature_store`).
Configs and run records name these classes by their original path,
``benchmark.models.components.features.*`` (see that module).
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.errors import ConfigError
from benchmark.util import package_version, torch_device


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


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
        self.batch_size, self.device = int(batch_size), torch_device(device)
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

        from benchmark.models.components import hub

        if hub.offline_by_env():
            return
        cfg = open_clip.get_pretrained_cfg(self.model_name, self.pretrained) or {}
        url = cfg.get("url") or ""
        host = urllib.parse.urlparse(url).hostname if url and not cfg.get("hf_hub") else "huggingface.co"
        if not hub.reachable(host or "huggingface.co"):
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
            "open_clip": package_version("open_clip_torch"),
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
