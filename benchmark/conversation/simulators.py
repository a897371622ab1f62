"""User simulators: answer from the target's metadata, judge lists, never name the target.

- :class:`RuleSimulator` (the default; deterministic): templated answers from the item table.
  ``genre``: the target's genres; ``decade``: its decade; ``similar``: the catalogue item most
  like it (:meth:`~benchmark.conversation.catalogue.Catalogue.similar_to`) in quotes. A list is
  accepted exactly when it holds the target; a rejection may carry a hint (``hint=true``): the
  answer about the first attribute not revealed yet.
- :class:`LLMSimulator`: a causal LM prompted with the target's metadata (never its title) and a
  persona; each reply is sampled with a seed of its own (run seed, row, turn). Accepting stays the
  rule's decision; the LM only words the reply.

Leakage check: every reply is tested with :func:`~benchmark.conversation.catalogue.leaks`; a reply
that names the target (or an empty LLM reply) is replaced by the rule simulator's answer (marked
``replaced`` in the stored dialogue), and a rule answer that would name it by a template
coincidence becomes a neutral sentence.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmark.conversation.catalogue import Catalogue, leaks
from benchmark.conversation.lm import ChatLM
from benchmark.conversation.protocol import Action, Context, Reply
from benchmark.util import sha256_text

ACCEPT = "Yes, I'd like to watch one of these."
REJECT = "No, none of these."
NEUTRAL = "I'd rather not say."


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class RuleSimulator:
    """Templated answers from the item table (see the module docstring).

    Args:
        catalogue: the items.
        attributes: the attributes hints go through, in order.
        hint: a rejection also answers the first attribute not revealed yet.
    """

    name = "rule"

    def __init__(self, catalogue: Catalogue, attributes: tuple[str, ...], hint: bool = False) -> None:
        self.catalogue = catalogue
        self.attributes = tuple(attributes)
        self.hint = bool(hint)
        self._similar: dict[int, int | None] = {}

    def facts(self) -> dict[str, Any]:
        return {"name": self.name, "hint": self.hint, "templates": self.templates()}

    @staticmethod
    def templates() -> dict[str, str]:
        return {
            "genre": "I'd like something {genres}.",
            "genre_unknown": "Any genre is fine.",
            "decade": "Something from the {decade}s.",
            "decade_unknown": "I don't mind how old it is.",
            "similar": 'Something like "{title}".',
            "similar_unknown": "No movie like it comes to mind.",
            "accept": ACCEPT,
            "reject": REJECT,
            "neutral": NEUTRAL,
        }

    def similar(self, target: int) -> int | None:
        """The item named for ``similar`` (cached per target)."""
        if target not in self._similar:
            self._similar[target] = self.catalogue.similar_to(target, self.catalogue.titles[target])
        return self._similar[target]

    def answer(self, attribute: str, target: int) -> str:
        """The templated answer about one attribute of ``target`` (guarded: :meth:`guard`)."""
        c, tpl = self.catalogue, self.templates()
        if attribute == "genre":
            names = sorted(c.genres[target])
            text = tpl["genre"].format(genres=_join(names)) if names else tpl["genre_unknown"]
        elif attribute == "decade":
            d = int(c.decades[target])
            text = tpl["decade"].format(decade=d) if d >= 0 else tpl["decade_unknown"]
        else:
            sim = self.similar(target)
            text = tpl["similar"].format(title=c.texts[sim]) if sim is not None else tpl["similar_unknown"]
        return self.guard(text, target)

    def next_hint(self, ctx: Context) -> str | None:
        """The first attribute neither asked nor hinted at in this session."""
        for a in self.attributes:
            if a not in ctx.told and a not in ctx.asked:
                return a
        return None

    def rule_reply(self, action: Action, target: int, ctx: Context) -> Reply:
        """The rule's reply (also the LLM simulator's fallback)."""
        if action.kind == "ask":
            text, reveals = self.answer(str(action.attribute), target), action.attribute
            return Reply(self.guard(text, target), False, reveals)
        if target in action.items:
            return Reply(self.guard(ACCEPT, target), True, None)
        hint = self.next_hint(ctx) if self.hint else None
        text = REJECT + (" " + self.answer(hint, target) if hint else "")
        return Reply(self.guard(text, target), False, hint)

    def guard(self, text: str, target: int) -> str:
        """``text``, or a neutral sentence when it would name the target."""
        title = self.catalogue.titles[target]
        if not leaks(text, title):
            return text
        return NEUTRAL if not leaks(NEUTRAL, title) else "..."

    def reply(self, actions: list[Action], targets: list[int], ctxs: list[Context]) -> list[Reply]:
        return [self.rule_reply(a, t, c) for a, t, c in zip(actions, targets, ctxs, strict=True)]


DEFAULT_SYSTEM = (
    "You are a user chatting with a movie recommender. {persona} You have one movie in mind and want "
    "the recommender to find it. What you know about it: {facts}. Never say its title. "
    "Answer in one short sentence."
)
DEFAULT_FEEDBACK = {
    True: "(The movie you have in mind is in this list. Say yes.)",
    False: "(The movie you have in mind is not in this list. Say no{hint}.)",
}


class LLMSimulator:
    """A causal LM in the user's role (see the module docstring).

    Args:
        catalogue: the items.
        lm: the loaded LM.
        attributes: the attributes the rule fallback hints through.
        hint: ask the LM for one hint about the movie with a rejection.
        persona: a sentence describing the user, placed in the system prompt.
        system: the system prompt (fields ``persona``, ``facts``).
        temperature, top_p: sampling settings.
        max_new_tokens: reply length at most.
        seed: the run seed (each reply's seed also depends on the row and turn).
    """

    name = "llm"

    def __init__(
        self,
        catalogue: Catalogue,
        lm: ChatLM,
        attributes: tuple[str, ...],
        hint: bool = False,
        persona: str = "You are a casual movie fan.",
        system: str = DEFAULT_SYSTEM,
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_new_tokens: int = 32,
        seed: int = 0,
    ) -> None:
        self.rule = RuleSimulator(catalogue, attributes, hint)
        self.catalogue, self.lm = catalogue, lm
        self.persona, self.system = persona, system
        self.temperature, self.top_p, self.max_new_tokens = (
            float(temperature),
            float(top_p),
            int(max_new_tokens),
        )
        self.seed, self.hint = int(seed), bool(hint)
        self.example = ""

    def facts(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hint": self.hint,
            "llm": self.lm.facts(),
            "persona": self.persona,
            "prompt": {
                "system": self.system,
                "feedback": {str(k): v for k, v in DEFAULT_FEEDBACK.items()},
                "sha256": sha256_text(self.system + "\n" + "\n".join(DEFAULT_FEEDBACK.values())),
                "example": self.example,
            },
            "sampling": {
                "temperature": self.temperature,
                "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens,
                "seed": self.seed,
                "reply_seed": "SeedSequence([seed, row, turn])",
            },
            "fallback": "rule simulator answer when a reply names the target or is empty",
        }

    def target_facts(self, target: int) -> str:
        """What the LM knows about the target: genres, year, a similar movie (never the title)."""
        c = self.catalogue
        parts = []
        if c.genres[target]:
            parts.append("genres: " + ", ".join(sorted(c.genres[target])))
        if c.years[target] >= 0:
            parts.append(f"released in {int(c.years[target])} (the {int(c.decades[target])}s)")
        sim = self.rule.similar(target)
        if sim is not None:
            parts.append(f'similar to "{c.texts[sim]}"')
        return "; ".join(parts) or "nothing"

    def prompt(self, action: Action, target: int, accepted: bool) -> str:
        """The LM's prompt: the system message with the target's facts, the recommender's utterance."""
        said = action.text(self.catalogue)
        if action.kind == "recommend":
            said += "\n" + DEFAULT_FEEDBACK[accepted].format(
                hint=", and give one hint about the movie" if self.hint else ""
            )
        return self.lm.render(self.system.format(persona=self.persona, facts=self.target_facts(target)), said)

    def reply(self, actions: list[Action], targets: list[int], ctxs: list[Context]) -> list[Reply]:
        rules = [self.rule.rule_reply(a, t, c) for a, t, c in zip(actions, targets, ctxs, strict=True)]
        prompts = [self.prompt(a, t, r.accepted) for a, t, r in zip(actions, targets, rules, strict=True)]
        self.example = self.example or prompts[0]
        seeds = [
            int(np.random.SeedSequence([self.seed, int(c.row), int(c.turn)]).generate_state(1)[0])
            for c in ctxs
        ]
        texts = self.lm.sample(prompts, self.max_new_tokens, self.temperature, self.top_p, seeds)
        out = []
        for a, t, rule, prompt, text in zip(actions, targets, rules, prompts, texts, strict=True):
            text, tokens = " ".join(text.split()), self.lm.count(prompt)
            if not text or leaks(text, self.catalogue.titles[t]):
                out.append(Reply(rule.text, rule.accepted, rule.reveals, True, tokens))
            else:
                out.append(
                    Reply(text, rule.accepted, a.attribute if a.kind == "ask" else None, False, tokens)
                )
        return out
