"""In-context examples for the listwise reranker (``model=llm_rerank``, ``icl_shots=k``).

An example is a solved listwise task built from one OTHER user's train part: its history is the
user's train items before its last train item (the last ``history`` of them, with likes), its
candidate list is that last train item and ``candidates - 1`` items the user never interacted with
in train (drawn by seed per user), shown in an order drawn by seed, and its answer is the last
train item's title. Nothing of the valid or test parts is read, and a user is never its own example.

Selection (``icl_select``): ``random`` (k examples drawn once by seed, the same for every user; a
user that is one of them gets the next draw instead), ``similar`` or ``diverse`` (per user, by the
cosine of mean MiniLM history embeddings, :func:`benchmark.models.components.icl.per_row_examples`).
``balanced`` has no meaning here (an example has no like/dislike label) and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmark.data.histories import user_histories
from benchmark.data.shots import draw_rows
from benchmark.data.splits import Split
from benchmark.errors import ConfigError
from benchmark.models.components.icl import PER_ROW, per_row_examples

LISTWISE_STRATEGIES = ("random", "similar", "diverse")
RANDOM_STREAM = 5  # draw_rows stream of the reranker's fixed examples (see benchmark.data.shots)


def check_listwise(shots: int, strategy: str, candidates: int, history: int) -> None:
    """One-line errors for bad in-context settings of the reranker."""
    for key, value, low, high in (("icl_shots", shots, 0, 8), ("icl_candidates", candidates, 2, 50), ("icl_history", history, 1, 50)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"model.module.{key}: an integer in {low}..{high}, got {value!r}")
    if strategy == "balanced":
        raise ConfigError(
            "model.module.icl_select=balanced: a listwise example has no like/dislike label to balance "
            f"(one of {', '.join(LISTWISE_STRATEGIES)})"
        )
    if strategy not in LISTWISE_STRATEGIES:
        raise ConfigError(f"model.module.icl_select: unknown strategy {strategy!r} (one of {', '.join(LISTWISE_STRATEGIES)})")


@dataclass(frozen=True)
class ExamplePool:
    """One listwise example per train user with at least two train items.

    Attributes:
        users: [E] the example's user.
        hist, likes: [E] its history items (oldest first) and their likes.
        shown: [E] its candidate list in prompt order (the answer among them).
        answer: [E] the answer item (the user's last train item).
    """

    users: np.ndarray
    hist: list[tuple[int, ...]]
    likes: list[tuple[int, ...]]
    shown: list[np.ndarray]
    answer: np.ndarray


def example_pool(split: Split, history: int, like_threshold: float, candidates: int, seed: int) -> ExamplePool:
    """The examples every user's prompt may draw from (train part only, see the module doc)."""
    seqs = user_histories(split, history + 1, like_threshold)
    train_items: dict[int, set[int]] = {}
    for u, i in zip(split.train["user"].to_numpy(), split.train["item"].to_numpy(), strict=True):
        train_items.setdefault(int(u), set()).add(int(i))
    users, hists, likes, shown, answers = [], [], [], [], []
    for u, (items, liked) in enumerate(seqs):
        if len(items) < 2:
            continue
        seen = train_items[u]
        unseen = np.setdiff1d(np.arange(split.n_items), np.fromiter(seen, dtype=np.int64))
        if len(unseen) < candidates - 1:
            continue
        rng = np.random.default_rng([int(seed), 6_113, u])
        negatives = rng.choice(unseen, candidates - 1, replace=False)
        listed = np.concatenate([[items[-1]], negatives]).astype(np.int64)
        users.append(u)
        hists.append(tuple(items[:-1]))
        likes.append(tuple(liked[:-1]))
        shown.append(listed[rng.permutation(len(listed))])
        answers.append(int(items[-1]))
    return ExamplePool(np.asarray(users, dtype=np.int64), hists, likes, shown, np.asarray(answers, dtype=np.int64))


def fixed_choice(pool: ExamplePool, k: int, seed: int) -> np.ndarray:
    """[k + 1] pool positions drawn once by seed: a user takes the first k that are not its own."""
    return draw_rows(len(pool.users), min(k + 1, len(pool.users)), seed, stream=RANDOM_STREAM)


def choose(
    strategy: str,
    k: int,
    pool: ExamplePool,
    user: int,
    fixed: np.ndarray,
    query: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
) -> np.ndarray:
    """Pool positions of ``user``'s k examples, in prompt order (never the user's own example).

    Args:
        fixed: the run's :func:`fixed_choice` (``random``).
        query: [d] the user's history vector; vectors: [E, d] the pool's (``similar``, ``diverse``).
    """
    own = np.flatnonzero(pool.users == int(user))
    if strategy in PER_ROW:
        if query is None or vectors is None:
            raise ConfigError(f"model.module.icl_select={strategy}: needs the items' text vectors")
        return per_row_examples(strategy, k, query, vectors, own)
    return np.asarray([p for p in fixed if p not in set(own.tolist())][:k], dtype=np.int64)
