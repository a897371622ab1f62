"""The identity of a run: its config hashes, training key, model label and run id.

Torch-free (``llm4rec validate`` and the config checks import it without loading a model):
only the standard library, OmegaConf and :mod:`benchmark.util`. Run records carry these values
and validation recomputes them, so the outputs must never change for an existing config.
"""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from benchmark.util import sha256_text

# Config keys that do not change results: left out of the config hash.
NOT_RESULT_KEYS = (
    "paths",
    "logger",
    "run_name",
    "hydra",
    "reuse_trained",
    "reproduce",
    "ckpt_path",
    "skip_existing",
    "save_item_embeddings",
)


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form hashes are taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def adapter_on(node: Any) -> bool:
    """Whether an ``adapter`` config node is anything but ``adapter=none`` (or absent).

    The same rule as :func:`benchmark.models.components.adapter.is_active_node`, written here
    so that hashing a config does not import the adapter module (and torch with it).
    """
    return node is not None and (node.get("name", "none") if hasattr(node, "get") else "none") != "none"


def result_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without keys that cannot change a result: cache locations, and
    ``adapter=none`` (runs without an item adapter hash as they did before adapters existed)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    for k in NOT_RESULT_KEYS:
        c.pop(k, None)
    if isinstance(c.get("data"), dict):  # where prepared data is cached ($LLM4REC_CACHE) does not change it
        c["data"] = {k: v for k, v in c["data"].items() if k != "cache_dir"}
        if c["data"].get("duplicates") == "error":  # the default rule: hashes as runs made before the option
            del c["data"]["duplicates"]
    if isinstance(c.get("split"), dict) and not c["split"].get("truncate_users", 0):
        # No cold-user truncation (the default): hashes as runs made before the option.
        c["split"].pop("truncate_users", None)
        c["split"].pop("truncate_to", None)
    if isinstance(c.get("eval"), dict) and c["eval"].get("test_users", 0) is None:
        del c["eval"]["test_users"]  # all test users (the default): hashes as runs made before the option
    if isinstance(c.get("eval"), dict) and not c["eval"].get("also_candidates", False):
        # No candidates view (the default): hashes as runs made before the option; its size is unread.
        c["eval"].pop("also_candidates", None)
        c["eval"].pop("candidates_negatives", None)
    if not adapter_on(c.get("adapter")):
        c.pop("adapter", None)
    else:  # where features and downloaded weights are cached does not change them
        c["adapter"] = {k: v for k, v in c["adapter"].items() if k != "cache_dir"}
        if isinstance(c["adapter"].get("encoder"), dict):
            c["adapter"]["encoder"] = {k: v for k, v in c["adapter"]["encoder"].items() if k != "cache_dir"}
    module = (c.get("model") or {}).get("module") if isinstance(c.get("model"), dict) else None
    if isinstance(module, dict) and module.get("gradient_checkpointing") is False:
        del module["gradient_checkpointing"]  # the default: hashes as runs made before the option
    if isinstance(module, dict):  # reading P("Yes") from the score cache does not change it (to float rounding)
        module.pop("score_cache", None)
    if isinstance(module, dict) and isinstance(module.get("features"), dict):  # the text tower's feature store
        feats = module["features"] = {k: v for k, v in module["features"].items() if k != "cache_dir"}
        if isinstance(feats.get("encoder"), dict):
            feats["encoder"] = {k: v for k, v in feats["encoder"].items() if k != "cache_dir"}
    if isinstance(c.get("describe"), dict):  # where descriptions are cached does not change them
        c["describe"] = {k: v for k, v in c["describe"].items() if k != "cache_dir"}
    if isinstance(c.get("trainer"), dict):
        c["trainer"] = {k: v for k, v in c["trainer"].items() if k not in ("enable_progress_bar",)}
    return c


def config_hashes(cfg: DictConfig) -> tuple[str, str]:
    """(hash of the result config, hash of it without the seed): the run and its seed group."""
    c = result_config(cfg)
    full = sha256_text(canonical_json(c))
    c.pop("seed", None)
    return full, sha256_text(canonical_json(c))


def training_key(cfg: DictConfig) -> str:
    """Hash of everything that determines the trained weights (the eval protocol does not)."""
    c = result_config(cfg)
    ev = c.pop("eval", {}) or {}
    c.pop("slices", None)
    c["valid_metric"] = ev.get("valid_metric")
    if isinstance(c.get("precision"), dict) and c["precision"].get("inference_only", True):
        c.pop("precision")  # applied to the trained weights at evaluation: the same weights train
    return sha256_text(canonical_json(c))


def model_label(cfg: DictConfig) -> str:
    """The model's label, with its item adapter when one is on (e.g. ``p5-collaborative+clip_proj-text-minilm``).

    The adapter's part of the label comes from its validated config, so the adapter module (and
    torch) is imported only for a run with an adapter.
    """
    label = cfg.model.get("label") or cfg.model.name
    # An aligned run (``align=<method>``) ends its label with the method, e.g. ``p5-collaborative+dpo``.
    aligned = f"+{cfg.align.method}" if cfg.get("align") is not None else ""
    # A backbone precision (``precision=<option>``) ends it with ``@<option>``, e.g. ``tallrec-64shot@int8``.
    aligned += f"@{cfg.precision.name}" if cfg.get("precision") is not None else ""
    # Generated item descriptions (``describe=<generator>``) add ``+desc-<generator>``.
    aligned += f"+desc-{cfg.describe.name}" if cfg.get("describe") is not None else ""
    module = cfg.model.get("module") if hasattr(cfg.model, "get") else None
    features = module.get("features") if hasattr(module, "get") else None
    if features is not None:  # the text tower on other frozen features, e.g. ``text_tower+text-ViT-B-32-rand``
        from benchmark.models.components.adapter import encoder_label

        mods = "-".join(features.get("modalities") or ["text"])
        label += f"+{mods}-{encoder_label(features.get('encoder')) or 'features'}"
    if not adapter_on(cfg.get("adapter")):
        return label + aligned
    from benchmark.models.components.adapter import adapter_label

    return label + adapter_label(cfg.get("adapter")) + aligned


def run_id_for(cfg: DictConfig, config_hash: str) -> str:
    """Readable, deterministic id: dataset-protocol-eval-model-seed-hash."""
    label = model_label(cfg)
    split = cfg.split.protocol
    if cfg.split.get("truncate_users", 0):  # the cold-user view says so in its id
        split += "-cold_user"
    return f"{cfg.data.name}-{split}-{cfg.eval.protocol}-{label}-s{cfg.seed}-{config_hash[:8]}"
