"""Prompt templates for sequential recommendation (P5-style): history in, next item's id out.

A template set (``configs/p5_prompt/*.yaml``) holds several phrasings of the task, split into
``seen`` templates (used in training; one is drawn per training example) and ``unseen`` ones
(never trained on; evaluation only, P5's zero-shot prompt test). ``eval`` names the template
used for validation and test. Fields: ``{history}`` (the user's history as item ids, oldest
first, joined with ``history_sep``; required), ``{user}`` (the raw user id) and ``{candidates}``
(a candidate list, joined with ``history_sep``; for models that show one, e.g. ``model=llara``).

Optional few-shot examples (``few_shot``) are train windows (a history and the item that came
next) of other users, drawn once by seed, rendered with the same template and followed by their
answer, each laid out with ``example`` and placed before the row's prompt. ``suffix`` is
appended to every prompt (e.g. ``"\\nAnswer: "`` for decoder-only models, whose answer follows
the prompt directly).
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmark.config import to_object
from benchmark.errors import ConfigError
from benchmark.util import sha256_text

FIELDS = {"history", "user", "candidates"}


def _fields(text: str) -> set[str]:
    try:
        return {n for _, n, _, _ in string.Formatter().parse(text) if n is not None}
    except ValueError as e:
        raise ConfigError(f"p5 prompt: malformed template text ({e}): {text[:60]!r}") from None


@dataclass
class SeqTemplate:
    """One phrasing: ``name`` and ``text`` with ``{history}`` (and optionally ``{user}``)."""

    name: str
    text: str

    def __post_init__(self) -> None:
        got = _fields(self.text)
        if not self.name or "history" not in got or got - FIELDS:
            raise ConfigError(
                f"p5 prompt {self.name!r}: needs a name and {{history}}; allowed fields {sorted(FIELDS)}, "
                f"got {sorted(got)}"
            )


@dataclass
class SeqPromptSet:
    """Seen/unseen sequential-recommendation templates; see the module docstring.

    Attributes:
        name: name of the set (recorded).
        seen: templates used in training (at least one).
        unseen: templates used only for evaluation.
        eval: name of the template for validation and test.
        history_sep: separator between history items.
        suffix: text appended to every prompt.
        few_shot: train examples shown before every prompt.
        example: layout of one example: ``{prompt}`` and ``{answer}``.
    """

    name: str
    seen: list[SeqTemplate]
    unseen: list[SeqTemplate] = field(default_factory=list)
    eval: str = ""
    history_sep: str = " , "
    suffix: str = ""
    few_shot: int = 0
    example: str = "{prompt} {answer}\n"

    def __post_init__(self) -> None:
        self.seen = [t if isinstance(t, SeqTemplate) else SeqTemplate(**dict(t)) for t in self.seen]
        self.unseen = [t if isinstance(t, SeqTemplate) else SeqTemplate(**dict(t)) for t in self.unseen]
        if not self.seen:
            raise ConfigError(f"p5 prompt set {self.name}: needs at least one seen template")
        names = [t.name for t in self.seen + self.unseen]
        if len(set(names)) != len(names):
            raise ConfigError(f"p5 prompt set {self.name}: template names must be unique, got {names}")
        self.eval = self.eval or self.seen[0].name
        if self.eval not in names:
            raise ConfigError(f"p5 prompt set {self.name}: eval template '{self.eval}' is not one of {names}")
        if self.few_shot < 0:
            raise ConfigError(f"p5 prompt set {self.name}: few_shot must be >= 0")
        if _fields(self.example) != {"prompt", "answer"}:
            raise ConfigError(
                f"p5 prompt set {self.name}: example must use exactly {{prompt}} and {{answer}}"
            )

    @classmethod
    def from_config(cls, node: SeqPromptSet | Mapping[str, Any]) -> SeqPromptSet:
        """A set from itself or a plain/OmegaConf mapping (``_target_`` ignored)."""
        return to_object(node, cls, "model.prompts")

    @property
    def templates(self) -> list[SeqTemplate]:
        return self.seen + self.unseen

    def template(self, name: str) -> SeqTemplate:
        for t in self.templates:
            if t.name == name:
                return t
        raise ConfigError(f"p5 prompt set {self.name}: no template '{name}'")

    @property
    def eval_kind(self) -> str:
        """``seen`` or ``unseen``: whether the evaluation template was trained on."""
        return "seen" if any(t.name == self.eval for t in self.seen) else "unseen"

    def render(
        self,
        template: SeqTemplate,
        history: Sequence[str],
        user: str,
        examples: Sequence[tuple[Sequence[str], str, str]] = (),
        candidates: Sequence[str] | None = None,
    ) -> str:
        """The prompt text of one row.

        Args:
            template: the phrasing.
            history: the row's history item ids, oldest first.
            user: the raw user id.
            examples: few-shot (history ids, user, answer id) shown before the row.
            candidates: the row's candidate list, for a template with ``{candidates}``.
        """
        if "candidates" in _fields(template.text) and candidates is None:
            raise ConfigError(f"p5 prompt {template.name!r}: {{candidates}} needs a candidate list (model=llara)")
        shots = "".join(
            self.example.format(prompt=self._body(template, h, u), answer=a) for h, u, a in examples
        )
        return shots + self._body(template, history, user, candidates)

    def _body(
        self, template: SeqTemplate, history: Sequence[str], user: str, candidates: Sequence[str] | None = None
    ) -> str:
        cands = self.history_sep.join(candidates or ())
        return template.text.format(history=self.history_sep.join(history), user=user, candidates=cands) + self.suffix

    def corpus(self) -> list[str]:
        """Every fixed text of the set (for building a from-scratch vocabulary)."""
        return [t.text.format(history="", user="", candidates="") for t in self.templates] + [
            self.history_sep,
            self.suffix,
            self.example.format(prompt="", answer=""),
        ]

    def describe(self) -> dict[str, Any]:
        """Names and sha256 of the set, for the run record."""
        body = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return {
            "set": self.name,
            "sha256": sha256_text(body),
            "train_templates": [t.name for t in self.seen],
            "eval_template": self.eval,
            "eval_kind": self.eval_kind,
            "few_shot": self.few_shot,
        }
