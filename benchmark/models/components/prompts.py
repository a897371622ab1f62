"""Prompt templates for LLM recommenders (TALLRec-style yes/no, listwise reranking, P5-style).

A template is a typed, validated config (``configs/prompt/*.yaml``, built with ``_target_``):
``instruction`` and ``input`` are filled with named fields (``{liked}``, ``{disliked}``,
``{target}``, ``{candidates}``, ...), then placed into ``layout`` (``{instruction}`` and
``{input}``). With ``chat: true`` the layout is the user message and the tokenizer's chat
template wraps it (in-context examples become earlier turns). The text the model must produce
follows the prompt directly: ``answers`` for yes/no tasks, an item text for listwise ones.

Item texts come from the dataset's item side table (:func:`item_texts`), formatted per item
with ``item_text`` (e.g. ``{title} ({year})``) and quoted/joined with ``item`` and ``item_sep``.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmark.errors import ConfigError
from benchmark.util import sha256_text


def placeholders(text: str) -> set[str]:
    """Names of the ``{field}`` placeholders in a format string."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as e:
        raise ConfigError(f"prompt: malformed template text ({e}): {text[:60]!r}") from None


@dataclass
class PromptTemplate:
    """A prompt template; see the module docstring.

    Attributes:
        name: short name recorded with every run.
        instruction: the task instruction (may use fields).
        input: the per-row input (fields such as ``{liked}``, ``{disliked}``, ``{target}``).
        layout: how instruction and input are put together (``{instruction}``, ``{input}``).
        answers: the positive and negative answer texts of a yes/no task (e.g. ``Yes.``, ``No.``);
            the first token of each after the prompt is what is scored.
        item: how one item text is shown (``{text}``), e.g. with quotes.
        item_sep: separator between items in a list.
        item_text: per-item text from side-table fields (``{title}``, ``{year}``, ``{genres}``,
            ``{id}``); falls back to ``{title}``, then ``{id}``, when a field is missing.
        empty_list: text for an empty item list.
        chat: wrap the layout as a user message with the tokenizer's chat template.
        system: optional system message (chat only).
        example_sep: separator between in-context examples (non-chat).
        answer_cue: chain of thought: when set, the model first writes a reasoning after the
            prompt (greedy, at most ``reasoning_tokens`` tokens, cut where it writes the cue
            itself), then ``answer_cue`` is appended and the answer is scored after it.
        reasoning_tokens: longest reasoning in tokens (chain of thought only).
    """

    name: str
    instruction: str
    input: str
    layout: str = "{instruction}\n\n{input}\n\n"
    answers: list[str] = field(default_factory=lambda: ["Yes.", "No."])
    item: str = '"{text}"'
    item_sep: str = ", "
    item_text: str = "{title} ({year})"
    empty_list: str = ""
    chat: bool = False
    system: str | None = None
    example_sep: str = "\n\n"
    answer_cue: str | None = None
    reasoning_tokens: int = 48

    def __post_init__(self) -> None:
        self.answers = list(self.answers)
        if self.answer_cue is not None and (not str(self.answer_cue).strip() or self.chat):
            raise ConfigError(f"prompt {self.name}: answer_cue must be a non-empty text, on a non-chat layout")
        if isinstance(self.reasoning_tokens, bool) or not isinstance(self.reasoning_tokens, int) or not 1 <= self.reasoning_tokens <= 512:
            raise ConfigError(f"prompt {self.name}: reasoning_tokens must be 1..512, got {self.reasoning_tokens!r}")
        if not self.name:
            raise ConfigError("prompt.name: must not be empty")
        got = placeholders(self.layout)
        if got != {"instruction", "input"}:
            raise ConfigError(
                f"prompt {self.name}: layout must use exactly {{instruction}} and {{input}}, got {sorted(got)}"
            )
        if len(self.answers) != 2 or not all(self.answers) or self.answers[0] == self.answers[1]:
            raise ConfigError(
                f"prompt {self.name}: answers must be two different non-empty texts, got {self.answers}"
            )
        if placeholders(self.item) != {"text"}:
            raise ConfigError(f"prompt {self.name}: item must use exactly {{text}}, got {self.item!r}")
        bad = placeholders(self.item_text) - {"title", "year", "genres", "id"}
        if bad:
            raise ConfigError(
                f"prompt {self.name}: item_text has unknown fields {sorted(bad)} (title, year, genres, id)"
            )
        placeholders(self.instruction)
        placeholders(self.input)

    @property
    def fields(self) -> set[str]:
        """The fields a row must provide."""
        return placeholders(self.instruction) | placeholders(self.input)

    def items(self, texts: Sequence[str]) -> str:
        """A list of item texts as shown in the prompt (``empty_list`` when empty)."""
        if not texts:
            return self.empty_list
        return self.item_sep.join(self.item.format(text=t) for t in texts)

    def _user_text(self, fields: Mapping[str, str]) -> str:
        missing = self.fields - set(fields)
        if missing:
            raise ConfigError(f"prompt {self.name}: no value for field(s) {sorted(missing)}")
        return self.layout.format(
            instruction=self.instruction.format(**fields), input=self.input.format(**fields)
        )

    def render(
        self,
        fields: Mapping[str, str],
        examples: Sequence[tuple[Mapping[str, str], str]] = (),
        tokenizer: Any = None,
    ) -> str:
        """The prompt text for one row, ending where the answer starts.

        Args:
            fields: values of the template's fields for this row.
            examples: in-context examples (fields, answer text), shown before the row.
            tokenizer: needed when ``chat`` is true (its chat template is applied).
        """
        if self.chat:
            if tokenizer is None or not getattr(tokenizer, "chat_template", None):
                raise ConfigError(f"prompt {self.name}: chat=true needs a tokenizer with a chat template")
            messages = [{"role": "system", "content": self.system}] if self.system else []
            for ex_fields, answer in examples:
                messages.append({"role": "user", "content": self._user_text(ex_fields)})
                messages.append({"role": "assistant", "content": answer})
            messages.append({"role": "user", "content": self._user_text(fields)})
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        shots = [self._user_text(f) + a + self.example_sep for f, a in examples]
        return "".join(shots) + self._user_text(fields)

    @property
    def chain_of_thought(self) -> bool:
        """Whether the model reasons before it answers (``answer_cue`` set)."""
        return self.answer_cue is not None

    def cut_reasoning(self, text: str) -> str:
        """A generated reasoning up to where the model starts its own answer cue (or the end)."""
        cue = str(self.answer_cue or "").strip()
        if cue and cue in text:
            text = text[: text.index(cue)]
        return text.rstrip()

    def describe(self) -> dict[str, Any]:
        """Name and sha256 of the template (its canonical JSON), for the run record. Templates
        without chain of thought hash as before the option existed."""
        body_obj = asdict(self)
        if self.answer_cue is None:
            body_obj.pop("answer_cue")
            body_obj.pop("reasoning_tokens")
        body = json.dumps(body_obj, sort_keys=True, separators=(",", ":"))
        out = {"name": self.name, "sha256": sha256_text(body), "chat": self.chat}
        if self.chain_of_thought:
            out["chain_of_thought"] = {"answer_cue": self.answer_cue, "reasoning_tokens": self.reasoning_tokens}
        return out


