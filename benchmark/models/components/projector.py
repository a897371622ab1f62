"""Projectors from frozen item features to soft tokens, and their insertion into a prompt.

Projectors (``configs/adapter/projector``, built with ``_target_`` and ``_partial_``; called with
``dims`` (feature size per modality), ``d_model`` and ``k``) map an item's per-modality features
[U, D_m] to k soft tokens [U, k, d_model]:

- :class:`LinearProjector`: one linear map of the concatenated features.
- :class:`MLPProjector`: Linear -> GELU -> Linear (LLaVA-1.5's connector).
- :class:`ResamplerProjector`: k learned queries cross-attend to one token per modality
  (a one-block Perceiver resampler, as in Flamingo / BLIP-2's Q-Former, over pooled features).

Soft-token insertion, shared by the P5 and TALLRec models:

1. Prompts are rendered with an invisible marker per item mention (:func:`mention_marker`), in
   whatever order the template, in-context examples or chat template put them.
2. :func:`expand_mentions` replaces each marker by k placeholder tokens and returns the items in
   prompt order; the placeholder is one special token added to the tokenizer
   (:func:`add_placeholder_token`).
3. After tokenizing, truncating (from the left) and padding, :func:`soft_token_slots` assigns
   every placeholder position its (item, slot): the i-th placeholder of a row from the right is
   slot i from the right of that row's item list, so a left-truncated prompt keeps the right
   items.
4. At forward time :func:`insert_soft_tokens` builds ``inputs_embeds = embed(input_ids)`` and
   overwrites the placeholder positions with ``projector(features[item])[slot]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from benchmark.errors import ConfigError

PLACEHOLDER = "<item_feat>"
_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use code points: never in item texts or templates
_MARKER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")


# ----------------------------------------------------------------------------- projectors


def _check(dims: Sequence[int], d_model: int, k: int) -> list[int]:
    dims = [int(d) for d in dims]
    if not dims or min(dims) < 1 or d_model < 1 or k < 1:
        raise ConfigError(
            f"adapter.projector: need feature dims, d_model >= 1 and k >= 1 (got {dims}, {d_model}, {k})"
        )
    return dims


class LinearProjector(nn.Module):
    """Concatenated features -> k soft tokens by one linear map.

    Args:
        dims: feature size of each modality, in the adapter's modality order.
        d_model: the language model's embedding size.
        k: soft tokens per item.
    """

    kind = "linear"

    def __init__(self, dims: Sequence[int], d_model: int, k: int) -> None:
        super().__init__()
        dims = _check(dims, d_model, k)
        self.k, self.d_model = int(k), int(d_model)
        self.proj = nn.Linear(sum(dims), self.k * self.d_model)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """M tensors [U, D_m] -> [U, k, d_model]."""
        x = torch.cat(feats, dim=-1)  # [U, sum D_m]
        return self.proj(x).view(-1, self.k, self.d_model)


class MLPProjector(nn.Module):
    """Concatenated features -> Linear -> GELU -> Linear -> k soft tokens.

    Args:
        dims: feature size of each modality.
        d_model: the language model's embedding size.
        k: soft tokens per item.
        hidden: hidden width (None: d_model).
    """

    kind = "mlp"

    def __init__(self, dims: Sequence[int], d_model: int, k: int, hidden: int | None = None) -> None:
        super().__init__()
        dims = _check(dims, d_model, k)
        self.k, self.d_model = int(k), int(d_model)
        hidden = int(hidden or d_model)
        self.net = nn.Sequential(
            nn.Linear(sum(dims), hidden), nn.GELU(), nn.Linear(hidden, self.k * self.d_model)
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """M tensors [U, D_m] -> [U, k, d_model]."""
        return self.net(torch.cat(feats, dim=-1)).view(-1, self.k, self.d_model)


class ResamplerProjector(nn.Module):
    """k learned queries cross-attend to the item's modality tokens (one pre-norm block).

    Each modality's feature is mapped to a ``width``-d token plus a learned modality embedding;
    the queries attend over these M tokens, then a feed-forward layer, then a linear map to
    ``d_model``.

    Args:
        dims: feature size of each modality.
        d_model: the language model's embedding size.
        k: soft tokens (queries) per item.
        width: attention width (None: d_model); divisible by ``heads``.
        heads: attention heads.
    """

    kind = "resampler"

    def __init__(
        self, dims: Sequence[int], d_model: int, k: int, width: int | None = None, heads: int = 4
    ) -> None:
        super().__init__()
        dims = _check(dims, d_model, k)
        w = int(width or d_model)
        if heads < 1 or w % heads:
            raise ConfigError(f"adapter.projector: width {w} must be divisible by heads {heads}")
        self.k, self.d_model = int(k), int(d_model)
        self.inputs = nn.ModuleList(nn.Linear(d, w) for d in dims)
        self.modality = nn.Parameter(torch.randn(len(dims), w) * 0.02)
        self.queries = nn.Parameter(torch.randn(self.k, w) * 0.02)
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(w), nn.LayerNorm(w), nn.LayerNorm(w)
        self.attn = nn.MultiheadAttention(w, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(w, 4 * w), nn.GELU(), nn.Linear(4 * w, w))
        self.out = nn.Linear(w, self.d_model)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """M tensors [U, D_m] -> [U, k, d_model]."""
        tokens = torch.stack([lin(f) for lin, f in zip(self.inputs, feats, strict=True)], dim=1)  # [U, M, w]
        kv = self.norm_kv(tokens + self.modality)
        q = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)  # [U, k, w]
        h = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        h = h + self.ff(self.norm_ff(h))
        return self.out(h)  # [U, k, d_model]


# ----------------------------------------------------------------------------- soft tokens in prompts


def mention_marker(item: int) -> str:
    """An invisible marker of one item mention in a rendered prompt (see :func:`expand_mentions`)."""
    return f"{_OPEN}{int(item)}{_CLOSE}"


def expand_mentions(text: str, k: int, placeholder: str = PLACEHOLDER) -> tuple[str, list[int]]:
    """Replace every mention marker by ``k`` placeholder tokens.

    Returns:
        (the prompt text, the mentioned items in prompt order).
    """
    items = [int(m) for m in _MARKER.findall(text)]
    return _MARKER.sub(placeholder * int(k), text), items


def add_placeholder_token(model: Any, tokenizer: Any, token: str = PLACEHOLDER) -> int:
    """Add ``token`` as a special token; grow the embeddings if needed; return its id.

    The new input row (and output row when untied) is set to the mean of the existing rows: it
    is overwritten by soft tokens at every use, and in the output layer it starts as an average
    token instead of a random one. No random numbers are drawn.
    """
    tokenizer.add_tokens([token], special_tokens=True)  # never split; the same call in transformers 4 and 5
    tid = int(tokenizer.convert_tokens_to_ids(token))
    emb = model.get_input_embeddings()
    if tid >= emb.weight.shape[0]:
        old = int(emb.weight.shape[0])
        with torch.random.fork_rng(
            devices=[]
        ):  # resizing initialises the new rows randomly: overwritten below
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        emb = model.get_input_embeddings()
        layers = [emb]
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.weight.data_ptr():
            layers.append(out)
        with torch.no_grad():
            for layer in layers:
                layer.weight[old:] = layer.weight[:old].float().mean(0).to(layer.weight.dtype)
    return tid


def soft_token_slots(
    input_ids: torch.Tensor, mentions: Sequence[Sequence[int]], placeholder_id: int, k: int
) -> dict[str, torch.Tensor]:
    """Which item and slot every placeholder position of a padded batch stands for.

    Args:
        input_ids: [B, T] padded token ids (any padding side; prompts possibly left-truncated).
        mentions: B lists of the items mentioned in each row's prompt, in order.
        placeholder_id: the placeholder token id.
        k: soft tokens per mention.

    Returns:
        ``soft_items`` and ``soft_slots``: [B, T] int64 on the CPU, -1 where the token is not a
        placeholder.
    """
    is_ph = input_ids.cpu() == placeholder_id  # [B, T]
    items = torch.full(is_ph.shape, -1, dtype=torch.long)
    slots = torch.full(is_ph.shape, -1, dtype=torch.long)
    for r, row in enumerate(mentions):
        pos = torch.nonzero(is_ph[r]).flatten()
        if len(pos) > len(row) * k:
            raise ValueError(f"row {r}: {len(pos)} placeholder tokens for {len(row)} mentions x {k}")
        flat_items = torch.as_tensor(list(row), dtype=torch.long).repeat_interleave(k)  # [n * k]
        flat_slots = torch.arange(k).repeat(len(row))
        if len(pos):
            items[r, pos] = flat_items[len(flat_items) - len(pos) :]
            slots[r, pos] = flat_slots[len(flat_slots) - len(pos) :]
    return {"soft_items": items, "soft_slots": slots}


def insert_soft_tokens(
    embeds: torch.Tensor,
    soft_items: torch.Tensor,
    soft_slots: torch.Tensor,
    project: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``embeds`` with every placeholder position replaced by its item's projected soft token.

    Each distinct item of the batch is projected once.

    Args:
        embeds: [B, T, d] token embeddings of the batch.
        soft_items: [B, T] item per position, -1 = keep the token embedding.
        soft_slots: [B, T] slot (0..k-1) per position.
        project: [U] items -> [U, k, d] soft tokens.

    Returns:
        [B, T, d] (a new tensor; gradients flow to the projector and the token embeddings).
    """
    where = torch.nonzero(soft_items >= 0, as_tuple=True)
    if len(where[0]) == 0:
        return embeds
    items = soft_items[where]  # [P]
    unique, inverse = torch.unique(items, return_inverse=True)
    soft = project(unique)  # [U, k, d]
    values = soft[inverse, soft_slots[where]].to(embeds.dtype)  # [P, d]
    return embeds.index_put(where, values)
