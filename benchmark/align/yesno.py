"""DPO for a TALLRec-style yes/no model: chosen = the true label's answer, rejected = the other.

A step takes a batch of the model's own tuning rows (``train_dataset``: the ``shots`` train rows
drawn by seed, left-padded prompts and the true answer token), reads the log-probabilities of the
two answer tokens at the answer position under the policy and the frozen reference (a copy of the
SFT weights, dropout off) and applies :func:`~benchmark.align.losses.dpo_loss`. Only ``dpo``
applies: a yes/no prompt has exactly one rejected answer and nothing is generated. Validation is
the AUC of P("Yes") on the first ``valid_users`` valid rows.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from benchmark.align.config import AlignConfig
from benchmark.align.losses import dpo_loss
from benchmark.align.task import AlignResult
from benchmark.align.trace import Trace, hacking_flag
from benchmark.errors import ConfigError
from benchmark.eval.metrics import auc
from benchmark.models.components.llm import next_token_logits
from benchmark.models.tallrec import part_labels


def answer_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, 2] log-probs of the (yes, no) answer tokens at the answer position (full-vocabulary softmax)."""
    logits = next_token_logits(model.lm, model._embedded(batch)).float()  # [B, V]
    return torch.log_softmax(logits, dim=-1)[:, torch.as_tensor(model.answer_ids, device=logits.device)]


class YesNoAligner:
    """DPO on a TALLRec model in place (see the module docstring).

    Args:
        model: the policy, loaded with the parent's weights.
        cfg: the checked :class:`AlignConfig` (method must be ``dpo``).
        split: the split (the model's tuning rows; valid rows for validation).
        seed: the run seed (batch order).
        device: where the model runs.
    """

    def __init__(
        self, model: Any, cfg: AlignConfig, split: Any, seed: int, device: torch.device | str = "cpu"
    ) -> None:
        if cfg.method != "dpo":
            raise ConfigError(
                f"align={cfg.method}: a yes/no model has one rejected answer and generates nothing; use align=dpo"
            )
        self.model, self.cfg, self.split, self.device = model, cfg, split, torch.device(device)
        self.stream = model.train_dataset(split, cfg.batch_size, seed)
        self.ref = copy.deepcopy(model).eval()
        for p in self.ref.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """The tuning rows' batches, epoch after epoch."""
        while True:
            yield from self.stream

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """One DPO step; returns the trace values."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        yes = batch["answer"] == self.model.answer_ids[0]  # [B] the true answer is "yes"
        pi = answer_logps(self.model, batch)
        with torch.no_grad():
            ref = answer_logps(self.ref, batch)
        chosen = torch.where(yes, 0, 1)
        rows = torch.arange(len(chosen), device=pi.device)
        out = dpo_loss(
            pi[rows, chosen], pi[rows, 1 - chosen], ref[rows, chosen], ref[rows, 1 - chosen], self.cfg.beta
        )
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()
        return {
            "loss": out.loss.item(),
            "reward": (out.chosen_reward - out.rejected_reward).mean().item(),
            "margin": out.margin.mean().item(),
            "kl": out.kl.item(),
            "validity": None,
        }

    def validate(self) -> float | None:
        """AUC of P("Yes") on the first ``valid_users`` valid rows (None when one class is missing)."""
        valid = self.split.valid.iloc[: self.cfg.valid_users]
        labels = part_labels(self.split, "valid")[: len(valid)]
        if len(set(labels.tolist())) < 2:
            return None
        users = torch.tensor(valid["user"].to_numpy(), device=self.device)
        items = torch.tensor(valid["item"].to_numpy(), device=self.device).unsqueeze(1)  # [N, 1]
        scores = self.model.score_pairs(users, items)[:, 0].cpu().numpy()
        return float(auc(labels, scores.astype(np.float64)))

    def run(self) -> AlignResult:
        """All steps; the trace, the hacking verdict and the facts for the record."""
        cfg = self.cfg
        trace = Trace(cfg.trace_every)
        start, step_seconds = time.perf_counter(), []
        trace.add(0, force=True, valid_metric=self.validate())
        self.model.eval()  # dropout off in policy and reference alike
        batches = self.batches()
        for step in range(1, cfg.steps + 1):
            t0 = time.perf_counter()
            values = self.step(next(batches))
            step_seconds.append(time.perf_counter() - t0)
            last = step == cfg.steps
            valid = self.validate() if (step % cfg.valid_every == 0 or last) else None
            trace.add(step, force=last or step % cfg.valid_every == 0, valid_metric=valid, **values)
        facts = {
            "method": "dpo",
            "beta": cfg.beta,
            "lr": cfg.lr,
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "pairs": "chosen = the true label's answer, rejected = the other answer",
            "reference": "frozen copy of the parent's SFT weights",
            "valid_metric": "auc",
            "valid_users": cfg.valid_users,
        }
        return AlignResult(
            trace.rows,
            hacking_flag(trace.rows, cfg.max_valid_drop),
            facts,
            time.perf_counter() - start,
            step_seconds,
        )
