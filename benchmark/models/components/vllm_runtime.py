"""Scoring the LLM models with vLLM on a CUDA GPU (``precision=vllm``).

vLLM runs the same token ids the torch path would score, and returns prompt log-probabilities:
each sequence ``prompt + continuation`` is sent as a ``vllm.inputs.TokensPrompt`` with
``SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)``, and the log-probability of
every continuation token is read from ``RequestOutput.prompt_logprobs`` (one entry per prompt
position, ``None`` first; each a mapping token id -> ``Logprob``, which always holds the prompt's
own token). The one generated token is ignored.

- TALLRec: P(yes) = softmax over the log-probabilities of the (yes, no) answer tokens after the
  prompt (two sequences per prompt), which equals the softmax over the two logits that
  :meth:`benchmark.models.tallrec.TallRec.p_yes` computes (the log-softmax normaliser cancels).
- LLM rerank: the summed log-probability of each candidate's tokens after the prompt, the
  quantity :func:`benchmark.models.components.llm.shared_prefix_logprobs` returns; the model
  divides by the token count (``length_norm``) exactly as on the torch path.

The engine reads a Hugging Face folder: the backbone (loaded from a GGUF file dequantized to fp32
in the torch path) is saved ONCE in the option's dtype, with its tokenizer, under
``<outputs>/vllm_models/<backbone>-<key>-<dtype>/``; a run's peft LoRA adapter is saved (adapter
weights and config only) under ``<outputs>/vllm_lora/<sha16>/``, keyed by a hash of its weights
and settings, and passed to every request as a ``vllm.lora.request.LoRARequest``. Both folders are
written to a temporary folder and renamed into place, and reused by later runs.

Not through vLLM: item soft tokens (``adapter=clip_proj``, they enter as embeddings, not token
ids) and P5 (constrained generation over an item-id trie); both are refused with one line.

``vllm`` is imported only when a scorer is built: ``pip install vllm`` (Linux, CUDA wheels).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.errors import ConfigError
from benchmark.util import package_version, sha256_text, staged_dir

INSTALL = "pip install vllm; Linux with a CUDA GPU"
TALLREC = "benchmark.models.tallrec.TallRec"
RERANK = "benchmark.models.llm_rerank.LLMRerank"
P5 = "benchmark.models.p5.P5"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's accepted max_lora_rank values
SEED = 0
CHUNK = 512  # sequences per LLM.generate call (progress is reported between calls)
EXPORT_FILE = "llm4rec_export.json"
FORMAT = 1  # layout of the exported folders; part of their keys


def vllm_available() -> bool:
    """Whether ``vllm`` can be imported here (a function, so tests can stand in for it)."""
    return importlib.util.find_spec("vllm") is not None


# ----------------------------------------------------------------------------- config checks


def check_vllm(name: str, model_cfg: Any, adapter_on: bool) -> None:
    """Refuse ``precision=<name>`` (vLLM) for a model it cannot score, with one line.

    Args:
        name: the option's name.
        model_cfg: the run's ``model`` node.
        adapter_on: whether an item adapter (soft tokens) is on.

    Raises:
        ConfigError: P5 (constrained generation), another model without a vLLM scoring path, or
            an item adapter.
    """
    module = model_cfg.get("module") or {}
    target = module.get("_target_")
    model = model_cfg.get("name")
    if target == P5:
        raise ConfigError(
            f"precision={name}: constrained generation for {model} is not supported by the vLLM "
            "backend; use fp16/bnb8/bnb4"
        )
    if target not in (TALLREC, RERANK):
        raise ConfigError(
            f"precision={name}: model {model} has no vLLM scoring path (tallrec and llm_rerank score "
            "through prompt log-probabilities); use fp16/bnb8/bnb4"
        )
    if adapter_on:
        raise ConfigError(
            f"precision={name}: item adapters (soft tokens) cannot run through vLLM, which reads token "
            "ids only; use adapter=none or precision=fp16/bnb8/bnb4"
        )


# ----------------------------------------------------------------------------- exported folders


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[-48:] or "model"


def backbone_key(facts: Mapping[str, Any], dtype: str) -> str:
    """Folder name of an exported backbone: its name, a hash of its source and the dtype.

    The source is the backbone name the model was loaded from and, for a GGUF file, the file's
    sha256 (so another file under the same name gets another folder).
    """
    name = str(facts.get("backbone", "model"))
    source = f"llm4rec-vllm-backbone/{FORMAT}/{name}/{facts.get('file_sha256') or ''}"
    return f"{_slug(Path(name).name or name)}-{sha256_text(source)[:12]}-{dtype}"


def plain_backbone(lm: Any) -> Any:
    """A copy of the backbone without peft's LoRA layers (the base weights as loaded)."""
    if hasattr(lm, "peft_config"):
        return copy.deepcopy(lm).unload()  # unload: the base model, LoRA layers removed, not merged
    return copy.deepcopy(lm)


