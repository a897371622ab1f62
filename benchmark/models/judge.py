"""LLM-as-judge of explanations: a fixed rubric prompt and a causal LM's answer distribution.

The judge reads :data:`RUBRIC` filled with the user's shown history, the recommended item and the
explanation, and answers a score 1-5. It does not sample: its score is the expected digit under
the LM's next-token distribution restricted to the tokens ``1``..``5`` (G-Eval's probability-
weighted score), so the same model and prompt always give the same score and no answer is
unparseable. An explanation is judged *grounded* when its score is at least ``threshold``; the run
reports how often that verdict agrees with the rule-based check of
:mod:`benchmark.eval.grounding`.

The rubric text, its sha256, the judge model's facts and the threshold go into the run record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from benchmark.errors import ConfigError
from benchmark.eval.grounding import Catalogue
from benchmark.models.explainers import ExplainRequest, history_text, item_text
from benchmark.util import sha256_text

RUBRIC = (
    "You check explanations of movie recommendations.\n"
    "Movies the user watched: {history}.\n"
    "Recommended movie: {item}.\n"
    "Explanation: {explanation}\n"
    "Rate the explanation from 1 to 5. 5: every movie it names is one the user watched or the "
    "recommended movie, and every genre or year it states is correct. 1: it names movies the user "
    "did not watch or states wrong facts. Answer with one digit."
)
SCORES = (1, 2, 3, 4, 5)


class LMJudge:
    """Scores explanations with a causal LM and a fixed rubric (see the module docstring).

    Args:
        catalogue: titles, years and genres of the items.
        model: a causal LM by offline name, ``.gguf`` file, folder or hub name.
        rubric: the prompt, with ``{history}``, ``{item}`` and ``{explanation}``.
        threshold: score at or above which an explanation is judged grounded.
        batch_size: prompts per forward pass.
        dtype: weights dtype.
        accelerator: device kind.
        cache_dir: cache root of dequantized GGUF models.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        model: str = "smollm2-135m-instruct",
        rubric: str = RUBRIC,
        threshold: float = 3.0,
        batch_size: int = 8,
        dtype: str = "float32",
        accelerator: str = "cpu",
        cache_dir: str | None = None,
    ) -> None:
        missing = [f for f in ("{history}", "{item}", "{explanation}") if f not in rubric]
        if missing:
            raise ConfigError(f"judge.rubric: the prompt needs the fields {missing}")
        if not 1 <= float(threshold) <= 5:
            raise ConfigError(f"judge.threshold: a score between 1 and 5, got {threshold}")
        self.cat, self.model_name, self.rubric, self.threshold = (
            catalogue,
            str(model),
            rubric,
            float(threshold),
        )
        self.batch_size, self.dtype, self.accelerator, self.cache_dir = (
            int(batch_size),
            dtype,
            accelerator,
            cache_dir,
        )
        self.lm: Any = None
        self.example_prompt = ""

    def _load(self) -> None:
        from benchmark.models.components.llm import load_causal_lm

        self.lm = load_causal_lm(self.model_name, self.dtype, self.accelerator, self.cache_dir)
        tok = self.lm.tokenizer
        ids = [tok(str(d), add_special_tokens=False)["input_ids"] for d in SCORES]
        if any(len(i) != 1 for i in ids):
            raise ConfigError(f"judge.model: {self.model_name}: the digits 1-5 are not single tokens")
        self.digit_ids = [i[0] for i in ids]

    def prompt(self, req: ExplainRequest, explanation: str) -> str:
        """The judge's full prompt for one explanation (chat template when the model has one)."""
        text = self.rubric.format(
            history=history_text(self.cat, req, "{title} ({year})", liked_only=False),
            item=item_text(self.cat, req.item, "{title} ({year}; {genres})"),
            explanation=explanation,
        )
        tok = self.lm.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text + "\nScore:"

    @torch.no_grad()
    def score(self, requests: Sequence[ExplainRequest], explanations: Sequence[str]) -> list[dict[str, Any]]:
        """Per explanation: ``score`` (expected digit, 1-5), ``probs`` (of 1..5, renormalised) and
        ``grounded`` (score >= threshold)."""
        from benchmark.models.components.llm import left_pad, next_token_logits

        if self.lm is None:
            self._load()
        tok = self.lm.tokenizer
        chat = bool(getattr(tok, "chat_template", None))
        prompts = [self.prompt(r, e) for r, e in zip(requests, explanations, strict=True)]
        if prompts and not self.example_prompt:
            self.example_prompt = prompts[0]
        out: list[dict[str, Any]] = []
        digits = torch.as_tensor(self.digit_ids)
        values = torch.as_tensor(SCORES, dtype=torch.float64)
        for start in range(0, len(prompts), self.batch_size):
            ids = [
                tok(p, add_special_tokens=not chat)["input_ids"]
                for p in prompts[start : start + self.batch_size]
            ]
            logits = next_token_logits(self.lm.model, left_pad(ids, tok.pad_token_id))  # [B, V]
            probs = logits.double().cpu()[:, digits].softmax(dim=-1)  # [B, 5] over the digits only
            for p in probs:
                s = round(float((p * values).sum()), 6)
                out.append(
                    {"score": s, "probs": [round(float(x), 6) for x in p], "grounded": s >= self.threshold}
                )
        return out

    def facts(self) -> dict[str, Any]:
        """The judge's description for the run record: model, rubric and its hash, threshold."""
        machine = ("load_seconds", "cache", "dequantize_seconds")
        lm = {
            k: v
            for k, v in (self.lm.facts if self.lm is not None else {"backbone": self.model_name}).items()
            if k not in machine
        }
        return {
            "model": lm,
            "rubric": self.rubric,
            "rubric_sha256": sha256_text(self.rubric),
            "scoring": "expected digit under the next-token distribution restricted to 1..5",
            "threshold": self.threshold,
            "example": self.example_prompt,
        }
