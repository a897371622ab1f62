"""Explanation generators: one sentence saying why a user may like a recommended item.

- :class:`TemplateExplainer`: ``Because you liked <history title> (<shared genre>).``: the most
  recent liked history item sharing the most genres with the recommended item (a baseline that is
  grounded by construction).
- :class:`LMExplainer`: a language model prompted with the user's history and the item. A causal LM
  (any name or path :func:`~benchmark.models.components.llm.load_causal_lm` takes; the offline
  default is SmolLM2-135M-Instruct) gets a chat prompt, zero-shot or after LoRA tuning on reference
  texts (:meth:`LMExplainer.tune`); a T5 backbone (a from-scratch preset, or a pretrained seq2seq
  model by name or path) gets P5's explanation prompt (``Generate an explanation for user_{user}
  about this product : {item_title}``) and is tuned the same way (all weights for a from-scratch
  preset, LoRA otherwise).

Every generator maps a list of :class:`ExplainRequest` to one string each and reports
``facts()`` for the run record. Decoding is greedy; the output is cut after its first sentence.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmark.errors import ConfigError
from benchmark.eval.grounding import Catalogue

PROMPT_STYLES = ("chat", "plain", "p5")
P5_EXPLANATION_PROMPT = "Generate an explanation for user_{user} about this product : {item_title}"


@dataclass(frozen=True)
class ExplainRequest:
    """One (user, recommended item) pair to explain.

    Attributes:
        user: the raw user id.
        item: the recommended item's index.
        history: the user's most recent train item indices (oldest first) shown to the generator.
        liked: 1/0 per history item (rating above the like threshold).
    """

    user: str
    item: int
    history: tuple[int, ...]
    liked: tuple[int, ...]


def display_title(title: str) -> str:
    """The form a generator writes a title in: ``Godfather, The`` -> ``The Godfather`` (an alias the
    grounding check knows); any other title as stored."""
    m = re.match(r"^(.+), (The|A|An)$", title)
    return f"{m[2]} {m[1]}" if m else title


def first_sentence(text: str) -> str:
    """``text`` up to its first sentence end (``.``, ``!`` or ``?`` before a space or the end) or
    line break, whitespace collapsed."""
    text = text.strip().split("\n")[0]
    m = re.search(r"[.!?](?=\s|$)", text)
    return " ".join((text[: m.end()] if m else text).split())


class _SentenceDone:
    """Generation stopping criterion: per row, True once the decoded output holds a complete first
    sentence (a sentence end followed by a space, or a line break after some text)."""

    def __init__(self, tokenizer: Any, start: int) -> None:
        self.tokenizer, self.start = tokenizer, start

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        done = [bool(re.search(r"[.!?]\s", t.lstrip())) or "\n" in t.strip() for t in texts]
        return torch.as_tensor(done, dtype=torch.bool, device=input_ids.device)


class TemplateExplainer:
    """``Because you liked <title> (<genre>).``, from the history and the item's genres.

    Args:
        catalogue: titles, years and genres of the items.
        template: with ``{title}`` (a history item) and ``{genre}`` (a genre it shares with the
            recommended item).
        no_genre: used when no history item shares a genre (``{title}``: the most recent liked one).
        no_history: used for a user without history (``{item_title}``).
        name: label of the generator in the run id.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        template: str = "Because you liked {title} ({genre}).",
        no_genre: str = "Because you liked {title}.",
        no_history: str = "{item_title} is popular with viewers like you.",
        name: str = "template",
    ) -> None:
        self.cat, self.template, self.no_genre, self.no_history, self.name = (
            catalogue,
            template,
            no_genre,
            no_history,
            name,
        )

    def pick(self, req: ExplainRequest) -> tuple[int | None, str | None]:
        """(history item, shared genre): liked items first, then the most shared genres, then the
        most recent; (None, None) without history."""
        if not req.history:
            return None, None
        pool = [i for i, lk in zip(req.history, req.liked, strict=True) if lk] or list(req.history)
        target = self.cat.genres[req.item]
        best = max(range(len(pool)), key=lambda j: (len(set(self.cat.genres[pool[j]]) & set(target)), j))
        shared = [g for g in target if g in self.cat.genres[pool[best]] and g.lower() != "unknown"]
        return pool[best], (shared[0] if shared else None)

    def explain(self, requests: Sequence[ExplainRequest]) -> list[str]:
        """One explanation per request."""
        out = []
        for req in requests:
            hist, genre = self.pick(req)
            if hist is None:
                out.append(self.no_history.format(item_title=display_title(self.cat.titles[req.item])))
                continue
            title = display_title(self.cat.titles[hist])
            out.append(
                self.template.format(title=title, genre=genre) if genre else self.no_genre.format(title=title)
            )
        return out

    def facts(self) -> dict[str, Any]:
        """The generator's description for the run record."""
        return {
            "name": self.name,
            "kind": "template",
            "template": self.template,
            "no_genre": self.no_genre,
            "no_history": self.no_history,
            "rule": "liked history items first, then most genres shared with the item, then most recent",
        }


