"""Shared-prefix attention: rows attend to their prompt's keys/values without copying them per row.

Scoring several continuations of one prompt (a user's candidates, a reranker's answers, a
conversation's options) computes the prompt once and reuses its key/value cache. Handing that
cache to ``forward`` as a per-row cache means repeating the prompt's keys/values for every row
(``batch_select_indices``), repeating them again per query head (grouped-query attention) and
concatenating each row's own keys: copies of N x P x layers values that cost more than the
attention itself on a CPU (about half the time of scoring 24 continuations of 8 prompts of
~450 tokens with SmolLM2-135M).

Here the rows run without a cache through an attention function registered with transformers'
``AttentionInterface`` (active only inside :func:`attend_to_prefix`). For each prompt ``b`` it
computes, per layer, the scores of all its rows' queries against the prompt's keys in one
batched product (grouped-query heads share their key/value head, nothing is repeated), the
rows' causal scores against their own keys, one softmax over both parts (a shared maximum and
normaliser), and the weighted sum of both value parts. The result equals attending to the
concatenated keys/values, to float rounding (tests: 1e-5 against separate sequences).

Only for models that route attention through the interface with plain full attention
(:func:`supports_shared_prefix`: no sliding window, no logit soft-capping); others keep the
cache-copy path. Inference only (no dropout).

The in-place path materialises each row's scores against the prompt (rows x heads x L x P
floats), where the copy path pays rows x P x heads x d copies and then runs the fused SDPA kernel:
the copies dominate when rows are short next to their prompt, the scores when they are long.
:func:`in_place_pays` chooses by the prompt-to-row length ratio (``python -m benchmark.bench
prefix_reuse``, one thread, SmolLM2-135M, two runs on the shared machine: in place is 1.71-2.19x
as fast for 8 prompts of ~425 tokens with 24 rows of <= 13 tokens each, ratio ~60; 1.0-1.16x for
210-token prompts with 18-token rows, ratio ~12; 0.84-0.99x for 550-token prompts with 160-token
rows, ratio ~3.4). Beam search (one query per row and step) always reads in place.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

NAME = "llm4rec_shared_prefix"


@dataclass
class _Prefix:
    keys: list[torch.Tensor]  # per layer [B, Hkv, P, d]
    values: list[torch.Tensor]
    mask: torch.Tensor  # [B, P] bool: real prompt tokens
    counts: list[int]  # rows of each prompt, in order
    row_mask: torch.Tensor | None  # [N, L] bool: real row tokens (None: all real, right padding)
    seen: set[int] = field(default_factory=set)


_ACTIVE: contextvars.ContextVar[_Prefix | None] = contextvars.ContextVar("llm4rec_shared_prefix", default=None)
_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("llm4rec_prefix_mode", default="auto")
MODES = ("auto", "in_place", "copied")


@contextmanager
def prefix_mode(mode: str) -> Iterator[None]:
    """Within the block, shared-prefix scoring reads the prompts' cache ``in_place`` whenever the
    model supports it, or always through per-row ``copied`` caches (the path of models without
    shared-prefix attention), instead of ``auto`` (:func:`in_place_pays`): for measuring and
    testing one path against the other."""
    if mode not in MODES:
        raise ValueError(f"prefix mode: one of {', '.join(MODES)}, got {mode!r}")
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_shared_prefix(model: Any, cache: Any) -> bool:
    """Whether ``model`` (or the model a peft wrapper holds) can attend to ``cache``'s prompt
    keys/values through :func:`attend_to_prefix`: its layers call transformers' attention
    interface with plain full causal attention, and the cache exposes per-layer key/value tensors
    (False inside ``prefix_mode("copied")``)."""
    if _MODE.get() == "copied":
        return False
    base = _base(model)
    cfg = base.config.get_text_config(decoder=True)
    layer_types = getattr(cfg, "layer_types", None)
    full = all(t == "full_attention" for t in layer_types) if layer_types else getattr(cfg, "sliding_window", None) is None
    layers = getattr(cache, "layers", None)
    return bool(
        getattr(base, "_supports_attention_backend", False)
        and cfg._attn_implementation in ("sdpa", "eager")
        and full
        and getattr(cfg, "attn_logit_softcapping", None) is None
        and layers
        and all(isinstance(getattr(layer, "keys", None), torch.Tensor) for layer in layers)
    )


IN_PLACE_RATIO = 16  # prompt width / row width from which the in-place path is used (see the docstring)


def in_place_pays(prompt_width: int, row_width: int) -> bool:
    """Whether rows of ``row_width`` tokens read a ``prompt_width``-token prompt faster in place
    than through per-row copies of its cache (:data:`IN_PLACE_RATIO`, measured)."""
    return prompt_width >= IN_PLACE_RATIO * row_width


def reads_in_place(model: Any, cache: Any, prompt_width: int, row_width: int) -> bool:
    """Whether rows of ``row_width`` tokens after a ``prompt_width``-token prompt cache should read
    it in place: the model supports it (:func:`supports_shared_prefix`) and it pays
    (:func:`in_place_pays`, unless ``prefix_mode("in_place")`` asks for it)."""
    if not supports_shared_prefix(model, cache):
        return False
    return _MODE.get() == "in_place" or in_place_pays(prompt_width, row_width)


@contextmanager
def attend_to_prefix(
    model: Any,
    cache: Any,
    prompt_mask: torch.Tensor,
    counts: Sequence[int],
    row_mask: torch.Tensor | None = None,
) -> Iterator[None]:
    """Within the block, ``model``'s forward passes attend to the prompts' cache: passes without a
    cache (scoring continuations), or with a cache of the rows' own tokens only (beam search,
    :func:`~benchmark.models.components.beam_cache.row_prefilled_cache`).

    Args:
        model: a model for which :func:`supports_shared_prefix` holds.
        cache: the prompts' key/value cache (one row per prompt, left-padded to P).
        prompt_mask: [B, P] attention mask of the prompts (1 for real tokens).
        counts: B numbers: the rows of the forward passes are prompt 0's ``counts[0]`` rows, then
            prompt 1's, and so on (their positions continue their prompt's).
        row_mask: [N, L] mask of the rows' own tokens when they are left-padded; None when every
            row is real up to its end (right padding: no real token attends to a later pad).

    Raises:
        RuntimeError: when a forward pass did not route some layer through the shared-prefix
            attention (its output would ignore the prompt).
    """
    base = _base(model)
    state = _Prefix(
        keys=[layer.keys for layer in cache.layers],
        values=[layer.values for layer in cache.layers],
        mask=prompt_mask.bool(),
        counts=[int(c) for c in counts],
        row_mask=None if row_mask is None else row_mask.bool(),
    )
    token = _ACTIVE.set(state)
    before = base.config._attn_implementation
    base.config._attn_implementation = NAME
    try:
        yield
    finally:
        base.config._attn_implementation = before
        _ACTIVE.reset(token)
    if state.seen != set(range(len(state.keys))):
        raise RuntimeError(
            f"shared-prefix attention reached layers {sorted(state.seen)} of {len(state.keys)}: "
            "this model does not route every layer through transformers' attention interface"
        )


def shared_prefix_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function registered as :data:`NAME` (see the module docstring).

    Args:
        query: [N, Hq, L, d] the rows' queries; key, value: [N, Hkv, K, d] their own keys/values,
            K >= L (during decoding a row's cache holds its earlier tokens: query i sits at own
            position K - L + i and reads own keys 0..K - L + i).

    Returns:
        ([N, L, Hq, d] attention output, None).
    """
    state = _ACTIVE.get()
    if state is None:
        raise RuntimeError(f"attention {NAME!r} is only active inside attend_to_prefix()")
    layer = int(module.layer_idx)
    state.seen.add(layer)
    pk, pv = state.keys[layer], state.values[layer]  # [B, Hkv, P, d]
    n, hq, length, d = query.shape
    if sum(state.counts) != n:
        raise RuntimeError(f"shared-prefix attention: {n} rows, but the prompts' counts sum to {sum(state.counts)}")
    hkv = key.shape[1]
    g = hq // hkv  # query heads per key/value head: head h reads key/value head h // g
    gl = g * length
    scale = float(scaling) if scaling is not None else d**-0.5
    q = query.reshape(n, hkv, gl, d)  # [N, Hkv, g*L, d]; query row r of a head group is position r % L
    span = key.shape[2]
    own = torch.ones(length, span, dtype=torch.bool, device=query.device).tril(span - length).repeat(g, 1)  # [g*L, K]
    outs, start = [], 0
    for b, c in enumerate(state.counts):
        if c == 0:
            continue
        rows = slice(start, start + c)
        qb = q[rows].transpose(0, 1)  # [Hkv, c, g*L, d]
        pre = torch.bmm(qb.reshape(hkv, c * gl, d), pk[b].transpose(-1, -2)).float().mul_(scale)  # [Hkv, c*g*L, P]
        pre.masked_fill_(~state.mask[b], float("-inf"))
        mine = torch.matmul(qb, key[rows].transpose(0, 1).transpose(-1, -2)).float().mul_(scale)  # [Hkv, c, g*L, K]
        allowed = own if state.row_mask is None else own & state.row_mask[rows][None, :, None, :]
        mine.masked_fill_(~allowed, float("-inf"))
        pre = pre.view(hkv, c, gl, -1)
        top = torch.maximum(pre.amax(dim=-1), mine.amax(dim=-1))[..., None]  # [Hkv, c, g*L, 1]
        pre = pre.sub_(top).exp_()
        mine = mine.sub_(top).exp_()
        norm = pre.sum(dim=-1, keepdim=True) + mine.sum(dim=-1, keepdim=True)
        dtype = value.dtype
        out = torch.bmm(pre.view(hkv, c * gl, -1).to(dtype), pv[b]).view(hkv, c, gl, d)
        out = out + torch.matmul(mine.to(dtype), value[rows].transpose(0, 1))  # [Hkv, c, g*L, d]
        outs.append((out.float() / norm).to(dtype).transpose(0, 1))  # [c, Hkv, g*L, d]
        start += c
    return torch.cat(outs).view(n, hq, length, d).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, shared_prefix_attention)


_register()
