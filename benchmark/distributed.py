"""Helpers for distributed strategies configured from YAML."""

from __future__ import annotations

from typing import Any


def transformer_block_policy(block_names: list[str]) -> set[type]:
    """FSDP auto-wrap policy: the transformer block classes (by name) found in transformers.

    Unknown names are skipped; at least one must resolve.
    """
    import importlib

    found: set[type] = set()
    modules = {
        "LlamaDecoderLayer": "transformers.models.llama.modeling_llama",
        "T5Block": "transformers.models.t5.modeling_t5",
        "GPT2Block": "transformers.models.gpt2.modeling_gpt2",
        "Qwen2DecoderLayer": "transformers.models.qwen2.modeling_qwen2",
    }
    for name in block_names:
        mod = modules.get(name)
        if mod is None:
            continue
        found.add(getattr(importlib.import_module(mod), name))
    if not found:
        raise ValueError(f"trainer.strategy.auto_wrap_policy: none of {block_names} is a known transformer block")
    return found


def describe(trainer_kwargs: dict[str, Any]) -> str:
    """A short label of the parallel setup for records and logs."""
    strategy = trainer_kwargs.get("strategy", "auto")
    name = strategy if isinstance(strategy, str) else type(strategy).__name__
    return f"{name} x{trainer_kwargs.get('devices', 1)} x{trainer_kwargs.get('num_nodes', 1)} nodes"
