"""Rewards of generations: rule-based (hit, rank-discounted hit, validity penalty) and prompt-guided.

A *generation* is a list of items (one item for GRPO's per-beam groups, L items for PGRM's
lists); an invalid slot (``-1``: no item, an excluded item or a repeat, as
:meth:`benchmark.models.p5.P5.map_outputs` maps them) costs ``invalid_penalty``.

- ``hit``: 1 when the target is in the generation.
- ``ndcg``: the rank-discounted hit ``1 / log2(rank + 2)``: rank = the target's position in a
  generated list; for single-item generations, the generation's position in its group (beam order).
- ``pgrm``: a prompt-guided reward (Ye et al.-style reward from a stated objective): an LLM judge
  reads ``objective`` (a config value, recorded) and the list's item titles and answers 1-5;
  the reward is the expected digit rescaled to [0, 1] (G-Eval's probability-weighted score, as
  :class:`benchmark.models.judge.LMJudge`), plus ``hit_weight`` times the hit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from benchmark.errors import ConfigError
from benchmark.util import sha256_text

RULE_REWARDS = ("hit", "ndcg")

OBJECTIVE_PROMPT = (
    "You judge movie recommendation lists.\n"
    "Objective: {objective}\n"
    "Recommended movies: {items}.\n"
    "How well does the list meet the objective, from 1 (not at all) to 5 (fully)? Answer with one digit."
)


def rule_rewards(
    generations: np.ndarray, target: int, kind: str = "hit", invalid_penalty: float = 0.0
) -> np.ndarray:
    """Rule-based rewards of one prompt's group of generations.

    Args:
        generations: [G, L] items per generation (best first), -1 = an invalid slot.
        target: the true next item.
        kind: ``hit`` or ``ndcg`` (rank-discounted hit).
        invalid_penalty: subtracted once per invalid slot (>= 0).

    Returns:
        [G] float64 rewards.
    """
    if kind not in RULE_REWARDS:
        raise ConfigError(f"align.reward: {kind!r} is not one of {', '.join(RULE_REWARDS)}, pgrm")
    gens = np.asarray(generations, dtype=np.int64)
    g, length = gens.shape
    out = np.zeros(g, dtype=np.float64)
    for j in range(g):
        where = np.flatnonzero(gens[j] == int(target))
        if len(where):
            rank = int(where[0]) if length > 1 else j
            out[j] = 1.0 if kind == "hit" else 1.0 / math.log2(rank + 2)
    return out - float(invalid_penalty) * (gens < 0).sum(axis=1)


def validity_rate(generations: np.ndarray) -> float:
    """Share of generated slots that are catalogue items ([..., L] items, -1 = invalid)."""
    gens = np.asarray(generations)
    return float((gens >= 0).mean()) if gens.size else 1.0


class ObjectiveJudge:
    """Prompt-guided reward: a causal LM scores item lists against a stated objective.

    Args:
        titles: [n_items] item titles (the dataset must have them).
        objective: the objective, e.g. ``"a diverse list covering many genres"``.
        model: a causal LM by offline name, ``.gguf`` file, folder or hub name.
        prompt: the judge's prompt with ``{objective}`` and ``{items}``.
        dtype, accelerator, cache_dir: as for :func:`benchmark.models.components.llm.load_causal_lm`.
        lm: an already loaded LM (``model``/``tokenizer`` attributes), for tests and reuse.
    """

    def __init__(
        self,
        titles: Sequence[str] | None,
        objective: str,
        model: str = "smollm2-135m-instruct",
        prompt: str = OBJECTIVE_PROMPT,
        dtype: str = "float32",
        accelerator: str = "cpu",
        cache_dir: str | None = None,
        lm: Any = None,
    ) -> None:
        if titles is None or not len(titles) or all(not str(t).strip() for t in titles):
            raise ConfigError("align.reward=pgrm needs item titles; this dataset has no item text")
        missing = [f for f in ("{objective}", "{items}") if f not in prompt]
        if missing:
            raise ConfigError(f"align.judge.prompt: the prompt needs the fields {missing}")
        if not str(objective).strip():
            raise ConfigError("align.judge.objective: state the objective the lists are judged against")
        self.titles = [str(t) for t in titles]
        self.objective, self.prompt_text, self.model_name = str(objective), prompt, str(model)
        self.dtype, self.accelerator, self.cache_dir, self.lm = dtype, accelerator, cache_dir, lm
        self.digit_ids: list[int] | None = None

    def prompt(self, items: Sequence[int]) -> str:
        """The judge's prompt for one list (invalid slots are left out)."""
        names = [self.titles[int(i)] for i in items if int(i) >= 0]
        return self.prompt_text.format(objective=self.objective, items="; ".join(names) or "(none)")

    def _ensure_lm(self) -> None:
        if self.lm is None:
            from benchmark.models.components.llm import load_causal_lm

            self.lm = load_causal_lm(self.model_name, self.dtype, self.accelerator, self.cache_dir)
        if self.digit_ids is None:
            ids = [self.lm.tokenizer(str(d), add_special_tokens=False)["input_ids"] for d in range(1, 6)]
            if any(len(i) != 1 for i in ids):
                raise ConfigError(
                    f"align.judge.model: {self.model_name}: the digits 1-5 are not single tokens"
                )
            self.digit_ids = [i[0] for i in ids]

    @torch.no_grad()
    def digit_probs(self, prompts: Sequence[str]) -> torch.Tensor:
        """[N, 5] the judge's probabilities of answering 1..5 (renormalised over the digits)."""
        from benchmark.models.components.llm import left_pad, next_token_logits

        self._ensure_lm()
        tok = self.lm.tokenizer
        ids = [tok(p)["input_ids"] for p in prompts]
        logits = next_token_logits(self.lm.model, left_pad(ids, tok.pad_token_id))  # [N, V]
        return logits.double().cpu()[:, torch.as_tensor(self.digit_ids)].softmax(dim=-1)

    def rewards(self, lists: np.ndarray) -> np.ndarray:
        """[G] rewards in [0, 1] of G lists ([G, L] items): (expected digit - 1) / 4."""
        probs = self.digit_probs([self.prompt(row) for row in np.asarray(lists)])
        expected = (probs * torch.arange(1, 6, dtype=torch.float64)).sum(dim=1)
        return ((expected - 1.0) / 4.0).numpy()

    def facts(self) -> dict[str, Any]:
        """For the record: model, objective, prompt and its hash, scoring rule."""
        return {
            "model": self.model_name,
            "objective": self.objective,
            "prompt": self.prompt_text,
            "prompt_sha256": sha256_text(self.prompt_text),
            "scoring": "(expected digit under the next-token distribution restricted to 1..5 - 1) / 4",
        }
