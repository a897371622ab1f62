"""The item trie and the beam-search constraint: lookups, exclusions, never an invalid id."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.models.components.trie import ItemTrie, TrieConstraint

EOS = 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def brute_allowed(seqs: list[list[int]], prefix: list[int], banned: set[int]) -> set[int]:
    """Next tokens of ``prefix`` that still lead to a non-banned item (the definition)."""
    return {
        s[len(prefix)]
        for i, s in enumerate(seqs)
        if i not in banned and len(s) > len(prefix) and s[: len(prefix)] == prefix
    }


@st.composite
def tries(draw):
    vocab = draw(st.integers(3, 12))
    n = draw(st.integers(1, 25))
    bodies = draw(
        st.lists(
            st.lists(st.integers(2, vocab - 1), min_size=1, max_size=5),
            min_size=n,
            max_size=n,
            unique_by=tuple,
        )
    )
    seqs = [[*b, EOS] for b in bodies]
    banned = draw(st.sets(st.integers(0, len(seqs) - 1), max_size=len(seqs)))
    return seqs, vocab, banned


def test_lookup_of_sequences_and_prefixes():
    seqs = [[2, 3, EOS], [2, 4, EOS], [5, EOS], [2, 3, 6, EOS]]
    trie = ItemTrie(seqs, 8, EOS)
    gen = torch.tensor(
        [
            [2, 3, EOS, 0],  # item 0
            [2, 3, 6, EOS],  # item 3 (extends item 0's tokens before EOS)
            [5, EOS, 7, 7],  # item 2, anything after EOS ignored
            [2, 3, 0, 0],  # a prefix without EOS: no item
            [2, EOS, 0, 0],  # EOS inside the tree but not at a leaf: no item
            [7, 7, EOS, 0],  # outside the tree
        ]
    )
    assert trie.items_of(gen).tolist() == [0, 3, 2, -1, -1, -1]
    assert trie.walk(torch.tensor([[2, 3], [2, 9]])).tolist()[1] == -1
    assert trie.subtree[0] == 4 and trie.depth == 4


def test_bad_sequences_are_rejected():
    with pytest.raises(ValueError, match="same token sequence"):
        ItemTrie([[2, EOS], [2, EOS]], 4, EOS)
    with pytest.raises(ValueError, match="end with EOS"):
        ItemTrie([[2, 3]], 4, EOS)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ItemTrie([[9, EOS]], 4, EOS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tries())
def test_allowed_tokens_equal_the_brute_force_definition(case):
    seqs, vocab, banned = case
    trie = ItemTrie(seqs, vocab, EOS)
    blocked = trie.blocked_counts([np.array(sorted(banned), dtype=np.int64)])
    prefixes = {tuple(s[:j]) for s in seqs for j in range(len(s))}
    for p in sorted(prefixes):
        node = trie.walk(torch.tensor([list(p)], dtype=torch.long).view(1, len(p)))
        mask = trie.allowed(node, vocab + 2, torch.zeros(1, dtype=torch.long), blocked)[0]
        assert set(torch.nonzero(mask).flatten().tolist()) == brute_allowed(seqs, list(p), banned), p


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tries(), st.integers(0, 2**31 - 1), st.integers(1, 4))
def test_constrained_beams_never_emit_an_invalid_or_excluded_id(case, seed, rows):
    """Beam search over random logits (a stand-in for any model) under the constraint."""
    seqs, vocab, banned = case
    trie = ItemTrie(seqs, vocab, EOS)
    beams = 3
    excluded = [np.array(sorted(banned), dtype=np.int64)] * rows
    proc = TrieConstraint(trie, start=1, num_beams=beams, blocked=trie.blocked_counts(excluded))
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(rows * beams, 1, dtype=torch.long)  # a decoder start token
    done = torch.zeros(rows * beams, dtype=torch.bool)
    for _ in range(trie.depth):
        scores = proc(ids, torch.randn(rows * beams, vocab + 2, generator=g).log_softmax(-1))
        nxt = scores.argmax(-1)
        dead = torch.isinf(scores.max(-1).values)
        nxt = torch.where(done | dead, torch.zeros_like(nxt), nxt)
        done |= dead | (nxt == EOS)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    items = trie.items_of(ids[:, 1:])
    left = len(seqs) - len(banned)
    if left:
        assert (items >= 0).all(), ids
        assert not set(items.tolist()) & banned
    else:  # nothing allowed: every beam is dead from the root
        assert (items == -1).all()


def test_generate_with_a_tiny_t5_emits_only_valid_distinct_non_excluded_items():
    from transformers import GenerationConfig, LogitsProcessorList, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=30,
        d_model=16,
        d_ff=32,
        d_kv=8,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        pad_token_id=0,
        eos_token_id=EOS,
        decoder_start_token_id=0,
    )
    model = T5ForConditionalGeneration(cfg).eval()
    rng = np.random.default_rng(0)
    bodies = {tuple(rng.integers(2, 30, size=rng.integers(1, 4)).tolist()) for _ in range(80)}
    seqs = [[*b, EOS] for b in sorted(bodies)]
    trie = ItemTrie(seqs, 30, EOS)
    excluded = [np.arange(0, 10), np.arange(5, 40)]
    beams = 12
    proc = TrieConstraint(trie, 1, beams, trie.blocked_counts(excluded))
    gen_cfg = GenerationConfig(
        max_new_tokens=trie.depth,
        num_beams=beams,
        num_return_sequences=beams,
        length_penalty=0.0,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=EOS,
        decoder_start_token_id=0,
    )
    x = torch.randint(2, 30, (2, 7))
    out = model.generate(input_ids=x, generation_config=gen_cfg, logits_processor=LogitsProcessorList([proc]))
    items = trie.items_of(out[:, 1:]).view(2, beams)
    for r in range(2):
        got = items[r].tolist()
        assert all(i >= 0 for i in got) and len(set(got)) == beams
        assert not set(got) & set(excluded[r].tolist())
