"""Conversational recommenders: a classic ranker in the loop, an LLM recommender, and the hybrid.

- :class:`RankerInLoop`: any model's catalogue scores (pop, BPR, SASRec, ...) for the user, its
  list filtered by what the user revealed (genres, decade: :meth:`Catalogue.allowed`) and by
  rejected, named and already-seen items (:func:`top_allowed`); questions follow a fixed
  ``schedule`` (e.g. ``[recommend, genre, recommend, decade, recommend]``).
- :class:`LLMRecommender`: a causal LM reads the user's recent movies and the dialogue and answers
  in a fixed format, ``ASK: <attribute>`` or ``RECOMMEND: <titles>``. The choice is the format
  option with the highest likelihood; titles come from beam search constrained to the catalogue's
  ``Title (Year)`` texts (``decoding=constrained``; seen, rejected and named items blocked), or
  from greedy free text grounded to catalogue items by title (``decoding=free``; a title that
  names no item is kept as a hallucination).
- :class:`HybridRecommender`: a first-stage model proposes the ``top_n`` filtered candidates (as
  the ranker in the loop does); the LLM chooses to ask or recommend, and orders the candidates by
  the likelihood of ``RECOMMEND: <title>`` (per title token) for the final k.

Every recommender recommends on the last turn.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmark.conversation.catalogue import Catalogue
from benchmark.conversation.lm import ChatLM, Prompted
from benchmark.conversation.protocol import Action, Context
from benchmark.errors import ConfigError
from benchmark.util import sha256_text

RECOMMEND = "recommend"


def top_allowed(
    scores: np.ndarray, allowed: np.ndarray, blocked: np.ndarray, k: int
) -> tuple[list[int], int]:
    """The k best items that the revealed attributes allow and that are not blocked; when fewer
    than k are allowed, the list is filled with the best other unblocked items.

    Args:
        scores: [n] item scores (higher is better; ties keep index order).
        allowed: [n] bool from :meth:`Catalogue.allowed`.
        blocked: item indices never to list.
        k: list length.

    Returns:
        (items, best first; how many items the filter allowed and did not block).
    """
    ok = np.ones(len(scores), dtype=bool)
    ok[np.asarray(blocked, dtype=np.int64)] = False
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    first = ok & allowed
    picked = order[first[order]][:k]
    if len(picked) < k:
        picked = np.concatenate([picked, order[(ok & ~allowed)[order]][: k - len(picked)]])
    return [int(i) for i in picked], int(first.sum())


def check_schedule(schedule: Sequence[str], attributes: Sequence[str]) -> tuple[str, ...]:
    """A ranker's per-turn actions: ``recommend`` or an attribute it may ask about."""
    steps = tuple(str(s) for s in schedule)
    bad = [s for s in steps if s != RECOMMEND and s not in attributes]
    if not steps or bad:
        raise ConfigError(
            f"conversation.recommender.schedule: each step is '{RECOMMEND}' or one of {list(attributes)}, got {list(steps)}"
        )
    return steps


class RankerInLoop:
    """A classic ranker in the conversation loop (see the module docstring).

    Args:
        scores: ``scores(user) -> [n_items]`` catalogue scores of the first-stage model.
        catalogue: the items.
        schedule: the action of turn t is ``schedule[t - 1]`` (the last entry repeats).
        facts: what the record states about the model (label, training).
    """

    def __init__(
        self,
        scores: Callable[[int], np.ndarray],
        catalogue: Catalogue,
        schedule: Sequence[str],
        facts: dict[str, Any],
    ) -> None:
        self.scores, self.catalogue, self.schedule, self._facts = scores, catalogue, tuple(schedule), facts
        self.allowed_sizes: list[int] = []

    def facts(self) -> dict[str, Any]:
        sizes = self.allowed_sizes
        return {
            "name": "ranker",
            "schedule": list(self.schedule),
            "first_stage": self._facts,
            "mean_allowed": round(float(np.mean(sizes)), 4) if sizes else None,
        }

    def act(self, ctxs: list[Context]) -> list[Action]:
        return [self.act_one(c) for c in ctxs]

    def act_one(self, ctx: Context) -> Action:
        """The scheduled question, or the filtered top-k list."""
        step = self.schedule[min(ctx.turn, len(self.schedule)) - 1]
        if step != RECOMMEND and not ctx.must_recommend:
            return Action.ask(step)
        items, n_allowed = top_allowed(
            self.scores(ctx.user), self.catalogue.allowed(ctx.revealed), ctx.blocked(), ctx.k
        )
        self.allowed_sizes.append(n_allowed)
        return Action.recommend(items)


