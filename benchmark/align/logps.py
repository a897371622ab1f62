"""Per-token log-probabilities of item ids given P5 prompts (the one place alignment reads them).

The forward pass is the one :meth:`benchmark.models.p5.P5.loss` trains with (same prompt
tokenisation, padding and, for a decoder-only LM, left padding with the target after the prompt),
so a sequence log-prob here is minus the SFT loss's summed cross-entropy of that item's id tokens
(and EOS). It uses P5's tokenising helpers, which are internal to the model file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from benchmark.models.p5 import P5


def item_token_logps(
    model: P5, prompts: Sequence[str], items: Sequence[int], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of each item's id tokens (and EOS) after its prompt.

    Args:
        model: a P5 model (policy or reference).
        prompts: N prompt strings (repeat a prompt for several items).
        items: N item indices (>= 0).
        device: where the forward pass runs.

    Returns:
        (logps [N, T] float32, mask [N, T] float32: 1 on an item's tokens, 0 on padding).
    """
    targets = [model.item_tokens[int(i)] for i in items]
    ids, mentions = model._tokenize(list(prompts))
    width = max(len(t) for t in targets)
    labels = torch.full((len(targets), width), -100, dtype=torch.long)
    if model.kind == "causal":
        batch = model._inputs([p + t for p, t in zip(ids, targets, strict=True)])
        for r, t in enumerate(targets):
            labels[r, width - len(t) :] = torch.as_tensor(t)
    else:
        batch = model._inputs(ids)
        for r, t in enumerate(targets):
            labels[r, : len(t)] = torch.as_tensor(t)
    if model.adapter is not None:
        batch.update(model.adapter.slots(batch["input_ids"], mentions))
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = labels.to(device)
    inputs = model._lm_inputs(batch)
    if model.kind == "seq2seq":
        dec = labels.masked_fill(labels < 0, model.pad_id)
        out = model.lm(**inputs, attention_mask=batch["attention_mask"], labels=dec)
        logits = out.logits.float()  # [N, T, V]: column j predicts target token j
    else:
        out = model.lm(
            **inputs,
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            logits_to_keep=width + 1,
        )
        logits = out.logits[:, :-1, :].float()  # [N, T, V]
    mask = (labels >= 0).float()
    gathered = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return gathered * mask, mask


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
