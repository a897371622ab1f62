"""A dynamic prompt pool for the TALLRec-style scorer: a bandit picks the template per request.

``model=tallrec_pool`` holds several yes/no templates (``pool``: id -> a ``configs/prompt`` node,
e.g. the TALLRec text, a role-play, a JSON and a terse variant) over one causal LM without
training (zero-shot, or ``icl_shots`` in-context rows per template). Users are put in groups
learned from the train part (:func:`benchmark.models.components.bandit.user_groups`: activity
level or genre-profile clusters). Before the first test request, a bandit
(:mod:`benchmark.models.components.bandit`: Thompson sampling or LinUCB) learns by offline replay
on ``feedback_rows`` valid rows (drawn by seed): every template scores every feedback row once,
then the bandit walks the rows in a seeded order, chooses a template for each row's group and
observes only that template's reward, ``1 - |label - P(yes)|``. Nothing of the test part is read.

On the test rows the bandit chooses one template per request (no more learning: test labels
are never fed back) and the request is scored with it. With ``compare: true`` every template
scores every test row too, so the record can set the bandit against its baselines on the same
rows (:func:`benchmark.eval.pool.compare_policies`): each single template, the template best on
the feedback rows (chosen on valid), a template drawn at random per request, and the best
template per group chosen on the test labels themselves (an oracle, labelled as one). Each
predictions line keeps the group, the chosen template and (with ``compare``) every template's score,
so ``validate`` recomputes that comparison.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from benchmark.data.shots import draw_rows, rows_digest
from benchmark.data.splits import Split
from benchmark.data.views import LabeledRows, labeled_rows
from benchmark.errors import ConfigError
from benchmark.eval.metrics import auc
from benchmark.models.components.bandit import grouped_bandit, pool_facts, replay
from benchmark.models.components.prompts import answer_token_ids, item_texts
from benchmark.models.components.shard_state import merged_dicts
from benchmark.models.tallrec import TallRec, as_template

REWARD = "1 - |label - P(yes)|"


class TallRecPool(TallRec):
    """The TALLRec-style scorer with a template pool and a bandit; see the module docstring.

    Args:
        split, data: as :class:`TallRec`.
        pool: template id -> prompt config node (at least two).
        groups: ``activity`` or ``genre`` (user groups from the train part).
        n_groups: groups wanted.
        bandit: ``thompson`` or ``linucb``.
        alpha: LinUCB's exploration weight.
        feedback_rows: valid rows the bandit learns from (drawn by seed; all when larger).
        compare: score every template on every test row as well (the policy comparison).
        label_threshold: rating at or above which a valid row is a like (the split's own).
        **kwargs: :class:`TallRec`'s settings (``lora`` must be null: nothing is trained).
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
        feedback_rows: int = 256,
        compare: bool = True,
        label_threshold: float = 4.0,
        **kwargs: Any,
    ) -> None:
        if not isinstance(pool, Mapping) or len(pool) < 2:
            raise ConfigError("model.module.pool: at least two templates (id -> configs/prompt node)")
        if kwargs.get("lora") is not None:
            raise ConfigError("model.module.lora: the prompt pool scores without training (set lora: null)")
        if isinstance(feedback_rows, bool) or not isinstance(feedback_rows, int) or feedback_rows < 1:
            raise ConfigError(f"model.module.feedback_rows: a positive number of valid rows, got {feedback_rows!r}")
        templates = {str(k): as_template(v) for k, v in pool.items()}
        first = next(iter(templates.values()))
        kwargs.pop("prompt", None)
        super().__init__(split, data, prompt=first, **kwargs)
        self.arm_ids = list(templates)
        self._arms: list[dict[str, Any]] = []
        for tid, t in templates.items():
            if t.chain_of_thought:
                raise ConfigError(f"model.module.pool.{tid}: chain-of-thought templates are not pooled")
            need = {"liked", "disliked", "target"}
            if not need <= t.fields:
                raise ConfigError(f"model.module.pool.{tid}: a yes/no prompt needs the fields {sorted(need)}")
            arm = {"id": tid, "template": t, "texts": item_texts(data.items, data.item_fields, split.item_ids, t.item_text)}
            with self._arm_state(arm):
                probe = self._render(self._train[1][0], self._train[2][0], int(self._train[0][0])) if len(split.train) else ""
                arm["answer_ids"] = answer_token_ids(self.tokenizer, self._expand(probe), t.answers)
                arm["examples"] = [self._example(r) for r in self.icl_rows]
                bare = t.render({f: "" for f in t.fields}, (), self.tokenizer)
                arm["template_tokens"] = len(self.tokenizer(bare, add_special_tokens=True)["input_ids"])
            self._arms.append(arm)
        self.user_group, self.group_facts, self.bandit = grouped_bandit(
            split, data, groups, n_groups, bandit, len(self._arms), self.seed, alpha
        )
        self.feedback_rows, self.compare = int(feedback_rows), bool(compare)
        self._valid = labeled_rows(split, "valid", label_threshold)
        self._replayed: dict[str, Any] | None = None
        self._choices: dict[tuple[int, int], dict[str, Any]] = {}

    # ------------------------------------------------------------------ arms

    @contextmanager
    def _arm_state(self, arm: Mapping[str, Any]) -> Iterator[None]:
        """Render and score with ``arm``'s template (its item texts, answers and examples)."""
        saved = (self.template, self.texts, self.answer_ids, self.examples)
        self.template, self.texts = arm["template"], arm["texts"]
        self.answer_ids = arm.get("answer_ids", self.answer_ids)
        self.examples = arm.get("examples", self.examples)
        try:
            yield
        finally:
            self.template, self.texts, self.answer_ids, self.examples = saved

    def _scores(self, arm: int, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[N] P(yes) of the pairs under template ``arm``."""
        with self._arm_state(self._arms[arm]):
            prompts = [self._prompt(int(u), int(i)) for u, i in zip(users, items, strict=True)]
            return self.p_yes(prompts).numpy() if prompts else np.zeros(0, np.float32)

    # ------------------------------------------------------------------ feedback

    def _learn(self) -> dict[str, Any]:
        """Offline replay on the feedback rows (valid part only), once."""
        if self._replayed is not None:
            return self._replayed
        t0 = time.perf_counter()
        v = self._valid
        picked = np.sort(draw_rows(len(v), min(self.feedback_rows, len(v)), self.seed, stream=3))
        users, items, labels = v.users[picked], v.items[picked], v.labels[picked].astype(float)
        with self._eval_stats_kept():
            p = np.stack([self._scores(a, users, items) for a in range(len(self._arms))], axis=1)  # [N, arms]
        rewards = 1.0 - np.abs(labels[:, None] - p)
        keys = np.stack([np.zeros(len(users), np.int64), users, items], axis=1)
        facts = replay(self.bandit, self.user_group[users], rewards, keys, self.seed)
        valid_auc = [auc(labels, p[:, a]) for a in range(len(self._arms))]  # NaN with one class
        best = 0 if np.isnan(valid_auc).all() else int(np.nanargmax(valid_auc))
        self._replayed = {
            **facts,
            "part": "valid",
            "rows_sha256": rows_digest(picked),
            "reward": REWARD,
            "valid_auc": [None if np.isnan(x) else round(float(x), 6) for x in valid_auc],
            "best_on_valid": self.arm_ids[best],
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return self._replayed

    # ------------------------------------------------------------------ scoring

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B] users, [B, C] items -> [B, C] P(yes) of each pair under its group's chosen template."""
        self._learn()
        b, c = items.shape
        u = users.cpu().numpy().repeat(c)
        i = items.cpu().numpy().reshape(-1)
        groups = self.user_group[u]
        chosen = np.array([self.bandit.choose(int(g), [1, int(x), int(y)]) for g, x, y in zip(groups, u, i, strict=True)])
        out = np.zeros(len(u), dtype=np.float32)
        every = np.full((len(u), len(self._arms)), np.nan, dtype=np.float32)
        for a in range(len(self._arms)):
            sel = np.arange(len(u)) if self.compare else np.flatnonzero(chosen == a)
            if len(sel):
                every[sel, a] = self._scores(a, u[sel], i[sel])
        out = every[np.arange(len(u)), chosen]
        for x, y, g, a, row in zip(u, i, groups, chosen, every, strict=True):
            fact: dict[str, Any] = {"group": int(g), "template": self.arm_ids[int(a)]}
            if self.compare:
                fact["scores"] = [round(float(s), 7) for s in row]
            self._choices[(int(x), int(y))] = fact
        return torch.as_tensor(out).view(b, c).to(users.device)

    def shard_state(self) -> dict[str, Any]:
        return {**super().shard_state(), "choices": self._choices}

    def merge_shard_states(self, states: list[dict[str, Any]]) -> None:
        super().merge_shard_states(states)
        self._choices = merged_dicts([s["choices"] for s in states])

    def row_facts(self, rows: LabeledRows) -> list[dict[str, Any]]:
        """Per evaluated row: its user group, the template chosen and (``compare``) every template's score."""
        return [self._choices.get((int(u), int(i)), {}) for u, i in zip(rows.users, rows.items, strict=True)]

    def prediction_facts(self) -> dict[str, Any]:
        facts = super().prediction_facts()
        templates = [{"id": a["id"], "name": a["template"].name, "template_tokens": a["template_tokens"]} for a in self._arms]
        facts["prompt_pool"] = pool_facts(self, templates)
        return facts