def history_text(cat: Catalogue, req: ExplainRequest, fmt: str, liked_only: bool = True) -> str:
    """The history items (liked ones when ``liked_only`` and any is liked), newest first, each
    formatted with ``{title}``, ``{year}``, ``{genres}``."""
    items = [i for i, lk in zip(req.history, req.liked, strict=True) if lk or not liked_only]
    items = items or list(req.history)
    return ", ".join(item_text(cat, i, fmt) for i in reversed(items)) or "(none)"


def item_text(cat: Catalogue, i: int, fmt: str) -> str:
    """One item formatted with ``{title}``, ``{year}`` and ``{genres}`` (comma-separated); an empty
    parenthesis or separator left by a missing year or genre is removed."""
    year = cat.years[i]
    genres = ", ".join(g for g in cat.genres[i] if g.lower() != "unknown")
    text = fmt.format(title=display_title(cat.titles[i]), year="" if year is None else year, genres=genres)
    text = re.sub(r"\(\s*[;,]\s*", "(", text)
    text = re.sub(r"\s*[;,]\s*\)", ")", text)
    return " ".join(re.sub(r"\(\s*\)", "", text).split())


DEFAULT_PROMPT: dict[str, str] = {
    "style": "chat",
    "system": "You are a helpful movie recommender. You answer in one short sentence.",
    "user": (
        "Movies the user liked: {history}.\n"
        "Recommended movie: {item}.\n"
        "In one sentence, tell the user why they may like {item_title}, naming a movie they liked."
    ),
    "history_item": "{title} ({year})",
    "item": "{title} ({year}; {genres})",
    # The start of the answer, written into the prompt after the assistant turn begins; the model
    # continues it and the explanation includes it ("" = the model starts the answer itself).
    "answer_prefix": "Because you liked",
}


