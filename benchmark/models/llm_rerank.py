"""LLM reranking of a first-stage model's top-N candidates (``model=llm_rerank``, ``eval=full``).

The first stage is a committed run directory (``record.json`` + ``predictions.jsonl.gz``) made on
the SAME split (its split fingerprint must equal this run's). For each test user, its top-N
ranked items (default 20) are listed in a prompt after the user's liked/disliked train history,
and each candidate is scored by the likelihood of its quoted title as the answer (summed token
log-probabilities, divided by the token count with ``length_norm``). ``score(users)`` returns
these scores for the candidates and -inf for every other item, so the evaluator's full ranking
is the reordered candidate list.

Under ``eval=candidates`` no first stage is read: each test row's candidate list (its target and
fixed negatives) is shown in an order shuffled per row by seed, the LLM generates an answer
(greedy, ``answer_tokens`` new tokens), and the answer is mapped to one candidate with
:func:`benchmark.eval.grounding.named_candidate`; per row the shown order, the raw answer, the
named candidate and whether the answer named one are recorded (:meth:`LLMRerank.answer_facts`).

Position bias: ``order`` sets the order candidates are listed in the prompt (``first_stage``,
``reverse``, or ``random``: a permutation per user drawn by seed). The record reports the mean
LLM rank and the top-1 share per prompt position and the mean Spearman correlation between
prompt position and LLM rank; with ``order=random`` these measure position bias directly.
The prompts of ``user_batch_size`` users run as one batch, and each prompt's key/value cache is
shared by its N candidates; the tokens that every prompt starts with (the instruction, and the
in-context examples when they are drawn once per run) run once for the whole run
(``prefix_reuse``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmark.data.histories import user_histories
from benchmark.data.shots import draw_rows, rows_digest
from benchmark.data.splits import Split
from benchmark.data.views import RankingRows
from benchmark.errors import ConfigError
from benchmark.eval.grounding import Catalogue, named_candidate
from benchmark.models.components.cf_features import run_dir_of
from benchmark.models.components.history_fit import (
    check_history_fit,
    fit_facts,
    kept_count,
    recency_order,
    relevance_order,
)
from benchmark.models.components.icl import PER_ROW, history_vectors
from benchmark.models.components.listwise_icl import (
    ExamplePool,
    check_listwise,
    choose,
    example_pool,
    fixed_choice,
)
from benchmark.models.components.llm import PromptPrefix, left_pad, load_causal_lm, shared_prefix_logprobs
from benchmark.models.components.prompts import PromptTemplate, continuation_ids, item_texts
from benchmark.models.components.shard_state import merged_counts, merged_dicts
from benchmark.models.tallrec import MACHINE_FACTS, as_template
from benchmark.progress import within_chunk

ORDERS = ("first_stage", "reverse", "random")
CALIBRATION_STREAM = 6  # draw_rows stream of the train users a precision option calibrates on
HISTORY_SELECT = ("recent", "relevant")  # which history items fit history_budget
ANSWER_CHARS = 300  # the raw answer kept per row in the predictions file


def first_stage_dir(spec: str | Path) -> Path:
    """The first-stage run directory: a path, or a pattern (``*``, ``?``) in its last part that must
    match exactly one directory, so a sweep can name its own first stage without its config hash
    (``outputs/quickstart/runs/ml-100k-loo-full-sasrec-recbole-1ep-s0-*``)."""
    return run_dir_of(spec, "model.module.first_stage")


# Candidate slots of a user that the first-stage run did not rank (e.g. it was scored on a subset
# of test users, eval.test_users): such a user cannot be reranked.
ABSENT = -2


def read_first_stage(run_dir: str | Path, split: Split, top_n: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Candidates of a first-stage run, checked against this run's split.

    Args:
        run_dir: a run directory with ``record.json`` and its predictions file.
        split: the current split (its fingerprint must equal the run's).
        top_n: candidates kept per user (the first ``top_n`` of the stored list).

    Returns:
        ([n_users, top_n] item indices, -1 where a user has fewer candidates, ``ABSENT`` in every
        slot of a user the first stage did not rank at all; facts about the first-stage run).
    """
    from benchmark.untrusted import Rejected, prediction_lines, read_run_dir

    run_dir = first_stage_dir(run_dir)
    try:  # the same bounded, path-checked reading as `validate`: a run folder may come from anyone
        sub = read_run_dir(run_dir)
        lines = prediction_lines(sub.predictions)
    except Rejected as e:
        raise ConfigError(f"model.module.first_stage: {run_dir}: {e}") from None
    rec = sub.record
    bad = [k for k in ("split", "eval", "model", "metrics") if not isinstance(rec.get(k), dict)]
    if bad or not isinstance(rec.get("run_id"), str):
        raise ConfigError(f"model.module.first_stage: {run_dir}: not a run record ({(bad or ['run_id'])[0]} missing or malformed)")
    theirs = rec["split"].get("fingerprint")
    if theirs != split.fingerprint:
        raise ConfigError(
            f"model.module.first_stage: run {rec['run_id']} was made on split "
            f"{str(theirs)[:12]} ({rec['split'].get('protocol')}), this run's split is "
            f"{split.fingerprint[:12]} ({split.protocol}); rerank needs the same split"
        )
    if rec["eval"].get("protocol") != "full":
        raise ConfigError(
            f"model.module.first_stage: run {rec['run_id']} used eval={rec['eval'].get('protocol')}; "
            "reranking needs a full-ranking (eval=full) first stage"
        )
    stored = int(rec["eval"].get("list_length", 0))
    if top_n > stored:
        raise ConfigError(f"model.module.top_n={top_n}: the first-stage run stores only the top {stored}")
    user_of = {u: i for i, u in enumerate(split.user_ids.tolist())}
    item_of = {x: i for i, x in enumerate(split.item_ids.tolist())}
    cands = np.full((split.n_users, top_n), ABSENT, dtype=np.int64)
    for line in lines:
        if not isinstance(line, dict) or not isinstance(line.get("ranked"), list) or line.get("user") not in user_of:
            raise ConfigError(
                f"model.module.first_stage: run {rec['run_id']} has a predictions line that is not a "
                f"ranked list of a known user ({str(line)[:80]})"
            )
        ranked = [item_of[x] for x in line["ranked"] if isinstance(x, str | int) and x in item_of][:top_n]
        row = cands[user_of[line["user"]]]
        row[:] = -1
        row[: len(ranked)] = ranked
    facts = {
        "run_id": rec.get("run_id"),
        "model": rec["model"].get("label") or rec["model"].get("name"),
        "split_fingerprint": theirs,
        "metrics": {k: v for k, v in rec["metrics"].items() if k.count("/") == 1},
    }
    return cands, facts


