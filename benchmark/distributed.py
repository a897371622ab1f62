"""Helpers for distributed strategies configured from YAML."""

from __future__ import annotations

import importlib.util
from typing import Any

from benchmark.errors import ConfigError


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


def check_trainer(trainer_kwargs: dict[str, Any]) -> None:
    """One-line errors for trainer settings Lightning would reject deep inside ``Trainer``.

    Raises:
        ConfigError: a GPU accelerator without a visible CUDA device, FSDP or DeepSpeed on CPU
            (Lightning supports both on GPUs only), or DeepSpeed without the package.
    """
    import torch

    acc = str(trainer_kwargs.get("accelerator", "auto"))
    strategy = trainer_kwargs.get("strategy", "auto")
    label = strategy if isinstance(strategy, str) else type(strategy).__name__
    name = label.lower()
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={acc} but no CUDA device is visible; on CPU use trainer=cpu or trainer=ddp "
            "trainer.accelerator=cpu"
        )
    sharded = "fsdp" if "fsdp" in name else "deepspeed" if "deepspeed" in name else None
    if sharded and (acc == "cpu" or (acc == "auto" and not torch.cuda.is_available())):
        raise ConfigError(
            f"trainer.strategy={label}: Lightning runs {sharded} on GPUs only (trainer.accelerator={acc}); "
            "on CPU use trainer=ddp"
        )
    if sharded == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"trainer.strategy={label} needs the deepspeed package: pip install deepspeed")
