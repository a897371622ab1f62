"""The ``align`` config group, typed and checked (``configs/align/{dpo,sdpo,grpo,pgrm}.yaml``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from benchmark.align.negatives import NEGATIVE_MODES
from benchmark.align.rewards import OBJECTIVE_PROMPT, RULE_REWARDS
from benchmark.errors import ConfigError

METHODS = ("dpo", "sdpo", "grpo", "pgrm")
GENERATIONS = ("beam", "sample")


@dataclass(frozen=True)
class JudgeConfig:
    """PGRM's judge: the LM, the objective it judges lists against and its prompt (all recorded)."""

    model: str = "smollm2-135m-instruct"
    objective: str = "a diverse list that covers many different genres"
    prompt: str = OBJECTIVE_PROMPT
    hit_weight: float = 0.0


@dataclass(frozen=True)
class AlignConfig:
    """An alignment stage (see README, "Alignment").

    Attributes:
        method: dpo | sdpo | grpo | pgrm.
        parent: the parent run folder (a trained SFT run).
        beta: KL strength (DPO/S-DPO temperature; GRPO's KL coefficient).
        k: negatives per prompt (dpo: 1).
        negatives: random | popularity | hard.
        group: G generations per prompt (grpo/pgrm).
        generation: how generations are drawn: ``beam`` (trie-constrained beam search, the top
            beams) or ``sample`` (trie-constrained sampling at temperature 1, seeded).
        list_length: items per generated list (pgrm; grpo uses one item per generation).
        reward: hit | ndcg (grpo); pgrm uses the judge.
        invalid_penalty: subtracted per invalid generated slot.
        loss_type, epsilon: GRPO's normalisation (grpo | dapo) and clipping.
        lr, steps, batch_size: the optimiser (AdamW), its steps and prompts per step.
        trace_every, valid_every, valid_users: trace period, validation period and valid rows used.
        max_valid_drop: largest tolerated fall of valid ndcg@10 while the reward rises.
        judge: :class:`JudgeConfig` (pgrm).
    """

    method: str
    parent: str | None = None
    beta: float = 0.1
    k: int = 1
    negatives: str = "random"
    group: int = 4
    generation: str = "beam"
    list_length: int = 1
    reward: str = "hit"
    invalid_penalty: float = 0.1
    loss_type: str = "grpo"
    epsilon: float = 0.2
    lr: float = 1e-5
    steps: int = 100
    batch_size: int = 8
    trace_every: int = 1
    valid_every: int = 50
    valid_users: int = 200
    max_valid_drop: float = 0.005
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def __post_init__(self) -> None:
        checks = [
            (self.method in METHODS, f"align.method: one of {', '.join(METHODS)}"),
            (self.negatives in NEGATIVE_MODES, f"align.negatives: one of {', '.join(NEGATIVE_MODES)}"),
            (self.generation in GENERATIONS, f"align.generation: one of {', '.join(GENERATIONS)}"),
            (self.reward in RULE_REWARDS, f"align.reward: one of {', '.join(RULE_REWARDS)}"),
            (self.loss_type in ("grpo", "dapo"), "align.loss_type: grpo or dapo"),
            (self.beta >= 0 and (self.beta > 0 or self.method not in ("dpo", "sdpo")), "align.beta: > 0"),
            (
                self.k >= 1 and (self.k == 1 or self.method != "dpo"),
                "align.k: >= 1 (dpo: 1; use sdpo for more)",
            ),
            (self.group >= 2, "align.group: at least 2 generations per prompt"),
            (self.list_length >= 1, "align.list_length: >= 1"),
            (
                self.lr > 0 and self.steps >= 1 and self.batch_size >= 1,
                "align: lr > 0, steps >= 1, batch_size >= 1",
            ),
            (
                self.trace_every >= 1 and self.valid_every >= 1 and self.valid_users >= 1,
                "align: periods >= 1",
            ),
            (
                self.max_valid_drop >= 0 and self.invalid_penalty >= 0,
                "align: max_valid_drop, invalid_penalty >= 0",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> AlignConfig:
        """From the ``align`` config node; an unknown key is a one-line ConfigError."""
        data = dict(node)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"align: unknown keys {unknown}")
        judge = dict(data.pop("judge", None) or {})
        jknown = {f.name for f in fields(JudgeConfig)}
        if set(judge) - jknown:
            raise ConfigError(f"align.judge: unknown keys {sorted(set(judge) - jknown)}")
        try:
            return cls(**data, judge=JudgeConfig(**judge))
        except TypeError as e:
            raise ConfigError(f"align: {e}") from None
