"""LLaRA-style candidate answering with hybrid item mentions (Liao et al., SIGIR 2024).

A causal LM reads a user's history and a list of candidates (the target and ``negatives``
items the user never interacted with, in a shuffled order) and generates the title of the
candidate it picks. Every item mention is its title, and with ``adapter=cf_proj`` also a soft
token projected from the item's embedding in a trained sequential recommender (SASRec by default:
:mod:`benchmark.models.components.cf_features`): LLaRA's hybrid item representation.

Prompt modes (``mode``):

- ``text``: titles only (no adapter; ``adapter=none``);
- ``hybrid``: every mention is title + soft tokens, in training and evaluation;
- ``curriculum``: LLaRA's curriculum prompt tuning: each training prompt is hybrid with a
  probability rising linearly from 0 to 1 over the first ``curriculum_epochs`` epochs (drawn by
  seed per prompt), text-only otherwise; evaluation is hybrid.

Built on :class:`~benchmark.models.p5.P5` with ``title`` item ids (the answer is a title; the
prefix trie holds every title): training is cross-entropy of the target title after the prompt
(LoRA on the LM, the projector trains too), one window per (user, train position) as P5, each with
``negatives`` fresh negatives per epoch drawn from the items outside the user's train sequence.
Evaluation is ``eval=candidates`` only: the row's candidates (its target and the protocol's
fixed negatives) are listed in the prompt and the answer is restricted to them (``constrained``:
every candidate's title scored by its log-likelihood after the prompt, which is the ranking a
beam search over the candidates gives, at a fraction of its cost) or free (beam search over the
whole catalogue's titles), in which case an answer that names no candidate is a miss and counts
against ``valid_ratio`` (LLaRA's ValidRatio). Validation during training asks the same question on the
valid rows, with candidates drawn once by seed from items outside the user's train and valid items.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from benchmark.data.splits import Split
from benchmark.data.views import RankingRows
from benchmark.errors import ConfigError
from benchmark.models.components.windows import WindowStream
from benchmark.models.p5 import P5

MODES = ("text", "hybrid", "curriculum")


class CandidateWindowStream(WindowStream):
    """P5's windows (same order), with the epoch and the batch's position in it passed to
    ``collate`` (for the per-epoch negatives and the curriculum's schedule)."""

    def batch(
        self, users: np.ndarray, ends: np.ndarray, templates: np.ndarray, b: int, n_batches: int
    ) -> dict[str, torch.Tensor]:
        progress = self.epoch + b / n_batches  # epochs done when this batch starts
        return self.collate(users, ends, templates, self.epoch, b, progress)


class LLaRA(P5):
    """Candidate answering with hybrid (title + CF soft token) item mentions; see the module docstring.

    Args:
        split, data: as :class:`P5`.
        negatives: negatives per training prompt (LLaRA: 19, so 20 candidates).
        mode: ``text``, ``hybrid`` or ``curriculum``.
        curriculum_epochs: epochs over which the hybrid share rises from 0 to 1 (``curriculum``).
        adapter: the run's ``adapter`` config (``cf_proj`` for hybrid mentions), or None.
        **kwargs: :class:`P5`'s settings (``indexing`` must be ``title``).
    """

    eval_protocols = ("candidates",)
    _valid_candidates: np.ndarray | None = None  # set once P5's constructor is done

    def __init__(
        self,
        split: Split,
        data: Any,
        negatives: int = 19,
        mode: str = "hybrid",
        curriculum_epochs: float = 1.0,
        adapter: Any = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 1:
            raise ConfigError(f"model.module.negatives: a positive number of negatives, got {negatives!r}")
        if mode not in MODES:
            raise ConfigError(f"model.module.mode: one of {', '.join(MODES)}, got {mode!r}")
        if isinstance(curriculum_epochs, bool) or not isinstance(curriculum_epochs, int | float) or curriculum_epochs <= 0:
            raise ConfigError(f"model.module.curriculum_epochs: a positive number of epochs, got {curriculum_epochs!r}")
        active = adapter is not None and _adapter_active(adapter)
        if mode == "text" and active:
            raise ConfigError("model.module.mode=text shows titles only: run it with adapter=none")
        if mode != "text" and not active:
            raise ConfigError(
                f"model.module.mode={mode} needs item soft tokens: add adapter=cf_proj "
                "adapter.encoder.run=<a first-stage run saved with save_item_embeddings=true>"
            )
        indexing = kwargs.get("indexing") or {}
        scheme = indexing.get("scheme") if isinstance(indexing, Mapping) else getattr(indexing, "scheme", None)
        if scheme != "title":
            raise ConfigError(f"model.module.indexing.scheme: llara answers with titles (title), got {scheme!r}")
        self_negatives, self_mode, self_curriculum = int(negatives), mode, float(curriculum_epochs)
        super().__init__(split, data, adapter=adapter, **kwargs)
        self.negatives, self.mode, self.curriculum_epochs = self_negatives, self_mode, self_curriculum
        if self.prompts.few_shot:
            raise ConfigError("model.module.prompts.few_shot: llara shows no few-shot examples (set 0)")
        missing = [t.name for t in self.prompts.templates if "{candidates}" not in t.text]
        if missing:
            raise ConfigError(f"model.prompts: template {missing[0]!r} has no {{candidates}} field (p5_prompt=llara)")
        self._train_items = [np.unique(s) for s in self.train_seq]
        self._valid_candidates = self._draw_valid_candidates(split)
        self.example_prompt = self._candidate_prompt(
            int(split.test["user"].iloc[0]) if len(split.test) else 0, "test", self._example_candidates()
        )
        if self.adapter is not None:
            self.example_prompt = self.adapter.expand(self.example_prompt)[0]

    # ------------------------------------------------------------------ candidates

    def _draw(self, rng: np.random.Generator, user_items: np.ndarray, n: int) -> np.ndarray:
        """``n`` distinct items outside ``user_items``, uniform (fewer when the catalogue runs out)."""
        free = np.setdiff1d(np.arange(self.n_items), user_items, assume_unique=False)
        return rng.choice(free, size=min(n, len(free)), replace=False)

    def _draw_valid_candidates(self, split: Split) -> np.ndarray:
        """[n_valid_rows, 1 + negatives] candidates of each valid row (target first), negatives drawn
        once by seed from the items outside the user's train and valid items (test never read)."""
        rows = self._valid_rows
        out = np.full((len(rows), 1 + self.negatives), -1, dtype=np.int64)
        for r in range(len(rows)):
            u = int(rows.users[r])
            seen = np.r_[self._train_items[u], self.valid_seq[u]]
            rng = np.random.default_rng([self.seed, 6_101, u])
            neg = self._draw(rng, seen, self.negatives)
            targets = rows.targets_of(r)
            out[r, : 1 + len(neg)] = np.r_[targets[:1], neg]
        return out

    def _example_candidates(self) -> np.ndarray:
        """Candidates of the recorded example prompt (any items; the record shows the layout only)."""
        rng = np.random.default_rng([self.seed, 6_103])
        return rng.choice(self.n_items, size=min(self.n_items, 1 + self.negatives), replace=False)

    def _order(self, cands: np.ndarray, key: list[int]) -> np.ndarray:
        """The candidates in a shuffled order, a function of (seed, key) only."""
        cands = cands[cands >= 0]
        return cands[np.random.default_rng([self.seed, *key]).permutation(len(cands))]

    def _candidate_prompt(self, user: int, part: str, cands: np.ndarray, hybrid: bool | None = None) -> str:
        """The evaluation prompt of ``user`` before ``part`` with the candidates ``cands`` listed."""
        seq = self.train_seq[user]
        if part == "test":
            seq = np.r_[seq, self.valid_seq[user]]
        return self._render_llara(self.prompts.eval, seq[-self.history :], user, cands, self.mode != "text" if hybrid is None else hybrid)

    def _render_llara(self, template: str, hist: np.ndarray, user: int, cands: np.ndarray, hybrid: bool) -> str:
        def mention(i: int) -> str:
            text = self.index.texts[int(i)]
            return self.adapter.mention_text(int(i), text) if hybrid and self.adapter is not None else text

        return self.prompts.render(
            self.prompts.template(template),
            [mention(i) for i in hist],
            self.user_ids[user],
            candidates=[mention(i) for i in cands],
        )

    def _eval_prompt(self, user: int, part: str) -> str:
        """P5's row prompt has no candidate list: llara always shows one (see :meth:`answer_candidates`)."""
        if self._valid_candidates is None:  # P5's constructor asks for an example prompt: set later
            return ""
        raise ConfigError("model llara answers candidate lists: use eval=candidates")

    # ------------------------------------------------------------------ training

    def train_dataset(self, split: Split, batch_size: int, seed: int) -> CandidateWindowStream:
        users, ends = self._windows()
        if len(users) == 0:
            raise ConfigError("model llara: no train user has two train items; nothing to train on")
        return CandidateWindowStream(
            users, ends, len(self.prompts.seen), self.collate, batch_size, seed, self.sample_windows
        )

    def hybrid_share(self, progress: float) -> float:
        """Probability that a training prompt is hybrid after ``progress`` epochs."""
        if self.mode == "text":
            return 0.0
        if self.mode == "hybrid":
            return 1.0
        return float(min(1.0, progress / self.curriculum_epochs))

    def collate(  # type: ignore[override]
        self,
        users: np.ndarray,
        ends: np.ndarray,
        templates: np.ndarray,
        epoch: int = 0,
        batch: int = 0,
        progress: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """A training batch: each window's prompt lists its target and fresh negatives (drawn by
        (seed, epoch, batch)), hybrid with the curriculum's probability; labels = the target title."""
        rng = np.random.default_rng([self.seed, 6_007, int(epoch), int(batch)])
        share = self.hybrid_share(progress)
        seen = self.prompts.seen
        prompts, targets = [], []
        for u, e, t in zip(users, ends, templates, strict=True):
            seq = self.train_seq[u]
            target = int(seq[e])
            cands = np.r_[target, self._draw(rng, self._train_items[u], self.negatives)]
            cands = cands[rng.permutation(len(cands))]
            hybrid = bool(rng.random() < share)
            prompts.append(
                self._render_llara(seen[t].name, seq[max(0, e - self.history) : e], int(u), cands, hybrid)
            )
            targets.append(self.item_tokens[target])
        out, labels = self._target_batch(prompts, targets)
        out["labels"] = labels
        return out

    # ------------------------------------------------------------------ answering

    @torch.no_grad()
    def answer_candidates(
        self, rows: RankingRows, row_ids: np.ndarray, k: int, device: torch.device | str
    ) -> np.ndarray:
        """``eval=candidates``: the row's candidates listed in the prompt (order shuffled by seed and
        user) and decoding restricted to them; [B, k] candidates best first, -1 = none."""
        if rows.negatives is None:
            raise ConfigError("model llara: answering a candidate list needs eval=candidates")
        row_ids = np.asarray(row_ids, dtype=np.int64)
        cands = [np.r_[rows.targets_of(r), rows.negatives[r]] for r in row_ids]
        return self._answer(rows, row_ids, cands, k, device)

    @torch.no_grad()
    def rank_rows(
        self, rows: RankingRows, row_ids: np.ndarray, k: int, device: torch.device | str
    ) -> np.ndarray:
        """Validation (P5's ``score`` ranks the valid rows): the valid rows' own candidate lists."""
        if rows.part != "valid" or self._valid_candidates is None:
            raise ConfigError("model llara answers candidate lists: use eval=candidates")
        row_ids = np.asarray(row_ids, dtype=np.int64)
        return self._answer(rows, row_ids, [self._valid_candidates[r] for r in row_ids], k, device)

    def _answer(
        self, rows: RankingRows, row_ids: np.ndarray, cands: list[np.ndarray], k: int, device: torch.device | str
    ) -> np.ndarray:
        every = np.arange(self.n_items)
        users = rows.users[row_ids]
        part_key = 1 if rows.part == "test" else 0
        ordered = [self._order(c, [6_011, part_key, int(u)]) for c, u in zip(cands, users, strict=True)]
        prompts = [self._candidate_prompt(int(u), rows.part, c) for u, c in zip(users, ordered, strict=True)]
        if self.constrained:  # every candidate scored: the ranking beam search over them would give
            return self._score_candidates(rows, row_ids, prompts, ordered, k, device)
        excluded = [np.setdiff1d(every, c) for c in ordered]
        return self._rank(rows, row_ids, excluded, k, device, prompts)

    def _score_candidates(
        self,
        rows: RankingRows,
        row_ids: np.ndarray,
        prompts: list[str],
        ordered: list[np.ndarray],
        k: int,
        device: torch.device | str,
    ) -> np.ndarray:
        """Constrained answers, exhaustively: each candidate's title (+ EOS) scored by its summed
        log-probability after the prompt (the prompt computed once, its cache shared by the
        candidates), candidates sorted best first (ties: listed order). Beam search restricted to
        the candidates with at least as many beams as candidates and length penalty 0 ranks them
        the same way, at a multiple of the cost (every step copies the beams' caches)."""
        from benchmark.models.components.llm import shared_prefix_logprobs
        from benchmark.models.p5 import UNFILLED, VALID
        from benchmark.progress import within_chunk

        ids, mentions = self._tokenize(prompts)
        out = np.full((len(prompts), k), -1, dtype=np.int64)
        codes = np.full((len(prompts), k), UNFILLED, dtype=np.int8)
        advance = within_chunk(len(prompts))
        was_training = self.lm.training
        self.lm.eval()
        try:
            for s in range(0, len(prompts), self.decode_batch_size):
                e = min(s + self.decode_batch_size, len(prompts))
                embed = None
                if self.adapter is not None:
                    m = mentions[s:e]
                    embed = lambda b, m=m: self.adapter.embed(self.lm, {**b, **self.adapter.slots(b["input_ids"], m)})  # noqa: E731
                conts = [[self.item_tokens[int(i)] for i in c] for c in ordered[s:e]]
                scores = shared_prefix_logprobs(self.lm, ids[s:e], conts, self.pad_id, embed=embed)
                for r, (c, sc) in enumerate(zip(ordered[s:e], scores, strict=True)):
                    top = c[np.argsort(-sc.numpy(), kind="stable")][:k]
                    out[s + r, : len(top)] = top
                    codes[s + r, : len(top)] = VALID
                advance(e - s)
        finally:
            self.lm.train(was_training)
        stats = self._stats.setdefault(rows.part, {})
        for r, c in zip(np.asarray(row_ids).tolist(), codes, strict=True):
            stats[r] = c
        self._last_part = rows.part
        return out

    def prediction_facts(self) -> dict[str, Any]:
        facts = super().prediction_facts()
        facts["llara"] = {
            "mode": self.mode,
            "negatives_per_train_prompt": self.negatives,
            "curriculum_epochs": self.curriculum_epochs if self.mode == "curriculum" else None,
            "candidate_order": "shuffled by (seed, user)",
            "valid_candidates": "target + negatives drawn once by seed outside the user's train and valid items",
        }
        return facts


def _adapter_active(node: Any) -> bool:
    """Whether an adapter node adds soft tokens (a name other than none and some modality)."""
    get = node.get if hasattr(node, "get") else (lambda k, d=None: getattr(node, k, d))
    return get("name", "none") != "none" and bool(list(get("modalities", []) or []))
