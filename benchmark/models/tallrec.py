"""TALLRec-style recommendation as a yes/no instruction task for a causal LM (Bao et al., RecSys 2023).

A row is a prompt built from the user's liked and disliked history items (by title) and a target
item; the model answers ``Yes.`` or ``No.``. The score of a (user, item) pair is P("Yes")
normalised over the first tokens of the two answers, read from the logits at the answer
position (the token ids are derived from the tokenizer, never hard-coded).

- Training (``model=tallrec``): LoRA adapters (peft) on the frozen LM, cross-entropy of the
  answer token, on ``shots`` rows (16, 64, 256 or ``all``) drawn by seed from the train part.
- Zero-shot / in-context few-shot (``model=tallrec_zeroshot``): no training; ``icl_shots``
  labelled train rows, drawn by seed, are shown before every prompt.

Histories: on ``split=tallrec_movie`` a row's own history; on the framework's other splits the
user's last ``history`` train items (valid/test rows) or the train items before the row (train
rows), with like = rating > ``like_threshold`` -- never anything outside the train part.

Item adapters (``adapter=clip_proj``, :mod:`benchmark.models.components.adapter`): every item
mention (history and target, in-context examples too) gets ``k`` soft tokens from its frozen
features, read through ``inputs_embeds`` in training and scoring.

Batches are left-padded with positions counted over real tokens, so a row scores the same in
any batch. Only the adapter weights are in ``state_dict()`` (checkpoints, reused weights): the
frozen backbone is reloaded from its source.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.config import to_object
from benchmark.data.histories import has_histories, row_histories, user_histories
from benchmark.data.shots import draw_rows, rows_digest
from benchmark.data.splits import Split
from benchmark.data.streams import EpochStream
from benchmark.errors import ConfigError, DataError
from benchmark.models.components.adapter import (
    AdapterConfig,
    ItemAdapter,
    adapter_facts,
    attach_item_adapter,
    tokenize_prompts,
)
from benchmark.models.components.history_fit import (
    check_history_fit,
    fit_facts,
    kept_count,
    recency_order,
    relevance_order,
)
from benchmark.models.components.icl import (
    PER_ROW,
    check_strategy,
    fixed_examples,
    history_vectors,
    per_row_examples,
)
from benchmark.models.components.llm import (
    checkpoint_activations,
    left_pad,
    load_causal_lm,
    next_token_logits,
)
from benchmark.models.components.lora import lora_settings, track_trainable_state, wrap_lora
from benchmark.models.components.prompts import PromptTemplate, answer_token_ids, item_texts
from benchmark.models.components.shard_state import merged_counts, merged_dicts
from benchmark.progress import within_chunk

SHOT_CHOICES = "a positive integer or 'all'"
HISTORY_SELECT = ("recent", "relevant", "summary")  # which history items a prompt keeps (history_select)
SUMMARY_PROMPT = (
    "Summarize in one sentence the taste of a movie viewer.\nLiked: {liked}\nDisliked: {disliked}\nSummary:"
)
MACHINE_FACTS = ("load_seconds", "dequantize_seconds", "cache")  # differ between machines: not recorded


def as_template(prompt: PromptTemplate | Mapping[str, Any]) -> PromptTemplate:
    """A :class:`PromptTemplate` from itself or a plain mapping (``_target_`` ignored)."""
    return to_object(prompt, PromptTemplate, "model.prompt")


def part_labels(split: Split, part: str) -> np.ndarray:
    """[R] 0/1 labels of a part: its ``label`` column, else rating >= split.label_threshold."""
    df = split.parts[part]
    if "label" in df.columns:
        return df["label"].to_numpy().astype(np.int64)
    if df["rating"].isna().any():
        raise DataError(f"model tallrec needs ratings for labels; the {part} part has rows without one")
    return (df["rating"].to_numpy() >= float(split.config.get("label_threshold", 4.0))).astype(np.int64)


@dataclass(frozen=True)
class TallRecOptions:
    """TallRec's checked settings, built from the constructor's keyword arguments (see :class:`TallRec`).

    Raises:
        ConfigError: the one-line message of the first setting out of range.
    """

    shots: int | Literal["all"] = "all"
    icl_shots: int = 0
    history: int = 10
    like_threshold: float = 3.0
    max_length: int = 1024
    score_batch_size: int = 16
    lora: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        shots = self.shots
        if not (shots == "all" or (isinstance(shots, int) and not isinstance(shots, bool) and shots > 0)):
            raise ConfigError(f"model.module.shots: expected {SHOT_CHOICES}, got {shots!r}")
        if self.icl_shots < 0 or self.score_batch_size < 1 or self.max_length < 8 or self.history < 0:
            raise ConfigError(
                "model.module: icl_shots >= 0, score_batch_size >= 1, max_length >= 8, history >= 0"
            )
        set_ = object.__setattr__  # frozen: normalise once, here
        for name in ("icl_shots", "history", "max_length", "score_batch_size"):
            set_(self, name, int(getattr(self, name)))
        set_(self, "like_threshold", float(self.like_threshold))
        set_(self, "lora", lora_settings(self.lora))


def _pair_rows(split: Split) -> dict[tuple[int, int], tuple[tuple[int, ...], tuple[int, ...]]]:
    """On a sequence split, each (user, item) pair's row history and likes (a pair names one row).

    Raises:
        DataError: a pair that names two rows with different histories.
    """
    out: dict[tuple[int, int], tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for part in ("train", "valid", "test"):
        df = split.parts[part]
        for u, i, h, lk in zip(df["user"], df["item"], df["history"], df["history_likes"], strict=True):
            key = (int(u), int(i))
            if out.setdefault(key, (h, lk)) != (h, lk):
                raise DataError(
                    f"split {split.protocol}: (user, item) {key} names two rows with different histories"
                )
    return out


class PromptStream(EpochStream):
    """Shuffled, left-padded batches of (prompt tokens, answer token), one pass per epoch.

    The order of epoch e is a function of (seed, e) only; rank r of world w takes every
    w-th batch, as :class:`benchmark.training.PairwiseStream` does. With an item adapter,
    ``mentions`` holds each sequence's mentioned items and ``adapter`` adds their soft-token slots.
    """

    def __init__(
        self,
        sequences: list[list[int]],
        answers: np.ndarray,
        pad_id: int,
        batch_size: int,
        seed: int,
        mentions: list[list[int]] | None = None,
        adapter: ItemAdapter | None = None,
    ) -> None:
        super().__init__(len(sequences), batch_size, seed)
        self.sequences = sequences
        self.mentions, self.adapter = mentions, adapter
        self.answers = torch.as_tensor(answers, dtype=torch.long)
        self.pad_id = pad_id

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for idx in self.batches():
            batch = left_pad([self.sequences[i] for i in idx], self.pad_id)
            if self.adapter is not None:
                batch.update(self.adapter.slots(batch["input_ids"], [self.mentions[i] for i in idx]))
            batch["answer"] = self.answers[idx]
            yield batch


class TallRec(nn.Module):
    """A causal LM scoring (user, item) pairs by P("Yes"), optionally tuned with LoRA.

    Args:
        split: the split (histories, train rows for shots and in-context examples).
        data: the dataset (item titles from its item side table).
        backbone: an offline model name (``smollm2-135m-instruct``), a ``.gguf`` file, a local
            model folder or a hub name (see :func:`benchmark.models.components.llm.load_causal_lm`).
        prompt: the prompt template (``configs/prompt``).
        lora: ``{r, alpha, dropout, target_modules}``, or None for no adapters (nothing trains).
        shots: train rows used for tuning (a positive integer or ``all``), drawn by the run seed.
        icl_shots: labelled train rows shown in every prompt as in-context examples.
        history: history length on splits without their own histories.
        like_threshold: like = rating > threshold for history items on such splits.
        dtype: weights dtype (``auto``: bf16 on a CUDA accelerator, fp32 otherwise).
        accelerator: the trainer accelerator (resolves ``dtype=auto``).
        max_length: longest prompt in tokens; longer prompts are cut from the left (counted).
        score_batch_size: prompts per forward pass when scoring.
        seed: draws of shots and in-context rows; None = the run seed (``torch.initial_seed()``,
            set by ``seed_everything`` before the model is built), which keeps the seed out of
            the model config and so out of the leaderboard's seed-group key.
        cache_dir: cache root for dequantized GGUF backbones (None: ``$LLM4REC_CACHE`` or
            ``.cache/llm4rec``).
        adapter: the run's ``adapter`` config (soft tokens from frozen item features), or None.
        gradient_checkpointing: recompute layer activations in the backward pass (the same loss and
            gradients, more CPU time per step, a fraction of the activation memory; measured by
            ``python -m benchmark.bench checkpointing``).
        prefix_reuse: prompts that start with the same tokens share their key/value cache: a
            user's candidate pairs (``eval=sampled``/``candidates``) share the prompt up to the
            target (computed once per user, :meth:`score_pairs`), and a batch of labeled rows shares
            the instruction and fixed in-context examples (computed once per batch, :meth:`p_yes`);
            the same P("Yes") to float rounding.
        score_cache: read and write P("Yes") per prompt in a disk cache
            (:mod:`~benchmark.models.components.score_cache`), for scorers that are never trained
            (``lora: null``, no item adapter, no chain of thought, torch backbone); the record
            counts the scores read and computed. Not part of the config hash.
    """

    outputs_probabilities = True
    eval_protocols = ("labeled", "sampled", "candidates")  # pairs only: no catalogue-wide ranking

    def __init__(
        self,
        split: Split,
        data: Any,
        backbone: str = "smollm2-135m-instruct",
        prompt: PromptTemplate | Mapping[str, Any] | None = None,
        lora: Mapping[str, Any] | None = None,
        shots: int | Literal["all"] = "all",
        icl_shots: int = 0,
        history: int = 10,
        like_threshold: float = 3.0,
        dtype: str = "auto",
        accelerator: str = "cpu",
        max_length: int = 1024,
        score_batch_size: int = 16,
        seed: int | None = None,
        cache_dir: str | None = None,
        adapter: AdapterConfig | Mapping[str, Any] | None = None,
        icl_select: str = "random",
        history_select: str = "recent",
        history_budget: int | None = None,
        summary_tokens: int = 32,
        summary_prompt: str = SUMMARY_PROMPT,
        gradient_checkpointing: bool = False,
        prefix_reuse: bool = True,
        score_cache: bool = False,
    ) -> None:
        super().__init__()
        self.prefix_reuse = bool(prefix_reuse)
        if not isinstance(score_cache, bool):
            raise ConfigError(f"model.module.score_cache: true or false, got {score_cache!r}")
        self.score_cache = score_cache
        self._score_store: Any = None  # the ScoreCache of the current weights (its counts go in the record)
        if not isinstance(gradient_checkpointing, bool):
            raise ConfigError(f"model.module.gradient_checkpointing: true or false, got {gradient_checkpointing!r}")
        self.gradient_checkpointing = gradient_checkpointing
        check_strategy(icl_select)
        self.icl_select = icl_select
        check_history_fit(history_select, history_budget, HISTORY_SELECT)
        self.history_select, self.history_budget = history_select, history_budget
        if isinstance(summary_tokens, bool) or not isinstance(summary_tokens, int) or not 1 <= summary_tokens <= 256:
            raise ConfigError(f"model.module.summary_tokens: an integer in 1..256, got {summary_tokens!r}")
        if {n for _, n, _, _ in __import__("string").Formatter().parse(summary_prompt) if n} != {"liked", "disliked"}:
            raise ConfigError("model.module.summary_prompt: must use exactly {liked} and {disliked}")
        self.summary_tokens, self.summary_prompt = summary_tokens, summary_prompt
        self._summaries: dict[str, str] = {}  # history summaries of this run, by content key
        self._summary_stats = [0, 0, 0]  # summaries asked, generated, read from the disk cache
        self._summary_text: str | None = None  # the summary of the prompt being rendered
        self._history_stats = [0, 0, 0, 0]  # rendered rows, history items offered, items kept, rows over budget
        if prompt is None:
            raise ConfigError("model.module.prompt: a prompt template is required (configs/prompt)")
        o = TallRecOptions(shots, icl_shots, history, like_threshold, max_length, score_batch_size, lora)
        self.template = as_template(prompt)
        need = {"liked", "disliked", "target"}
        if not need <= self.template.fields:
            raise ConfigError(f"prompt {self.template.name}: a yes/no prompt needs the fields {sorted(need)}")
        if history_select == "summary" and (history_budget is None or "summary" not in self.template.fields):
            raise ConfigError(
                "model.module.history_select=summary: needs model.module.history_budget and a template with "
                "a {summary} field (prompt@model.prompt=tallrec_summary)"
            )
        self.seed = int(torch.initial_seed() if seed is None else seed) % (2**63)
        self.shots, self.icl_shots = o.shots, o.icl_shots
        self.history, self.like_threshold = o.history, o.like_threshold
        self.max_length, self.score_batch_size = o.max_length, o.score_batch_size
        self.lora_config = o.lora
        self.backbone_name = backbone
        self.scorer = None  # precision=gguf: llama.cpp scores the same token ids (gguf_runtime)
        self._attach_lm(backbone, dtype, accelerator, cache_dir, adapter, split, data)

        self.texts = item_texts(data.items, data.item_fields, split.item_ids, self.template.item_text)
        self.sequence_split = has_histories(split)
        self._pair_rows = _pair_rows(split) if self.sequence_split else {}
        self._user_rows: list = (
            [] if self.sequence_split else user_histories(split, self.history, self.like_threshold)
        )

        train_hist, train_likes = row_histories(split, "train", self.history, self.like_threshold)
        self._train = (split.train["item"].to_numpy(), train_hist, train_likes, part_labels(split, "train"))
        self._icl_vectors: np.ndarray | None = None  # [N, d] train history vectors (per-row selection)
        self._icl_encoder: dict[str, Any] | None = None
        self._item_vectors: np.ndarray | None = None  # [n_items, d] MiniLM item texts (when needed)
        if self.history_select == "relevant":
            self._load_item_vectors(split, data, "history_select=relevant")
        self._train_pos: dict[tuple[int, int], list[int]] = {}
        if self.icl_shots and self.icl_select in PER_ROW:
            self._per_row_setup(split, data, train_hist)
            icl = np.zeros(0, int)
        elif self.icl_shots:
            icl = fixed_examples(self.icl_select, self.icl_shots, self._train[3], self.seed)
        else:
            icl = np.zeros(0, int)
        self.icl_rows = icl
        self.examples = [self._example(r) for r in icl]
        self._token_stats = [0, 0, 0]  # scored prompts, their tokens, the longest
        self.tokens_run = 0  # prompt tokens the torch LM actually ran while scoring (a shared prefix once)
        first = (
            self._render(train_hist[0], train_likes[0], int(self._train[0][0])) if len(split.train) else ""
        )
        first = self._expand(first)
        if self.template.chain_of_thought:
            if self.icl_shots or self.adapter is not None:
                raise ConfigError(
                    f"prompt {self.template.name}: a chain-of-thought template runs without in-context "
                    "examples and without an item adapter (icl_shots=0, adapter=none)"
                )
            first += self.template.answer_cue  # the answer follows the reasoning and the cue
        self.answer_ids = answer_token_ids(self.tokenizer, first, self.template.answers)  # [yes, no]
        self._reasoning: dict[tuple[int, int], str] = {}  # chain of thought: per scored pair
        test = split.test
        self.example_prompt = (
            self._expand(self._prompt(int(test["user"].iloc[0]), int(test["item"].iloc[0])))
            if len(test)
            else ""
        )
        self.truncated = 0
        self._history_stats = [0, 0, 0, 0]  # the example prompt above is not an evaluated row
        self._summary_stats = [0, 0, 0]
        self.lm.train()  # from_pretrained returns eval mode; Lightning keeps modes as they are
        track_trainable_state(self)

    def _attach_lm(
        self,
        backbone: str,
        dtype: str,
        accelerator: str,
        cache_dir: str | None,
        adapter: Any,
        split: Split,
        data: Any,
    ) -> None:
        """Load the frozen LM, then the item adapter and LoRA on it.

        Sets ``lm``, ``tokenizer`` (cutting prompts from the left), ``lm_facts``, ``adapter`` and
        ``adapter_config``.
        """
        lm = load_causal_lm(backbone, dtype, accelerator, cache_dir)
        self.tokenizer = lm.tokenizer
        self.tokenizer.truncation_side = "left"
        self.lm_facts = lm.facts
        for p in lm.model.parameters():
            p.requires_grad_(False)
        self.adapter_config, self.adapter = attach_item_adapter(
            adapter, lm.model, self.tokenizer, split, data
        )
        if self.lora_config is not None:
            self.lm = wrap_lora(lm.model, self.lora_config, "causal")
        else:
            self.lm = lm.model
        if self.adapter is not None and not self.adapter_config.train_llm:
            for p in self.lm.parameters():
                p.requires_grad_(False)
        if self.gradient_checkpointing:
            checkpoint_activations(lm.model)

    # ------------------------------------------------------------------ prompts

    def _item_text(self, item: int) -> str:
        """An item as shown in a prompt: its text, with soft-token markers when an adapter is on."""
        text = self.texts[item]
        return text if self.adapter is None else self.adapter.mention_text(int(item), text)

    def _expand(self, prompt: str) -> str:
        return prompt if self.adapter is None else self.adapter.expand(prompt)[0]

    def _fields(self, hist: Sequence[int], likes: Sequence[int], target: int) -> dict[str, str]:
        t = self.template
        out = {
            "liked": t.items([self._item_text(i) for i, lk in zip(hist, likes, strict=True) if lk]),
            "disliked": t.items([self._item_text(i) for i, lk in zip(hist, likes, strict=True) if not lk]),
            "target": t.item.format(text=self._item_text(target)),
        }
        if "summary" in t.fields:  # the summary of the items left out (history_select=summary)
            out["summary"] = self._summary_text or t.empty_list or "(none)"
        return out

    @torch.no_grad()
    def _summary(self, hist: Sequence[int], likes: Sequence[int]) -> str:
        """An LLM-written one-sentence summary of the history items ``hist`` (greedy, at most
        ``summary_tokens``), cached by (backbone, prompt, length, the items' texts): in this run and
        on disk under ``<cache>/summaries/``."""
        import hashlib
        import json

        from transformers import GenerationConfig

        from benchmark.models.components.llm import default_cache_dir
        from benchmark.util import atomic_write

        t = self.template
        liked = t.items([self.texts[int(i)] for i, lk in zip(hist, likes, strict=True) if lk])
        disliked = t.items([self.texts[int(i)] for i, lk in zip(hist, likes, strict=True) if not lk])
        prompt = self.summary_prompt.format(liked=liked or "(none)", disliked=disliked or "(none)")
        backbone = {k: self.lm_facts.get(k) for k in ("backbone", "file_sha256", "source")}
        key = hashlib.sha256(
            json.dumps([backbone, self.lora_config, prompt, self.summary_tokens], sort_keys=True, default=str).encode()
        ).hexdigest()
        self._summary_stats[0] += 1
        if key in self._summaries:
            return self._summaries[key]
        path = default_cache_dir() / "summaries" / key[:2] / f"{key}.txt"
        if self.lora_config is None and path.is_file():  # trained adapters: never across runs
            text = path.read_text(encoding="utf-8")[:4000]
            self._summary_stats[2] += 1
        else:
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"][-self.max_length :]
            device = next(self.lm.parameters()).device
            inp = torch.as_tensor([ids], device=device)
            was_training = self.lm.training
            self.lm.eval()
            try:
                gen = self.lm.generate(
                    input_ids=inp,
                    attention_mask=torch.ones_like(inp),
                    generation_config=GenerationConfig(
                        max_new_tokens=self.summary_tokens,
                        do_sample=False,
                        pad_token_id=self.tokenizer.pad_token_id,
                        eos_token_id=self.tokenizer.eos_token_id,
                    ),
                )
            finally:
                self.lm.train(was_training)
            text = " ".join(self.tokenizer.decode(gen[0, len(ids) :], skip_special_tokens=True).split("\n\n")[0].split())
            self._summary_stats[1] += 1
            if self.lora_config is None:
                atomic_write(path, text)
        self._summaries[key] = text
        return text

    def _example(self, r: int) -> tuple[dict[str, str], str]:
        """Train row ``r`` as an in-context example: its fields and its answer text."""
        _, hist, likes, labels = self._train
        return self._fields(hist[r], likes[r], int(self._train[0][r])), self.template.answers[1 - int(labels[r])]

    def _per_row_setup(self, split: Split, data: Any, train_hist: Sequence[Sequence[int]]) -> None:
        """Train history vectors for ``similar``/``diverse`` examples (MiniLM item texts, feature store)."""
        vectors = self._load_item_vectors(split, data, f"icl_select={self.icl_select}")
        self._icl_vectors = history_vectors(train_hist, vectors)
        for r, (u, i) in enumerate(zip(split.train["user"], split.train["item"], strict=True)):
            self._train_pos.setdefault((int(u), int(i)), []).append(r)

    def _load_item_vectors(self, split: Split, data: Any, why: str) -> np.ndarray:
        """[n_items, d] L2-normalised MiniLM embeddings of the item texts (feature store), loaded once."""
        if self._item_vectors is None:
            from benchmark.models.components.item_text import title_vectors

            self._item_vectors, self._icl_encoder = title_vectors(data, split.item_ids, why)
        return self._item_vectors

    def _history_order(self, hist: Sequence[int], target: int) -> list[int]:
        """Positions of ``hist`` in the order they are kept: most recent first (``recent``,
        ``summary``), or most similar to the target's text first (``relevant``, ties: more recent first)."""
        if self.history_select != "relevant":  # recent, summary: the most recent first
            return recency_order(len(hist))
        return relevance_order(self._item_vectors, hist, [int(target)])

    def _fit_history(
        self, hist: Sequence[int], likes: Sequence[int], target: int, examples: list
    ) -> tuple[list[int], list[int]]:
        """The history shown: all of it, or (with ``history_budget``) the items kept in
        :meth:`_history_order` while the whole prompt fits the budget, shown in time order."""
        order = self._history_order(hist, target)
        keep = len(order)
        summarize = self.history_select == "summary"
        # summary: the kept items leave room for the summary of the others (at most summary_tokens)
        budget = None if self.history_budget is None else self.history_budget - (self.summary_tokens if summarize else 0)
        self._summary_text = None
        if budget is not None:

            def length_of(shown: list[int]) -> int:
                text = self.template.render(
                    self._fields([hist[j] for j in shown], [likes[j] for j in shown], target), examples, self.tokenizer
                )
                return len(self.tokenizer(self._expand(text), add_special_tokens=True)["input_ids"])

            keep = kept_count(order, length_of, budget)
        shown = sorted(order[:keep])
        if summarize and keep < len(order):  # the items left out, oldest first, become one sentence
            left = sorted(order[keep:])
            self._summary_text = self._summary([hist[j] for j in left], [likes[j] for j in left])
        stats = self._history_stats
        over = 0
        if budget is not None and keep == 0:
            text = self.template.render(self._fields([], [], target), examples, self.tokenizer)
            over = int(len(self.tokenizer(self._expand(text), add_special_tokens=True)["input_ids"]) > self.history_budget)
        self._history_stats = [stats[0] + 1, stats[1] + len(hist), stats[2] + keep, stats[3] + over]
        return [int(hist[j]) for j in shown], [int(likes[j]) for j in shown]

    def _examples_for(self, hist: Sequence[int], exclude: Sequence[int]) -> list[tuple[dict[str, str], str]]:
        """The in-context examples of a row with history ``hist`` (never the train rows ``exclude``)."""
        if self._icl_vectors is None:
            return self.examples
        query = history_vectors([hist], self._item_vectors)[0]
        rows = per_row_examples(self.icl_select, self.icl_shots, query, self._icl_vectors, np.asarray(exclude, dtype=np.int64))
        return [self._example(int(r)) for r in rows]

    def _render(self, hist: Sequence[int], likes: Sequence[int], target: int, exclude: Sequence[int] = ()) -> str:
        self._summary_text = None  # examples never show another row's summary
        examples = self._examples_for(hist, exclude)
        if self.history_select != "recent" or self.history_budget is not None:
            hist, likes = self._fit_history(hist, likes, target, examples)  # sets this row's summary
        text = self.template.render(self._fields(hist, likes, target), examples, self.tokenizer)
        self._summary_text = None
        return text

    def _prompt(self, user: int, item: int) -> str:
        """The prompt of one evaluated (user, item) pair."""
        if self.sequence_split:
            row = self._pair_rows.get((user, item))
            if row is None:
                raise DataError(f"model tallrec: (user {user}, item {item}) is not a row of this split")
            return self._render(row[0], row[1], item, self._train_pos.get((user, item), ()))
        hist, likes = self._user_rows[user]
        return self._render(hist, likes, item, self._train_pos.get((user, item), ()))

    def _tokens(self, prompts: list[str]) -> list[list[int]]:
        return self._tokenize(prompts)[0]

    def _tokenize(self, prompts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """(token ids per prompt cut from the left, items mentioned per prompt when an adapter is on)."""
        out, mentions, cut = tokenize_prompts(self.tokenizer, self.adapter, prompts, self.max_length)
        self.truncated += cut
        return out, mentions

    def _embedded(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with ``inputs_embeds`` (soft tokens in place) when it has placeholders."""
        if "soft_items" not in batch:
            return batch
        return {**batch, "inputs_embeds": self.adapter.embed(self.lm, batch)}

    # ------------------------------------------------------------------ training

    def shot_rows(self, n_train: int, seed: int | None = None) -> np.ndarray:
        """Train-part positions of the tuning rows (``shots`` drawn by seed)."""
        return draw_rows(n_train, self.shots, self.seed if seed is None else seed, stream=0)

    def train_dataset(self, split: Split, batch_size: int, seed: int) -> PromptStream:
        """Batches over the ``shots`` train rows drawn by ``seed`` (left-padded prompts + answer token)."""
        if self.lora_config is None and self.adapter is None:
            raise ConfigError("model tallrec: training needs model.module.lora (or use model.train=null)")
        items, hist, likes, labels = self._train
        rows = self.shot_rows(len(items), seed)
        with self._eval_stats_kept():
            prompts = [self._render(hist[r], likes[r], int(items[r]), (int(r),)) for r in rows]
        answers = np.where(labels[rows] == 1, self.answer_ids[0], self.answer_ids[1])
        seqs, mentions = self._tokenize(prompts)
        return PromptStream(
            seqs, answers, self.tokenizer.pad_token_id, batch_size, seed, mentions or None, self.adapter
        )

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the answer token over the vocabulary at the answer position."""
        logits = next_token_logits(self.lm, self._embedded(batch)).float()  # [B, V]
        return F.cross_entropy(logits, batch["answer"].to(logits.device))

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def p_yes(self, prompts: list[str]) -> torch.Tensor:
        """[N] P(yes) = softmax over the (yes, no) answer-token logits, in prompt order.

        Prompts are batched by token length (``score_batch_size`` per forward pass). With
        ``prefix_reuse`` the tokens every prompt of a batch starts with (the instruction and, with
        fixed in-context examples, the examples) run once per batch and are reused by its rows
        (:meth:`_p_yes_shared`); with a ``scorer`` set (``precision=gguf``) the same token ids go to
        llama.cpp instead.
        """
        if self.template.chain_of_thought:  # reason first, then score the answer after the cue
            self.last_reasoning = self._reason(prompts)
            prompts = [p + r + self.template.answer_cue for p, r in zip(prompts, self.last_reasoning, strict=True)]
        seqs, mentions = self._tokenize(prompts)
        self._count_tokens(seqs)
        advance = within_chunk(len(seqs))  # the evaluator's bar: prompts/s and ETA
        if self.scorer is not None:
            return self.scorer.p_yes(seqs, self.answer_ids, advance)
        store = self._scores_cached()
        if store is None:
            return self._p_yes_tokens(seqs, mentions, advance)
        known = store.get(seqs)
        todo = [i for i, v in enumerate(known) if v is None]
        advance(len(seqs) - len(todo))
        out = torch.tensor([0.0 if v is None else v for v in known], dtype=torch.float32)
        if todo:
            fresh = self._p_yes_tokens([seqs[i] for i in todo], [mentions[i] for i in todo] if mentions else mentions, advance)
            store.put([seqs[i] for i in todo], fresh.tolist())
            out[torch.as_tensor(todo)] = fresh
        return out

    def _scores_cached(self) -> Any:
        """The P("Yes") disk cache for this backbone as it is now, or None when scores may not be
        cached (``score_cache`` off, trainable adapters or an item adapter, chain of thought). The
        identity hashes the weights on every call, so a precision option applied later, or any
        change of weights, gets its own entries."""
        if not self.score_cache or self.lora_config is not None or self.adapter is not None or self.template.chain_of_thought:
            return None
        from benchmark.models.components.llm import default_cache_dir
        from benchmark.models.components.score_cache import ScoreCache, identity_key, weights_digest

        identity = {
            "scorer": type(self).__name__,
            "weights": weights_digest(self.lm),
            "precision": self.lm_facts.get("precision"),
            "answer_ids": list(self.answer_ids),
        }
        if self._score_store is None or self._score_store.identity != identity_key(identity):
            self._score_store = ScoreCache(default_cache_dir(), identity)  # read from disk once per identity
        return self._score_store

    def _p_yes_tokens(self, seqs: list[list[int]], mentions: list[list[int]], advance: Any) -> torch.Tensor:
        """P(yes) of tokenized prompts with the torch backbone (see :meth:`p_yes`)."""
        order = np.argsort([len(s) for s in seqs], kind="stable")
        batches = [order[start : start + self.score_batch_size] for start in range(0, len(order), self.score_batch_size)]
        if self._shares_prefixes():
            return self._p_yes_shared(seqs, batches, advance)
        out = torch.empty(len(seqs), dtype=torch.float32)
        ids = torch.as_tensor(self.answer_ids)
        for idx in batches:
            batch = left_pad([seqs[i] for i in idx], self.tokenizer.pad_token_id)
            if self.adapter is not None:
                slots = self.adapter.slots(batch["input_ids"], [mentions[i] for i in idx])
                batch = self._embedded({**batch, **slots})
            logits = next_token_logits(self.lm, batch).float()  # [b, V]
            pair = logits[:, ids.to(logits.device)]  # [b, 2] (yes, no)
            out[torch.as_tensor(idx)] = pair.softmax(dim=-1)[:, 0].cpu()
            self.tokens_run += sum(len(seqs[i]) for i in idx)
            advance(len(idx))
        return out

    def _count_tokens(self, seqs: list[list[int]]) -> None:
        lengths = [len(q) for q in seqs]
        if lengths:
            n, total, longest = self._token_stats
            self._token_stats = [n + len(lengths), total + sum(lengths), max(longest, max(lengths))]

    def _shares_prefixes(self) -> bool:
        """Whether scoring may reuse a shared prompt prefix: plain torch scoring of text prompts
        (no chain of thought, no external scorer, no soft tokens)."""
        return self.prefix_reuse and not self.template.chain_of_thought and self.scorer is None and self.adapter is None

    def _p_yes_shared(self, seqs: list[list[int]], groups: Sequence[Sequence[int]], advance: Any) -> torch.Tensor:
        """P(yes) of token sequences scored group by group, the tokens all of a group's sequences
        start with computed once per group
        (:func:`~benchmark.models.components.llm.shared_prefix_next_logits`); a group sharing no
        token runs as one plain batch."""
        from benchmark.models.components.llm import common_prefix_length, shared_prefix_next_logits

        out = torch.empty(len(seqs), dtype=torch.float32)
        ids = torch.as_tensor(self.answer_ids)
        pad = self.tokenizer.pad_token_id
        for idx in groups:
            group = [seqs[i] for i in idx]
            cut = common_prefix_length(group)
            if cut == 0:  # nothing shared: score the group's prompts as they are
                logits = next_token_logits(self.lm, left_pad(group, pad)).float().cpu()
            else:
                (logits,) = shared_prefix_next_logits(self.lm, [group[0][:cut]], [[q[cut:] for q in group]], pad)
            out[torch.as_tensor(np.asarray(idx, dtype=np.int64))] = logits[:, ids].softmax(dim=-1)[:, 0]
            self.tokens_run += cut + sum(len(q) - cut for q in group)
            advance(len(group))
        return out

    @torch.no_grad()
    def p_yes_grouped(self, prompts: list[str], groups: int) -> torch.Tensor:
        """:meth:`p_yes` of prompts in ``groups`` consecutive groups of equal size (a user's
        candidates), each group's shared token prefix (instruction, examples, history) computed once."""
        seqs, _ = self._tokenize(prompts)
        self._count_tokens(seqs)
        size = len(seqs) // groups
        return self._p_yes_shared(seqs, [range(g * size, (g + 1) * size) for g in range(groups)], within_chunk(len(seqs)))

    @torch.no_grad()
    def _reason(self, prompts: list[str]) -> list[str]:
        """Chain of thought: each prompt's greedy continuation (at most ``reasoning_tokens``), cut
        where the model writes the answer cue itself; batched by length, left-padded."""
        from transformers import GenerationConfig

        if self.scorer is not None:
            raise ConfigError(
                f"prompt {self.template.name}: chain of thought generates with the torch backbone; "
                "this precision option only scores (use fp32, bf16 or int8)"
            )
        seqs = self._tokens(prompts)
        out = [""] * len(seqs)
        pad = self.tokenizer.pad_token_id
        cfg = GenerationConfig(
            max_new_tokens=self.template.reasoning_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        order = np.argsort([len(s) for s in seqs], kind="stable")
        was_training = self.lm.training
        self.lm.eval()
        try:
            for start in range(0, len(order), self.score_batch_size):
                idx = order[start : start + self.score_batch_size]
                batch = left_pad([seqs[i] for i in idx], pad)
                device = next(self.lm.parameters()).device
                gen = self.lm.generate(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    generation_config=cfg,
                )
                new = gen[:, batch["input_ids"].shape[1] :].cpu()
                for r, i in enumerate(idx):
                    text = self.tokenizer.decode(new[r], skip_special_tokens=True)
                    out[i] = self.template.cut_reasoning(text)
        finally:
            self.lm.train(was_training)
        return out

    def row_facts(self, rows: Any) -> list[dict[str, Any]] | None:
        """Chain of thought: each labeled row's reasoning (kept in its predictions line); None otherwise."""
        if not self.template.chain_of_thought:
            return None
        return [{"reasoning": self._reasoning.get((int(u), int(i)), "")} for u, i in zip(rows.users, rows.items, strict=True)]

    def shard_state(self) -> dict[str, Any]:
        """What this process counted and kept while scoring its rows (see :class:`benchmark.predict.ShardedPredict`)."""
        return {
            "truncated": self.truncated,
            "token_stats": self._token_stats,
            "history_stats": self._history_stats,
            "summary_stats": self._summary_stats,
            "reasoning": self._reasoning,
        }

    def merge_shard_states(self, states: list[dict[str, Any]]) -> None:
        """Every process's rows in this model's facts (per-row reasoning joined, counts added)."""
        self.truncated = sum(s["truncated"] for s in states)
        self._token_stats = merged_counts([s["token_stats"] for s in states], largest=(2,))
        self._history_stats = merged_counts([s["history_stats"] for s in states])
        self._summary_stats = merged_counts([s["summary_stats"] for s in states])
        self._reasoning = merged_dicts([s["reasoning"] for s in states])

    @contextmanager
    def _eval_stats_kept(self) -> Iterator[None]:
        """Prompts rendered or scored inside (training, calibration) leave the evaluation's counts as they were."""
        saved = (self.truncated, list(self._token_stats), list(self._history_stats), list(self._summary_stats))
        try:
            yield
        finally:
            self.truncated, self._token_stats, self._history_stats, self._summary_stats = saved

    def calibrate(self, rows: int) -> dict[str, Any]:
        """Score ``rows`` train-part prompts (drawn by the run's seed) to calibrate a precision option.

        Only train rows are read; the truncation counter of the evaluation is left as it was.

        Returns:
            the rows used: count, part and a digest of their positions.
        """
        items, hist, likes, _ = self._train
        picked = draw_rows(len(items), min(rows, len(items)), self.seed, stream=2)
        with self._eval_stats_kept():
            self.p_yes([self._render(hist[r], likes[r], int(items[r]), (int(r),)) for r in picked])
        return {"rows": len(picked), "part": "train", "digest": rows_digest(picked)}

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B] users, [B, C] items -> [B, C] P("Yes") of each pair's prompt.

        With C > 1 (a user's candidate list) and ``prefix_reuse``, the prompt tokens the C prompts
        share (instruction, in-context examples, history) run once per user and only the rest
        (the target's mention and the question) per candidate.
        """
        b, c = items.shape
        pairs = [(int(u), int(i)) for u, row in zip(users.tolist(), items.tolist(), strict=True) for i in row]
        prompts = [self._prompt(u, i) for u, i in pairs]
        if c > 1 and self._shares_prefixes():  # a user's candidates: the history part computed once
            p = self.p_yes_grouped(prompts, b)
        else:
            p = self.p_yes(prompts)
        if self.template.chain_of_thought:
            self._reasoning.update(zip(pairs, self.last_reasoning, strict=True))
        return p.view(b, c).to(users.device)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        raise ConfigError(
            "model tallrec scores (user, item) pairs: use eval=labeled (or eval=sampled), not eval=full"
        )

    # ------------------------------------------------------------------ record

    def _icl_facts(self) -> dict[str, Any]:
        """How in-context examples were chosen and how long the scored prompts were."""
        n, total, longest = self._token_stats
        bare = self.template.render({f: "" for f in self.template.fields}, (), self.tokenizer)
        out: dict[str, Any] = {
            "prompt_tokens": {"prompts": n, "mean": round(total / n, 2) if n else None, "max": longest},
            "template_tokens": len(self.tokenizer(bare, add_special_tokens=True)["input_ids"]),
        }
        if self.icl_shots:
            out["icl_select"] = self.icl_select
        if self._icl_encoder is not None:
            out["text_encoder"] = self._icl_encoder
        if self.history_select != "recent" or self.history_budget is not None:
            out["history_fit"] = fit_facts(self.history_select, self.history_budget, self._history_stats)
            if self.history_select == "summary":
                asked, made, disk = self._summary_stats
                out["history_fit"]["summaries"] = {
                    "asked": asked,
                    "generated": made,
                    "from_disk_cache": disk,
                    "max_tokens": self.summary_tokens,
                    "prompt": self.summary_prompt,
                    "decoding": "greedy, by the scoring LM (with its adapters), cut at the first blank line",
                }
        return out

    def prediction_facts(self) -> dict[str, Any]:
        """Facts for ``record["model"]``: backbone, weights, prompt, shots, seed, LoRA."""
        n_train = len(self._train[0])
        trained = self.lora_config is not None
        shots = self.shot_rows(n_train) if trained else np.zeros(0, int)
        labels = self._train[3]
        return {
            "llm": {
                **{k: v for k, v in self.lm_facts.items() if k not in MACHINE_FACTS},
                "prompt": {**self.template.describe(), "example": self.example_prompt},
                "answer_token_ids": dict(zip(self.template.answers, self.answer_ids, strict=True)),
                "seed": self.seed,
                "shots": self.shots if trained else 0,
                "shot_rows_sha256": rows_digest(shots) if trained else None,
                "shot_positives": int(labels[shots].sum()) if trained else None,
                "icl_shots": self.icl_shots,
                "icl_rows": self.icl_rows.tolist(),
                **self._icl_facts(),
                "lora": self.lora_config,
                "history": {
                    "source": "row" if self.sequence_split else "user_last_train_items",
                    "length": None if self.sequence_split else self.history,
                    "like_threshold": None if self.sequence_split else self.like_threshold,
                },
                "max_length": self.max_length,
                "truncated_prompts": self.truncated,
                **({"score_cache": self._score_store.facts()} if self._score_store is not None else {}),
            },
            **adapter_facts(self.adapter, self.adapter_config),
        }