class LMExplainer:
    """A language model that writes the explanation (see the module docstring).

    Args:
        catalogue: titles, years and genres of the items.
        backbone: a causal LM (offline name, ``.gguf`` file, folder or hub name), a T5 preset
            (``t5-small-scratch``, ``t5-tiny-scratch``) or a pretrained seq2seq model.
        prompt: ``style`` (``chat``, ``plain`` or ``p5``; default ``chat`` for causal LMs, ``p5``
            for T5), ``system`` and ``user`` texts with the fields ``{history}``, ``{item}``,
            ``{item_title}``, ``{user}``, the ``history_item`` / ``item`` formats and ``answer_prefix``
            (the answer's start, written after the prompt; the explanation includes it).
        max_new_tokens: generation budget per explanation.
        batch_size: prompts generated together.
        dtype: weights dtype (``float32`` by default: CPU runs).
        accelerator: the device kind (``cpu``, ``gpu``).
        cache_dir: cache root of dequantized GGUF backbones.
        tune: None (zero-shot), or ``steps``, ``lr``, ``batch_size`` and ``lora`` (r, alpha,
            dropout, target_modules; ignored for a from-scratch preset, whose weights all train).
        seed: seed of tuning (adapter init, example order) and of new weights.
        name: label of the generator in the run id (default: derived from backbone and tuning).
    """

    def __init__(
        self,
        catalogue: Catalogue,
        backbone: str = "smollm2-135m-instruct",
        prompt: Mapping[str, Any] | None = None,
        max_new_tokens: int = 48,
        batch_size: int = 8,
        dtype: str = "float32",
        accelerator: str = "cpu",
        cache_dir: str | None = None,
        tune: Mapping[str, Any] | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        if max_new_tokens < 1 or batch_size < 1:
            raise ConfigError(
                f"generator: max_new_tokens and batch_size must be >= 1, got {max_new_tokens}, {batch_size}"
            )
        self.cat, self.backbone, self.dtype, self.accelerator = catalogue, str(backbone), dtype, accelerator
        self.max_new_tokens, self.batch_size, self.cache_dir, self.seed = (
            int(max_new_tokens),
            int(batch_size),
            cache_dir,
            int(seed),
        )
        self.prompt_cfg = dict(prompt or {})
        unknown = set(self.prompt_cfg) - {"style", *DEFAULT_PROMPT}
        if unknown:
            raise ConfigError(
                f"generator.prompt: unknown key(s) {sorted(unknown)} ({', '.join(DEFAULT_PROMPT)})"
            )
        self.tune_cfg = dict(tune) if tune else None
        self.name = name
        self.model: Any = None
        self.tokenizer: Any = None
        self.kind = ""
        self.lm_facts: dict[str, Any] = {}
        self.tuning: dict[str, Any] | None = None
        self.example_prompt = ""

    # ------------------------------------------------------------------ setup

    def setup(
        self, requests: Sequence[ExplainRequest], examples: Sequence[tuple[ExplainRequest, str]] = ()
    ) -> None:
        """Load (or build) the backbone, then tune it on ``examples`` when ``tune`` is set.

        Args:
            requests: the pairs that will be explained (a from-scratch tokenizer's vocabulary).
            examples: (request, reference text) pairs of the train part to tune on.
        """
        from benchmark.models.components.backbones import PRESETS, load_backbone

        if self.tune_cfg is not None and not examples:  # before any model is loaded
            raise ConfigError(
                "generator.tune: tuning needs reference texts of train interactions (references=...); "
                "this dataset has none here: use the zero-shot generator"
            )
        scratch = self.backbone in PRESETS
        corpus: list[str] = []
        if scratch:  # a word-level vocabulary over every text the model reads or writes
            self.kind = "seq2seq"
            corpus = [self.prompt(r) for r in [*requests, *(e[0] for e in examples)]]
            corpus += [t for _, t in examples]
        bb = load_backbone(self.backbone, corpus, [], self.dtype, self.accelerator, self.cache_dir, self.seed)
        self.model, self.tokenizer, self.kind, self.lm_facts = bb.model, bb.tokenizer, bb.kind, dict(bb.facts)
        self.model.eval()
        if self.tune_cfg is not None:
            self.tuning = self.tune(examples, scratch)

    @property
    def style(self) -> str:
        style = self.prompt_cfg.get("style") or ("p5" if self.kind == "seq2seq" else "chat")
        if style not in PROMPT_STYLES:
            raise ConfigError(f"generator.prompt.style: unknown '{style}' (one of {PROMPT_STYLES})")
        return style

    def _part(self, key: str) -> str:
        return str(self.prompt_cfg.get(key, DEFAULT_PROMPT[key]))

    def _user_text(self, req: ExplainRequest) -> str:
        title = display_title(self.cat.titles[req.item])
        return self._part("user").format(
            history=history_text(self.cat, req, self._part("history_item")),
            item=item_text(self.cat, req.item, self._part("item")),
            item_title=title,
            user=req.user,
        )

    def prompt(self, req: ExplainRequest) -> str:
        """The full prompt text of one request in the configured style."""
        if self.style == "p5":
            return P5_EXPLANATION_PROMPT.format(
                user=req.user, item_title=display_title(self.cat.titles[req.item])
            )
        user = self._user_text(req)
        if self.style == "chat" and getattr(self.tokenizer, "chat_template", None):
            messages = [
                {"role": "system", "content": self._part("system")},
                {"role": "user", "content": user},
            ]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text + self._part("answer_prefix")
        return f"{self._part('system')}\n\n{user}\nExplanation: {self._part('answer_prefix')}".rstrip()

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        special = not (self.style == "chat" and getattr(self.tokenizer, "chat_template", None))
        return [self.tokenizer(t, add_special_tokens=special)["input_ids"] for t in texts]

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def explain(self, requests: Sequence[ExplainRequest]) -> list[str]:
        """One explanation per request (greedy decoding, first sentence kept)."""
        if self.model is None:
            self.setup(requests)
        prompts = [self.prompt(r) for r in requests]
        if prompts and not self.example_prompt:
            self.example_prompt = prompts[0]
        out: list[str] = []
        prefix = "" if self.style == "p5" else self._part("answer_prefix")
        for start in range(0, len(prompts), self.batch_size):
            for text in self._generate(prompts[start : start + self.batch_size]):
                joined = prefix + ("" if not prefix or text[:1] in " ,.;:!?" else " ") + text
                out.append(first_sentence(joined))
        return out

    def _generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy continuations of a batch of prompts; a row stops once its first sentence is
        complete (what :func:`first_sentence` keeps cannot change after that)."""
        from transformers import StoppingCriteriaList

        from benchmark.models.components.llm import left_pad

        tok = self.tokenizer
        ids = self._encode(prompts)
        device = next(self.model.parameters()).device
        if self.kind == "seq2seq":
            batch = tok.pad({"input_ids": ids}, return_tensors="pt")
            start = 0  # the decoder's ids are the output
        else:
            batch = left_pad(ids, tok.pad_token_id)  # [B, T] prompts end in the last column
            start = batch["input_ids"].shape[1]
        gen = self.model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            stopping_criteria=StoppingCriteriaList([_SentenceDone(tok, start)]),
        )
        return tok.batch_decode(gen[:, start:], skip_special_tokens=True)

    # ------------------------------------------------------------------ tuning

    def tune(self, examples: Sequence[tuple[ExplainRequest, str]], scratch: bool) -> dict[str, Any]:
        """Train on (request, reference) pairs: LoRA adapters on a pretrained backbone, every weight
        of a from-scratch preset. A fixed number of AdamW steps over a seeded shuffle.

        Returns:
            tuning facts: method, steps, lr, batch size, examples, trainable parameters, first and
            last loss, seconds.
        """
        from benchmark.models.components.lora import lora_settings, wrap_lora

        cfg = dict(self.tune_cfg or {})
        unknown = set(cfg) - {"steps", "lr", "batch_size", "lora"}
        if unknown:
            raise ConfigError(
                f"generator.tune: unknown key(s) {sorted(unknown)} (steps, lr, batch_size, lora)"
            )
        steps, lr, bs = int(cfg.get("steps", 100)), float(cfg.get("lr", 3e-4)), int(cfg.get("batch_size", 8))
        torch.manual_seed(self.seed)
        settings = None
        if not scratch:
            settings = lora_settings(cfg.get("lora") or {})
            self.model = wrap_lora(self.model, settings, self.kind)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr)
        order = np.random.default_rng([self.seed, 7]).permutation(len(examples))
        t0, losses = time.perf_counter(), []
        self.model.train()
        for step in range(steps):
            pick = [order[(step * bs + j) % len(order)] for j in range(min(bs, len(order)))]
            loss = self._loss([examples[k] for k in pick])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        self.model.eval()
        return {
            "method": "full (from scratch)" if scratch else "lora",
            "lora": settings,
            "steps": steps,
            "lr": lr,
            "batch_size": bs,
            "examples": len(examples),
            "trainable_params": sum(p.numel() for p in params),
            "loss_first": round(losses[0], 6) if losses else None,
            "loss_last": round(losses[-1], 6) if losses else None,
            "seconds": round(time.perf_counter() - t0, 2),
        }

    def _loss(self, batch: Sequence[tuple[ExplainRequest, str]]) -> torch.Tensor:
        """Mean token cross-entropy of the references given the prompts (prompt tokens unscored)."""
        tok = self.tokenizer
        eos, pad = tok.eos_token_id, tok.pad_token_id
        device = next(self.model.parameters()).device
        prompts = self._encode([self.prompt(r) for r, _ in batch])
        targets = [
            tok(t, add_special_tokens=False)["input_ids"][: self.max_new_tokens * 4] + [eos] for _, t in batch
        ]
        if self.kind == "seq2seq":
            enc = tok.pad({"input_ids": prompts}, return_tensors="pt")
            width = max(len(t) for t in targets)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)  # [B, L]
            for r, t in enumerate(targets):
                labels[r, : len(t)] = torch.as_tensor(t)
            out = self.model(
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
                labels=labels.to(device),
            )
            return out.loss
        seqs = [p + t for p, t in zip(prompts, targets, strict=True)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # [B, P + L] right-padded
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, (p, t) in enumerate(zip(prompts, targets, strict=True)):
            ids[r, : len(p) + len(t)] = torch.as_tensor(p + t)
            labels[r, len(p) : len(p) + len(t)] = torch.as_tensor(t)
            mask[r, : len(p) + len(t)] = 1
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
        return out.loss

    def label(self) -> str:
        """The generator's name in the run id: ``name``, else backbone stem + ``-zeroshot`` / ``-lora``."""
        if self.name:
            return self.name
        stem = self.backbone.rstrip("/").split("/")[-1].removesuffix(".gguf").lower()
        return f"{stem}-{'tuned' if self.tune_cfg else 'zeroshot'}"

    def facts(self) -> dict[str, Any]:
        """The generator's description for the run record: backbone, prompt, decoding, tuning."""
        machine = ("load_seconds", "cache", "dequantize_seconds")
        return {
            "name": self.label(),
            "kind": f"lm-{self.kind}" if self.kind else "lm",
            "backbone": {k: v for k, v in self.lm_facts.items() if k not in machine},
            "prompt": {
                "style": self.style if self.model is not None else self.prompt_cfg.get("style"),
                **(
                    {"template": P5_EXPLANATION_PROMPT}
                    if self.model is not None and self.style == "p5"
                    else {
                        k: self._part(k) for k in ("system", "user", "history_item", "item", "answer_prefix")
                    }
                ),
                "example": self.example_prompt,
            },
            "decoding": {
                "method": "greedy",
                "max_new_tokens": self.max_new_tokens,
                "batch_size": self.batch_size,
                "postprocess": "first sentence",
            },
            "tuning": self.tuning,
            "seed": self.seed,
        }