def item_texts(items: Any, item_fields: Mapping[str, str], item_ids: Sequence[str], fmt: str) -> list[str]:
    """One text per item index, from the dataset's item side table.

    Args:
        items: ``Interactions.items`` (indexed by raw item id; may lack items or be empty).
        item_fields: role -> column (``title``, ``year``, ``genres``); a missing ``title`` role
            falls back to a ``title`` column when the table has one.
        item_ids: raw item ids in index order (``split.item_ids``).
        fmt: per-item format (``{title}``, ``{year}``, ``{genres}``, ``{id}``); when a field it
            uses is empty (or the year is not a number), ``{title}`` is used, and ``{id}`` when
            the item has no title.

    Returns:
        [n_items] texts.
    """
    roles = dict(item_fields)
    if "title" not in roles and "title" in getattr(items, "columns", ()):
        roles["title"] = "title"
    cols = {role: items[col] for role, col in roles.items() if col in items.columns}
    out = []
    for raw in item_ids:
        vals = {"id": str(raw)}
        for role, col in cols.items():
            v = col.get(raw)
            vals[role] = "" if v is None or v != v else str(v).strip()  # v != v: NaN
        year = vals.get("year", "")
        usable = all(vals.get(n, "") for n in placeholders(fmt)) and (
            "year" not in placeholders(fmt) or year.isdigit()
        )
        if usable:
            out.append(fmt.format(**{n: vals.get(n, "") for n in placeholders(fmt)}))
        else:
            out.append(vals.get("title") or str(raw))
    return out


def answer_token_ids(tokenizer: Any, prompt: str, answers: Sequence[str]) -> list[int]:
    """The first token of each answer when it follows ``prompt``, derived from the tokenizer.

    ``tokenize(prompt)`` must be a prefix of ``tokenize(prompt + answer)`` (no merge across the
    boundary), and the answers must start with different tokens.

    Args:
        tokenizer: a Hugging Face tokenizer.
        prompt: a rendered prompt (ending where the answer starts).
        answers: answer texts, e.g. ``["Yes.", "No."]``.

    Returns:
        one token id per answer.
    """
    base = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    ids = []
    for a in answers:
        full = tokenizer(prompt + a, add_special_tokens=True)["input_ids"]
        if full[: len(base)] != base or len(full) == len(base):
            raise ConfigError(
                f"prompt: answer {a!r} merges with the end of the prompt when tokenized; "
                "end the layout with a separator (e.g. a newline)"
            )
        ids.append(int(full[len(base)]))
    if len(set(ids)) != len(ids):
        raise ConfigError(f"prompt: answers {list(answers)} start with the same token {ids[0]}")
    return ids


def continuation_ids(tokenizer: Any, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` and of ``continuation`` as it is tokenized after it.

    Falls back to tokenizing the continuation alone when the two merge at the boundary.

    Returns:
        (prompt ids, continuation ids).
    """
    base = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    full = tokenizer(prompt + continuation, add_special_tokens=True)["input_ids"]
    if full[: len(base)] == base and len(full) > len(base):
        return list(base), list(full[len(base) :])
    return list(base), list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
