"""LoRA adapters (peft) on a language model, and the state dict of adapter tuning.

One home for what P5 and TALLRec share: the ``lora`` config node validated
(:func:`lora_settings`), the backbone wrapped with peft (:func:`wrap_lora`), and the hooks that keep
only trainable weights in ``state_dict()`` (the frozen backbone is rebuilt from its source, so
checkpoints and reused weights hold the adapters only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from benchmark.errors import ConfigError

LORA_KEYS = ("r", "alpha", "dropout", "target_modules")


def lora_settings(lora: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validated LoRA settings (r, alpha, dropout, target_modules) from config, or None."""
    if lora is None:
        return None
    lora = dict(lora)
    unknown = set(lora) - set(LORA_KEYS)
    if unknown:
        raise ConfigError(
            f"model.module.lora: unknown key(s) {sorted(unknown)} (r, alpha, dropout, target_modules)"
        )
    out = {
        "r": int(lora.get("r", 8)),
        "alpha": float(lora.get("alpha", 16)),
        "dropout": float(lora.get("dropout", 0.05)),
        "target_modules": list(lora.get("target_modules", ["q_proj", "v_proj"])),
    }
    if out["r"] < 1 or not 0.0 <= out["dropout"] < 1.0 or not out["target_modules"]:
        raise ConfigError(f"model.module.lora: need r >= 1, 0 <= dropout < 1, target_modules; got {out}")
    return out


def wrap_lora(
    model: Any,
    settings: Mapping[str, Any],
    kind: str = "causal",
    trainable_token_indices: Sequence[int] | None = None,
) -> Any:
    """The model with LoRA adapters: every base weight frozen, the adapters trainable.

    The adapters are initialised by peft from the global torch random stream (as
    ``get_peft_model`` always does), so the same seed and the same settings give the same weights.

    Args:
        model: a Hugging Face causal or seq2seq LM.
        settings: :func:`lora_settings` output (``r``, ``alpha``, ``dropout``, ``target_modules``).
        kind: ``causal`` or ``seq2seq`` (peft's task type).
        trainable_token_indices: token ids whose embedding rows train too (new item-id tokens);
            None = none.

    Raises:
        ConfigError: peft refuses the settings (e.g. a target module the model does not have).
    """
    from peft import LoraConfig, get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    cfg = LoraConfig(
        r=settings["r"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        target_modules=settings["target_modules"],
        bias="none",
        task_type="SEQ_2_SEQ_LM" if kind == "seq2seq" else "CAUSAL_LM",
        trainable_token_indices=None if trainable_token_indices is None else list(trainable_token_indices),
    )
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:
        raise ConfigError(f"model.module.lora: {str(e).splitlines()[0]}") from None


def keep_trainable_in_state_dict(
    module: torch.nn.Module, state_dict: dict, prefix: str, local_metadata: Any
) -> None:
    """state_dict post-hook for adapter tuning: drop frozen parameters and buffers (the backbone is
    rebuilt from its source), under every name a tied weight has."""
    for name, p in module.named_parameters(remove_duplicate=False):
        if not p.requires_grad:
            state_dict.pop(prefix + name, None)
    for name, _ in module.named_buffers(remove_duplicate=False):
        state_dict.pop(prefix + name, None)


def ignore_frozen_on_load(module: torch.nn.Module, incompatible: Any) -> None:
    """load_state_dict post-hook matching :func:`keep_trainable_in_state_dict`: frozen parameters and
    buffers are not expected in the loaded dict."""
    frozen = {n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    frozen |= {n for n, _ in module.named_buffers(remove_duplicate=False)}
    keep = [k for k in incompatible.missing_keys if not any(k.endswith("." + f) or k == f for f in frozen)]
    incompatible.missing_keys[:] = keep


def track_trainable_state(module: torch.nn.Module) -> None:
    """Register both hooks on ``module``: its state dict holds (and expects) trainable weights only."""
    module.register_state_dict_post_hook(keep_trainable_in_state_dict)
    module.register_load_state_dict_post_hook(ignore_frozen_on_load)
