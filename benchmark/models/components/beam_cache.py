"""Key/value caches for P5's beam search that read each prompt once per row, not once per beam.

``generate`` repeats every prompt ``num_beams`` times; both helpers give identical results with
less work and are passed to ``generate`` as its cache keyword argument
(:func:`benchmark.models.components.llm.cache_kwarg`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from benchmark.models.components.llm import cache_kwarg


def row_prefilled_cache(lm: Any, enc: Mapping[str, torch.Tensor], beams: int) -> dict[str, Any]:
    """A decoder-only LM's prompt cache, computed once per row and repeated for each beam.

    ``generate`` repeats every prompt ``beams`` times before its first forward, so a causal LM
    would encode each prompt ``beams`` times (20x the prompt compute at the default beam size).
    Here all prompt positions but the last are run once per row (left padding, positions from the
    attention mask as ``generate`` derives them); the key/value cache is repeated per beam and
    handed to ``generate``, which continues from the last prompt position (from its id, or its
    embedding when the prompt has soft tokens). Returned as the ``generate`` keyword argument.
    """
    from transformers import DynamicCache

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
    cache.batch_repeat_interleave(beams)
    return cache_kwarg(lm, cache)


def row_shared_cross_cache(lm: Any) -> dict[str, Any]:
    """A key/value cache for encoder-decoder beam search that does not reorder its cross-attention part.

    Beam search reorders the cache after every step, but beams only move within their row and all
    beams of a row attend to the same encoder states, so reordering the cross-attention keys/values
    is an identity that copies [B * beams, heads, source, d] per layer per step (about half of
    the decoding time of a t5-small on CPU). Returned as the ``generate`` keyword argument under
    the name this transformers version uses (``cache`` in 5.x, ``past_key_values`` before).
    """
    from transformers import DynamicCache, EncoderDecoderCache

    class RowSharedCrossCache(EncoderDecoderCache):
        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self.self_attention_cache.reorder_cache(beam_idx)

    config = lm.config.get_text_config(decoder=True)
    return cache_kwarg(lm, RowSharedCrossCache(DynamicCache(config=config), DynamicCache(config=config)))
