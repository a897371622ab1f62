"""The conversation protocol: settings, actions, replies, and the sessions' loop.

A session is one test row: its hidden target is the row's target item. At turn ``t = 1..T`` the
recommender either asks about one attribute (``genre``, ``decade``, ``similar``) or recommends at
most ``k`` items; the last turn always recommends (a question there could never lead to
success). The simulator answers; it accepts a list exactly when the target is in it, and the
session ends there. A rejected list's items are known non-targets for the rest of the session.
What the user's utterances reveal (:func:`~benchmark.conversation.catalogue.understand`) is
collected in :class:`Context` for every recommender, which never sees the target.

Stored form of a session (one line of ``dialogues.jsonl.gz``)::

    {"row": 0, "user": "1", "target": "102", "success_turn": 3 | null,
     "turns": [{"turn": 1, "speaker": "recommender", "action": "ask", "attribute": "genre",
                "text": "...", "prompt_tokens": 0},
               {"turn": 1, "speaker": "user", "text": "...", "accepted": false,
                "reveals": "genre" | null, "replaced": false, "prompt_tokens": 0},
               {"turn": 2, "speaker": "recommender", "action": "recommend",
                "items": ["423", null, ...], "generated": [...], "text": "...", "prompt_tokens": 0}, ...]}

``items`` are raw catalogue ids in list order; ``null`` is a generated title that names no
catalogue item (a hallucination). ``generated`` holds an LLM's title texts (empty for rankers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from benchmark.conversation.catalogue import ATTRIBUTES, Catalogue, Revealed, understand
from benchmark.errors import ConfigError

MAX_TURNS = 20
MAX_K = 100

QUESTIONS = {
    "genre": "Which genre are you in the mood for?",
    "decade": "From which decade should the movie be?",
    "similar": "Can you name a movie like the one you want?",
}


@dataclass(frozen=True)
class ProtocolConfig:
    """The session rules (``conversation.turns``, ``k``, ``attributes``, ``simulator.hint``).

    Attributes:
        turns: T, recommender turns at most (1..20).
        k: items per recommendation (1..100, at most the catalogue).
        attributes: what a recommender may ask about (a subset of ``genre``, ``decade``, ``similar``).
        hint: a rejection also reveals one attribute not revealed yet.
    """

    turns: int = 5
    k: int = 10
    attributes: tuple[str, ...] = ATTRIBUTES
    hint: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.turns, bool)
            or not isinstance(self.turns, int)
            or not 1 <= self.turns <= MAX_TURNS
        ):
            raise ConfigError(f"conversation.turns: must be an integer in 1..{MAX_TURNS}, got {self.turns!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_K:
            raise ConfigError(f"conversation.k: must be an integer in 1..{MAX_K}, got {self.k!r}")
        bad = [a for a in self.attributes if a not in ATTRIBUTES]
        if bad or len(set(self.attributes)) != len(self.attributes):
            raise ConfigError(
                f"conversation.attributes: each of {list(ATTRIBUTES)} at most once, got {list(self.attributes)}"
            )

    def check_catalogue(self, n_items: int) -> None:
        """k must not exceed the catalogue."""
        if self.k > n_items:
            raise ConfigError(f"conversation.k={self.k}: the catalogue has only {n_items} items")

    def describe(self) -> dict[str, Any]:
        return {
            "turns": self.turns,
            "k": self.k,
            "attributes": list(self.attributes),
            "hint": self.hint,
            "last_turn": "recommend",
            "questions": {a: QUESTIONS[a] for a in self.attributes},
        }


@dataclass(frozen=True)
class Action:
    """One recommender turn: ``ask`` one attribute, or ``recommend`` items.

    Attributes:
        kind: ``ask`` or ``recommend``.
        attribute: the attribute asked about (``ask``).
        items: catalogue indices in list order; None = a generated title naming no item.
        generated: an LLM's title texts, aligned with ``items`` (empty for rankers).
        prompt_tokens: tokens the recommender's LLM read for this turn (0 without one).
    """

    kind: str
    attribute: str | None = None
    items: tuple[int | None, ...] = ()
    generated: tuple[str, ...] = ()
    prompt_tokens: int = 0

    @staticmethod
    def ask(attribute: str, prompt_tokens: int = 0) -> Action:
        return Action("ask", attribute=attribute, prompt_tokens=prompt_tokens)

    @staticmethod
    def recommend(
        items: Sequence[int | None], generated: Sequence[str] = (), prompt_tokens: int = 0
    ) -> Action:
        return Action(
            "recommend", items=tuple(items), generated=tuple(generated), prompt_tokens=prompt_tokens
        )

    def text(self, catalogue: Catalogue) -> str:
        """What the recommender says: the question, or the list as quoted ``Title (Year)`` texts."""
        if self.kind == "ask":
            return QUESTIONS[str(self.attribute)]
        shown = []
        for j, i in enumerate(self.items):
            shown.append(
                catalogue.texts[i]
                if i is not None
                else (self.generated[j] if j < len(self.generated) else "?")
            )
        return "How about " + ", ".join(f'"{t}"' for t in shown) + "?"


@dataclass(frozen=True)
class Reply:
    """One simulator turn.

    Attributes:
        text: what the user says.
        accepted: the recommended list holds the target.
        reveals: the attribute the reply answers or hints at (None for a plain accept/reject).
        replaced: an LLM utterance that named the target (or was empty) was replaced by the rule answer.
        prompt_tokens: tokens the simulator's LLM read (0 for the rule simulator).
    """

    text: str
    accepted: bool = False
    reveals: str | None = None
    replaced: bool = False
    prompt_tokens: int = 0


@dataclass
class Context:
    """What a recommender knows at a turn (never the target).

    Attributes:
        row: the test row.
        user: the user index.
        turn: the current turn (1-based).
        turns: T.
        k: list length.
        excluded: item indices never to recommend (the user's train and valid items).
        revealed: what the user's utterances revealed so far.
        rejected: items of rejected lists.
        asked: attributes asked so far, in order (repeats included).
        told: attributes the simulator answered or hinted at.
        dialogue: (speaker, text, the recommender's action or None) so far.
    """

    row: int
    user: int
    turns: int
    k: int
    excluded: np.ndarray
    turn: int = 0
    revealed: Revealed = field(default_factory=Revealed)
    rejected: set[int] = field(default_factory=set)
    asked: list[str] = field(default_factory=list)
    told: list[str] = field(default_factory=list)
    dialogue: list[tuple[str, str, Action | None]] = field(default_factory=list)

    @property
    def must_recommend(self) -> bool:
        """The last turn: a question could never lead to success."""
        return self.turn >= self.turns

    def blocked(self) -> np.ndarray:
        """Item indices not to recommend now: excluded, rejected, and items the user named."""
        extra = sorted(self.rejected | set(self.revealed.mentioned))
        return np.union1d(self.excluded, np.asarray(extra, dtype=np.int64))


class Recommender(Protocol):
    """A conversational recommender: one action per context, for a batch of sessions at their turn."""

    def act(self, ctxs: list[Context]) -> list[Action]: ...

    def facts(self) -> dict[str, Any]: ...


class Simulator(Protocol):
    """A user simulator: one reply per action, knowing each session's target."""

    def reply(self, actions: list[Action], targets: list[int], ctxs: list[Context]) -> list[Reply]: ...

    def facts(self) -> dict[str, Any]: ...


def _check_action(action: Action, ctx: Context, proto: ProtocolConfig, n_items: int) -> None:
    """A recommender's action must follow the protocol (a violation is a bug in the recommender)."""
    if action.kind == "ask":
        if ctx.must_recommend or action.attribute not in proto.attributes:
            raise RuntimeError(f"turn {ctx.turn}: ask {action.attribute!r} breaks the protocol")
    elif action.kind == "recommend":
        if not 0 < len(action.items) <= proto.k or any(
            i is not None and not 0 <= i < n_items for i in action.items
        ):
            raise RuntimeError(
                f"turn {ctx.turn}: a recommendation of {len(action.items)} items breaks the protocol"
            )
    else:
        raise RuntimeError(f"turn {ctx.turn}: unknown action {action.kind!r}")


def _stored_action(action: Action, said: str, turn: int, ids: np.ndarray) -> dict[str, Any]:
    entry: dict[str, Any] = {"turn": turn, "speaker": "recommender", "action": action.kind}
    if action.kind == "ask":
        entry["attribute"] = action.attribute
    else:
        entry["items"] = [None if i is None else str(ids[i]) for i in action.items]
        entry["generated"] = list(action.generated)
    return {**entry, "text": said, "prompt_tokens": int(action.prompt_tokens)}


def _stored_reply(reply: Reply, turn: int) -> dict[str, Any]:
    return {
        "turn": turn,
        "speaker": "user",
        "text": reply.text,
        "accepted": reply.accepted,
        "reveals": reply.reveals,
        "replaced": reply.replaced,
        "prompt_tokens": int(reply.prompt_tokens),
    }


def converse(
    recommender: Recommender,
    simulator: Simulator,
    catalogue: Catalogue,
    proto: ProtocolConfig,
    ctxs: list[Context],
    targets: list[int],
    user_ids: list[str],
) -> list[dict[str, Any]]:
    """Run a batch of sessions in lockstep (turn t of every active session together) and return
    their stored forms (see the module docstring); a session leaves the batch when it succeeds.

    Args:
        recommender: acts on the contexts.
        simulator: replies knowing the targets.
        catalogue: texts and raw ids of the items.
        proto: the session rules.
        ctxs: fresh contexts (turn 0), one per session.
        targets: the hidden targets' item indices.
        user_ids: the users' raw ids (stored).
    """
    ids = catalogue.item_ids
    out = [
        {"row": c.row, "user": str(u), "target": str(ids[t]), "success_turn": None, "turns": []}
        for c, t, u in zip(ctxs, targets, user_ids, strict=True)
    ]
    active = list(range(len(ctxs)))
    for turn in range(1, proto.turns + 1):
        if not active:
            break
        for j in active:
            ctxs[j].turn = turn
        actions = recommender.act([ctxs[j] for j in active])
        for j, action in zip(active, actions, strict=True):
            _check_action(action, ctxs[j], proto, len(catalogue))
        replies = simulator.reply(actions, [targets[j] for j in active], [ctxs[j] for j in active])
        for j, action, reply in zip(active, actions, replies, strict=True):
            _record_turn(out[j], ctxs[j], action, reply, targets[j], catalogue)
        active = [j for j in active if out[j]["success_turn"] is None]
    return out


def _record_turn(
    session: dict[str, Any], ctx: Context, action: Action, reply: Reply, target: int, catalogue: Catalogue
) -> None:
    """Store one turn and update the context with what the reply revealed (or rejected)."""
    if reply.accepted != (action.kind == "recommend" and target in action.items):
        raise RuntimeError(f"turn {ctx.turn}: the simulator's accept does not match the list")
    said = action.text(catalogue)
    session["turns"] += [
        _stored_action(action, said, ctx.turn, catalogue.item_ids),
        _stored_reply(reply, ctx.turn),
    ]
    if action.kind == "ask":
        ctx.asked.append(str(action.attribute))
    ctx.dialogue += [("recommender", said, action), ("user", reply.text, None)]
    ctx.revealed = ctx.revealed | understand(reply.text, catalogue)
    if reply.reveals:
        ctx.told.append(reply.reveals)
    if reply.accepted:
        session["success_turn"] = ctx.turn
    else:
        ctx.rejected.update(i for i in action.items if i is not None)
