"""Backbones of P5: a T5 trained from scratch, or a pretrained seq2seq or causal LM, with item-id tokens.

- :data:`PRESETS` (``t5-small-scratch``, ``t5-tiny-scratch``): a T5 of that size with random weights
  and a word-level vocabulary made from every fixed text the model reads (prompts, user ids, item
  identifiers); recorded as ``init: random``.
- Any Hugging Face seq2seq or causal LM by hub name or local folder, an offline model name
  (``smollm2-135m-instruct``) or a ``.gguf`` file (:func:`benchmark.models.components.llm.load_causal_lm`).
  New id tokens are added to the tokenizer; embedding rows are added when needed and new rows are
  drawn from N(mean, diag var) of the existing rows (seeded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import ConfigError

# T5 size presets trained from scratch (t5-small: Raffel et al. 2020; tiny: for tests).
PRESETS: dict[str, dict[str, Any]] = {
    "t5-small-scratch": {
        "d_model": 512,
        "d_ff": 2048,
        "d_kv": 64,
        "num_layers": 6,
        "num_decoder_layers": 6,
        "num_heads": 8,
        "dropout_rate": 0.1,
    },
    "t5-tiny-scratch": {
        "d_model": 64,
        "d_ff": 128,
        "d_kv": 16,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 4,
        "dropout_rate": 0.0,
    },
}


@dataclass
class Backbone:
    """A language model, its tokenizer, ``kind`` (``seq2seq`` or ``causal``) and record facts."""

    model: Any
    tokenizer: Any
    kind: str
    facts: dict[str, Any] = field(default_factory=dict)


def scratch_tokenizer(corpus: Sequence[str]) -> Any:
    """A word-level tokenizer over ``corpus`` (digits split one by one), T5 special ids.

    ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, then the words of the corpus in sorted order.
    Words are split on whitespace and punctuation; numbers become one token per digit, so
    numeric item ids share prefixes as they do with P5's SentencePiece tokenizer.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    words = sorted({w for text in corpus for w, _ in pre.pre_tokenize_str(text)} | set("0123456789"))
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def scratch_t5(preset: str, vocab_size: int) -> Any:
    """A randomly initialised ``T5ForConditionalGeneration`` of a :data:`PRESETS` size."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(
        vocab_size=vocab_size,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        feed_forward_proj="relu",
        tie_word_embeddings=True,
        **PRESETS[preset],
    )
    return T5ForConditionalGeneration(cfg)


def add_item_tokens(model: Any, tokenizer: Any, tokens: Sequence[str], seed: int) -> dict[str, Any]:
    """Add id tokens to a pretrained model's tokenizer; resize and initialise the embedding rows.

    New rows (input embeddings, and output embeddings when untied) are drawn from
    N(mean, diag var) of the rows of the tokens that existed before, with a seeded generator;
    rows that already existed beyond the tokenizer (e.g. T5's padded vocabulary) are set the same way.

    Returns:
        facts: tokens added, their id range, vocabulary and embedding sizes, the init rule.
    """
    before = len(tokenizer)
    added = tokenizer.add_tokens(list(tokens))
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    emb = model.get_input_embeddings()
    rows_before = int(emb.weight.shape[0])
    if len(tokenizer) > rows_before:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        emb = model.get_input_embeddings()
    new = torch.as_tensor(sorted({i for i in ids if i >= before}), dtype=torch.long)
    layers = [emb]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != emb.weight.data_ptr():
        layers.append(out)
    g = torch.Generator().manual_seed(int(seed) % (2**63))
    with torch.no_grad():
        for layer in layers:
            ref = layer.weight[:before].float()  # [V_old, d]
            mean, std = ref.mean(0), ref.std(0)
            draw = torch.randn(len(new), ref.shape[1], generator=g)
            layer.weight[new] = (mean + std * draw).to(layer.weight.dtype)
    return {
        "added": int(added),
        "first_id": int(new.min()) if len(new) else None,
        "vocab_before": before,
        "vocab_after": len(tokenizer),
        "embedding_rows_before": rows_before,
        "embedding_rows_after": int(model.get_input_embeddings().weight.shape[0]),
        "init": "N(mean, diag var) of existing rows, seeded",
    }


def load_backbone(
    name: str,
    corpus: Sequence[str],
    new_tokens: Sequence[str],
    dtype: str,
    accelerator: str,
    cache_dir: str | None,
    seed: int,
) -> Backbone:
    """Build or load a backbone and give its tokenizer the item-id tokens.

    Args:
        name: a :data:`PRESETS` name, an offline model name (``smollm2-135m-instruct``), a ``.gguf``
            file, a local model folder or a hub name.
        corpus: every fixed text the model will read (vocabulary of a from-scratch tokenizer).
        new_tokens: item-id tokens to add.
        dtype: weights dtype of pretrained models (``auto``, ``float32``, ``bfloat16``, ...).
        accelerator: the trainer accelerator (resolves ``dtype=auto``).
        cache_dir: cache root of dequantized GGUF models.
        seed: seed of the new embedding rows.
    """
    if name in PRESETS:
        return scratch_backbone(name, corpus, new_tokens)
    bb = pretrained_backbone(name, dtype, accelerator, cache_dir)
    if bb.tokenizer.pad_token_id is None:
        bb.tokenizer.pad_token = bb.tokenizer.eos_token
    bb.facts["init"] = "pretrained"
    bb.facts["new_tokens"] = (
        add_item_tokens(bb.model, bb.tokenizer, new_tokens, seed) if new_tokens else {"added": 0}
    )
    bb.model.train()
    return bb


def scratch_backbone(preset: str, corpus: Sequence[str], new_tokens: Sequence[str]) -> Backbone:
    """A :data:`PRESETS` T5 with random weights and a word-level tokenizer over ``corpus`` + ``new_tokens``."""
    tok = scratch_tokenizer(corpus)
    added = tok.add_tokens(list(new_tokens))
    model = scratch_t5(preset, len(tok))
    facts = {
        "backbone": preset,
        "init": "random (trained from scratch)",
        "source": "preset",
        "preset": PRESETS[preset],
        "tokenizer": "word-level from prompts, user ids and item ids (digits split)",
        "vocab": len(tok),
        "new_tokens": {"added": int(added), "init": "random (whole model from scratch)"},
        "dequantized": False,
    }
    return Backbone(model, tok, "seq2seq", facts)


def pretrained_backbone(name: str, dtype: str, accelerator: str, cache_dir: str | None) -> Backbone:
    """A pretrained LM as it is (no tokens added): causal when it is an offline model, a ``.gguf``
    file or a decoder-only config, else seq2seq.

    Raises:
        ConfigError: the model's config cannot be loaded (one line, with the presets).
    """
    from benchmark.models.components.hub import hub_load_kwargs, load_failure, model_load_kwargs
    from benchmark.models.components.llm import OFFLINE_MODELS, load_causal_lm, resolve_dtype

    path = Path(name)
    causal = name in OFFLINE_MODELS or path.suffix == ".gguf"
    # a hub name is read from the local cache alone when the hub is out of reach
    kw = {"local_files_only": True} if path.is_dir() else ({} if causal else hub_load_kwargs())
    if not causal:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(name, **kw)
        except (OSError, ValueError) as e:
            why = load_failure(e, hub_name=not path.is_dir())
            raise ConfigError(f"model backbone: cannot load '{name}' ({why}); presets: {', '.join(PRESETS)}") from None
        causal = not getattr(config, "is_encoder_decoder", False)
    if causal:
        lm = load_causal_lm(name, dtype, accelerator, cache_dir, local_files_only=path.is_dir())
        return Backbone(lm.model, lm.tokenizer, "causal", dict(lm.facts))
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype, accelerator)
    model = AutoModelForSeq2SeqLM.from_pretrained(name, dtype=torch_dtype, **model_load_kwargs(kw))
    tok = AutoTokenizer.from_pretrained(name, **kw)
    facts = {
        "backbone": name,
        "source": "local" if path.is_dir() else "hub",
        "dtype": str(torch_dtype).removeprefix("torch."),
        "dequantized": False,
    }
    return Backbone(model, tok, "seq2seq", facts)