def export_backbone(
    lm: Any, tokenizer: Any, facts: Mapping[str, Any], dtype: str, cache_dir: Path
) -> tuple[Path, bool]:
    """The backbone as a Hugging Face folder in ``dtype`` (weights + tokenizer), written once.

    Args:
        lm: the model's backbone (a peft model or a plain causal LM).
        tokenizer: its tokenizer.
        facts: the model's LLM facts (``backbone``, ``file_sha256``) for the folder's key.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        cache_dir: the outputs folder; the export goes under ``vllm_models/``.

    Returns:
        (folder, whether it was written now).
    """
    folder = Path(cache_dir) / "vllm_models" / backbone_key(facts, dtype)
    if (folder / EXPORT_FILE).is_file():
        return folder, False
    with staged_dir(folder, exists="keep") as tmp:
        base = plain_backbone(lm).to(DTYPES[dtype])
        base.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {
            "backbone": facts.get("backbone"),
            "file_sha256": facts.get("file_sha256"),
            "dequantized": facts.get("dequantized"),
            "dtype": dtype,
        }
        (tmp / EXPORT_FILE).write_text(json.dumps(source, indent=1) + "\n")
    return folder, True


def lora_state(lm: Any) -> dict[str, torch.Tensor]:
    """The peft LoRA weights of a backbone, by name (empty without LoRA)."""
    return {k: v for k, v in lm.state_dict().items() if ".lora_" in k}


def lora_digest(state: Mapping[str, torch.Tensor], settings: Mapping[str, Any]) -> str:
    """sha256 of a LoRA adapter: layout version, settings, names, shapes and fp32 bytes."""
    h = hashlib.sha256(f"llm4rec-vllm-lora/{FORMAT}/{json.dumps(dict(settings), sort_keys=True)}".encode())
    for name in sorted(state):
        t = state[name].detach().float().cpu().contiguous()
        h.update(f"\n{name}:{list(t.shape)}:".encode())
        h.update(t.numpy().astype("<f4").tobytes())
    return h.hexdigest()


def export_lora(lm: Any, settings: Mapping[str, Any], cache_dir: Path) -> tuple[Path, str, bool]:
    """The backbone's peft adapter saved alone (``save_pretrained`` of the adapter), written once.

    Returns:
        (folder ``<cache_dir>/vllm_lora/<sha16>``, sha256 of the adapter, whether written now).
    """
    digest = lora_digest(lora_state(lm), settings)
    folder = Path(cache_dir) / "vllm_lora" / digest[:16]
    if (folder / "adapter_config.json").is_file():
        return folder, digest, False
    with staged_dir(folder, exists="keep") as tmp:
        lm.save_pretrained(tmp)  # a peft model saves its adapter weights and config only
    return folder, digest, True


