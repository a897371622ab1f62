"""Multimodal item adapters: frozen item features projected into an LLM's embedding space as soft tokens.

``adapter=clip_proj`` (``configs/adapter``) gives every item mention in a prompt ``k`` soft tokens,
produced by a trainable projector (:mod:`benchmark.models.components.projector`) from the item's
frozen features (:mod:`benchmark.models.components.feature_store`: text and/or image, encoded once
and memory-mapped). ``mention: alongside`` keeps the item's id/title before its soft tokens,
``instead`` shows the soft tokens only. Items without an image get a learned missing-modality
embedding (one per modality, in feature space, initialised to the mean of the present features)
in place of their image features. ``train_llm: false`` freezes the language model (and its LoRA
adapters): only the projector and the missing embeddings train.

Both LLM families (P5, TALLRec) take ``adapter=`` from the run; ``adapter=none`` and an adapter
with no modalities change nothing (no token is added, no random number drawn), so they give
exactly the results of the model without an adapter. ``adapter=none`` is also left out of the
config hash (:func:`benchmark.results.identity.result_config`), so existing run records keep their ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmark.config import to_object
from benchmark.errors import ConfigError
from benchmark.models.components.feature_store import MODALITIES, FeatureTable
from benchmark.models.components.projector import (
    PLACEHOLDER,
    expand_mentions,
    insert_soft_tokens,
    mention_marker,
    soft_token_slots,
)

MENTIONS = ("alongside", "instead")
# Feature sources of an adapter: the feature store's encoded modalities, and ``cf`` (a first-stage
# run's item embeddings, :mod:`benchmark.models.components.cf_features`).
ADAPTER_MODALITIES = (*MODALITIES, "cf")


@dataclass
class AdapterConfig:
    """The ``adapter`` config node, validated.

    Attributes:
        name: ``none`` or the adapter's name (``clip_proj``).
        modalities: any of ``text``, ``image`` (empty: no soft tokens).
        k: soft tokens per item mention.
        mention: ``alongside`` (id/title, then soft tokens) or ``instead`` (soft tokens only).
        train_llm: False freezes the language model (LoRA included); the projector always trains.
        encoder: ``_target_`` node of the encoder (``configs/adapter/encoder``).
        projector: ``_target_`` + ``_partial_`` node of the projector (``configs/adapter/projector``).
        image_column: item side-table column with image paths or URLs.
        image_root: folder relative image paths are resolved against (default: ``data.path``).
        strict_images: a missing/undecodable image file or failed download stops the run.
        download_images: fetch image URLs that are not cached yet.
        cache_dir: root of the feature store and image cache (None: ``$LLM4REC_CACHE`` or
            ``.cache/llm4rec``).
    """

    name: str = "none"
    modalities: list[str] = field(default_factory=list)
    k: int = 2
    mention: str = "alongside"
    train_llm: bool = True
    encoder: dict[str, Any] | None = None
    projector: dict[str, Any] | None = None
    image_column: str = "image"
    image_root: str | None = None
    strict_images: bool = False
    download_images: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        self.modalities = list(self.modalities or [])
        bad = [m for m in self.modalities if m not in ADAPTER_MODALITIES]
        if bad:
            raise ConfigError(
                f"adapter.modalities: unknown modality {bad[0]!r} (one of {', '.join(ADAPTER_MODALITIES)})"
            )
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"adapter.modalities: each modality at most once, got {self.modalities}")
        if self.name == "none":
            if self.modalities:
                raise ConfigError(
                    "adapter.modalities: adapter=none has no modalities (use adapter=clip_proj)"
                )
            return
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ConfigError(f"adapter.k: soft tokens per item must be a positive integer, got {self.k!r}")
        if self.mention not in MENTIONS:
            raise ConfigError(f"adapter.mention: expected one of {MENTIONS}, got {self.mention!r}")
        for key in ("encoder", "projector"):
            node = getattr(self, key)
            if not isinstance(node, Mapping) or "_target_" not in node:
                raise ConfigError(
                    f"adapter.{key}: expected a config with _target_ (choose one with adapter/{key}=NAME), got {node!r}"
                )

    @property
    def active(self) -> bool:
        """Whether items get soft tokens."""
        return self.name != "none" and bool(self.modalities)


def adapter_config(node: Any) -> AdapterConfig | None:
    """A validated :class:`AdapterConfig` from a config node (None for a missing node)."""
    return None if node is None else to_object(node, AdapterConfig, "adapter")


def is_active_node(node: Any) -> bool:
    """Whether an ``adapter`` config node is anything but ``adapter=none`` (or absent)."""
    return node is not None and (node.get("name", "none") if hasattr(node, "get") else "none") != "none"


def adapter_label(node: Any) -> str:
    """Suffix of the model label for a run with an adapter (``""`` for none), e.g.
    ``+clip_proj-text-minilm`` or ``+clip_proj-image-text-ViT-B-32-rand``."""
    if not is_active_node(node):
        return ""
    cfg = adapter_config(node)
    parts = [cfg.name, *(cfg.modalities or ["nomod"])]
    name = encoder_label(cfg.encoder)
    if name:
        parts.append(name)
    if cfg.k != 2:
        parts.append(f"k{cfg.k}")
    if cfg.mention != "alongside":
        parts.append(cfg.mention)
    return "+" + "-".join(parts)


def encoder_label(node: Any) -> str:
    """A feature encoder's short name in labels: ``minilm``, ``ViT-B-32-rand`` (open_clip with
    random-init weights), the first stage's name for CF embeddings; ``""`` when unknown."""
    enc = dict(node or {})
    target = str(enc.get("_target_", ""))
    if target.endswith("OpenCLIPEncoder"):
        return str(enc.get("model", "clip")).split("/")[-1] + ("" if enc.get("pretrained") else "-rand")
    if target.endswith("HFTextEncoder"):
        return "minilm" if enc.get("path") is None else Path(str(enc["path"])).name
    if target.endswith("CFEncoder"):  # the first stage's name (adapter.encoder.label)
        return str(enc.get("label") or "cf")
    return ""


