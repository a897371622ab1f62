"""Per-token log-probabilities of item ids given P5 prompts (the one place alignment reads them).

The forward pass is the one :meth:`benchmark.models.p5.P5.loss` trains with (same prompt
tokenisation, padding and, for a decoder-only LM, left padding with the target after the prompt),
so a sequence log-prob here is minus the SFT loss's summed cross-entropy of that item's id tokens
(and EOS). The model computes them (:meth:`benchmark.models.p5.P5.item_logps`, the
:class:`~benchmark.models.contract.ItemLogProbs` capability).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from benchmark.errors import ConfigError
from benchmark.models.contract import ItemLogProbs
from benchmark.models.p5 import P5


def item_token_logps(
    model: P5, prompts: Sequence[str], items: Sequence[int], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of each item's id tokens (and EOS) after its prompt: ``model.item_logps``.

    Returns:
        (logps [N, T] float32, mask [N, T] float32: 1 on an item's tokens, 0 on padding).
    """
    if not isinstance(model, ItemLogProbs):
        raise ConfigError(f"align: model {type(model).__name__} has no item_logps(prompts, items, device)")
    return model.item_logps(prompts, items, device)


def sequence_logps(
    model: P5, prompts: Sequence[str], items: np.ndarray, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Summed log-probs of items: ``items`` [B, m] per prompt (B prompts) -> [B, m]."""
    items = np.asarray(items, dtype=np.int64)
    b, m = items.shape
    logps, _ = item_token_logps(
        model, [p for p in prompts for _ in range(m)], items.reshape(-1).tolist(), device
    )
    return logps.sum(dim=1).view(b, m)