class LLMRerank(nn.Module):
    """Reorders a first-stage run's top-N by the LLM's answer likelihood (see the module docstring).

    Args:
        split: the split (must be the first stage's split).
        data: the dataset (item titles).
        first_stage: path of the first-stage run directory.
        backbone: causal LM (see :func:`benchmark.models.components.llm.load_causal_lm`).
        prompt: a listwise template with the fields ``liked``, ``disliked``, ``candidates``.
        top_n: candidates per user.
        order: candidate order in the prompt: ``first_stage``, ``reverse`` or ``random``.
        history: train items per user shown in the prompt (its most recent ones).
        like_threshold: like = rating > threshold.
        length_norm: divide a candidate's log-likelihood by its number of tokens.
        user_batch_size: users whose prompts run as one batch (their candidates run together next).
        dtype: weights dtype (``auto``: bf16 on CUDA, fp32 otherwise).
        accelerator: the trainer accelerator (resolves ``dtype=auto``).
        seed: seed of ``order=random``; None = the run seed (``torch.initial_seed()``).
        cache_dir: cache root for dequantized GGUF backbones.
        answer_tokens: new tokens generated per answer under ``eval=candidates``.
        history_select: which of the user's last ``history`` train items a prompt keeps under
            ``history_budget``: ``recent`` (the most recent first) or ``relevant`` (the items whose
            MiniLM title embedding is nearest any of the user's candidates first; needs a budget).
        history_budget: the prompt's length in tokens (the candidate list included) that the kept
            history must fit; None: the whole history is shown.
        icl_shots: solved listwise examples from other users' train parts shown before the user's
            prompt (:mod:`benchmark.models.components.listwise_icl`); 0: none.
        icl_select: how they are chosen: ``random``, ``similar`` or ``diverse``.
        icl_candidates: candidates listed per example (its answer among them).
        icl_history: history items shown per example.
        score_cache: read and write each candidate's answer log-probability in a disk cache
            (:mod:`~benchmark.models.components.score_cache`; the weights are never trained), so a
            rerun, another bandit over the same template pool or another seed's shared prompts run
            no LM again; the record states how many were read and computed.
        prefix_reuse: the tokens that every user's prompt starts with (the instruction, and the
            in-context examples when they are drawn once per run) run once for the whole run
            (:class:`~benchmark.models.components.llm.PromptPrefix`); the scores equal those of
            whole prompts to float rounding (``tests/unit/test_prefix_attention.py``).
    """

    def __init__(
        self,
        split: Split,
        data: Any,
        first_stage: str | None = None,
        backbone: str = "smollm2-135m-instruct",
        prompt: PromptTemplate | Mapping[str, Any] | None = None,
        top_n: int = 20,
        order: str = "first_stage",
        history: int = 10,
        like_threshold: float = 3.0,
        length_norm: bool = True,
        user_batch_size: int = 4,
        dtype: str = "auto",
        accelerator: str = "cpu",
        seed: int | None = None,
        cache_dir: str | None = None,
        answer_tokens: int = 32,
        history_select: str = "recent",
        history_budget: int | None = None,
        icl_shots: int = 0,
        icl_select: str = "random",
        icl_candidates: int = 5,
        icl_history: int = 5,
        score_cache: bool = False,
        prefix_reuse: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(score_cache, bool):
            raise ConfigError(f"model.module.score_cache: true or false, got {score_cache!r}")
        self.score_cache = score_cache
        self._score_store: Any = None  # the cache of the current weights (its counts go in the record)
        self._score_marker = ""
        check_listwise(icl_shots, icl_select, icl_candidates, icl_history)
        check_history_fit(history_select, history_budget, HISTORY_SELECT)
        if history_select == "relevant" and history_budget is None:
            raise ConfigError(
                "model.module.history_select=relevant: chooses which items fit a budget; set "
                "model.module.history_budget (tokens), or use history_select=recent"
            )
        if order not in ORDERS:
            raise ConfigError(f"model.module.order: unknown '{order}' (one of {ORDERS})")
        if top_n < 1 or user_batch_size < 1 or answer_tokens < 1:
            raise ConfigError(
                f"model.module: top_n, user_batch_size and answer_tokens must be >= 1, got {top_n}, "
                f"{user_batch_size}, {answer_tokens}"
            )
        if prompt is None:
            raise ConfigError("model.module.prompt: a prompt template is required (configs/prompt)")
        self.template = as_template(prompt)
        need = {"liked", "disliked", "candidates"}
        if not need <= self.template.fields:
            raise ConfigError(
                f"prompt {self.template.name}: a listwise prompt needs the fields {sorted(need)}"
            )
        # eval=full reranks a first stage; eval=candidates reads none (checked when scoring).
        self.first_stage_path = str(first_stage) if first_stage else None
        self.candidates, self.first_stage = (
            read_first_stage(first_stage, split, int(top_n)) if first_stage else (None, {})
        )
        self.top_n, self.order, self.length_norm = int(top_n), order, bool(length_norm)
        self.user_batch_size = int(user_batch_size)
        self.seed = int(torch.initial_seed() if seed is None else seed) % (2**63)
        self.n_items = split.n_items
        self._split = split  # its train part calibrates a smoothed precision option (calibrate)
        lm = load_causal_lm(backbone, dtype, accelerator, cache_dir)
        self.lm, self.tokenizer, self.lm_facts = lm.model, lm.tokenizer, lm.facts
        self.scorer = None  # precision=vllm: vLLM scores the same token ids (vllm_runtime)
        self.prompt_prefix = PromptPrefix() if prefix_reuse else None
        for p in self.lm.parameters():
            p.requires_grad_(False)
        self.texts = item_texts(data.items, data.item_fields, split.item_ids, self.template.item_text)
        self.histories = user_histories(split, int(history), float(like_threshold))
        self.history, self.like_threshold = int(history), float(like_threshold)
        self.answer_tokens = int(answer_tokens)
        self.history_select, self.history_budget = history_select, history_budget
        self._item_vectors: np.ndarray | None = None
        self._text_encoder: dict[str, Any] | None = None
        if history_select == "relevant":
            self._load_item_vectors(split, data, "history_select=relevant")
        self.icl_shots, self.icl_select = int(icl_shots), icl_select
        self.icl_candidates, self.icl_history = int(icl_candidates), int(icl_history)
        self._pool: ExamplePool | None = None
        self._fixed = np.zeros(0, dtype=np.int64)
        self._pool_vectors: np.ndarray | None = None
        if self.icl_shots:
            self._pool = example_pool(split, self.icl_history, self.like_threshold, self.icl_candidates, self.seed)
            if len(self._pool.users) <= self.icl_shots:
                raise ConfigError(
                    f"model.module.icl_shots={self.icl_shots}: only {len(self._pool.users)} train users have the "
                    "two train items an example needs"
                )
            if icl_select in PER_ROW:
                vectors = self._load_item_vectors(split, data, f"icl_select={icl_select}")
                self._pool_vectors = history_vectors(self._pool.hist, vectors)
            else:
                self._fixed = fixed_choice(self._pool, self.icl_shots, self.seed)
        self._token_stats = [0, 0, 0]  # scored prompts, their tokens, the longest
        self._history_stats = [0, 0, 0, 0]  # prompts, history items offered, items kept, over budget
        self.catalogue = Catalogue.from_items(data.items, data.item_fields, split.item_ids)
        self.item_ids, self.user_ids = split.item_ids, split.user_ids
        self._answers: dict[int, dict[str, Any]] = {}  # candidates row -> its answer facts
        self._scores: dict[int, np.ndarray] = {}  # user -> [top_n] LLM scores (first-stage order)
        self._positions: dict[int, np.ndarray] = {}  # user -> [top_n] prompt position per candidate
        self.example_prompt = ""
        self.register_state_dict_post_hook(_drop_all)
        self.register_load_state_dict_post_hook(_ignore_missing)

    def _load_item_vectors(self, split: Split, data: Any, why: str) -> np.ndarray:
        """[n_items, d] L2-normalised MiniLM embeddings of the item texts (feature store), loaded once."""
        if self._item_vectors is None:
            from benchmark.models.components.item_text import title_vectors

            self._item_vectors, self._text_encoder = title_vectors(data, split.item_ids, why)
        return self._item_vectors

    def _examples_for(self, user: int) -> list[tuple[dict[str, str], str]]:
        """The in-context examples of ``user``'s prompt: (fields, answer) per example, in order."""
        if self._pool is None:
            return []
        query = None
        if self._pool_vectors is not None:
            query = history_vectors([self.histories[user][0]], self._item_vectors)[0]
        picked = choose(self.icl_select, self.icl_shots, self._pool, user, self._fixed, query, self._pool_vectors)
        t, pool = self.template, self._pool
        return [
            (
                {
                    "liked": t.items([self.texts[i] for i, lk in zip(pool.hist[p], pool.likes[p], strict=True) if lk]),
                    "disliked": t.items([self.texts[i] for i, lk in zip(pool.hist[p], pool.likes[p], strict=True) if not lk]),
                    "candidates": t.items([self.texts[i] for i in pool.shown[p]]),
                },
                t.item.format(text=self.texts[int(pool.answer[p])]),
            )
            for p in picked
        ]

    def prompt_order(self, user: int, n: int) -> np.ndarray:
        """[n] the prompt position of each of the user's n candidates (first-stage order in)."""
        if self.order == "first_stage":
            return np.arange(n)
        if self.order == "reverse":
            return np.arange(n)[::-1].copy()
        perm = np.random.default_rng([self.seed, 4_099, int(user)]).permutation(n)
        return np.argsort(perm)  # candidate j is shown at position pos[j]; perm lists the shown order

    def _prompt(self, user: int, cands: np.ndarray, pos: np.ndarray) -> str:
        return self._render(user, cands[np.argsort(pos)])

    def _render(self, user: int, shown: np.ndarray) -> str:
        """The prompt of ``user`` listing the candidates ``shown`` in that order, after its in-context
        examples (with ``history_budget``: the history items kept by :meth:`_fit_history`)."""
        hist, likes = self.histories[user]
        examples = self._examples_for(user)
        if self.history_budget is not None:
            hist, likes = self._fit_history(hist, likes, shown, examples)
        return self._text(hist, likes, shown, examples)

    def _text(
        self, hist: Sequence[int], likes: Sequence[int], shown: Sequence[int], examples: Sequence[tuple[dict[str, str], str]] = ()
    ) -> str:
        t = self.template
        fields = {
            "liked": t.items([self.texts[i] for i, lk in zip(hist, likes, strict=True) if lk]),
            "disliked": t.items([self.texts[i] for i, lk in zip(hist, likes, strict=True) if not lk]),
            "candidates": t.items([self.texts[i] for i in shown]),
        }
        return t.render(fields, examples, self.tokenizer)

    def _fit_history(
        self,
        hist: Sequence[int],
        likes: Sequence[int],
        shown: Sequence[int],
        examples: Sequence[tuple[dict[str, str], str]] = (),
    ) -> tuple[list[int], list[int]]:
        """The history items (time order) kept so that the prompt listing ``shown`` (after
        ``examples``) fits the budget: the most recent (``recent``) or those nearest the
        candidates (``relevant``) first."""
        if self.history_select == "relevant":
            order = relevance_order(self._item_vectors, hist, [int(i) for i in shown])
        else:
            order = recency_order(len(hist))

        def length_of(kept: list[int]) -> int:
            text = self._text([hist[j] for j in kept], [likes[j] for j in kept], shown, examples)
            return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

        keep = kept_count(order, length_of, self.history_budget)
        over = int(keep == 0 and length_of([]) > self.history_budget)
        n, offered, kept, overs = self._history_stats
        self._history_stats = [n + 1, offered + len(hist), kept + keep, overs + over]
        shown_pos = sorted(order[:keep])
        return [int(hist[j]) for j in shown_pos], [int(likes[j]) for j in shown_pos]

    def _score_users(self, users: list[int]) -> None:
        """LLM scores of the candidates of ``users`` (one batched prompt pass, then the candidates)."""
        todo, prompts, tails, positions = [], [], [], []
        for u in users:
            cands = self.candidates[u]
            cands = cands[cands >= 0]
            if len(cands) == 0:
                self._scores[u] = np.zeros(0)
                continue
            pos = self.prompt_order(u, len(cands))
            text = self._prompt(u, cands, pos)
            if not self.example_prompt:
                self.example_prompt = text
            conts = [
                continuation_ids(self.tokenizer, text, self.template.item.format(text=self.texts[i]))
                for i in cands
            ]
            todo.append(u)
            n, total, longest = self._token_stats
            self._token_stats = [n + 1, total + len(conts[0][0]), max(longest, len(conts[0][0]))]
            prompts.append(conts[0][0])
            tails.append([c[1] for c in conts])
            positions.append(pos)
        if not todo:
            return
        # users come user_batch_size at a time (score): one pass; precision=vllm: vLLM's log-probabilities
        for u, lp, pos in zip(todo, self.continuation_scores(prompts, tails), positions, strict=True):
            self._scores[u] = lp
            self._positions[u] = pos

    @torch.no_grad()
    def calibrate(self, rows: int) -> dict[str, Any]:
        """Run ``rows`` train-part listwise prompts (users drawn by the run's seed) through the scoring
        path, to calibrate a precision option (``precision=int8_smooth``).

        A calibration prompt is built like an in-context example
        (:func:`benchmark.models.components.listwise_icl.example_pool`): a train user's history
        before its last train item, and ``top_n`` candidates (that item and items the user never
        interacted with in train), with the run's template, in-context examples and history budget.
        Nothing of the valid or test parts, nor the first stage's lists, is read; the evaluation's
        prompt statistics are left as they were.

        Returns:
            the rows used: count, part and a digest of their users.
        """
        pool = self.train_tasks()
        picked = draw_rows(len(pool.users), min(int(rows), len(pool.users)), self.seed, stream=CALIBRATION_STREAM)
        prompts, tails = self.task_prompts(pool, picked)
        for start in range(0, len(prompts), self.user_batch_size):
            end = start + self.user_batch_size
            shared_prefix_logprobs(self.lm, prompts[start:end], tails[start:end], self.tokenizer.pad_token_id)
        return {"rows": len(picked), "part": "train", "digest": rows_digest(pool.users[picked])}

    def train_tasks(self) -> ExamplePool:
        """One listwise task per train user, with ``top_n`` candidates
        (:func:`benchmark.models.components.listwise_icl.example_pool`: the user's last train item
        among items it never interacted with in train, after its history before that item)."""
        return example_pool(self._split, self.history, self.like_threshold, self.top_n, self.seed)

    def task_prompts(self, pool: ExamplePool, picked: Sequence[int]) -> tuple[list[list[int]], list[list[list[int]]]]:
        """Token ids of the prompts of the tasks ``picked`` of ``pool`` (the current template, in-context
        examples and history budget) and of each task's candidate answers, in its shown order. The
        evaluation's prompt statistics are left as they were."""
        saved = (list(self._token_stats), list(self._history_stats), self.example_prompt)
        prompts, tails = [], []
        try:
            for p in picked:
                hist, likes, shown = pool.hist[p], pool.likes[p], pool.shown[p]
                examples = self._examples_for(int(pool.users[p]))
                if self.history_budget is not None:
                    hist, likes = self._fit_history(hist, likes, shown, examples)
                text = self._text(hist, likes, shown, examples)
                conts = [
                    continuation_ids(self.tokenizer, text, self.template.item.format(text=self.texts[i]))
                    for i in shown
                ]
                prompts.append(conts[0][0])
                tails.append([c[1] for c in conts])
        finally:
            self._token_stats, self._history_stats, self.example_prompt = saved
        return prompts, tails

    def continuation_scores(self, prompts: list[list[int]], tails: list[list[list[int]]]) -> list[np.ndarray]:
        """Per prompt, each tail's summed log-probability (divided by its length with ``length_norm``),
        ``user_batch_size`` prompts per pass, as the evaluation scores candidates; with
        ``score_cache`` a prompt whose every tail is cached is not run."""
        store = self._logprobs_cached()
        raw: list[np.ndarray | None] = [None] * len(prompts)
        if store is not None:
            for j, (p, ts) in enumerate(zip(prompts, tails, strict=True)):
                got = store.get([[*p, -1, *t] for t in ts])
                if all(v is not None for v in got):
                    raw[j] = np.array(got, dtype=np.float64)
        todo = [j for j in range(len(prompts)) if raw[j] is None]
        for start in range(0, len(todo), self.user_batch_size):
            idx = todo[start : start + self.user_batch_size]
            ps, ts = [prompts[j] for j in idx], [tails[j] for j in idx]
            if self.scorer is not None:
                lps = self.scorer.continuation_logprobs(ps, ts)
            else:
                lps = shared_prefix_logprobs(self.lm, ps, ts, self.tokenizer.pad_token_id, shared=self.prompt_prefix)
            for j, lp in zip(idx, lps, strict=True):
                raw[j] = lp.numpy().astype(np.float64)
                if store is not None:
                    store.put([[*prompts[j], -1, *t] for t in tails[j]], raw[j].tolist())
        if not self.length_norm:
            return [r for r in raw if r is not None]
        return [r / np.array([len(x) for x in t]) for r, t in zip(raw, tails, strict=True) if r is not None]

    def _logprobs_cached(self) -> Any:
        """The disk cache of answer log-probabilities for this backbone as it is now (see
        :mod:`benchmark.models.components.score_cache`), or None without ``score_cache``. The identity
        (a digest of the weights, the precision facts and the scoring runtime) is computed again when
        the precision facts change (a precision option is applied after loading)."""
        if not self.score_cache:
            return None
        from benchmark.models.components.llm import default_cache_dir
        from benchmark.models.components.score_cache import ScoreCache, weights_digest

        marker = repr(self.lm_facts.get("precision")) + type(self.scorer).__name__
        if self._score_store is None or self._score_marker != marker:
            identity = {
                "scorer": "LLMRerank",
                "value": "summed log-probability of the answer tokens after the prompt",
                "weights": weights_digest(self.lm),
                "precision": self.lm_facts.get("precision"),
                "runtime": "torch" if self.scorer is None else type(self.scorer).__name__,
            }
            self._score_store = ScoreCache(default_cache_dir(), identity, bounds=(-math.inf, 0.0))
            self._score_marker = marker
        return self._score_store

    @torch.no_grad()
    def score(self, users: torch.Tensor) -> torch.Tensor:
        """[B] users -> [B, n_items]: LLM scores of each user's candidates, -inf elsewhere."""
        if self.candidates is None:
            raise ConfigError(
                "model.module.first_stage: eval=full reranks a first-stage run's top-N; set it to a run "
                "directory (record.json), or use eval=candidates (which needs none)"
            )
        out = torch.full((len(users), self.n_items), float("-inf"))
        todo = [u for u in users.tolist() if u not in self._scores]
        absent = [u for u in todo if self.candidates[u, 0] == ABSENT]
        if absent:
            raise ConfigError(
                f"model.module.first_stage: run {self.first_stage.get('run_id')} has no ranked list for "
                f"{len(absent)} of the users evaluated here (it was scored on other test users, e.g. another "
                "eval.test_users); rerank a first stage scored on every user of this run"
            )
        advance = within_chunk(len(todo))  # the evaluator's bar: rows/s and ETA
        for start in range(0, len(todo), self.user_batch_size):
            self._score_users(todo[start : start + self.user_batch_size])
            advance(len(todo[start : start + self.user_batch_size]))
        for r, u in enumerate(users.tolist()):
            cands = self.candidates[u]
            cands = cands[cands >= 0]
            if len(cands):
                out[r, torch.as_tensor(cands)] = torch.as_tensor(self._scores[u], dtype=torch.float32)
        return out.to(users.device)

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raise ConfigError("model llm_rerank reorders a first-stage run's top-N (eval=full) or names one candidate (eval=candidates)")

    # ------------------------------------------------------------------ eval=candidates

    def shown_order(self, rows: RankingRows, r: int) -> np.ndarray:
        """[C] row ``r``'s candidates (target(s) and fixed negatives) in the order the prompt lists
        them: a permutation per row drawn by the model's seed and the row's user."""
        cands = np.concatenate([rows.targets_of(r), rows.negatives[r]])
        perm = np.random.default_rng([self.seed, 7_919, int(rows.users[r])]).permutation(len(cands))
        return cands[perm]

    @torch.no_grad()
    def answer_candidates(
        self, rows: RankingRows, row_ids: np.ndarray, k: int, device: torch.device | str
    ) -> np.ndarray:
        """[B, k]: the candidate each row's answer names first (-1: none), -1 after it."""
        if self.scorer is not None:  # vLLM only scores here (prompt log-probabilities)
            raise ConfigError(
                "precision=vllm: llm_rerank answers eval=candidates by generating text, which the vLLM "
                "scoring backend does not do; use eval=full or precision=fp16/bnb8/bnb4"
            )
        if rows.negatives is None:
            raise ConfigError("model llm_rerank: answering a candidate list needs eval=candidates")
        out = np.full((len(row_ids), k), -1, dtype=np.int64)
        advance = within_chunk(len(row_ids))
        for start in range(0, len(row_ids), self.user_batch_size):
            ids = [int(r) for r in row_ids[start : start + self.user_batch_size]]
            self._answer_rows(rows, ids)
            advance(len(ids))
        for j, r in enumerate(row_ids):
            out[j, 0] = self._answers[int(r)]["_named"]
        return out

    def _answer_rows(self, rows: RankingRows, ids: list[int]) -> None:
        """Generate the answers of rows ``ids`` (one left-padded batch) and map each to a candidate."""
        shown = [self.shown_order(rows, r) for r in ids]
        texts = [self._render(int(rows.users[r]), s) for r, s in zip(ids, shown, strict=True)]
        if not self.example_prompt:
            self.example_prompt = texts[0]
        for r, s, answer in zip(ids, shown, self.generate_answers(texts), strict=True):
            named = named_candidate(self.catalogue, answer, s)
            self._answers[r] = {
                "order": [str(self.item_ids[i]) for i in s],
                "answer": answer[:ANSWER_CHARS],
                "named": None if named is None else str(self.item_ids[named]),
                "valid": named is not None,
                "_named": -1 if named is None else int(named),
            }

    def generate_answers(self, texts: list[str]) -> list[str]:
        """Greedy answers (at most ``answer_tokens`` new tokens) to prompts, as one left-padded batch."""
        pad = self.tokenizer.pad_token_id
        batch = left_pad([self.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts], pad)
        dev = next(self.lm.parameters()).device
        gen = self.lm.generate(
            input_ids=batch["input_ids"].to(dev),
            attention_mask=batch["attention_mask"].to(dev),
            max_new_tokens=self.answer_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        new = gen[:, batch["input_ids"].shape[1] :].cpu()  # [B, <= answer_tokens]
        return [self.tokenizer.decode(seq, skip_special_tokens=True).strip() for seq in new]

    def answer_facts(self, rows: RankingRows) -> list[dict[str, Any]]:
        """Per row of ``rows``: ``order`` (raw ids as listed), ``answer`` (raw text, at most
        ``ANSWER_CHARS``), ``named`` (raw id or None) and ``valid``; rows this process did not
        answer (another process of a distributed run) have ``answer`` None."""
        empty = {"order": None, "answer": None, "named": None, "valid": False}
        return [
            {k: v for k, v in self._answers.get(r, empty).items() if not k.startswith("_")} for r in range(len(rows))
        ]

    def position_bias(self) -> dict[str, Any]:
        """Mean LLM rank and top-1 share per prompt position; Spearman(position, LLM rank) and
        Spearman(first-stage rank, LLM rank), averaged over users with >= 2 candidates."""
        n = self.top_n
        rank_sum, count, top1 = np.zeros(n), np.zeros(n), np.zeros(n)
        rho_pos, rho_first = [], []
        for u, s in self._scores.items():
            if len(s) == 0:
                continue
            llm_rank = np.empty(len(s))
            llm_rank[np.argsort(-s, kind="stable")] = np.arange(len(s))
            pos = self._positions[u]
            np.add.at(rank_sum, pos, llm_rank)
            np.add.at(count, pos, 1)
            np.add.at(top1, pos, llm_rank == 0)
            if len(s) >= 2:
                rho_pos.append(_spearman(pos, llm_rank))
                rho_first.append(_spearman(np.arange(len(s)), llm_rank))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_rank = np.where(count > 0, rank_sum / count, np.nan)
            share = np.where(count > 0, top1 / count, np.nan)
        return {
            "mean_llm_rank_by_prompt_position": [
                None if np.isnan(x) else round(float(x), 4) for x in mean_rank
            ],
            "top1_share_by_prompt_position": [None if np.isnan(x) else round(float(x), 4) for x in share],
            "spearman_prompt_position_vs_llm_rank": _mean(rho_pos),
            "spearman_first_stage_rank_vs_llm_rank": _mean(rho_first),
        }

    def prediction_facts(self) -> dict[str, Any]:
        """Facts for ``record["model"]``: backbone, prompt, first stage, order, position bias
        (``eval=full``), or how candidate lists were answered (``eval=candidates``)."""
        if self._answers:
            return {"llm": self._llm_facts(), "candidates": self._candidate_facts()}
        scored = [len(s) for s in self._scores.values()]
        return {
            "llm": self._llm_facts(),
            "rerank": {
                "first_stage": {**self.first_stage, "path": self.first_stage_path},
                "top_n": self.top_n,
                "order": self.order,
                "order_seed": self.seed if self.order == "random" else None,
                "length_norm": self.length_norm,
                "users_scored": len(scored),
                "mean_candidates": round(float(np.mean(scored)), 4) if scored else 0.0,
                "position_bias": self.position_bias(),
            },
        }


    def shard_state(self) -> dict[str, Any]:
        """What this process learned while predicting its rows (see :class:`benchmark.predict.ShardedPredict`)."""
        return {
            "scores": self._scores,
            "positions": self._positions,
            "answers": self._answers,
            "token_stats": self._token_stats,
            "history_stats": self._history_stats,
            "example_prompt": self.example_prompt,
        }

    def merge_shard_states(self, states: list[dict[str, Any]]) -> None:
        """Every process's rows in this model's facts (per-row dictionaries joined, counts added)."""
        self._scores = merged_dicts([s["scores"] for s in states])
        self._positions = merged_dicts([s["positions"] for s in states])
        self._answers = merged_dicts([s["answers"] for s in states])
        self._token_stats = merged_counts([s["token_stats"] for s in states], largest=(2,))
        self._history_stats = merged_counts([s["history_stats"] for s in states])
        self.example_prompt = next((s["example_prompt"] for s in states if s["example_prompt"]), "")

    def _llm_facts(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.lm_facts.items() if k not in MACHINE_FACTS},
            "prompt": {**self.template.describe(), "example": self.example_prompt},
            "history": {
                "source": "user_last_train_items",
                "length": self.history,
                "like_threshold": self.like_threshold,
            },
            **self._prompt_facts(),
            **({"score_cache": self._score_store.facts()} if self._score_store is not None else {}),
        }

    def _prompt_facts(self) -> dict[str, Any]:
        """Prompt lengths of the users scored under ``eval=full`` and, under a budget, how the
        history was fitted."""
        n, total, longest = self._token_stats
        out: dict[str, Any] = {}
        if n:
            out["prompt_tokens"] = {"prompts": n, "mean": round(total / n, 2), "max": longest}
        if self._pool is not None:  # icl_shots / icl_select as TALLRec records them (leaderboard columns)
            out["icl_shots"], out["icl_select"] = self.icl_shots, self.icl_select
            out["icl"] = {
                "shots": self.icl_shots,
                "select": self.icl_select,
                "candidates": self.icl_candidates,
                "history": self.icl_history,
                "pool_users": len(self._pool.users),
                "source": "other users' train parts: last train item as the answer",
                **({"drawn_users": [str(self.user_ids[self._pool.users[p]]) for p in self._fixed]} if len(self._fixed) else {}),
            }
        if self._text_encoder is not None:
            out["text_encoder"] = self._text_encoder
        if self.history_budget is None:
            return out
        out["history_fit"] = fit_facts(self.history_select, self.history_budget, self._history_stats)
        return out

    def _candidate_facts(self) -> dict[str, Any]:
        answered = list(self._answers.values())
        return {
            "rows_answered": len(answered),
            "valid_ratio": round(sum(a["valid"] for a in answered) / len(answered), 6),
            "order": "shuffled per row by seed",
            "order_seed": self.seed,
            "answer_tokens": self.answer_tokens,
            "decoding": "greedy",
            "grounding": "benchmark.eval.grounding.named_candidate",
        }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two tie-free rankings."""
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / den) if den else 0.0


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 6) if values else None


def _drop_all(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """Nothing of the reranker is trained: its state dict is empty (the LM reloads from its source)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _ignore_missing(module: nn.Module, incompatible: Any) -> None:
    names = {n for n, _ in module.named_parameters(remove_duplicate=False)}
    names |= {n for n, _ in module.named_buffers(remove_duplicate=False)}
    incompatible.missing_keys[:] = [
        k for k in incompatible.missing_keys if not any(k.endswith(n) for n in names)
    ]