class ItemAdapter(nn.Module):
    """Soft tokens of items: frozen features -> (missing embedding) -> projector -> [U, k, d_model].

    Holds the memory-mapped feature tables as plain arrays (not buffers: they are never saved in
    checkpoints and never copied per step; only the rows of a batch's items are read).

    Args:
        tables: one :class:`FeatureTable` per modality, in the projector's input order.
        projector: maps M tensors [U, D_m] to [U, k, d_model].
        k: soft tokens per item mention.
        mention: ``alongside`` or ``instead``.
        placeholder_id: the placeholder token id in the model's tokenizer.
        facts: record facts (encoder, features, projector).
    """

    def __init__(
        self,
        tables: Sequence[FeatureTable],
        projector: nn.Module,
        k: int,
        mention: str,
        placeholder_id: int,
        facts: dict[str, Any],
    ) -> None:
        super().__init__()
        self.modalities = [t.modality for t in tables]
        self._features = [t.features for t in tables]  # [N, D_m] memory-mapped, read-only
        self._missing = [torch.from_numpy(np.asarray(t.missing, dtype=bool)) for t in tables]  # [N]
        # The learned missing-modality embeddings start at the mean of the present features.
        self.missing = nn.ParameterList(
            nn.Parameter(torch.from_numpy(_present_mean(t.features, t.missing))) for t in tables
        )
        self.projector = projector
        self.k, self.mention, self.placeholder_id = int(k), mention, int(placeholder_id)
        self.facts = facts

    # ------------------------------------------------------------------ prompts

    def mention_text(self, item: int, text: str) -> str:
        """How item ``item`` (shown as ``text`` without the adapter) appears in a rendered prompt."""
        marker = mention_marker(item)
        return f"{text} {marker}" if self.mention == "alongside" else marker

    def expand(self, prompt: str) -> tuple[str, list[int]]:
        """(prompt with k placeholders per mention, mentioned items in order)."""
        return expand_mentions(prompt, self.k, PLACEHOLDER)

    def slots(self, input_ids: torch.Tensor, mentions: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """``soft_items``/``soft_slots`` [B, T] for a padded batch (see :func:`soft_token_slots`)."""
        return soft_token_slots(input_ids, mentions, self.placeholder_id, self.k)

    # ------------------------------------------------------------------ forward

    def item_features(self, items: torch.Tensor) -> list[torch.Tensor]:
        """[U] items -> M tensors [U, D_m]; missing inputs replaced by the learned embedding."""
        idx = items.detach().cpu().numpy()
        out = []
        for feats, missing, emb in zip(self._features, self._missing, self.missing, strict=True):
            rows = torch.from_numpy(np.ascontiguousarray(feats[idx], dtype=np.float32)).to(emb.device)
            miss = missing[items.detach().cpu()].to(emb.device).unsqueeze(1)  # [U, 1]
            out.append(torch.where(miss, emb.unsqueeze(0), rows))  # keeps emb in the graph even if unused
        return out

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """[U] item indices -> [U, k, d_model] soft tokens."""
        return self.projector(self.item_features(items))

    def embed(self, lm: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``inputs_embeds`` [B, T, d] of a batch: token embeddings, placeholders overwritten."""
        table = lm.get_input_embeddings()
        ids = batch["input_ids"].to(table.weight.device)
        embeds = table(ids)
        return insert_soft_tokens(
            embeds, batch["soft_items"].to(ids.device), batch["soft_slots"].to(ids.device), self
        )


def _present_mean(features: np.ndarray, missing: np.ndarray) -> np.ndarray:
    present = ~np.asarray(missing, dtype=bool)
    if not present.any():
        return np.zeros(features.shape[1], dtype=np.float32)
    return np.asarray(features[present], dtype=np.float64).mean(axis=0).astype(np.float32)


def expand_prompts(adapter: ItemAdapter | None, prompts: list[str]) -> tuple[list[str], list[list[int]]]:
    """Prompts with each item mention's placeholders in place, and the items mentioned per prompt
    (the prompts unchanged and no mentions without an adapter)."""
    if adapter is None:
        return prompts, []
    expanded = [adapter.expand(p) for p in prompts]
    return [e[0] for e in expanded], [e[1] for e in expanded]


def tokenize_prompts(
    tokenizer: Any, adapter: ItemAdapter | None, prompts: list[str], max_length: int
) -> tuple[list[list[int]], list[list[int]], int]:
    """Token ids per prompt (placeholders expanded when an adapter is on), cut from the left to
    ``max_length``.

    Returns:
        (ids per prompt, items mentioned per prompt (empty without an adapter), prompts cut).
    """
    prompts, mentions = expand_prompts(adapter, prompts)
    out, cut = [], 0
    for s in tokenizer(prompts, add_special_tokens=True)["input_ids"]:
        if len(s) > max_length:
            cut += 1
            s = s[-max_length:]
        out.append(list(s))
    return out, mentions, cut


def attach_item_adapter(
    node: Any, model: Any, tokenizer: Any, split: Any, data: Any
) -> tuple[AdapterConfig | None, ItemAdapter | None]:
    """The adapter config and, when it is active, an adapter built for ``model``: the placeholder
    token added to ``tokenizer`` (embeddings resized) and the item features encoded or loaded.

    Returns:
        (config or None for no adapter node, adapter or None when inactive).
    """
    cfg = adapter_config(node)
    if cfg is None or not cfg.active:
        return cfg, None
    from benchmark.models.components.projector import add_placeholder_token

    placeholder = add_placeholder_token(model, tokenizer)
    d_model = int(model.get_input_embeddings().weight.shape[1])
    return cfg, build_item_adapter(cfg, split, data, d_model, placeholder)


def build_item_adapter(
    cfg: AdapterConfig, split: Any, data: Any, d_model: int, placeholder_id: int
) -> ItemAdapter:
    """Encode (or load) the item features of ``cfg.modalities`` and build the adapter.

    Args:
        cfg: an active adapter config.
        split: the split (item ids in index order).
        data: the dataset (item side table: texts, image column).
        d_model: the language model's embedding size.
        placeholder_id: the placeholder token id.
    """
    encoder, make_projector = _instantiate(cfg, "encoder"), _instantiate(cfg, "projector")
    missing_towers = [m for m in cfg.modalities if m not in encoder.modalities]
    if missing_towers:
        raise ConfigError(
            f"adapter.modalities: encoder '{encoder.kind}' has no {missing_towers[0]} tower "
            f"(it encodes {', '.join(encoder.modalities)}); use adapter/encoder=open_clip"
        )
    with torch.random.fork_rng(devices=[]):  # encoding never moves the run's random stream
        tables, images_facts = _feature_tables(cfg, encoder, split, data)
    try:
        projector = make_projector(dims=[t.features.shape[1] for t in tables], d_model=int(d_model), k=cfg.k)
    except TypeError as e:
        raise ConfigError(f"adapter.projector: {e}") from None
    identity = encoder.identity()
    facts = {
        "name": cfg.name,
        "modalities": list(cfg.modalities),
        "k": cfg.k,
        "mention": cfg.mention,
        "train_llm": cfg.train_llm,
        "placeholder": PLACEHOLDER,
        "encoder": dict(identity),
        "random_init": bool(identity["random_init"]),
        "projector": {
            "kind": getattr(projector, "kind", type(projector).__name__),
            "params": sum(p.numel() for p in projector.parameters()),
        },
        "features": {t.modality: t.facts for t in tables},
        "cache_hits": sum(t.facts["cache"] == "hit" for t in tables),
        "images": images_facts or None,
    }
    return ItemAdapter(tables, projector, cfg.k, cfg.mention, placeholder_id, facts)


def _instantiate(cfg: AdapterConfig, key: str) -> Any:
    """Build ``cfg.encoder`` or ``cfg.projector`` (a partial) from its ``_target_`` node; a failure
    is a one-line :class:`ConfigError` (the encoder's own ConfigError passes through)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(getattr(cfg, key))
    except InstantiationException as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        message = " ".join(str(e).split()).split(", set env var HYDRA_FULL_ERROR")[0]
        raise ConfigError(f"adapter.{key}: {message}") from None


def _feature_tables(
    cfg: AdapterConfig, encoder: Any, split: Any, data: Any
) -> tuple[list[FeatureTable], dict[str, Any]]:
    """One feature table per modality of ``cfg`` (from the store, or encoded and stored), and the
    image facts of the record (empty without images)."""
    from benchmark.models.components.feature_store import encode_features
    from benchmark.models.components.images import image_column_values, resolve_images
    from benchmark.models.components.llm import default_cache_dir
    from benchmark.models.components.text_encoder import item_descriptions

    root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    item_ids = [str(i) for i in split.item_ids]
    tables, images_facts = [], {}
    for m in cfg.modalities:
        if m == "cf":
            features, missing, facts = encoder.table(split)
            tables.append(FeatureTable("cf", features, missing, facts))
            continue
        if m == "text":
            texts = item_descriptions(data.items, data.item_fields, item_ids)
            tables.append(
                encode_features("text", encoder, item_ids, texts=texts, store_dir=root / "features")
            )
            continue
        values = image_column_values(data.items, item_ids, cfg.image_column)
        sources = resolve_images(
            values, item_ids, cfg.image_root, root, cfg.strict_images, cfg.download_images
        )
        tables.append(
            encode_features(
                "image",
                encoder,
                item_ids,
                images=sources,
                store_dir=root / "features",
                strict=cfg.strict_images,
            )
        )
        images_facts = {"column": cfg.image_column, "missing_share": tables[-1].facts["missing_share"]}
    return tables, images_facts


def inactive_facts(cfg: AdapterConfig | None) -> dict[str, Any] | None:
    """Record facts of an adapter that adds nothing (no modalities), None for ``adapter=none``."""
    if cfg is None or cfg.name == "none":
        return None
    return {
        "name": cfg.name,
        "modalities": [],
        "active": False,
        "note": "no modalities: the model without an adapter",
    }


def adapter_facts(adapter: ItemAdapter | None, cfg: AdapterConfig | None) -> dict[str, Any]:
    """``{"adapter": facts}`` for a model's record: the built adapter's facts, an inactive
    adapter's note, or nothing for ``adapter=none``."""
    if adapter is not None:
        return {"adapter": adapter.facts}
    facts = inactive_facts(cfg)
    return {} if facts is None else {"adapter": facts}
