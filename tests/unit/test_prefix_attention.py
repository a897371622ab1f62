"""Shared-prefix attention: continuations read their prompt's cache in place, with the results of
separate sequences and of the cache-copy path (benchmark.models.components.prefix_attention)."""

from __future__ import annotations

import pytest
import torch

from benchmark.models.components import prefix_attention as pa
from benchmark.models.components.llm import (
    continuation_logprobs,
    left_pad,
    next_token_logits,
    shared_prefix_logprobs,
    shared_prefix_next_logits,
)


def tiny_llama(seed: int = 0, **overrides):
    """A random 3-layer Llama with grouped-query attention (4 query heads on 2 key/value heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        **overrides,
    )
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


def seqs(seed: int, lengths: list[int]) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 61, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture
def spy(monkeypatch):
    """The layers that went through the shared-prefix attention, per call."""
    calls: list[int] = []
    real = pa.shared_prefix_attention

    def counted(module, *args, **kwargs):
        calls.append(int(module.layer_idx))
        return real(module, *args, **kwargs)

    from transformers import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, pa.NAME, counted)
    return calls


def test_continuations_read_the_prompt_cache_in_place_with_the_results_of_separate_sequences(spy):
    lm = tiny_llama()
    prompts = seqs(1, [9, 4, 13])  # unequal lengths: left-padded prompts
    conts = [seqs(2, [3, 1, 5]), seqs(3, [2]), seqs(4, [6, 2, 4, 1])]  # unequal counts and lengths
    with pa.prefix_mode("in_place"):  # rows this long next to the prompts would be copied by default
        got = shared_prefix_logprobs(lm, prompts, conts, 0)
    assert sorted(set(spy)) == [0, 1, 2]  # every layer took the in-place path
    with torch.no_grad():
        for g, prompt, cs in zip(got, prompts, conts, strict=True):
            assert torch.allclose(g, continuation_logprobs(lm, prompt, cs, 0), atol=1e-5)
    spy.clear()
    with pa.prefix_mode("copied"):
        copied = shared_prefix_logprobs(lm, prompts, conts, 0)
    assert not spy  # the copy path never calls it
    for a, b in zip(got, copied, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # A prefill scored in place can be scored again; one whose cache was copied per row cannot.
    from benchmark.models.components.llm import logprobs_after, prefill

    pre = prefill(lm, prompts, 0)
    with pa.prefix_mode("in_place"):
        first = logprobs_after(lm, pre, conts)
        assert pre.intact and all(torch.equal(a, b) for a, b in zip(first, logprobs_after(lm, pre, conts), strict=True))
    with pa.prefix_mode("copied"):
        logprobs_after(lm, pre, conts)
    with pytest.raises(ValueError, match="used up"):
        logprobs_after(lm, pre, conts)
    batch = left_pad(prompts, 0)
    cache = lm(**batch, use_cache=True, logits_to_keep=1).past_key_values
    with pytest.raises(RuntimeError, match=r"reached layers \[\] of 3"):  # no forward pass went through it
        with pa.attend_to_prefix(lm, cache, batch["attention_mask"], [3, 1, 4]):
            pass
    assert lm.config._attn_implementation == "sdpa"  # restored


def test_left_padded_suffixes_and_prefixes_without_suffix_tokens_read_the_cache_in_place(spy):
    lm = tiny_llama(seed=3)
    prefixes = seqs(5, [7, 12, 3])
    suffixes = [seqs(6, [4, 1, 0]), [[]], seqs(7, [2, 6])]  # prefix 1 has only an empty suffix: no row
    with pa.prefix_mode("in_place"):
        got = shared_prefix_next_logits(lm, prefixes, suffixes, 0)
    assert sorted(set(spy)) == [0, 1, 2]
    with torch.no_grad():
        for g, prefix, ss in zip(got, prefixes, suffixes, strict=True):
            want = next_token_logits(lm, left_pad([prefix + s for s in ss], 0)).float()
            assert g.shape == want.shape and torch.allclose(g, want, atol=1e-5)


def test_rows_short_next_to_their_prompt_read_it_in_place_and_long_rows_take_copies(spy):
    """By default the path follows the measured prompt-to-row ratio (IN_PLACE_RATIO = 16)."""
    assert pa.in_place_pays(16 * 5, 5) and not pa.in_place_pays(16 * 5 - 1, 5)
    lm = tiny_llama(seed=6)
    prompts = seqs(14, [80, 70])
    short = [seqs(15, [6, 3]), seqs(16, [2])]  # widest row 5 tokens after the first: 80 >= 16 x 5
    long = [seqs(17, [7, 3]), seqs(18, [2])]  # 6 tokens: 80 < 96
    for conts, in_place in ((short, True), (long, False)):
        spy.clear()
        got = shared_prefix_logprobs(lm, prompts, conts, 0)
        assert bool(spy) is in_place
        with torch.no_grad():
            for g, prompt, cs in zip(got, prompts, conts, strict=True):
                assert torch.allclose(g, continuation_logprobs(lm, prompt, cs, 0), atol=1e-5)
    with pytest.raises(ValueError, match="prefix mode"):
        with pa.prefix_mode("fast"):
            pass


def test_the_attention_equals_softmax_over_prompt_and_own_keys_computed_by_hand():
    """One layer's output against attention over the concatenated keys, written out."""
    g = torch.Generator().manual_seed(0)
    hkv, groups, d, p, length = 2, 3, 8, 5, 4
    keys = torch.randn(1, hkv, p, d, generator=g)
    values = torch.randn(1, hkv, p, d, generator=g)
    mask = torch.tensor([[False, False, True, True, True]])  # two left pads
    q = torch.randn(2, hkv * groups, length, d, generator=g)
    k = torch.randn(2, hkv, length, d, generator=g)
    v = torch.randn(2, hkv, length, d, generator=g)

    class Layer:
        layer_idx = 0

    state = pa._Prefix([keys], [values], mask, [2], None)
    token = pa._ACTIVE.set(state)
    try:
        out, _ = pa.shared_prefix_attention(Layer(), q, k, v, None, scaling=0.5)
    finally:
        pa._ACTIVE.reset(token)
    for row in range(2):
        for h in range(hkv * groups):
            kv = h // groups
            for t in range(length):
                keys_all = torch.cat([keys[0, kv, 2:], k[row, kv, : t + 1]])
                values_all = torch.cat([values[0, kv, 2:], v[row, kv, : t + 1]])
                w = (keys_all @ q[row, h, t] * 0.5).softmax(dim=0)
                assert torch.allclose(out[row, t, h], w @ values_all, atol=1e-6)
    state = pa._Prefix([keys], [values], mask, [3], None)  # counts that do not cover the rows
    token = pa._ACTIVE.set(state)
    try:
        with pytest.raises(RuntimeError, match="2 rows"):
            pa.shared_prefix_attention(Layer(), q, k, v, None)
    finally:
        pa._ACTIVE.reset(token)