def lora_rank_limit(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds rank ``r``."""
    for limit in LORA_RANKS:
        if r <= limit:
            return limit
    raise ConfigError(f"precision=vllm: LoRA rank {r} is above vLLM's largest max_lora_rank {LORA_RANKS[-1]}")


# ----------------------------------------------------------------------------- scoring


def engine_settings(dtype: str, lora_rank: int | None, seed: int = SEED) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM`` besides the folders (recorded as they are)."""
    settings: dict[str, Any] = {
        "dtype": dtype,
        "seed": seed,
        # Every prompt position is computed for its log-probabilities; no KV reuse across requests.
        "enable_prefix_caching": False,
        "enable_lora": lora_rank is not None,
    }
    if lora_rank is not None:
        settings.update(max_lora_rank=lora_rank_limit(lora_rank), max_loras=1)
    return settings


class VllmScorer:
    """Log-probabilities of continuation tokens from a vLLM engine (prompt log-probabilities).

    Args:
        model_dir: an exported backbone folder (weights + tokenizer).
        settings: :func:`engine_settings`.
        lora_dir: an exported peft adapter folder, or None.
        lora_name: the adapter's name in vLLM (its hash).
    """

    def __init__(
        self,
        model_dir: Path,
        settings: Mapping[str, Any],
        lora_dir: Path | None = None,
        lora_name: str = "lora",
    ) -> None:
        try:
            import vllm
            from vllm.inputs import TokensPrompt
            from vllm.lora.request import LoRARequest
        except ImportError:
            raise ConfigError(f"precision=vllm: package 'vllm' is not installed ({INSTALL})") from None
        self.version = package_version("vllm") or str(getattr(vllm, "__version__", "unknown"))
        self._prompt = TokensPrompt
        self.settings = dict(settings)
        self.llm = vllm.LLM(model=str(model_dir), tokenizer=str(model_dir), **self.settings)
        self.params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        self.lora = None if lora_dir is None else LoRARequest(lora_name, 1, str(lora_dir))

    def token_logprobs(
        self,
        seqs: Sequence[Sequence[int]],
        starts: Sequence[int],
        advance: Callable[[int], Any] | None = None,
    ) -> list[np.ndarray]:
        """Log p(token | earlier tokens) of each sequence's tokens from position ``starts[i]`` on.

        Args:
            seqs: N token-id sequences (prompt + continuation).
            starts: N positions where the continuation begins (>= 1: a prompt is never empty).
            advance: called with the number of sequences scored after each engine call.

        Returns:
            N float64 arrays of ``len(seqs[i]) - starts[i]`` log-probabilities.
        """
        out: list[np.ndarray] = []
        for lo in range(0, len(seqs), CHUNK):
            chunk = [list(map(int, s)) for s in seqs[lo : lo + CHUNK]]
            prompts = [self._prompt(prompt_token_ids=s) for s in chunk]
            results = self.llm.generate(prompts, self.params, use_tqdm=False, lora_request=self.lora)
            if len(results) != len(chunk):
                raise ConfigError(f"precision=vllm: {len(chunk)} sequences sent, {len(results)} answered")
            for seq, start, res in zip(chunk, starts[lo : lo + CHUNK], results, strict=True):
                out.append(_read_logprobs(res.prompt_logprobs, seq, int(start)))
            if advance is not None:
                advance(len(chunk))
        return out

    def continuation_logprobs(
        self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]]
    ) -> list[torch.Tensor]:
        """B float32 tensors [C_b]: summed log-probabilities of each prompt's continuations
        (what :func:`benchmark.models.components.llm.shared_prefix_logprobs` returns)."""
        seqs, starts = [], []
        for p, cs in zip(prompts, continuations, strict=True):
            for c in cs:
                if not c:
                    raise ConfigError("precision=vllm: an empty continuation cannot be scored")
                seqs.append([*p, *c])
                starts.append(len(p))
        lps = self.token_logprobs(seqs, starts)
        sums = torch.as_tensor([float(lp.sum()) for lp in lps], dtype=torch.float32)
        return list(sums.split([len(cs) for cs in continuations]))

    def p_yes(
        self,
        seqs: Sequence[Sequence[int]],
        answer_ids: Sequence[int],
        advance: Callable[[int], Any] | None = None,
    ) -> torch.Tensor:
        """[N] P(yes) = softmax over the (yes, no) answer-token log-probabilities after each prompt."""
        yes, no = (int(i) for i in answer_ids)
        out = torch.empty(len(seqs), dtype=torch.float32)
        step = CHUNK // 2
        for lo in range(0, len(seqs), step):
            chunk = seqs[lo : lo + step]
            pairs = [[*s, a] for s in chunk for a in (yes, no)]
            lps = self.token_logprobs(pairs, [len(s) for s in chunk for _ in (yes, no)])
            pair = torch.as_tensor([[lps[2 * j][0], lps[2 * j + 1][0]] for j in range(len(chunk))])  # [n, 2]
            out[lo : lo + len(chunk)] = pair.softmax(dim=-1)[:, 0].float()
            if advance is not None:
                advance(len(chunk))
        return out


