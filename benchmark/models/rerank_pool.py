"""A dynamic prompt pool for the listwise reranker: a bandit picks the template per user.

``model=llm_rerank_pool`` holds several listwise templates (``pool``: id -> a ``configs/prompt``
node with the fields ``liked``, ``disliked`` and ``candidates``, e.g. the listwise text, a
role-play, a JSON record and a terse variant) over one causal LM without training, reranking a
first-stage run's top-N as :class:`benchmark.models.llm_rerank.LLMRerank` does. Users are put in
groups learned from the train part (:func:`benchmark.models.components.bandit.user_groups`).

Feedback comes from the train part only. A feedback task is a train user's listwise task
(:meth:`LLMRerank.train_tasks`): its history before its last train item, and ``top_n``
candidates, that item among items the user never interacted with in train. ``feedback_users`` tasks
are drawn by seed; every template reranks every task once, and the reward of a template on a task is
the NDCG@10 of the answer in its order, ``1 / log2(rank + 1)`` for rank <= 10, else 0. Then the
bandit (Thompson sampling or LinUCB) walks the tasks in a seeded order, chooses a template for each
task's group and observes only that template's reward (offline replay). Neither the valid nor the
test part, nor the first stage's lists, is read while learning. The tasks' candidates are random
unseen items rather than a first stage's top-N: an easier list than the test one, stated in the
record (``feedback.tasks``).

On the test users the bandit chooses one template per user (no more learning) and that template's
scores rerank the user's candidates. With ``compare: true`` every template reranks every test user
too, and each predictions line keeps the user's candidates and every template's scores of them, so the
record sets the bandit against each single template, the template best on the feedback tasks, a
template drawn at random per user and a per-group oracle (chosen on the test targets: an upper
bound) on the same users (:func:`benchmark.eval.pool.compare_rank_policies`); ``validate``
recomputes that comparison.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from benchmark.data.shots import draw_rows, rows_digest
from benchmark.data.splits import Split
from benchmark.data.views import RankingRows
from benchmark.errors import ConfigError
from benchmark.eval.pool import rank_gain
from benchmark.models.components.bandit import grouped_bandit, pool_facts, replay
from benchmark.models.components.llm import PromptPrefix
from benchmark.models.components.prompts import item_texts
from benchmark.models.components.shard_state import merged_counts, merged_dicts
from benchmark.models.llm_rerank import LLMRerank
from benchmark.models.tallrec import as_template

FEEDBACK_STREAM = 8  # draw_rows stream of the feedback tasks (see benchmark.data.shots)
REWARD = "NDCG@10 of the answer in the template's order of the task's candidates"


class LLMRerankPool(LLMRerank):
    """The listwise reranker with a template pool and a bandit; see the module docstring.

    Args:
        split, data: as :class:`LLMRerank`.
        pool: template id -> listwise prompt config node (at least two).
        groups: ``activity`` or ``genre`` (user groups from the train part).
        n_groups: groups wanted.
        bandit: ``thompson`` or ``linucb``.
        alpha: LinUCB's exploration weight.
        feedback_users: train tasks the bandit learns from (drawn by seed; all when larger).
        compare: rerank every test user with every template as well (the policy comparison).
        **kwargs: :class:`LLMRerank`'s settings.
    """

    def __init__(
        self,
        split: Split,
        data: Any,
        pool: Mapping[str, Any] | None = None,
        groups: str = "activity",
        n_groups: int = 3,
        bandit: str = "thompson",
        alpha: float = 1.0,
        feedback_users: int = 64,
        compare: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(pool, Mapping) or len(pool) < 2:
            raise ConfigError("model.module.pool: at least two templates (id -> configs/prompt node)")
        if isinstance(feedback_users, bool) or not isinstance(feedback_users, int) or feedback_users < 1:
            raise ConfigError(f"model.module.feedback_users: a positive number of train users, got {feedback_users!r}")
        templates = {str(k): as_template(v) for k, v in pool.items()}
        for tid, t in templates.items():
            need = {"liked", "disliked", "candidates"}
            if not need <= t.fields:
                raise ConfigError(f"model.module.pool.{tid}: a listwise prompt needs the fields {sorted(need)}")
        kwargs.pop("prompt", None)
        super().__init__(split, data, prompt=next(iter(templates.values())), **kwargs)
        self.arm_ids = list(templates)
        self._arms: list[dict[str, Any]] = []
        for tid, t in templates.items():
            arm = {"id": tid, "template": t, "texts": item_texts(data.items, data.item_fields, split.item_ids, t.item_text)}
            bare = t.render({f: "" for f in t.fields}, (), self.tokenizer)
            arm["template_tokens"] = len(self.tokenizer(bare, add_special_tokens=True)["input_ids"])
            arm["prompt_tokens"] = [0, 0, 0]  # test prompts, their tokens, the longest
            self._arms.append(arm)
        self.user_group, self.group_facts, self.bandit = grouped_bandit(
            split, data, groups, n_groups, bandit, len(self._arms), self.seed, alpha
        )
        self.feedback_users, self.compare = int(feedback_users), bool(compare)
        self._replayed: dict[str, Any] | None = None
        self._choices: dict[int, dict[str, Any]] = {}

    @contextmanager
    def _arm_state(self, arm: Mapping[str, Any]) -> Iterator[None]:
        """Render and score with ``arm``'s template (and its item texts, and with ``prefix_reuse`` its
        own run-wide prompt prefix: the users of one template share its instruction)."""
        saved = (self.template, self.texts, self.prompt_prefix)
        self.template, self.texts = arm["template"], arm["texts"]
        if self.prompt_prefix is not None:
            self.prompt_prefix = arm.setdefault("prefix", PromptPrefix())
        try:
            yield
        finally:
            self.template, self.texts, self.prompt_prefix = saved

    def _learn(self) -> dict[str, Any]:
        """Offline replay on the feedback tasks (train part only), once."""
        if self._replayed is not None:
            return self._replayed
        t0 = time.perf_counter()
        tasks = self.train_tasks()
        picked = np.sort(draw_rows(len(tasks.users), min(self.feedback_users, len(tasks.users)), self.seed, stream=FEEDBACK_STREAM))
        rewards = np.zeros((len(picked), len(self._arms)))
        for a, arm in enumerate(self._arms):
            with self._arm_state(arm):
                scores = self.continuation_scores(*self.task_prompts(tasks, picked))
            for j, (p, s) in enumerate(zip(picked, scores, strict=True)):
                order = tasks.shown[p][np.argsort(-s, kind="stable")]
                rewards[j, a] = rank_gain(order, [int(tasks.answer[p])])
        users = tasks.users[picked]
        keys = np.stack([np.zeros(len(users), np.int64), users, tasks.answer[picked]], axis=1)
        facts = replay(self.bandit, self.user_group[users], rewards, keys, self.seed)
        mean = rewards.mean(axis=0)
        self._replayed = {
            **facts,
            "part": "train",
            "tasks": f"a train user's last train item among {self.top_n - 1} items it never interacted with in train",
            "users_sha256": rows_digest(users),
            "reward": REWARD,
            "mean_reward": [round(float(x), 6) for x in mean],
            "best_on_feedback": self.arm_ids[int(np.argmax(mean))],
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return self._replayed

    def _score_users(self, users: list[int]) -> None:
        """Each user's candidates scored by the template its group's bandit chooses (every template's
        order kept with ``compare``)."""
        self._learn()
        chosen = {u: int(self.bandit.choose(int(self.user_group[u]), [1, int(u), 0])) for u in users}
        per_arm: dict[tuple[int, int], np.ndarray] = {}
        for a, arm in enumerate(self._arms):
            sel = list(users) if self.compare else [u for u in users if chosen[u] == a]
            if not sel:
                continue
            run = self._token_stats  # the prompts of every template, as the reranker counts them
            self._token_stats = arm["prompt_tokens"]  # ... and of this template alone
            try:
                with self._arm_state(arm):
                    super()._score_users(sel)
            finally:
                mine, self._token_stats = self._token_stats, run
            added = [mine[0] - arm["prompt_tokens"][0], mine[1] - arm["prompt_tokens"][1]]
            self._token_stats = [run[0] + added[0], run[1] + added[1], max(run[2], mine[2])]
            arm["prompt_tokens"] = mine
            for u in sel:
                per_arm[u, a] = self._scores[u]
        for u in users:
            a = chosen[u]
            self._scores[u] = per_arm[u, a]
            fact: dict[str, Any] = {"group": int(self.user_group[u]), "template": self.arm_ids[a]}
            if self.compare:
                cands = self.candidates[u]
                fact["candidates"] = [str(self.item_ids[i]) for i in cands[cands >= 0]]
                fact["scores"] = [[round(float(x), 7) for x in per_arm[u, b]] for b in range(len(self._arms))]
            self._choices[u] = fact

    def shard_state(self) -> dict[str, Any]:
        return {**super().shard_state(), "choices": self._choices, "arm_tokens": [a["prompt_tokens"] for a in self._arms]}

    def merge_shard_states(self, states: list[dict[str, Any]]) -> None:
        super().merge_shard_states(states)
        self._choices = merged_dicts([s["choices"] for s in states])
        for a, arm in enumerate(self._arms):
            arm["prompt_tokens"] = merged_counts([s["arm_tokens"][a] for s in states], largest=(2,))

    def row_facts(self, rows: RankingRows) -> list[dict[str, Any]]:
        """Per evaluated row: its user group, the template chosen and (``compare``) every template's order."""
        return [self._choices.get(int(u), {}) for u in rows.users]

    def prediction_facts(self) -> dict[str, Any]:
        facts = super().prediction_facts()

        def tokens(arm: dict[str, Any]) -> dict[str, Any]:
            n, total, longest = arm["prompt_tokens"]
            return {"prompts": n, "mean": round(total / n, 2) if n else 0.0, "max": longest}

        templates = [
            {"id": a["id"], "name": a["template"].name, "template_tokens": a["template_tokens"], "prompt_tokens": tokens(a)}
            for a in self._arms
        ]
        facts["prompt_pool"] = pool_facts(self, templates, metric="ndcg@10")
        return facts