def test_models_without_plain_full_attention_keep_the_copy_path(spy):
    """A sliding window (or a backend other than sdpa/eager) is not handled in place: the copy path
    runs and gives the separate-sequence results."""
    lm = tiny_llama(seed=4, layer_types=["full_attention", "sliding_attention", "full_attention"], sliding_window=64)
    prompts, conts = seqs(8, [6, 3]), [seqs(9, [3, 2]), seqs(10, [4])]
    out = lm(**left_pad(prompts, 0), use_cache=True, logits_to_keep=1)
    assert not pa.supports_shared_prefix(lm, out.past_key_values)
    assert pa.supports_shared_prefix(tiny_llama(), tiny_llama()(**left_pad(prompts, 0), use_cache=True).past_key_values)
    got = shared_prefix_logprobs(lm, prompts, conts, 0)
    assert not spy
    with torch.no_grad():
        for g, prompt, cs in zip(got, prompts, conts, strict=True):
            assert torch.allclose(g, continuation_logprobs(lm, prompt, cs, 0), atol=1e-5)


def test_bf16_weights_stay_close_to_the_copy_path():
    lm = tiny_llama(seed=5).to(torch.bfloat16)
    prompts, conts = seqs(11, [10, 5]), [seqs(12, [3, 4]), seqs(13, [2, 5, 1])]
    with pa.prefix_mode("in_place"):
        got = shared_prefix_logprobs(lm, prompts, conts, 0)
    with pa.prefix_mode("copied"):
        copied = shared_prefix_logprobs(lm, prompts, conts, 0)
    for a, b in zip(got, copied, strict=True):
        assert a.dtype == torch.float32 and torch.allclose(a, b, atol=0.05)


@pytest.mark.parametrize("mode", ["in_place", "copied"])
def test_a_prefix_kept_across_batches_gives_the_scores_of_whole_prompts(mode):
    """Batches whose prompts start with the same instruction and examples: the prefix runs once
    (and is cut when a later batch shares less of it); every score equals the prompt run whole."""
    from benchmark.models.components.llm import PromptPrefix

    lm = tiny_llama()
    (head,) = seqs(5, [40])
    batches = [
        [head + s for s in seqs(6, [7, 3, 11])],  # all share the 40-token head (and maybe more)
        [head + s for s in seqs(7, [5, 9])],
        [head[:34] + s for s in seqs(8, [4, 12])],  # shares only 34 tokens: the prefix is cut
        [s for s in seqs(9, [20, 6])],  # shares nothing: runs as it is
    ]
    shared = PromptPrefix(min_tokens=32)
    for b, prompts in enumerate(batches):
        conts = [seqs(10 + b * 7 + j, [3, 1, 4]) for j in range(len(prompts))]
        with pa.prefix_mode(mode):
            got = shared_prefix_logprobs(lm, prompts, conts, 0, shared=shared)
        with torch.no_grad():
            for g, prompt, cs in zip(got, prompts, conts, strict=True):
                assert torch.allclose(g, continuation_logprobs(lm, prompt, cs, 0), atol=1e-5)
        assert len(shared.tokens) == (40 if b < 2 else 34)
    assert shared.computed == 1  # the prefix ran once; the cut reused its first 34 positions
    assert shared.reused_tokens == 40 * 3 - 40 + 40 * 2 + 34 * 2


def test_a_prompt_prefix_always_leaves_each_prompt_a_token_of_its_own():
    from benchmark.models.components.llm import PromptPrefix

    lm = tiny_llama()
    (p,) = seqs(11, [50])
    shared = PromptPrefix(min_tokens=8)
    assert shared.length_for([p, p]) == 49  # identical prompts: the last token still runs
    conts = [seqs(12, [2, 3]), seqs(13, [1])]
    got = shared_prefix_logprobs(lm, [p, p], conts, 0, shared=shared)
    with torch.no_grad():
        for g, cs in zip(got, conts, strict=True):
            assert torch.allclose(g, continuation_logprobs(lm, p, cs, 0), atol=1e-5)
    assert PromptPrefix(min_tokens=8).length_for([p[:5] + [1], p[:5] + [2]]) == 0  # too short to pay
