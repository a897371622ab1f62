"""Sampled generations of a P5 model for GRPO (``align.generation=sample``).

Ancestral sampling at temperature 1, constrained by the model's item trie (the row's excluded
items blocked), ``g`` samples per prompt, seeded per call in a forked RNG so the run's global
random state is untouched. Unlike beam search, samples may repeat an item (a group of G samples
is G draws from the policy), so repeats stay items here; a sample that ends outside the catalogue
(impossible under the trie; kept for safety) is -1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from benchmark.errors import ConfigError
from benchmark.models.components.trie import TrieConstraint
from benchmark.models.p5 import P5


class _FinishedRowsPad:
    """After the trie constraint: a row with no allowed token (its item already ended with EOS)
    may emit the pad token, so sampling never draws from an all ``-inf`` row (``generate``
    replaces finished rows' tokens by pad anyway)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        dead = torch.isinf(scores).all(dim=-1)  # [N]
        if dead.any():
            scores = scores.clone()
            scores[dead, self.pad_id] = 0.0
        return scores


@torch.no_grad()
def sample_items(
    model: P5,
    prompts: list[str],
    excluded: Sequence[np.ndarray],
    g: int,
    seed: int,
    device: torch.device | str,
) -> np.ndarray:
    """[B, g] sampled items per prompt (-1 = no item), by ``seed``."""
    from transformers import GenerationConfig, LogitsProcessorList

    if model.adapter is not None:
        raise ConfigError("align.generation=sample: not available with an item adapter (use generation=beam)")
    device = torch.device(device)
    trie = model._trie_on(device)
    ids, _ = model._tokenize(prompts)
    enc = {n: t.to(device) for n, t in model._inputs(ids).items() if n != "position_ids"}
    start = 1 if model.kind == "seq2seq" else enc["input_ids"].shape[1]
    blocked = trie.blocked_counts([np.asarray(e) for e in excluded]).to(device)
    kw = {}
    if model.kind == "seq2seq":
        base = getattr(model.lm, "base_model", model.lm)
        kw["decoder_start_token_id"] = int(
            getattr(base.config, "decoder_start_token_id", None) or model.pad_id
        )
    cfg = GenerationConfig(
        max_new_tokens=int(trie.depth),
        do_sample=True,
        num_beams=1,
        num_return_sequences=int(g),
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        pad_token_id=model.pad_id,
        eos_token_id=model.eos_id,
        **kw,
    )
    processors = LogitsProcessorList(
        [TrieConstraint(trie, start, int(g), blocked), _FinishedRowsPad(model.pad_id)]
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        seqs = model.lm.generate(**enc, generation_config=cfg, logits_processor=processors)
    gen = seqs[:, start:]  # [B * g, t], prompt-major
    return trie.items_of(gen).view(len(prompts), int(g)).cpu().numpy().astype(np.int64)
