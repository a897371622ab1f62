"""A dynamic prompt pool's parts: user groups from the train part, and the bandits that pick a template.

User groups (:func:`user_groups`), learned from the train part only:

- ``activity``: users binned by their number of train rows, at the quantiles of that count over
  the users who have train rows (``n_groups`` bins; a user without train rows falls in the first);
- ``genre``: k-means (``n_groups`` clusters, seeded) of each user's genre profile, the share of
  each genre among the genres of the user's train items (users without train rows: group 0).

Bandits choose one arm (a template) per request from the request's group and learn from a reward
in [0, 1] observed for the chosen arm only:

- :class:`ThompsonSampling`: a Beta(1, 1) posterior per (group, arm), updated fractionally
  (``a += r``, ``b += 1 - r``); choice = argmax of one posterior draw per arm (lowest arm on ties).
  Draws come from a generator seeded per request key, so a choice does not depend on batching.
- :class:`LinUCB`: disjoint LinUCB (Li et al., WWW 2010) over the context ``[1, one-hot group]``:
  per arm a ridge regression of the reward on the context; choice = argmax of the estimate plus
  ``alpha`` times its standard error (lowest arm on ties). Deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmark.errors import ConfigError

GROUPINGS = ("activity", "genre")
BANDITS = ("thompson", "linucb")


def user_groups(
    train_users: np.ndarray,
    train_items: np.ndarray,
    n_users: int,
    kind: str,
    n_groups: int,
    seed: int,
    item_genres: Sequence[Sequence[str]] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """[n_users] group of every user, learned from the train part's (user, item) rows only.

    Args:
        train_users, train_items: the train part's rows.
        n_users: users of the split.
        kind: ``activity`` or ``genre``.
        n_groups: groups wanted (fewer when the data cannot separate that many).
        seed: k-means seed (``genre``).
        item_genres: per item, its genres (``genre``).

    Returns:
        (groups [n_users] int64 in 0..n_groups-1, facts: kind, edges or genre list, group sizes).
    """
    if kind not in GROUPINGS:
        raise ConfigError(f"model.module.groups: one of {', '.join(GROUPINGS)}, got {kind!r}")
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 1:
        raise ConfigError(f"model.module.n_groups: a positive number of groups, got {n_groups!r}")
    counts = np.bincount(np.asarray(train_users, dtype=np.int64), minlength=n_users)
    groups = np.zeros(n_users, dtype=np.int64)
    facts: dict[str, Any] = {"kind": kind, "from": "train part only"}
    if kind == "activity":
        active = counts[counts > 0]
        edges = np.unique(np.quantile(active, np.linspace(0, 1, n_groups + 1)[1:-1])) if len(active) else np.zeros(0)
        groups = np.searchsorted(edges, counts, side="right").astype(np.int64)
        facts["edges"] = [float(e) for e in edges]
    else:
        if item_genres is None or not any(len(g) for g in item_genres):
            raise ConfigError("model.module.groups=genre: the dataset has no item genres (use groups=activity)")
        vocab = sorted({g for gs in item_genres for g in gs})
        col = {g: j for j, g in enumerate(vocab)}
        profile = np.zeros((n_users, len(vocab)))
        for u, i in zip(train_users.tolist(), train_items.tolist(), strict=True):
            for g in item_genres[i]:
                profile[u, col[g]] += 1.0
        sums = profile.sum(axis=1, keepdims=True)
        profile = np.divide(profile, sums, out=np.zeros_like(profile), where=sums > 0)
        active = np.flatnonzero(counts > 0)
        k = max(1, min(n_groups, len(np.unique(profile[active], axis=0)))) if len(active) else 1
        if len(active) and k > 1:
            from sklearn.cluster import KMeans

            km = KMeans(n_clusters=k, n_init=10, random_state=int(seed) % (2**32)).fit(profile[active])
            groups[active] = km.labels_.astype(np.int64)
        facts["genres"] = vocab
    facts["n_groups"] = int(groups.max(initial=0)) + 1
    facts["sizes"] = np.bincount(groups, minlength=facts["n_groups"]).tolist()
    return groups, facts


class ThompsonSampling:
    """Beta-Bernoulli Thompson sampling per (group, arm); see the module docstring."""

    kind = "thompson"

    def __init__(self, n_groups: int, n_arms: int, seed: int) -> None:
        self.a = np.ones((n_groups, n_arms))
        self.b = np.ones((n_groups, n_arms))
        self.seed = int(seed) % (2**63)

    def choose(self, group: int, key: Sequence[int]) -> int:
        rng = np.random.default_rng([self.seed, 7_103, *[int(k) for k in key]])
        draws = rng.beta(self.a[group], self.b[group])
        return int(np.argmax(draws))

    def update(self, group: int, arm: int, reward: float) -> None:
        self.a[group, arm] += reward
        self.b[group, arm] += 1.0 - reward

    def facts(self) -> dict[str, Any]:
        mean = self.a / (self.a + self.b)
        return {"kind": self.kind, "prior": [1.0, 1.0], "posterior_mean": np.round(mean, 6).tolist()}


class LinUCB:
    """Disjoint LinUCB over ``[1, one-hot group]``; see the module docstring."""

    kind = "linucb"

    def __init__(self, n_groups: int, n_arms: int, alpha: float = 1.0) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha < 0:
            raise ConfigError(f"model.module.alpha: a non-negative exploration weight, got {alpha!r}")
        self.n_groups, self.alpha = n_groups, float(alpha)
        d = n_groups + 1
        self.A = np.stack([np.eye(d) for _ in range(n_arms)])  # [arms, d, d]
        self.bvec = np.zeros((n_arms, d))

    def _x(self, group: int) -> np.ndarray:
        x = np.zeros(self.n_groups + 1)
        x[0], x[1 + group] = 1.0, 1.0
        return x

    def choose(self, group: int, key: Sequence[int] = ()) -> int:
        x = self._x(group)
        inv = np.linalg.inv(self.A)  # [arms, d, d]
        theta = np.einsum("aij,aj->ai", inv, self.bvec)
        ucb = theta @ x + self.alpha * np.sqrt(np.einsum("i,aij,j->a", x, inv, x))
        return int(np.argmax(ucb))

    def update(self, group: int, arm: int, reward: float) -> None:
        x = self._x(group)
        self.A[arm] += np.outer(x, x)
        self.bvec[arm] += reward * x

    def facts(self) -> dict[str, Any]:
        inv = np.linalg.inv(self.A)
        theta = np.einsum("aij,aj->ai", inv, self.bvec)
        est = np.stack([theta @ self._x(g) for g in range(self.n_groups)])  # [groups, arms]
        return {"kind": self.kind, "alpha": self.alpha, "estimate": np.round(est, 6).tolist()}


def make_bandit(kind: str, n_groups: int, n_arms: int, seed: int, alpha: float = 1.0) -> ThompsonSampling | LinUCB:
    """A bandit by name (``thompson`` or ``linucb``)."""
    if kind == "thompson":
        return ThompsonSampling(n_groups, n_arms, seed)
    if kind == "linucb":
        return LinUCB(n_groups, n_arms, alpha)
    raise ConfigError(f"model.module.bandit: one of {', '.join(BANDITS)}, got {kind!r}")


def replay(
    bandit: ThompsonSampling | LinUCB,
    groups: np.ndarray,
    rewards: np.ndarray,
    keys: np.ndarray,
    seed: int,
) -> dict[str, Any]:
    """Offline replay: the feedback rows in an order drawn by ``seed``; per row the bandit chooses
    an arm for the row's group and observes that arm's reward only.

    Args:
        groups: [N] group of each feedback row.
        rewards: [N, arms] reward of every arm on every row (the bandit sees one per row).
        keys: [N, 2] request keys (user, item) of the rows (Thompson's per-request draws).

    Returns:
        facts: rows, mean reward collected, the mean reward of each arm over all rows, and the
        arm counts per group.
    """
    n, arms = rewards.shape
    order = np.random.default_rng([int(seed) % (2**63), 7_109]).permutation(n)
    counts = np.zeros((int(groups.max(initial=0)) + 1, arms), dtype=np.int64)
    got = 0.0
    for r in order:
        g = int(groups[r])
        a = bandit.choose(g, keys[r].tolist())
        bandit.update(g, a, float(rewards[r, a]))
        counts[g, a] += 1
        got += float(rewards[r, a])
    return {
        "rows": int(n),
        "mean_reward": round(got / n, 6) if n else None,
        "arm_mean_reward": np.round(rewards.mean(axis=0), 6).tolist() if n else [],
        "arm_counts_per_group": counts.tolist(),
    }


def grouped_bandit(
    split: Any, data: Any, groups: str, n_groups: int, kind: str, n_arms: int, seed: int, alpha: float
) -> tuple[np.ndarray, dict[str, Any], ThompsonSampling | LinUCB]:
    """A prompt pool's user groups (from ``split``'s train part; ``genre`` reads the items' genres
    of ``data``) and its bandit over ``n_arms`` templates: (groups per user, their facts, bandit)."""
    genre_col = data.item_fields.get("genres")
    genres = None
    if groups == "genre" and genre_col in getattr(data.items, "columns", ()):
        from benchmark.models.components.text_encoder import column_values

        genres = [v.split() for v in column_values(data.items, genre_col, [str(i) for i in split.item_ids])]
    tr = split.train
    user_group, facts = user_groups(tr["user"].to_numpy(), tr["item"].to_numpy(), split.n_users, groups, n_groups, seed, genres)
    return user_group, facts, make_bandit(kind, facts["n_groups"], n_arms, seed, alpha)


def pool_facts(pool: Any, templates: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """What a prompt pool's record states (``model.prompt_pool``): its templates, user groups, the
    bandit's final state, the feedback it learned from, how often each template was chosen on the
    test rows, and ``extra`` (e.g. the comparison's metric). ``pool`` is the model: ``arm_ids``,
    ``group_facts``, ``bandit``, ``_replayed``, ``_choices``, ``compare`` and ``seed``."""
    chosen = [c["template"] for c in pool._choices.values()]
    return {
        "templates": templates,
        "groups": pool.group_facts,
        "bandit": pool.bandit.facts(),
        "feedback": pool._replayed,
        "test_choices": {tid: chosen.count(tid) for tid in pool.arm_ids},
        "compare": pool.compare,
        "seed": pool.seed,
        "learns_on_test": False,
        **extra,
    }