@dataclass(frozen=True)
class DialoguePrompt:
    """The LLM recommender's prompt: a system message and a user message with fields.

    Attributes:
        system: the system message.
        instruction: the user message; fields ``{history}`` (the user's recent movies),
            ``{dialogue}``, ``{turn}``, ``{turns}``, ``{k}``, ``{options}``.
        history: recent movies shown (train and valid items, most recent last).
        shown_titles: titles of an earlier recommendation shown in the dialogue (the rest counted).
    """

    system: str
    instruction: str
    history: int = 10
    shown_titles: int = 3

    def __post_init__(self) -> None:
        try:
            self.instruction.format(history="", dialogue="", turn=1, turns=1, k=1, options="")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"conversation.recommender.instruction: unknown or malformed field ({e})"
            ) from None

    def describe(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "instruction": self.instruction,
            "history": self.history,
            "shown_titles": self.shown_titles,
            "sha256": sha256_text(self.system + "\n" + self.instruction),
        }

    def dialogue(self, ctx: Context, catalogue: Catalogue) -> str:
        """The dialogue so far, an earlier list shortened to its first ``shown_titles`` titles."""
        lines = []
        for speaker, text, action in ctx.dialogue:
            if action is not None and action.kind == RECOMMEND and len(action.items) > self.shown_titles:
                short = Action.recommend(
                    action.items[: self.shown_titles], action.generated[: self.shown_titles]
                )
                text = short.text(catalogue)[:-1] + f" and {len(action.items) - self.shown_titles} more?"
            lines.append(f"{'Recommender' if speaker == 'recommender' else 'User'}: {text}")
        return "\n".join(lines) or "(nothing yet)"

    def user_text(self, ctx: Context, catalogue: Catalogue, history: Sequence[int], options: str) -> str:
        shown = ", ".join(f'"{catalogue.texts[i]}"' for i in list(history)[-self.history :]) or "(none)"
        return self.instruction.format(
            history=shown,
            dialogue=self.dialogue(ctx, catalogue),
            turn=ctx.turn,
            turns=ctx.turns,
            k=ctx.k,
            options=options,
        )


def ask_options(attributes: Sequence[str]) -> list[str]:
    return [f"ASK: {a}" for a in attributes]


def options_text(attributes: Sequence[str]) -> str:
    return ", ".join(f"'{o}'" for o in ask_options(attributes)) + " or 'RECOMMEND: <movie titles>'"


class LLMRecommender:
    """A causal LM that asks or recommends from the dialogue (see the module docstring).

    Args:
        lm: the loaded LM.
        catalogue: the items.
        histories: ``histories(user) -> item indices`` the user watched (oldest first).
        prompt: the prompt.
        attributes: what it may ask about.
        decoding: ``constrained`` or ``free``.
        max_new_tokens: free decoding's length limit (per recommendation).
    """

    def __init__(
        self,
        lm: ChatLM,
        catalogue: Catalogue,
        histories: Callable[[int], Sequence[int]],
        prompt: DialoguePrompt,
        attributes: Sequence[str],
        decoding: str = "constrained",
        max_new_tokens: int = 160,
    ) -> None:
        if decoding not in ("constrained", "free"):
            raise ConfigError(f"conversation.recommender.decoding: constrained or free, got {decoding!r}")
        self.lm, self.catalogue, self.histories, self.prompt = lm, catalogue, histories, prompt
        self.attributes, self.decoding, self.max_new_tokens = tuple(attributes), decoding, int(max_new_tokens)
        self.trie = lm.title_trie(catalogue.texts) if decoding == "constrained" else None
        self.example = ""

    def facts(self) -> dict[str, Any]:
        return {
            "name": "llm",
            "llm": self.lm.facts(),
            "decoding": self.decoding,
            "prompt": {**self.prompt.describe(), "example": self.example},
        }

    def render(self, ctx: Context) -> str:
        user = self.prompt.user_text(
            ctx, self.catalogue, self.histories(ctx.user), options_text(self.attributes)
        )
        text = self.lm.render(self.prompt.system, user)
        if not self.example:
            self.example = text
        return text

    def decide(
        self, prompts: list[str], ctxs: list[Context]
    ) -> tuple[list[str | None], tuple[Prompted, dict[int, int]] | None]:
        """The attribute each session asks about, None to recommend (always None on the last
        turn); and the run of the prompts it scored with each session's row in it (None when it
        scored none), from which the beam search after ``RECOMMEND:`` continues."""
        out: list[str | None] = [None] * len(ctxs)
        todo = [j for j, c in enumerate(ctxs) if not c.must_recommend]
        if not todo:
            return out, None
        options = [*ask_options(self.attributes), "RECOMMEND:"]
        scored, run = self.lm.scored([prompts[j] for j in todo], [options] * len(todo))
        for j, (lp, _) in zip(todo, scored, strict=True):
            best = int(np.argmax(lp))
            out[j] = self.attributes[best] if best < len(self.attributes) else None
        return out, (run, {j: r for r, j in enumerate(todo)})

    def act(self, ctxs: list[Context]) -> list[Action]:
        prompts = [self.render(c) for c in ctxs]
        asks, run = self.decide(prompts, ctxs)
        spent = [0 if c.must_recommend else self.lm.count(p) for c, p in zip(ctxs, prompts, strict=True)]
        out: list[Action | None] = [
            None if a is None else Action.ask(a, spent[j]) for j, a in enumerate(asks)
        ]
        todo = [j for j, a in enumerate(asks) if a is None]
        if not todo:
            return out  # type: ignore[return-value]
        heads = [prompts[j] + "RECOMMEND:" for j in todo]
        if self.trie is not None:
            after = None  # sessions that decided to recommend: their decision's prompt cache goes on
            if run is not None and all(j in run[1] for j in todo):
                after = (run[0], [run[1][j] for j in todo])
            blocked = [ctxs[j].blocked() for j in todo]
            found = self.lm.beams(heads, self.trie, ctxs[todo[0]].k, blocked, after=after)
            for j, head, items in zip(todo, heads, found, strict=True):
                tokens = spent[j] + self.lm.count(head)
                # every title blocked: nothing to say but an unknown one
                out[j] = (
                    Action.recommend(items, [self.catalogue.texts[i] for i in items], tokens)
                    if items
                    else Action.recommend([None], ["?"], tokens)
                )
        else:
            for j, head, text in zip(todo, heads, self.lm.greedy(heads, self.max_new_tokens), strict=True):
                titles = parse_titles(text)[: ctxs[j].k] or ["?"]
                out[j] = Action.recommend(
                    [self.catalogue.ground(t) for t in titles], titles, spent[j] + self.lm.count(head)
                )
        return out  # type: ignore[return-value]


