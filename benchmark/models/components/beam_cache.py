"""Key/value caches for beam search (P5, the conversation's title beams) that read each prompt
once per row, not once per beam.

``generate`` repeats every prompt ``num_beams`` times; both helpers give the same results (to
float rounding) with less work and give ``generate`` its cache keyword argument
(:func:`benchmark.models.components.llm.cache_kwarg`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from transformers import DynamicCache

from benchmark.models.components.llm import cache_kwarg


@contextmanager
def row_prefilled_cache(
    lm: Any, enc: Mapping[str, torch.Tensor], beams: int, cache: Any = None
) -> Iterator[dict[str, Any]]:
    """A decoder-only LM's prompt cache, computed once per row and read by each of its beams.

    ``generate`` repeats every prompt ``beams`` times before its first forward, so a causal LM
    would encode each prompt ``beams`` times (20x the prompt compute at the default beam size).
    Here all prompt positions but the last are run once per row (left padding, positions from the
    attention mask as ``generate`` derives them), and ``generate`` continues from the last prompt
    position (from its id, or its embedding when the prompt has soft tokens). Its beams read the
    row's prompt keys/values in place (:mod:`benchmark.models.components.prefix_attention`; the
    decoding cache holds only each beam's own tokens, so reordering beams moves no prompt); for
    models without shared-prefix attention the prompt cache is repeated per beam. Yields the
    ``generate`` keyword argument; ``generate`` runs inside the block.

    Args:
        cache: the prompts' key/value cache of every position but the last, when the caller has
            it already (one row per prompt, ``enc``'s padding); None computes it.
    """
    from benchmark.models.components.prefix_attention import attend_to_prefix, supports_shared_prefix

    mask = enc["attention_mask"]
    cache = _prefill(lm, enc) if cache is None else cache
    if supports_shared_prefix(lm, cache):
        config = lm.config.get_text_config(decoder=True)
        with attend_to_prefix(lm, cache, mask[:, :-1], [beams] * mask.shape[0]):
            yield cache_kwarg(lm, _AfterPrompt(config, mask.shape[1] - 1))
    else:
        cache.batch_repeat_interleave(beams)
        yield cache_kwarg(lm, cache)


class _AfterPrompt(DynamicCache):
    """The decoding cache of the tokens after a prompt that is read in place: it stores only those
    tokens, and its length counts the prompt's positions (``generate`` derives the next positions
    from it)."""

    def __init__(self, config: Any, offset: int) -> None:
        super().__init__(config=config)
        self.offset = int(offset)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.offset + super().get_seq_length(layer_idx)


def _prefill(lm: Any, enc: Mapping[str, torch.Tensor]) -> Any:
    """The key/value cache of every prompt position but the last, one row per prompt."""
    mask = enc["attention_mask"]
    head: dict[str, Any] = {
        "attention_mask": mask[:, :-1],
        "position_ids": (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, :-1],
    }
    if "inputs_embeds" in enc:
        head["inputs_embeds"] = enc["inputs_embeds"][:, :-1]
    else:
        head["input_ids"] = enc["input_ids"][:, :-1]
    cache = DynamicCache(config=lm.config.get_text_config(decoder=True))
    with torch.no_grad():
        lm(**head, **cache_kwarg(lm, cache), use_cache=True, logits_to_keep=1)
    return cache


def row_shared_cross_cache(lm: Any) -> dict[str, Any]:
    """A key/value cache for encoder-decoder beam search that does not reorder its cross-attention part.

    Beam search reorders the cache after every step, but beams only move within their row and all
    beams of a row attend to the same encoder states, so reordering the cross-attention keys/values
    is an identity that copies [B * beams, heads, source, d] per layer per step (about half of
    the decoding time of a t5-small on CPU). Returned as the ``generate`` keyword argument under
    the name this transformers version uses (``cache`` in 5.x, ``past_key_values`` before).
    """
    from transformers import EncoderDecoderCache

    class RowSharedCrossCache(EncoderDecoderCache):
        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self.self_attention_cache.reorder_cache(beam_idx)

    config = lm.config.get_text_config(decoder=True)
    return cache_kwarg(lm, RowSharedCrossCache(DynamicCache(config=config), DynamicCache(config=config)))
