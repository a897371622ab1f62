"""Processes and strategies: which process writes, how many there are, Lightning's start-up noise,
and the distributed strategies configured from YAML.

Torch and Lightning are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from benchmark.errors import ConfigError


def is_global_zero() -> bool:
    """True in the process that writes files (global rank 0, before or after Lightning set up)."""
    from pytorch_lightning.utilities import rank_zero_only

    env = int(os.environ.get("NODE_RANK", 0)) * 1000 + int(os.environ.get("LOCAL_RANK", 0))
    return getattr(rank_zero_only, "rank", 0) == 0 and env == 0


def is_distributed(trainer_kwargs: dict[str, Any]) -> bool:
    """Whether the trainer config asks for more than one process."""
    devices, nodes = trainer_kwargs.get("devices", 1), int(trainer_kwargs.get("num_nodes", 1) or 1)
    many = not isinstance(devices, int) or devices != 1
    return (
        nodes > 1
        or (many and devices not in (None, "auto"))
        or trainer_kwargs.get("strategy") not in (None, "auto")
    )


def world_size(trainer_kwargs: dict[str, Any]) -> int:
    """Processes the trainer config asks for (devices per node x nodes)."""
    devices = trainer_kwargs.get("devices", 1)
    n = (
        devices
        if isinstance(devices, int) and devices > 0
        else (len(devices) if isinstance(devices, list) else 1)
    )
    return n * int(trainer_kwargs.get("num_nodes", 1) or 1)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's start-up tips and known-harmless warnings for one call."""
    names = (
        "pytorch_lightning.utilities.rank_zero",
        "pytorch_lightning.accelerators.cuda",
        "lightning.pytorch.utilities.rank_zero",
    )
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for msg in (
                ".*IterableDataset.*__len__.*",
                ".*LeafSpec.*",
                ".*exists and is not empty.*",
                ".*does not have many workers.*",
            ):
                warnings.filterwarnings("ignore", message=msg)
            yield
    finally:
        for n, lvl in levels.items():
            logging.getLogger(n).setLevel(lvl)


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
        raise ValueError(
            f"trainer.strategy.auto_wrap_policy: none of {block_names} is a known transformer block"
        )
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