def _read_logprobs(prompt_logprobs: Any, seq: list[int], start: int) -> np.ndarray:
    """The log-probabilities of ``seq[start:]`` from a request's ``prompt_logprobs``."""
    if not 1 <= start < len(seq):
        raise ConfigError(
            f"precision=vllm: continuation start {start} outside a sequence of {len(seq)} tokens"
        )
    if prompt_logprobs is None or len(prompt_logprobs) != len(seq):
        got = None if prompt_logprobs is None else len(prompt_logprobs)
        raise ConfigError(f"precision=vllm: prompt_logprobs has {got} positions for {len(seq)} tokens")
    out = np.empty(len(seq) - start, dtype=np.float64)
    for j, pos in enumerate(range(start, len(seq))):
        entry = prompt_logprobs[pos]
        lp = None if entry is None else entry.get(seq[pos])
        if lp is None:
            raise ConfigError(
                f"precision=vllm: no log-probability for prompt token {seq[pos]} at position {pos}"
            )
        out[j] = float(lp.logprob)
    return out


# ----------------------------------------------------------------------------- attaching


def attach_vllm_scorer(model: Any, weights: str, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Make TALLRec or the reranker score through vLLM (``model.scorer``).

    The backbone is exported once in ``weights`` and the run's LoRA adapter (if any) once per
    distinct adapter, under ``cache_dir`` (default ``outputs``). The torch backbone stays for
    tokenizing.

    Args:
        model: a built TALLRec or LLMRerank (with ``lm``, ``tokenizer``, ``lm_facts``, ``scorer``).
        weights: the option's dtype: ``float32``, ``bfloat16`` or ``float16``.
        cache_dir: the run's outputs folder.

    Returns:
        facts for the record: runtime and version, dtype, engine settings, sampling, whether a
        LoRA adapter was used (its sha256, rank, alpha, target modules), exported backbone folder.

    Raises:
        ConfigError: a model without a vLLM scoring path, an item adapter, another dtype.
    """
    if not hasattr(model, "scorer") or not hasattr(model, "lm_facts"):
        raise ConfigError(
            f"precision=vllm: model {type(model).__name__} has no vLLM scoring path (tallrec, llm_rerank)"
        )
    if getattr(model, "adapter", None) is not None:
        raise ConfigError(
            "precision=vllm: item adapters (soft tokens) cannot run through vLLM; use adapter=none"
        )
    if weights not in DTYPES:
        raise ConfigError(f"precision=vllm: weights {weights} (vLLM runs {', '.join(DTYPES)})")
    root = Path(cache_dir or "outputs")
    lm = model.lm
    folder, model.vllm_export_created = export_backbone(lm, model.tokenizer, model.lm_facts, weights, root)
    lora = getattr(model, "lora_config", None) if hasattr(lm, "peft_config") else None
    facts: dict[str, Any] = {"lora_used": lora is not None}
    lora_dir, name = None, "lora"
    if lora is not None:
        settings = {k: lora[k] for k in ("r", "alpha", "target_modules")}
        lora_dir, digest, model.vllm_lora_created = export_lora(lm, settings, root)
        name = f"llm4rec-{digest[:16]}"
        facts["lora"] = {**settings, "sha256": digest, "dtype": "float32 (cast by vLLM to the base dtype)"}
    scorer = VllmScorer(
        folder, engine_settings(weights, None if lora is None else int(lora["r"])), lora_dir, name
    )
    model.scorer = scorer
    return {
        "runtime": f"vllm {scorer.version}",
        "dtype": weights,
        "engine": scorer.settings,
        "sampling": {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0},
        "scored_by": "prompt log-probabilities of the answer/continuation tokens",
        "backbone_export": folder.name,
        **facts,
    }
