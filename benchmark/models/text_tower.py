"""An ID-free sequential recommender: items are their text, users a transformer over their history.

``model=text_tower`` (UniSRec/Recformer-like, our own small implementation): every item is a
trainable projection (two linear layers) of its frozen all-MiniLM-L6-v2 text embedding (``Title
(Year); Genres``, from the feature store), so an item absent from train is scored through its
text like any other. The user is a causal transformer encoder (pre-norm, learned positions) over
the representations of the last ``max_len`` items of the history; the score of an item is the
dot product of the last position's output with the item's representation, over the whole
catalogue. Training is next-item prediction at every position of each user's train sequence,
cross-entropy over the catalogue.

``features`` (``model=text_tower_clip``) reads other frozen item features through the adapters'
feature store instead: ``encoder`` (any ``configs/adapter/encoder`` node: open_clip, another
Hugging Face text encoder) and ``modalities`` (``text``, ``image``), concatenated; an item without
an image gets a learned missing-image vector (initialised to the mean of the present ones), as in
the item adapters. The record names the encoder and whether its weights were random-init.

``id_embedding: true`` adds a learned id vector to the items seen in train; items absent from
train (``split=strict_cold_item``'s held-out items, and unseen ones) have none, and the record
says how many. Histories follow the protocol of the other sequential models: train items when the
valid part is scored, train + valid items for the test part (after the best weights are loaded).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.data.histories import padded_user_histories
from benchmark.data.splits import Split
from benchmark.data.streams import EpochStream
from benchmark.errors import ConfigError


class SequenceStream(EpochStream):
    """Batches of users' train sequences (inputs, next-item targets), shuffled per epoch by (seed, epoch)."""

    def __init__(self, sequences: np.ndarray, batch_size: int, seed: int) -> None:
        super().__init__(len(sequences), batch_size, seed)
        self.sequences = torch.as_tensor(sequences)  # [U, max_len + 1], -1 padding after the last

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for idx in self.batches():
            seqs = self.sequences[idx]
            yield {"inputs": seqs[:, :-1], "targets": seqs[:, 1:]}


def train_sequences(split: Split, max_len: int) -> np.ndarray:
    """[U', max_len + 1] each user's last ``max_len + 1`` train items, oldest first, -1 after the
    last (users with at least two train items only: one input and one target)."""
    hist, length = padded_user_histories(split, "valid", max_len + 1)  # "valid" sees train only
    return hist[length >= 2]


