"""The alignment loop: a P5 policy, its frozen SFT reference, a preference or policy-gradient loss.

One step draws ``batch_size`` train windows (user, position) by seed; the prompt is the model's
evaluation template over the window's history (the items before the position), the chosen item
is the item at the position. Then, by method:

- ``dpo`` / ``sdpo``: ``k`` negatives per prompt (:mod:`benchmark.align.negatives`; ``hard``
  negatives are the reference's own beams), sequence log-probs of chosen and rejected ids under
  policy and reference, :func:`~benchmark.align.losses.dpo_loss` / ``sdpo_loss``.
- ``grpo``: ``group`` trie-constrained beams (or samples, ``generation=sample``) of the policy
  (one item each; the history is excluded), rule rewards (:func:`~benchmark.align.rewards.rule_rewards`), group-normalised
  advantages, :func:`~benchmark.align.losses.grpo_loss` (one update per generation batch, so
  the old policy is the current one, detached).
- ``pgrm``: as grpo, but each generation is a list of ``list_length`` items (beams
  ``g, g + G, ...`` of ``G * list_length`` beams) and the reward is the judge's score of the
  list against the stated objective (+ ``hit_weight`` * hit); a list's tokens are its items' tokens.

The reference is a frozen deep copy of the SFT weights (with LoRA this is the adapter-enabled
SFT model, the true reference). Dropout is off in both (trl's ``disable_dropout``), so at the
first step the policy equals the reference. AdamW over the policy's trainable parameters. Validation
(ndcg@10 of the first ``valid_users`` valid rows, through the model's own ``rank_rows``) runs at
step 0, every ``valid_every`` steps and after the last step.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from benchmark.align.config import AlignConfig
from benchmark.align.logps import item_token_logps, sequence_logps
from benchmark.align.losses import dpo_loss, group_advantages, grpo_loss, sdpo_loss
from benchmark.align.negatives import sample_negatives
from benchmark.align.rewards import ObjectiveJudge, rule_rewards, validity_rate
from benchmark.align.sampling import sample_items
from benchmark.align.trace import Trace, hacking_flag
from benchmark.eval.metrics import ndcg_at_k
from benchmark.models.components.windows import train_windows
from benchmark.models.p5 import P5


@dataclass
class Batch:
    """Prompts of one step: ``prompts`` [B], ``targets`` [B], ``seen`` (train items) and ``history`` per prompt."""

    prompts: list[str]
    targets: np.ndarray
    seen: list[np.ndarray]
    history: list[np.ndarray]


@dataclass
class AlignResult:
    """What an alignment run reports: trace rows, the hacking verdict, facts, seconds per step."""

    trace: list[dict[str, Any]]
    hacking: dict[str, Any]
    facts: dict[str, Any]
    seconds: float
    step_seconds: list[float] = field(default_factory=list)


class Aligner:
    """Aligns ``model`` in place (see the module docstring).

    Args:
        model: the policy, loaded with the parent's SFT weights.
        cfg: the checked :class:`AlignConfig`.
        seed: the run seed (windows, negatives).
        device: where the model runs.
        judge: PGRM's judge (built from ``cfg.judge`` with ``titles`` when None and method is pgrm).
        titles: item titles for the judge (None: the dataset has none -> ConfigError for pgrm).
    """

    def __init__(
        self,
        model: P5,
        cfg: AlignConfig,
        seed: int,
        device: torch.device | str = "cpu",
        judge: ObjectiveJudge | None = None,
        titles: list[str] | None = None,
    ) -> None:
        self.model, self.cfg, self.device = model, cfg, torch.device(device)
        if cfg.method == "pgrm" and judge is None:
            j = cfg.judge
            judge = ObjectiveJudge(titles, j.objective, j.model, j.prompt)
        self.judge = judge
        self.rng = np.random.default_rng(seed)
        self.users, self.ends = train_windows(model.train_seq)
        counts = np.zeros(model.n_items, dtype=np.int64)
        for seq in model.train_seq:
            np.add.at(counts, np.asarray(seq, dtype=np.int64), 1)
        self.popularity = counts
        self.ref = copy.deepcopy(model).eval()
        for p in self.ref.parameters():
            p.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr)

    # ------------------------------------------------------------------ data

    def batch(self) -> Batch:
        """``batch_size`` train windows drawn by seed."""
        pick = self.rng.integers(0, len(self.users), size=self.cfg.batch_size)
        prompts, targets, seen, history = [], [], [], []
        m = self.model
        for u, e in zip(self.users[pick], self.ends[pick], strict=True):
            seq = np.asarray(m.train_seq[u], dtype=np.int64)
            hist = seq[max(0, e - m.history) : e]
            prompts.append(m._render(m.prompts.eval, hist, int(u)))
            targets.append(int(seq[e]))
            seen.append(seq)
            history.append(seq[:e])
        return Batch(prompts, np.asarray(targets, dtype=np.int64), seen, history)

    def negatives(self, b: Batch) -> np.ndarray:
        """[B, k] negatives (hard: the reference's beams, best first, minus train items and target)."""
        cands: list[Any] = [None] * len(b.prompts)
        if self.cfg.negatives == "hard":
            beams = max(self.cfg.k + 1, 2)
            cands = list(self.ref.generate_items(b.prompts, b.history, beams, self.device)[0])
        return np.stack(
            [
                sample_negatives(
                    self.cfg.negatives, self.cfg.k, self.model.n_items, s, t, self.rng, self.popularity, c
                )
                for s, t, c in zip(b.seen, b.targets, cands, strict=True)
            ]
        )

    # ------------------------------------------------------------------ steps

    def preference_step(self, b: Batch) -> dict[str, Any]:
        """One DPO / S-DPO step; returns the trace values."""
        neg = self.negatives(b)  # [B, k]
        items = np.concatenate([b.targets[:, None], neg], axis=1)  # [B, 1 + k]: chosen first
        pi = sequence_logps(self.model, b.prompts, items, self.device)
        with torch.no_grad():
            ref = sequence_logps(self.ref, b.prompts, items, self.device)
        if self.cfg.method == "dpo":
            out = dpo_loss(pi[:, 0], pi[:, 1], ref[:, 0], ref[:, 1], self.cfg.beta)
        else:
            out = sdpo_loss(pi[:, 0], pi[:, 1:], ref[:, 0], ref[:, 1:], self.cfg.beta)
        self._update(out.loss)
        return {
            "loss": out.loss.item(),
            "reward": (out.chosen_reward - out.rejected_reward).mean().item(),
            "margin": out.margin.mean().item(),
            "kl": out.kl.item(),
            "validity": None,
        }

    def _generations(self, b: Batch) -> tuple[np.ndarray, np.ndarray]:
        """([B, G, L] generated items, -1 = invalid; [B, G] rewards)."""
        g, length = self.cfg.group, self.cfg.list_length
        if self.cfg.generation == "sample":
            seed = int(self.rng.integers(2**31))
            items = sample_items(self.model, b.prompts, b.history, g * length, seed, self.device)  # [B, G*L]
        else:
            items, _ = self.model.generate_items(b.prompts, b.history, g * length, self.device)  # [B, G*L]
        gens = (
            items[:, : g * length].reshape(len(b.prompts), length, g).transpose(0, 2, 1)
        )  # beams g, g+G, ...
        rewards = np.zeros((len(b.prompts), g))
        for r in range(len(b.prompts)):
            if self.cfg.method == "grpo":
                rewards[r] = rule_rewards(gens[r], b.targets[r], self.cfg.reward, self.cfg.invalid_penalty)
            else:
                hits = rule_rewards(gens[r], b.targets[r], "hit", 0.0)
                rewards[r] = self.judge.rewards(gens[r]) + self.cfg.judge.hit_weight * hits
                rewards[r] -= self.cfg.invalid_penalty * (gens[r] < 0).sum(axis=1)
        return gens, rewards

    def policy_step(self, b: Batch) -> dict[str, Any]:
        """One GRPO / PGRM step; returns the trace values."""
        gens, rewards = self._generations(b)
        bsz, g, length = gens.shape
        flat = gens.reshape(-1)  # [B*G*L]
        prompts = [p for p in b.prompts for _ in range(g * length)]
        safe = np.where(flat >= 0, flat, 0).tolist()
        logps, mask = item_token_logps(self.model, prompts, safe, self.device)  # [B*G*L, T]
        with torch.no_grad():
            ref_logps, _ = item_token_logps(self.ref, prompts, safe, self.device)
        mask = mask * torch.as_tensor(flat >= 0, dtype=mask.dtype, device=mask.device).unsqueeze(1)
        t = logps.shape[1]
        # [B*G*L, T] -> [B*G, L*T]: a generation's tokens are its items' tokens in list order.
        logps, ref_logps, mask = (x.reshape(bsz * g, length * t) for x in (logps, ref_logps, mask))
        adv = group_advantages(torch.as_tensor(rewards, dtype=torch.float32)).reshape(-1).to(logps.device)
        out = grpo_loss(
            logps,
            logps.detach(),
            ref_logps,
            adv,
            mask,
            self.cfg.beta,
            self.cfg.epsilon,
            loss_type=self.cfg.loss_type,
        )
        self._update(out.loss)
        seq = (logps.detach() * mask).sum(dim=1).view(bsz, g)
        best = torch.as_tensor(rewards.argmax(axis=1), device=seq.device)
        worst = torch.as_tensor(rewards.argmin(axis=1), device=seq.device)
        rows = torch.arange(bsz, device=seq.device)
        return {
            "loss": out.loss.item(),
            "reward": float(rewards.mean()),
            "margin": (seq[rows, best] - seq[rows, worst]).mean().item(),
            "kl": out.kl.item(),
            "validity": validity_rate(gens),
        }

    def _update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    # ------------------------------------------------------------------ validation and the loop

    def validate(self) -> float:
        """ndcg@10 of the first ``valid_users`` valid rows (the model's own constrained ranking)."""
        rows = self.model._valid_rows
        ids = np.arange(min(self.cfg.valid_users, len(rows)))
        if len(ids) == 0:
            return 0.0
        ranked = self.model.rank_rows(rows, ids, 10, self.device)  # [R, 10]
        hits = np.stack([np.isin(ranked[j], rows.targets_of(int(r))) for j, r in enumerate(ids)])
        n_targets = np.asarray([len(rows.targets_of(int(r))) for r in ids])
        return float(np.mean(ndcg_at_k(hits, n_targets, 10)))

    def run(self) -> AlignResult:
        """All steps; the trace, the hacking verdict and the facts for the record."""
        cfg = self.cfg
        trace = Trace(cfg.trace_every)
        start, step_seconds = time.perf_counter(), []
        trace.add(0, force=True, valid_metric=self.validate())
        self.model.eval()  # dropout off in policy and reference alike (trl's disable_dropout default)
        for step in range(1, cfg.steps + 1):
            t0 = time.perf_counter()
            b = self.batch()
            values = self.preference_step(b) if cfg.method in ("dpo", "sdpo") else self.policy_step(b)
            step_seconds.append(time.perf_counter() - t0)
            last = step == cfg.steps
            valid = self.validate() if (step % cfg.valid_every == 0 or last) else None
            trace.add(step, force=last or valid is not None, valid_metric=valid, **values)
        return AlignResult(
            trace.rows,
            hacking_flag(trace.rows, cfg.max_valid_drop),
            self.facts(),
            time.perf_counter() - start,
            step_seconds,
        )

    def facts(self) -> dict[str, Any]:
        """The method's settings for the record (judge included for pgrm)."""
        c = self.cfg
        out: dict[str, Any] = {
            "method": c.method,
            "beta": c.beta,
            "lr": c.lr,
            "steps": c.steps,
            "batch_size": c.batch_size,
            "reference": "frozen copy of the parent's SFT weights",
            "valid_metric": "ndcg@10",
            "valid_users": c.valid_users,
        }
        if c.method in ("dpo", "sdpo"):
            out.update(k=c.k, negatives=c.negatives)
        else:
            out.update(
                group=c.group,
                generation=(
                    "trie-constrained sampling, temperature 1, seeded"
                    if c.generation == "sample"
                    else "trie-constrained beam search (the top beams)"
                ),
                list_length=c.list_length,
                loss_type=c.loss_type,
                epsilon=c.epsilon,
                invalid_penalty=c.invalid_penalty,
            )
            out["reward"] = (
                c.reward if c.method == "grpo" else {**self.judge.facts(), "hit_weight": c.judge.hit_weight}
            )
        return out
