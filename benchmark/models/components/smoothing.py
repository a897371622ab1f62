"""SmoothQuant-style activation smoothing of a Llama-shaped decoder before int8 quantization.

Dynamic int8 quantization on CPU (torch, fbgemm) quantizes each linear layer's input with ONE
scale per batch. A few input channels of a decoder carry values hundreds of times larger than the
rest (SmolLM2-135M: the input of ``mlp.down_proj`` in layers 11 and 28 peaks at ~2,800 against a
median channel peak of ~1.5), so that scale leaves most channels with a handful of levels and the
answer probabilities drift (|dP(yes)| up to 0.56 on tallrec_movie).

Smoothing (Xiao et al., SmoothQuant, 2023) moves that range from activations into weights with a
per-input-channel factor ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``: the layer computes
``(X / s) (W s)^T``, which equals ``X W^T`` in exact arithmetic, and ``X / s`` is folded into the
operation that produces ``X``, so inference costs nothing extra:

- ``q/k/v_proj`` input -> the weight of ``input_layernorm``;
- ``gate/up_proj`` input -> the weight of ``post_attention_layernorm``;
- ``down_proj`` input (``act(gate) * up``) -> the rows of ``up_proj``;
- ``o_proj`` input (attention-weighted values) -> the rows of ``v_proj`` (grouped-query attention:
  one factor per value channel, shared by the query heads that read it).

LoRA matrices follow the weights they sit beside (``lora_A`` columns with an input factor,
``lora_B`` rows with an output factor), so an fp32-trained adapter stays exact. ``max|X_j|`` comes
from calibration prompts drawn from the train part only (:func:`activation_ranges`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from benchmark.errors import ConfigError


def _base(layer: nn.Module) -> nn.Linear:
    """The plain linear layer (a peft LoRA layer's ``base_layer``, or the layer itself)."""
    base = getattr(layer, "base_layer", layer)
    if type(base) is not nn.Linear:
        raise ConfigError(f"smoothing: expected a linear layer, got {type(base).__name__}")
    return base


def _loras(layer: nn.Module, part: str) -> list[nn.Linear]:
    found = getattr(layer, part, None)
    return [m for m in found.values() if isinstance(m, nn.Linear)] if isinstance(found, nn.ModuleDict) else []


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """[out, in] weight the layer applies: the base weight plus every LoRA delta (B A x scaling)."""
    w = _base(layer).weight.detach().float().clone()
    scaling = getattr(layer, "scaling", {})
    for key, a in getattr(layer, "lora_A", {}).items():
        b = layer.lora_B[key]
        w += (b.weight.float() @ a.weight.float()) * float(scaling.get(key, 1.0))
    return w


@torch.no_grad()
def scale_inputs(layer: nn.Module, s: torch.Tensor) -> None:
    """The layer will read ``X / s``: multiply its weight's columns (and LoRA A's) by ``s``."""
    _base(layer).weight.mul_(s.to(_base(layer).weight.dtype)[None, :])
    for a in _loras(layer, "lora_A"):
        a.weight.mul_(s.to(a.weight.dtype)[None, :])


@torch.no_grad()
def scale_outputs(layer: nn.Module, s: torch.Tensor) -> None:
    """Divide the layer's output channels by ``s`` (weight rows, bias, LoRA B rows)."""
    base = _base(layer)
    base.weight.div_(s.to(base.weight.dtype)[:, None])
    if base.bias is not None:
        base.bias.div_(s.to(base.bias.dtype))
    for b in _loras(layer, "lora_B"):
        b.weight.div_(s.to(b.weight.dtype)[:, None])


@torch.no_grad()
def scale_norm(norm: nn.Module, s: torch.Tensor) -> None:
    """Divide a (RMS/Layer) norm's output channels by ``s`` (its weight, and bias if any)."""
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != s.shape:
        raise ConfigError(f"smoothing: {type(norm).__name__} has no per-channel weight to fold a factor into")
    weight.div_(s.to(weight.dtype))
    bias = getattr(norm, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.div_(s.to(bias.dtype))


def column_max(weights: Iterable[torch.Tensor]) -> torch.Tensor:
    """[in] max |W_j| over the columns j of the [out, in] weights of the layers reading one input."""
    return torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0).float()


def factors(act_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` per input channel j.

    Channels never active in calibration (or with all-zero weights) get ``s_j = 1``.
    """
    a, w = act_max.float(), w_max.float()
    s = a.clamp(min=1e-5).pow(alpha) / w.clamp(min=1e-5).pow(1 - alpha)
    keep = (a <= 0) | (w <= 0) | ~torch.isfinite(s)
    return torch.where(keep, torch.ones_like(s), s.clamp(min=1e-5))


def decoder_blocks(lm: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, block) of every Llama-shaped decoder block: pre-norms, q/k/v/o and gate/up/down.

    Raises:
        ConfigError: the backbone has none (another architecture: smoothing is not defined for it).
    """
    out = []
    for name, m in lm.named_modules():
        attn, mlp = getattr(m, "self_attn", None), getattr(m, "mlp", None)
        if (
            hasattr(m, "input_layernorm")
            and hasattr(m, "post_attention_layernorm")
            and all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
            and all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj"))
        ):
            out.append((name, m))
    if not out:
        raise ConfigError(
            f"smoothing: backbone {type(lm).__name__} has no Llama-shaped decoder blocks "
            "(input_layernorm, self_attn.q/k/v/o_proj, post_attention_layernorm, mlp.gate/up/down_proj)"
        )
    return out


def _heads(block: nn.Module) -> tuple[int, int]:
    """(query heads, key/value heads) of a block's attention."""
    attn = block.self_attn
    cfg = getattr(attn, "config", None)
    n_q = getattr(cfg, "num_attention_heads", None)
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_q
    if not n_q:
        raise ConfigError("smoothing: the attention module does not state its number of heads")
    return int(n_q), int(n_kv)


@torch.no_grad()
def activation_ranges(lm: nn.Module, forward: Callable[[], Any]) -> dict[str, torch.Tensor]:
    """Per-input-channel max |X| of every smoothed layer's input over ``forward()``'s calls.

    Args:
        lm: the backbone.
        forward: runs the calibration prompts through the model (e.g. its own scoring path).

    Returns:
        ``<block name>.<attn|mlp>.<layer>`` -> [in] max absolute input, for q_proj (shared by
        k/v), o_proj, gate_proj (shared by up) and down_proj of every block.
    """
    ranges: dict[str, torch.Tensor] = {}

    def hook(key: str) -> Callable[..., None]:
        def record(_mod: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
            x = inp[0].detach()
            peak = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
            ranges[key] = torch.maximum(ranges[key], peak) if key in ranges else peak

        return record

    handles = []
    for name, block in decoder_blocks(lm):
        for part, layer in (("self_attn", "q_proj"), ("self_attn", "o_proj"), ("mlp", "gate_proj"), ("mlp", "down_proj")):
            module = getattr(getattr(block, part), layer)
            handles.append(module.register_forward_pre_hook(hook(f"{name}.{part}.{layer}")))
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    return ranges


@torch.no_grad()
def smooth(lm: nn.Module, ranges: dict[str, torch.Tensor], alpha: float) -> int:
    """Fold smoothing factors into every decoder block of ``lm``, in place (see the module doc).

    Args:
        lm: the backbone, in floating point (before quantization).
        ranges: :func:`activation_ranges` of the same backbone.
        alpha: migration strength in [0, 1] (0: nothing moves to the weights).

    Returns:
        the number of linear layers whose input was smoothed.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"precision.smooth_alpha: {alpha} is not in [0, 1]")
    n = 0
    for name, block in decoder_blocks(lm):
        attn, mlp = block.self_attn, block.mlp
        missing = [k for k in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj") if f"{name}.{k}" not in ranges]
        if missing:
            raise ConfigError(f"smoothing: no calibration range for {name}.{missing[0]}")
        qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
        s = factors(ranges[f"{name}.self_attn.q_proj"], column_max(effective_weight(m) for m in qkv), alpha)
        scale_norm(block.input_layernorm, s)
        for m in qkv:
            scale_inputs(m, s)
        gate_up = [mlp.gate_proj, mlp.up_proj]
        s = factors(ranges[f"{name}.mlp.gate_proj"], column_max(effective_weight(m) for m in gate_up), alpha)
        scale_norm(block.post_attention_layernorm, s)
        for m in gate_up:
            scale_inputs(m, s)
        s = factors(ranges[f"{name}.mlp.down_proj"], column_max([effective_weight(mlp.down_proj)]), alpha)
        scale_outputs(mlp.up_proj, s)
        scale_inputs(mlp.down_proj, s)
        # o_proj reads the attention-weighted value channels: query head h reads kv head h // group
        n_q, n_kv = _heads(block)
        w_o = effective_weight(attn.o_proj)  # [d, n_q * hd]
        hd = w_o.shape[1] // n_q
        act = ranges[f"{name}.self_attn.o_proj"].reshape(n_kv, n_q // n_kv, hd).amax(dim=1)
        w_max = column_max([w_o]).reshape(n_kv, n_q // n_kv, hd).amax(dim=1)
        s_v = factors(act.reshape(-1), w_max.reshape(-1), alpha)  # [n_kv * hd]
        scale_outputs(attn.v_proj, s_v)
        scale_inputs(attn.o_proj, s_v.reshape(n_kv, 1, hd).expand(n_kv, n_q // n_kv, hd).reshape(-1))
        n += 7
    return n