class TextTower(nn.Module):
    """See the module docstring.

    Args:
        split: the split (train sequences, histories, the catalogue).
        data: the dataset (item titles, years and genres for the text).
        dim: size of item and user representations.
        layers, heads: transformer encoder layers and attention heads.
        max_len: history items read per user.
        dropout: dropout in the encoder and on the input.
        id_embedding: add a learned id vector to items seen in train.
        store_dir: the feature store folder (None: ``<cache>/features``).
        features: None (MiniLM item text) or ``{encoder: <_target_ node>, modalities: [text,
            image], image_column, image_root, strict_images, download_images, cache_dir}``.
    """

    def __init__(
        self,
        split: Split,
        data: Any,
        dim: int = 64,
        layers: int = 2,
        heads: int = 2,
        max_len: int = 50,
        dropout: float = 0.2,
        id_embedding: bool = False,
        store_dir: str | None = None,
        features: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from benchmark.models.components.item_text import text_embeddings

        if dim < 1 or layers < 1 or heads < 1 or dim % heads or max_len < 1 or not 0.0 <= dropout < 1.0:
            raise ConfigError(
                f"model text_tower: need dim % heads == 0, layers >= 1, max_len >= 1, 0 <= dropout < 1 "
                f"(got dim={dim}, heads={heads}, layers={layers}, max_len={max_len}, dropout={dropout})"
            )
        self.blocks: list[tuple[int, int]] = []  # (start, end) columns of each modality with missing rows
        self.missing = nn.ParameterList()  # one learned vector per such modality
        gaps: list[np.ndarray] = []  # [n_items] missing flags of each such modality
        if features is None:
            with torch.random.fork_rng(devices=[]):  # loading the encoder never moves the run's random stream
                found = text_embeddings(data, [str(i) for i in split.item_ids], store_dir)
            if found is None:
                raise ConfigError("model text_tower: the items have no titles to embed (it scores items by their text)")
            table, self.encoder_facts = found
        else:
            table, missing_rows, self.encoder_facts = _encoded_features(features, split, data)
            start = 0
            for j, width in enumerate(self.encoder_facts["dims"]):
                gap = missing_rows[:, j]
                if gap.any():
                    block = table[:, start : start + width]
                    mean = block[~gap].mean(axis=0) if (~gap).any() else np.zeros(width, np.float32)
                    self.blocks.append((start, start + width))
                    self.missing.append(nn.Parameter(torch.from_numpy(mean.astype(np.float32))))
                    gaps.append(gap)
                start += width
        self.register_buffer("features", torch.from_numpy(np.array(table, dtype=np.float32)), persistent=False)
        flags = np.stack(gaps, axis=1) if gaps else np.zeros((len(table), 0), dtype=bool)
        self.register_buffer("missing_rows", torch.from_numpy(flags), persistent=False)  # [n_items, blocks]
        self.proj = nn.Sequential(nn.Linear(table.shape[1], dim), nn.GELU(), nn.Linear(dim, dim))
        in_train = np.zeros(split.n_items, dtype=bool)
        in_train[split.train["item"].to_numpy()] = True
        self.id_embedding = bool(id_embedding)
        self.register_buffer("in_train", torch.from_numpy(in_train), persistent=False)
        self.ids = nn.Embedding(split.n_items, dim) if self.id_embedding else None
        if self.ids is not None:
            nn.init.normal_(self.ids.weight, std=0.02)
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.max_len = max_len
        self.n_items = split.n_items
        self._hist = {
            part: tuple(torch.from_numpy(a) for a in padded_user_histories(split, part, max_len))
            for part in ("valid", "test")
        }
        self._train_seqs = train_sequences(split, max_len)
        self.eval_part = "valid"
        self.register_load_state_dict_post_hook(_score_test_after_load)

    # ------------------------------------------------------------------ representations

    def item_inputs(self) -> torch.Tensor:
        """[n_items, D]: the frozen features, a missing image replaced by the learned vector."""
        if not self.blocks:
            return self.features
        parts, last = [], 0
        for (start, end), miss, emb in zip(self.blocks, self.missing_rows.T, self.missing, strict=True):
            parts += [self.features[:, last:start], torch.where(miss.unsqueeze(1), emb.unsqueeze(0), self.features[:, start:end])]
            last = end
        return torch.cat([*parts, self.features[:, last:]], dim=1)

    def item_vectors(self) -> torch.Tensor:
        """[n_items, dim]: projected features (+ the id vector of items seen in train)."""
        out = self.proj(self.item_inputs())
        if self.ids is not None:
            out = out + self.ids.weight * self.in_train.unsqueeze(1).to(out.dtype)
        return out

    def encode(self, seqs: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B, L] item indices (oldest first, -1 after the last) -> [B, L, dim] causal outputs."""
        b, length = seqs.shape
        pad = seqs < 0
        x = items[seqs.clamp(min=0)] + self.pos.weight[:length].unsqueeze(0)
        x = self.drop(x.masked_fill(pad.unsqueeze(-1), 0.0))
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=seqs.device), diagonal=1)
        out = self.encoder(x, mask=causal, src_key_padding_mask=pad)
        return self.norm(out)

    # ------------------------------------------------------------------ training

    def train_dataset(self, split: Split, batch_size: int, seed: int) -> SequenceStream:
        """Users' train sequences for next-item prediction at every position."""
        if len(self._train_seqs) == 0:
            raise ConfigError("model text_tower: no user has two train items; there is nothing to learn")
        return SequenceStream(self._train_seqs, batch_size, seed)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the next item over the catalogue at every non-padding position."""
        self.eval_part = "valid"
        items = self.item_vectors()
        inputs, targets = batch["inputs"], batch["targets"]
        out = self.encode(inputs, items)  # [B, L, dim]
        keep = targets >= 0
        logits = out[keep] @ items.T  # [N, n_items]
        return F.cross_entropy(logits, targets[keep])

    # ------------------------------------------------------------------ scoring

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """[B] users -> [B, n_items], from the history of the part being scored."""
        hist, length = self._hist[self.eval_part]
        idx = users.detach().cpu()
        seqs, n = hist[idx].to(users.device), length[idx].to(users.device)
        items = self.item_vectors()
        if seqs.shape[1] == 0 or bool((n == 0).all()):
            return torch.zeros(len(users), self.n_items, device=users.device)
        out = self.encode(seqs, items)  # [B, L, dim]
        last = out[torch.arange(len(users), device=users.device), (n - 1).clamp(min=0)]  # [B, dim]
        scores = last @ items.T
        return torch.where((n > 0).unsqueeze(1), scores, torch.zeros_like(scores))  # no history: all tie

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.score(users).gather(1, items)

    def prediction_facts(self) -> dict[str, Any]:
        return {
            "text_tower": {
                "text_encoder": self.encoder_facts,
                "id_embedding": self.id_embedding,
                "items_without_id": int((~self.in_train).sum()) if self.id_embedding else None,
                "max_len": self.max_len,
                "train_sequences": int(len(self._train_seqs)),
            }
        }


def _encoded_features(node: Any, split: Split, data: Any) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """([n_items, D] concatenated features, [n_items, M] missing flags per modality, facts) of the
    ``features`` node, through the adapters' encoders and feature store."""
    from types import SimpleNamespace

    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from benchmark.models.components.adapter import _feature_tables
    from benchmark.models.components.feature_store import MODALITIES

    node = dict(node)
    unknown = set(node) - {"encoder", "modalities", "image_column", "image_root", "strict_images", "download_images", "cache_dir"}
    if unknown:
        raise ConfigError(f"model.module.features: unknown key {sorted(unknown)[0]!r}")
    modalities = list(node.get("modalities") or ["text"])
    if any(m not in MODALITIES for m in modalities) or len(set(modalities)) != len(modalities):
        raise ConfigError(f"model.module.features.modalities: each of {', '.join(MODALITIES)} at most once, got {modalities}")
    enc_node = node.get("encoder")
    if not isinstance(enc_node, Mapping) or "_target_" not in enc_node:
        raise ConfigError(f"model.module.features.encoder: expected a config with _target_, got {enc_node!r}")
    try:
        encoder = instantiate(dict(enc_node))
    except InstantiationException as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise ConfigError(f"model.module.features.encoder: {' '.join(str(e).split())[:300]}") from None
    lacking = [m for m in modalities if m not in encoder.modalities]
    if lacking:
        raise ConfigError(
            f"model.module.features.modalities: encoder '{encoder.kind}' has no {lacking[0]} tower "
            f"(it encodes {', '.join(encoder.modalities)})"
        )
    cfg = SimpleNamespace(
        modalities=modalities,
        cache_dir=node.get("cache_dir"),
        image_column=node.get("image_column", "image"),
        image_root=node.get("image_root"),
        strict_images=bool(node.get("strict_images", False)),
        download_images=bool(node.get("download_images", True)),
    )
    with torch.random.fork_rng(devices=[]):  # encoding never moves the run's random stream
        tables, images = _feature_tables(cfg, encoder, split, data)
    feats = np.concatenate([np.asarray(t.features, dtype=np.float32) for t in tables], axis=1)
    missing = np.stack([np.asarray(t.missing, dtype=bool) for t in tables], axis=1)
    identity = dict(encoder.identity())
    facts = {
        "encoder": identity,
        "random_init": bool(identity.get("random_init")),
        "modalities": modalities,
        "dims": [int(t.features.shape[1]) for t in tables],
        "keys": {t.modality: str(t.facts.get("key", ""))[:20] for t in tables},
        "missing_share": {t.modality: round(float(np.mean(t.missing)), 4) for t in tables},
        "images": images or None,
    }
    return feats, missing, facts


def _score_test_after_load(module: TextTower, incompatible: Any) -> None:
    """The best (or reused) weights were loaded: the test part is scored next (train + valid history)."""
    module.eval_part = "test"
