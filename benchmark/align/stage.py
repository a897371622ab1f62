"""The alignment stage of a run (``align=<method>``): parent weights in, aligned weights and facts out.

:func:`benchmark.run.run` calls :func:`align_stage` instead of training when the config has an
``align`` node: the parent run (``align.parent``) is read and checked against this run's split,
data and model config (:mod:`benchmark.align.parent`), its SFT weights are loaded, the
:class:`~benchmark.align.task.Aligner` runs, and the returned training facts (the record's
``training`` node) name the parent and carry the method's settings, the trace and the
reward-hacking verdict. The run is then evaluated and recorded like any other.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from benchmark.align.config import AlignConfig
from benchmark.align.parent import ALIGNABLE, check_parent, locate_weights, read_parent
from benchmark.align.task import Aligner
from benchmark.errors import ConfigError


def item_titles(data: Any, item_ids: np.ndarray) -> list[str] | None:
    """Titles of the split's items (index order), or None when the dataset has no item title."""
    column = (getattr(data, "item_fields", None) or {}).get("title")
    items = getattr(data, "items", None)
    if column is None or items is None or column not in items:
        return None
    titles = items[column].reindex([str(i) for i in item_ids])
    return ["" if not isinstance(t, str) else t for t in titles.tolist()]


def check_align(cfg: DictConfig) -> None:
    """Early checks of an ``align`` run (before any data is read): settings, a readable parent of
    an alignable model, with this run's model and split config (fingerprints are checked when the
    split is built, by :func:`align_stage`).

    Raises:
        ConfigError: one line naming the key.
    """
    node = OmegaConf.to_container(cfg.align, resolve=True)
    acfg = AlignConfig.from_config(node if isinstance(node, Mapping) else {})
    if not acfg.parent:
        raise ConfigError("align.parent: the run folder of the SFT run to align (results/runs/<id>)")
    parent = read_parent(acfg.parent)
    theirs = parent.record["config"]
    if theirs.get("model", {}).get("name") not in ALIGNABLE or cfg.model.name not in ALIGNABLE:
        raise ConfigError(
            f"align.parent: {parent.run_id} is a {theirs.get('model', {}).get('name')!r} run and this run "
            f"a {cfg.model.name!r} run; alignment starts from {', '.join(ALIGNABLE)}"
        )
    if cfg.model.name == "tallrec" and acfg.method != "dpo":
        raise ConfigError(
            f"align={acfg.method}: a yes/no (tallrec) model has one rejected answer; use align=dpo"
        )
    for key in ("split", "model"):
        if theirs.get(key) != OmegaConf.to_container(cfg[key], resolve=True):
            raise ConfigError(
                f"align.parent: {parent.run_id} has another {key} config than this run (align with the parent's {key})"
            )


def align_stage(
    cfg: DictConfig, model: torch.nn.Module, split: Any, data: Any, device: torch.device
) -> dict[str, Any]:
    """Load the parent's weights into ``model``, align it in place, return the training facts.

    Args:
        cfg: the run config (``align``, ``model``, ``paths.outputs``, ``seed``).
        model: the built model (a P5), not trained.
        split: this run's split (its fingerprint is checked against the parent's).
        data: this run's dataset (fingerprint; item titles for pgrm).
        device: where the model runs.

    Returns:
        ``{"seconds", "align": {"parent", "method", "trace", "hacking", "seconds_per_step"}}``.

    Raises:
        ConfigError: bad ``align`` settings, a parent of another split, data or model, missing
            weights, a model the aligner cannot train, pgrm without item titles.
    """
    check_align(cfg)
    acfg = AlignConfig.from_config(OmegaConf.to_container(cfg.align, resolve=True))
    parent = read_parent(acfg.parent)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    check_parent(parent, split.fingerprint, data.fingerprint, model_cfg)
    parent = locate_weights(parent, cfg.paths.outputs)
    yes_no = hasattr(model, "answer_ids")  # TALLRec-style: DPO over the two answers
    if not yes_no and not (hasattr(model, "generate_items") and hasattr(model, "item_tokens")):
        raise ConfigError(f"align: model {cfg.model.name} is neither P5- nor TALLRec-style; nothing to align")
    try:
        model.load_state_dict(torch.load(parent.weights, map_location="cpu", weights_only=True))
    except Exception as e:  # mismatched weights: never align a half-loaded model
        raise ConfigError(
            f"align.parent: cannot load {parent.weights} ({' '.join(str(e).split())[:200]})"
        ) from None
    model.to(device)
    start = time.perf_counter()
    titles = item_titles(data, split.item_ids) if acfg.method == "pgrm" else None
    if yes_no:
        from benchmark.align.yesno import YesNoAligner

        result = YesNoAligner(model, acfg, split, int(cfg.seed), device).run()
    else:
        result = Aligner(model, acfg, int(cfg.seed), device, titles=titles).run()
    steps = np.asarray(result.step_seconds)
    return {
        "seconds": time.perf_counter() - start,
        "align": {
            "parent": parent.facts(),
            "method": result.facts,
            "trace": result.trace,
            "hacking": result.hacking,
            "seconds_per_step": round(float(np.median(steps)), 6) if len(steps) else None,
        },
    }