def parse_titles(text: str) -> list[str]:
    """Titles in a generated list: quoted ones, else lines or ``|``/``;``-separated parts (distinct, in order)."""
    found = re.findall(r"\"([^\"]{1,200})\"", text) or re.split(r"\s*(?:\n|\||;)\s*", text)
    out: list[str] = []
    for t in found:
        t = re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", t).strip().strip(",.")
        if t and t not in out:
            out.append(t)
    return out


class HybridRecommender:
    """First-stage candidates, LLM decisions and final order (see the module docstring).

    Args:
        scores: ``scores(user) -> [n_items]`` of the first-stage model.
        lm, catalogue, histories, prompt, attributes: as for :class:`LLMRecommender`.
        top_n: candidates the LLM orders.
        first_stage: what the record states about the first-stage model.
    """

    def __init__(
        self,
        scores: Callable[[int], np.ndarray],
        lm: ChatLM,
        catalogue: Catalogue,
        histories: Callable[[int], Sequence[int]],
        prompt: DialoguePrompt,
        attributes: Sequence[str],
        top_n: int,
        first_stage: dict[str, Any],
    ) -> None:
        self.llm = LLMRecommender(lm, catalogue, histories, prompt, attributes, decoding="free")
        self.scores, self.catalogue, self.top_n, self.first_stage = scores, catalogue, int(top_n), first_stage

    def facts(self) -> dict[str, Any]:
        return {
            "name": "hybrid",
            "llm": self.llm.lm.facts(),
            "top_n": self.top_n,
            "first_stage": self.first_stage,
            "order": "LLM log-likelihood of 'RECOMMEND: <title>' per title token",
            "prompt": {**self.llm.prompt.describe(), "example": self.llm.example},
        }

    def act(self, ctxs: list[Context]) -> list[Action]:
        cands, conts, heads = [], [], []
        for c in ctxs:
            found, _ = top_allowed(
                self.scores(c.user), self.catalogue.allowed(c.revealed), c.blocked(), self.top_n
            )
            asks = [] if c.must_recommend else ask_options(self.llm.attributes)
            cands.append(found)
            heads.append(len(asks))
            conts.append([*asks, "RECOMMEND:", *(f"RECOMMEND: {self.catalogue.texts[i]}" for i in found)])
        prompts = [self.llm.render(c) for c in ctxs]
        out = []
        for c, prompt, found, head, (lp, n) in zip(
            ctxs, prompts, cands, heads, self.llm.lm.logprobs(prompts, conts), strict=True
        ):
            tokens = self.llm.lm.count(prompt)
            if head and int(np.argmax(lp[: head + 1])) < head:
                out.append(Action.ask(self.llm.attributes[int(np.argmax(lp[:head]))], tokens))
                continue
            per_token = (lp[head + 1 :] - lp[head]) / np.maximum(
                n[head + 1 :] - n[head], 1
            )  # the title's part
            order = np.argsort(-per_token, kind="stable")[: c.k]
            out.append(Action.recommend([found[j] for j in order], (), tokens))
        return out
