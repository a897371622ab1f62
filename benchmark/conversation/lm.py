"""A causal LM in a conversation role: prompts, a choice among fixed outputs, title beams, sampled replies.

One wrapper for the LLM recommender, the hybrid and the LLM simulator, on top of
:mod:`benchmark.models.components.llm` (loading, shared-prefix scoring) and the item trie of
:mod:`benchmark.models.components.trie` (catalogue-constrained beam search):

- :meth:`ChatLM.render`: a system + user message through the tokenizer's chat template (a plain
  ``system\\n\\nuser\\n\\n`` layout when it has none), ending where the answer starts.
- :meth:`ChatLM.logprobs`: summed log-probabilities of fixed continuations after each prompt
  (each prompt runs once; its cache is shared by its continuations).
- :meth:`ChatLM.beams`: up to k catalogue titles per prompt by beam search constrained to a title
  trie, blocked items excluded.
- :meth:`ChatLM.greedy` / :meth:`ChatLM.sample`: free text (greedy, or sampled with a generator per
  row that leaves the global random state untouched).

Every method takes a batch of prompts: sessions run in lockstep (all active sessions' turn t
together), since decoding one token reads every weight once however many rows it serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmark.models.components.llm import Prefill, cache_kwarg, load_causal_lm, logprobs_after, prefill
from benchmark.models.components.prompts import continuation_ids
from benchmark.models.components.trie import ItemTrie, TrieConstraint

MACHINE_FACTS = ("load_seconds", "dequantize_seconds", "cache")  # differ between machines: not recorded


@dataclass
class Prompted:
    """Prompts scored by :meth:`ChatLM.scored`: their texts, token ids and run (batch and cache)."""

    texts: list[str]
    ids: list[list[int]]
    pre: Prefill


class ChatLM:
    """A loaded causal LM and its tokenizer (see the module docstring).

    Args:
        backbone: an offline model name (``smollm2-135m-instruct``), a ``.gguf`` file, a model
            folder or a hub name (:func:`benchmark.models.components.llm.load_causal_lm`).
        dtype: weights dtype (``auto``: bf16 on CUDA, fp32 otherwise).
        accelerator: ``cpu`` or ``gpu``.
        cache_dir: cache root for dequantized GGUF models.
    """

    def __init__(
        self, backbone: str, dtype: str = "auto", accelerator: str = "cpu", cache_dir: str | None = None
    ) -> None:
        loaded = load_causal_lm(backbone, dtype, accelerator, cache_dir)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.model.requires_grad_(False)
        self.backbone = backbone
        self.load_seconds = float(loaded.facts.get("load_seconds", 0.0))
        self._facts = {k: v for k, v in loaded.facts.items() if k not in MACHINE_FACTS}
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.eos_id = int(self.tokenizer.eos_token_id)
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def lm(self) -> torch.nn.Module:
        """The backbone, where a precision option applies (:func:`benchmark.models.components.precision.apply_precision`)."""
        return self.model

    @property
    def lm_facts(self) -> dict[str, Any]:
        """The recorded facts, which a precision option extends with its own (``precision``, ``dtype``)."""
        return self._facts

    def facts(self) -> dict[str, Any]:
        """The model as the record states it (name, source, dtype, precision, parameters; no machine facts)."""
        return {**self._facts, "chat_template": self.chat}

    def render(self, system: str, user: str) -> str:
        """The prompt text of one system + user message, ending where the answer starts."""
        if self.chat:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{system}\n\n{user}\n\n"

    def count(self, text: str) -> int:
        """Tokens of a prompt (special tokens included)."""
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def logprobs(
        self, prompts: Sequence[str], continuations: Sequence[Sequence[str]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Summed log-probabilities of each prompt's continuations, and their token counts.

        The prompts run as one batch (each once); their caches are shared by their continuations.

        Returns:
            per prompt ([C] float64 sums, [C] int64 token counts).
        """
        return self.scored(prompts, continuations)[0]

    @torch.no_grad()
    def scored(
        self, prompts: Sequence[str], continuations: Sequence[Sequence[str]]
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], Prompted]:
        """:meth:`logprobs`, and the prompts' run (:class:`Prompted`): a beam search after some of
        the same prompts (:meth:`beams` with ``after``) starts from their cache."""
        heads, tails = [], []
        for prompt, conts in zip(prompts, continuations, strict=True):
            pairs = [continuation_ids(self.tokenizer, prompt, c) for c in conts]
            heads.append(pairs[0][0])
            tails.append([tail or [self.eos_id] for _, tail in pairs])
        pre = prefill(self.model, heads, self.pad_id)
        lps = logprobs_after(self.model, pre, tails)
        result = [
            (lp.numpy().astype(np.float64), np.array([len(t) for t in ts], dtype=np.int64))
            for lp, ts in zip(lps, tails, strict=True)
        ]
        return result, Prompted(list(prompts), heads, pre)

    def title_trie(self, texts: Sequence[str]) -> ItemTrie:
        """A trie over the titles as they follow ``RECOMMEND:`` (a leading space), each ending with EOS."""
        seqs = [self.tokenizer(" " + t, add_special_tokens=False)["input_ids"] + [self.eos_id] for t in texts]
        vocab = max(int(self.model.config.vocab_size), len(self.tokenizer))
        return ItemTrie(seqs, vocab, self.eos_id)

    def _batch(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Left-padded ``input_ids`` and ``attention_mask`` [B, T] of the prompts."""
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=True)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.no_grad()
    def beams(
        self,
        prompts: Sequence[str],
        trie: ItemTrie,
        k: int,
        blocked: Sequence[np.ndarray],
        after: tuple[Prompted, Sequence[int]] | None = None,
    ) -> list[list[int]]:
        """Per prompt, up to ``k`` distinct items, best first, by beam search over ``trie``.

        Args:
            prompts: B prompt texts (each ending where the first title starts).
            trie: :meth:`title_trie` of the catalogue texts.
            k: beams per prompt, hence items at most.
            blocked: B arrays of item indices never to produce.
            after: (a :meth:`scored` run, B row numbers in it) when prompt b is that run's prompt
                ``rows[b]`` followed by the same few tokens for every b: the search starts from the
                run's cache instead of reading the prompts again (the same token ids, hence the
                same beams to float rounding); the run's cache is used up. Otherwise, or when the
                tokens do not line up, the prompts are read afresh.
        """
        from transformers import GenerationConfig, LogitsProcessorList

        from benchmark.models.components.beam_cache import row_prefilled_cache

        reused = None if after is None else self._continue(prompts, *after)
        enc, cache = reused if reused is not None else (self._batch(prompts), None)
        start = enc["input_ids"].shape[1]
        counts = trie.blocked_counts([np.asarray(b, dtype=np.int64) for b in blocked])  # [B, n_nodes]
        cfg = GenerationConfig(
            max_new_tokens=trie.depth,
            num_beams=k,
            num_return_sequences=k,
            do_sample=False,
            length_penalty=0.0,  # a title's score is its log-likelihood, whatever its length
            early_stopping=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
            use_cache=True,
        )
        processors = LogitsProcessorList([TrieConstraint(trie, start, k, counts)])
        with row_prefilled_cache(self.model, enc, k, cache) as kwargs:
            out = self.model.generate(**enc, generation_config=cfg, logits_processor=processors, **kwargs)
        found = trie.items_of(out[:, start:]).view(len(prompts), k).tolist()  # [B, k], best first
        lists = []
        for row, ban in zip(found, blocked, strict=True):
            banned = set(np.asarray(ban).tolist())
            items: list[int] = []
            for i in row:  # filler beams (fewer free items than k) repeat or end outside the trie
                if i >= 0 and i not in banned and i not in items:
                    items.append(int(i))
            lists.append(items)
        return lists

    def _continue(
        self, prompts: Sequence[str], run: Prompted, rows: Sequence[int]
    ) -> tuple[dict[str, torch.Tensor], Any] | None:
        """The beam search's batch and cache (every position but the last) built on ``run``'s
        cache: its rows ``rows`` extended by the tokens each prompt adds, None when they differ
        or the cache was used up."""
        if not run.pre.intact or len(rows) != len(prompts):
            return None
        suffix: list[int] | None = None
        for text, r in zip(prompts, rows, strict=True):
            base = run.ids[r]
            full = self.tokenizer(text, add_special_tokens=True)["input_ids"]
            if not text.startswith(run.texts[r]) or full[: len(base)] != base or len(full) == len(base):
                return None
            if suffix not in (None, full[len(base) :]):
                return None
            suffix = full[len(base) :]
        assert suffix is not None
        batch, cache = run.pre.batch, run.pre.cache
        run.pre.intact = False  # the cache now belongs to this search
        idx = torch.as_tensor(list(rows), device=batch["input_ids"].device)
        cache.batch_select_indices(idx)
        mask = batch["attention_mask"][idx]
        tail = torch.as_tensor(suffix, device=mask.device)[None].expand(len(rows), -1)
        if len(suffix) > 1:  # the added tokens but the last, after the prompts' positions
            ones = torch.ones_like(tail[:, :-1])
            self.model(
                input_ids=tail[:, :-1],
                attention_mask=torch.cat([mask, ones], dim=1),
                position_ids=mask.sum(dim=1, keepdim=True) + torch.arange(len(suffix) - 1, device=mask.device),
                use_cache=True,
                logits_to_keep=1,
                **cache_kwarg(self.model, cache),
            )
        enc = {
            "input_ids": torch.cat([batch["input_ids"][idx], tail], dim=1),
            "attention_mask": torch.cat([mask, torch.ones_like(tail)], dim=1),
        }
        return enc, cache

    @torch.no_grad()
    def greedy(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of the prompts (special tokens dropped, stripped)."""
        enc = self._batch(prompts)
        out = self.model.generate(
            **enc,
            max_new_tokens=int(max_new_tokens),
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
        )
        width = enc["input_ids"].shape[1]
        return [self.tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seeds: Sequence[int],
    ) -> list[str]:
        """Sampled continuations (temperature, nucleus ``top_p``), each row with its own generator
        seeded by ``seeds[b]``, so a row's text does not depend on the other rows' draws; the
        global random state is untouched. Decoding runs as one batch with a key/value cache.
        """
        from benchmark.models.components.llm import left_pad

        ids = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        batch = left_pad(ids, self.pad_id)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        out = self.model(**batch, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        mask, pos = batch["attention_mask"], batch["attention_mask"].sum(dim=1)  # [B, T], [B] next position
        done = torch.zeros(len(ids), dtype=torch.bool)
        made: list[list[int]] = [[] for _ in ids]
        for _ in range(int(max_new_tokens)):
            probs = _nucleus(
                out.logits[:, -1].float() / max(float(temperature), 1e-6), float(top_p)
            )  # [B, V]
            nxt = torch.stack(
                [torch.multinomial(probs[b], 1, generator=gens[b])[0] for b in range(len(ids))]
            )  # [B]
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            for b in torch.nonzero(~done).flatten().tolist():
                made[b].append(int(nxt[b]))
            done |= nxt == self.eos_id
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self.model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=pos[:, None],
                use_cache=True,
                **cache_kwarg(self.model, cache),
            )
            cache = getattr(out, "cache", None) or out.past_key_values
            pos = pos + 1
        return [self.tokenizer.decode(m, skip_special_tokens=True).strip() for m in made]


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """[B, V] logits -> [B, V] probabilities kept to the smallest set whose mass reaches ``top_p``."""
    probs = logits.softmax(dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep = sorted_p.cumsum(dim=-1) - sorted_p < top_p  # the top token is always kept
    sorted_p = sorted_p * keep
    out = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return out / out.sum(dim=-1, keepdim=True)
