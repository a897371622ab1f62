"""Scoring a GGUF backbone with llama.cpp, without dequantizing (``precision=gguf``).

TALLRec's P(yes) read from llama.cpp (``llama-cpp-python``) running the quantized GGUF file the
model was loaded from: the prompts are tokenized by the model's Hugging Face tokenizer and the
SAME token ids are fed to llama.cpp, which returns the logits at the last prompt position;
P(yes) is the softmax over the (yes, no) answer-token logits, as
:meth:`benchmark.models.tallrec.TallRec.p_yes` computes it in torch. One sequence at a time,
``n_threads`` 1, a fixed context (:data:`N_CTX`, or the model's ``max_length`` when longer) and a
fixed seed.

LoRA: the run's fp32-trained peft adapters are converted to a llama.cpp LoRA adapter file
(GGUF, ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``) applied on
the quantized base at scale 1 (llama.cpp scales by alpha / r, as peft does). Tensors are named
after the base tensors they adapt (``blk.<N>.attn_q.weight.lora_a`` / ``.lora_b``); ``lora_a``
holds peft's ``lora_A`` [r, in] and ``lora_b`` its ``lora_B`` [out, r] (GGUF lists dimensions
innermost first, so llama.cpp sees them as [in, r] and [r, out]). For the ``llama``
architecture the GGUF file stores ``attn_q`` / ``attn_k`` with the rows of each head reordered
for llama.cpp's rotary embedding, so the rows of ``lora_B`` of ``q_proj`` / ``k_proj`` are
reordered the same way (:func:`rope_rows`). Converted files are cached under
``<outputs>/gguf_lora/<sha16>.gguf``, keyed by a hash of the adapter weights and settings.

``llama_cpp`` is imported only when a scorer is built: ``pip install llama-cpp-python==0.3.36``
(or the project's ``gguf`` extra) builds it from source (gcc, g++, cmake; no wheel on the package
index for this platform).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import struct
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.errors import ConfigError
from benchmark.util import package_version, sha256_file

N_CTX = 2048
SEED = 0
THREADS = 1
DISTRIBUTION = "llama-cpp-python"
PIN = "0.3.36"
INSTALL = (
    f"pip install '.[gguf]' or pip install {DISTRIBUTION}=={PIN}; builds from source with gcc, g++, cmake"
)
FORMAT = 1  # version of the converted adapter layout; part of its cache key
TALLREC = "benchmark.models.tallrec.TallRec"
# peft target module -> (GGUF base tensor, head-count key whose rows are reordered or None)
TARGETS: dict[str, tuple[str, str | None]] = {
    "q_proj": ("attn_q", "attention.head_count"),
    "k_proj": ("attn_k", "attention.head_count_kv"),
    "v_proj": ("attn_v", None),
    "o_proj": ("attn_output", None),
    "gate_proj": ("ffn_gate", None),
    "up_proj": ("ffn_up", None),
    "down_proj": ("ffn_down", None),
}
ROPE_REORDERED = ("llama",)  # architectures whose GGUF q/k rows are reordered per head
LORA_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


def llama_cpp_available() -> bool:
    """Whether ``llama_cpp`` can be imported here (a function, so tests can stand in for it)."""
    return importlib.util.find_spec("llama_cpp") is not None


def runtime_label() -> str:
    """``llama.cpp (llama-cpp-python 0.3.36)``: what the run record names as the runtime."""
    return f"llama.cpp ({DISTRIBUTION} {package_version(DISTRIBUTION)})"


# ----------------------------------------------------------------------------- config checks


def gguf_backbone_path(backbone: str) -> Path:
    """The GGUF file of a backbone: an offline model package's file or a ``.gguf`` path.

    Raises:
        ConfigError: the backbone is not a GGUF file (a hub name or a model folder).
    """
    from benchmark.models.components.llm import OFFLINE_MODELS, offline_gguf_path

    if backbone in OFFLINE_MODELS:
        return offline_gguf_path(OFFLINE_MODELS[backbone])
    path = Path(backbone)
    if path.suffix != ".gguf":
        raise ConfigError(
            f"precision=gguf: backbone '{backbone}' is not a GGUF file (llama.cpp runs GGUF backbones "
            "only: an offline model name or a .gguf path)"
        )
    if not path.is_file():
        raise ConfigError(f"precision=gguf: GGUF file {path} not found")
    return path


def check_gguf(name: str, model_cfg: Any, adapter_on: bool) -> None:
    """Refuse ``precision=<name>`` (llama.cpp) where it cannot run, with one line.

    Args:
        name: the option's name.
        model_cfg: the run's ``model`` node.
        adapter_on: whether an item adapter (soft tokens) is on.

    Raises:
        ConfigError: a model other than TALLRec, an item adapter, a backbone that is not a GGUF
            file, or ``llama_cpp`` not installed.
    """
    module = model_cfg.get("module") or {}
    if module.get("_target_") != TALLREC:
        raise ConfigError(
            f"precision={name}: model {model_cfg.get('name')} has no llama.cpp scoring backend "
            "(only tallrec scores through llama.cpp); use precision=fp32 or int8"
        )
    if adapter_on:
        raise ConfigError(
            f"precision={name}: item adapters (soft tokens) cannot run in llama.cpp; use adapter=none"
        )
    gguf_backbone_path(str(module.get("backbone", "")))
    if not llama_cpp_available():
        raise ConfigError(f"precision={name}: llama-cpp-python is not installed ({INSTALL})")


# ----------------------------------------------------------------------------- GGUF metadata

# GGUF value types (the format's numbering) -> struct format of a scalar; 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class _Cursor:
    """Little-endian reads over a GGUF file's bytes (its metadata section only is walked)."""

    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def read(self, fmt: str) -> Any:
        value = struct.unpack_from("<" + fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize("<" + fmt)
        return value

    def string(self) -> str:
        n = self.read("Q")
        self.pos += n
        return bytes(self.data[self.pos - n : self.pos]).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind == 8:
            return self.string()
        if kind == 9:
            item, n = self.read("I"), self.read("Q")
            return [self.value(item) for _ in range(n)]
        return self.read(_SCALARS[kind])


def read_gguf_metadata(path: Path) -> tuple[dict[str, Any], dict[str, tuple[list[int], int, int]]]:
    """The key-value metadata and tensor directory of a GGUF file, read directly.

    (``gguf.GGUFReader`` builds a numpy view per array element: minutes for a 49k-token
    vocabulary on a loaded CPU; this walks the same layout in about a second.)

    Returns:
        (metadata by key, tensors by name: (dims innermost first, GGML type, absolute data offset)).

    Raises:
        ConfigError: not a GGUF file.
    """
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        c = _Cursor(memoryview(mm))
        try:
            if bytes(c.data[:4]) != b"GGUF":
                raise ConfigError(f"precision=gguf: {Path(path).name} is not a GGUF file")
            c.pos = 4
            version, n_tensors, n_kv = c.read("I"), c.read("Q"), c.read("Q")
            meta: dict[str, Any] = {"GGUF.version": version}
            for _ in range(n_kv):
                key = c.string()
                meta[key] = c.value(c.read("I"))
            infos = []
            for _ in range(n_tensors):
                name = c.string()
                dims = [c.read("Q") for _ in range(c.read("I"))]
                infos.append((name, dims, c.read("I"), c.read("Q")))
            align = int(meta.get("general.alignment", 32))
            if align <= 0:
                raise ValueError("general.alignment must be positive")
            base = -(-c.pos // align) * align
        except (struct.error, KeyError, ValueError, TypeError, RecursionError) as e:
            raise ConfigError(
                f"precision=gguf: {Path(path).name} is a malformed GGUF file ({type(e).__name__} in its header)"
            ) from None
        finally:
            c.data.release()
    return meta, {name: (dims, kind, base + off) for name, dims, kind, off in infos}


def gguf_header(path: Path) -> dict[str, Any]:
    """Architecture, head counts, block count, vocabulary and quantization type of a GGUF model."""
    import gguf

    meta, _ = read_gguf_metadata(path)
    arch = meta.get("general.architecture")
    file_type = meta.get("general.file_type")
    return {
        "arch": arch,
        "attention.head_count": meta.get(f"{arch}.attention.head_count"),
        "attention.head_count_kv": meta.get(f"{arch}.attention.head_count_kv"),
        "block_count": meta.get(f"{arch}.block_count"),
        "tokens": meta.get("tokenizer.ggml.tokens") or [],
        "quantization": (
            None
            if file_type is None
            else gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        ),
    }


def check_vocab(
    header: Mapping[str, Any], tokenizer: Any, ids: Sequence[int], name: str = "GGUF"
) -> dict[str, str]:
    """Check the GGUF vocabulary names the same tokens as the Hugging Face tokenizer at ``ids``.

    Args:
        header: :func:`gguf_header` of the file (its ``tokens``).
        tokenizer: the model's Hugging Face tokenizer.
        ids: token ids to compare (the answer tokens).
        name: the file's name, for messages.

    Returns:
        {token id: token text} of the checked ids.

    Raises:
        ConfigError: a vocabulary size or token that differs.
    """
    tokens = header["tokens"]
    if len(tokens) != len(tokenizer):
        raise ConfigError(f"precision=gguf: {name} has {len(tokens)} tokens, the tokenizer {len(tokenizer)}")
    out = {}
    for i in ids:
        mine, theirs = tokens[int(i)], tokenizer.convert_ids_to_tokens(int(i))
        if mine != theirs:
            raise ConfigError(
                f"precision=gguf: token {i} is {mine!r} in {name} but {theirs!r} in the tokenizer"
            )
        out[str(int(i))] = mine
    return out


# ----------------------------------------------------------------------------- LoRA -> GGUF


def rope_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """[out, k] -> [out, k]: rows reordered per head as the GGUF ``llama`` q/k weights are.

    Within each head the rows are split into two halves [h0, h1] and interleaved
    (h0[0], h1[0], h0[1], h1[1], ...), llama.cpp's rotary layout.
    """
    out = rows.shape[0]
    if out % (2 * n_head):
        raise ConfigError(f"precision=gguf: {out} rows do not split into {n_head} heads of even size")
    return rows.reshape(n_head, 2, out // n_head // 2, -1).swapaxes(1, 2).reshape(rows.shape)


def _lora_pairs(state: Mapping[str, torch.Tensor]) -> dict[tuple[int, str], dict[str, np.ndarray]]:
    """(layer, target module) -> {"A": [r, in], "B": [out, r]} from a peft state dict."""
    pairs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in state.items():
        m = LORA_KEY.search(key)
        if m is None:
            if "lora_" in key:
                raise ConfigError(f"precision=gguf: adapter weight {key} is not a LoRA matrix of a layer")
            continue
        layer, module, which = int(m.group(1)), m.group(2), m.group(3)
        if module not in TARGETS:
            raise ConfigError(
                f"precision=gguf: LoRA on {module} cannot be converted (targets: {', '.join(TARGETS)})"
            )
        pairs.setdefault((layer, module), {})[which] = value.detach().float().cpu().numpy()
    for (layer, module), ab in pairs.items():
        if set(ab) != {"A", "B"} or ab["A"].shape[0] != ab["B"].shape[1]:
            raise ConfigError(
                f"precision=gguf: layer {layer} {module} needs lora_A [r, in] and lora_B [out, r]"
            )
    return pairs


def lora_tensors(state: Mapping[str, torch.Tensor], header: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The llama.cpp adapter tensors of a peft LoRA state dict, by GGUF name, in name order.

    Args:
        state: peft weights (``...layers.<N>.self_attn.q_proj.lora_A[.<adapter>].weight``).
        header: :func:`gguf_header` of the base file (architecture, head counts, block count).

    Returns:
        ``blk.<N>.<tensor>.weight.lora_a`` -> [r, in] and ``...lora_b`` -> [out, r] float32.
    """
    pairs = _lora_pairs(state)
    if not pairs:
        raise ConfigError("precision=gguf: the model's state dict holds no LoRA weights")
    out: dict[str, np.ndarray] = {}
    for (layer, module), ab in sorted(pairs.items()):
        if header.get("block_count") is not None and layer >= header["block_count"]:
            raise ConfigError(f"precision=gguf: LoRA layer {layer} beyond the base's {header['block_count']}")
        tensor, heads_key = TARGETS[module]
        b = ab["B"]
        if heads_key is not None and header["arch"] in ROPE_REORDERED:
            b = rope_rows(b, int(header[heads_key]))
        name = f"blk.{layer}.{tensor}.weight"
        out[f"{name}.lora_a"] = np.ascontiguousarray(ab["A"], dtype=np.float32)
        out[f"{name}.lora_b"] = np.ascontiguousarray(b, dtype=np.float32)
    return out


def adapter_digest(tensors: Mapping[str, np.ndarray], alpha: float, arch: str) -> str:
    """sha256 of the converted adapter: layout version, architecture, alpha, names, shapes, bytes."""
    h = hashlib.sha256(f"llm4rec-gguf-lora/{FORMAT}/{arch}/{float(alpha)!r}".encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\n{name}:{list(t.shape)}:".encode())
        h.update(np.ascontiguousarray(t, dtype="<f4").tobytes())
    return h.hexdigest()


def write_lora_gguf(path: Path, tensors: Mapping[str, np.ndarray], alpha: float, arch: str) -> Path:
    """Write a llama.cpp LoRA adapter file atomically (temporary file, then rename)."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        for name, t in tensors.items():
            writer.add_tensor(name, t)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cached_lora_gguf(
    state: Mapping[str, torch.Tensor], alpha: float, header: Mapping[str, Any], cache_dir: Path
) -> tuple[Path, str, int, bool]:
    """The converted adapter file under ``<cache_dir>/gguf_lora/``, written on first use.

    Returns:
        (path, sha256 of the adapter content, number of adapted base tensors, whether written now).
    """
    tensors = lora_tensors(state, header)
    digest = adapter_digest(tensors, alpha, header["arch"])
    path = Path(cache_dir) / "gguf_lora" / f"{digest[:16]}.gguf"
    created = not path.is_file()
    if created:
        write_lora_gguf(path, tensors, alpha, header["arch"])
    return path, digest, len(tensors) // 2, created


# ----------------------------------------------------------------------------- scoring


class LlamaCppScorer:
    """Last-position logits of token-id prompts from llama.cpp on a GGUF file (CPU).

    Args:
        model_path: the GGUF backbone.
        lora_path: a llama.cpp LoRA adapter file, or None.
        n_ctx: context length (prompts must fit).
        n_threads: CPU threads for llama.cpp.
        seed: the context's seed (scoring draws nothing; fixed for the record).
    """

    def __init__(
        self,
        model_path: Path,
        lora_path: Path | None = None,
        n_ctx: int = N_CTX,
        n_threads: int = THREADS,
        seed: int = SEED,
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ConfigError(f"precision=gguf: llama-cpp-python is not installed ({INSTALL})") from None
        self.n_ctx = int(n_ctx)
        self.llm = Llama(
            model_path=str(model_path),
            lora_path=None if lora_path is None else str(lora_path),
            n_ctx=self.n_ctx,
            n_batch=self.n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            seed=seed,
            logits_all=False,
            verbose=False,
        )
        self.n_vocab = self.llm.n_vocab()

    def last_logits(self, ids: Sequence[int]) -> np.ndarray:
        """[V] float32 logits after the prompt ``ids`` (a fresh context for every prompt)."""
        import llama_cpp

        if not ids or len(ids) > self.n_ctx:
            raise ConfigError(
                f"precision=gguf: a prompt of {len(ids)} tokens does not fit n_ctx={self.n_ctx}"
            )
        self.llm.reset()
        self.llm.eval(list(map(int, ids)))
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32, copy=True)

    def p_yes(
        self,
        seqs: Sequence[Sequence[int]],
        answer_ids: Sequence[int],
        advance: Callable[[int], Any] | None = None,
    ) -> torch.Tensor:
        """[N] P(yes) = softmax over the (yes, no) answer-token logits of each prompt, in order."""
        ids = [int(i) for i in answer_ids]
        out = torch.empty(len(seqs), dtype=torch.float32)
        for r, seq in enumerate(seqs):
            pair = torch.as_tensor(self.last_logits(seq)[ids])  # [2] (yes, no)
            out[r] = pair.softmax(dim=-1)[0]
            if advance is not None:
                advance(1)
        return out


def attach_gguf_scorer(model: Any, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Make a TALLRec model score through llama.cpp on its GGUF backbone (``model.scorer``).

    The model's LoRA adapters (if any) are converted once and cached under
    ``<cache_dir>/gguf_lora`` (default ``outputs``). The torch backbone stays for tokenizing.

    Returns:
        facts for the record: runtime, GGUF file and sha256, quantization, n_ctx, threads, seed,
        whether LoRA was converted (and the converted adapter's sha256), checked answer tokens.

    Raises:
        ConfigError: a model without a llama.cpp path, an item adapter, a non-GGUF backbone.
    """
    if not hasattr(model, "scorer") or not hasattr(model, "answer_ids"):
        raise ConfigError(
            f"precision=gguf: model {type(model).__name__} has no llama.cpp scoring backend (only tallrec)"
        )
    if getattr(model, "adapter", None) is not None:
        raise ConfigError("precision=gguf: item adapters (soft tokens) cannot run in llama.cpp")
    path = gguf_backbone_path(model.backbone_name)
    header = gguf_header(path)
    answers = check_vocab(header, model.tokenizer, model.answer_ids, path.name)
    facts: dict[str, Any] = {
        "runtime": runtime_label(),
        "file": path.name,
        "file_sha256": sha256_file(path),
        "quantization": header["quantization"],
        "dequantized": False,
        "n_ctx": max(N_CTX, int(model.max_length)),
        "n_threads": THREADS,
        "seed": SEED,
        "answer_tokens_checked": answers,
        "lora_converted": False,
    }
    lora_path = None
    if model.lora_config is not None:
        state = {k: v for k, v in model.state_dict().items() if ".lora_" in k}
        lora_path, digest, n, _ = cached_lora_gguf(
            state, model.lora_config["alpha"], header, Path(cache_dir or "outputs")
        )
        facts.update(lora_converted=True, lora_gguf_sha256=digest, lora_tensors_adapted=n)
    model.scorer = LlamaCppScorer(path, lora_path, facts["n_ctx"])
    return facts
