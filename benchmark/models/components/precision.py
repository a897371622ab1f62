"""Backbone precision and quantization of the LLM models (``precision=<option>``, configs/precision).

An option is applied to the model a run evaluates, AFTER training or reusing its weights, so
LoRA adapters and item adapters are always trained in the precision the model was built in
(fp32 on CPU) and an inference-only option keeps the run's training key
(:func:`benchmark.results.identity.training_key`): ``precision=int8`` reuses the fp32-trained
weights under ``outputs/models/<training key>`` and only evaluates in int8.

- ``fp32`` / ``bf16`` / ``fp16``: the backbone's floating-point weights cast to that dtype
  (``fp16`` needs CUDA). LoRA weights stay fp32 (peft casts activations to their dtype).
- ``int8``: torch dynamic quantization (``torch.ao``; int8 weights per output channel,
  activations quantized per batch, x86/fbgemm kernels) of the backbone's ``nn.Linear`` layers on
  CPU. LoRA's ``lora_A``/``lora_B`` and the LM head stay fp32.
- ``int8_vnni`` / ``int8_smooth_vnni``: the same with activations quantized to the full 8-bit
  range (``activation_range: full``) instead of fbgemm's default 7 bits (``reduced``), which
  keeps AVX2 kernels from saturating their 16-bit sums; only safe with VNNI instructions
  (``avx512_vnni``, ``avx_vnni`` or ``amx_int8``), so refused with one line on CPUs without them.
- ``int8_smooth``: ``int8`` after SmoothQuant-style smoothing (``smooth_alpha``, calibrated on
  ``calibration_rows`` train prompts: :mod:`benchmark.models.components.smoothing`), with the
  layers named in ``keep`` (``down_proj``, whose inputs carry the largest outliers) left in fp32.
- ``bnb8`` / ``bnb4``: bitsandbytes LLM.int8() / NF4 linear layers on CUDA (same layers kept).
- ``gguf``: TALLRec's P(yes) scored by llama.cpp on the quantized GGUF file itself, LoRA
  converted to a llama.cpp adapter (:mod:`benchmark.models.components.gguf_runtime`); refused
  with one line for other models or where ``llama_cpp`` is not installed.
- ``vllm``: TALLRec's P(yes) and the reranker's candidate log-likelihoods read from vLLM's prompt
  log-probabilities on CUDA, the backbone exported in the option's dtype and LoRA passed as a
  vLLM LoRA request (:mod:`benchmark.models.components.vllm_runtime`); refused with one line
  without CUDA or ``vllm``, for P5 (constrained generation) and with item adapters.

The backbone of a model is its ``lm`` attribute (TALLRec, the reranker, P5); the facts of the
option go into the model's LLM facts (``lm_facts``, or ``backbone_facts`` for P5), which the run
record carries under ``model.llm.precision``.
"""

from __future__ import annotations

import functools
import importlib.util
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.errors import ConfigError

WEIGHTS = ("float32", "bfloat16", "float16", "int8", "nf4", "gguf")
METHODS = ("cast", "torch_dynamic", "bitsandbytes", "llama_cpp", "vllm")
DEVICES = ("any", "cpu", "cuda")
ACTIVATION_RANGES = ("reduced", "full")  # torch_dynamic: 7-bit (fbgemm's reduce_range) or 8-bit activations
CALIBRATED = ("benchmark.models.tallrec.TallRec", "benchmark.models.llm_rerank.LLMRerank")  # define calibrate(rows)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products that accumulate in 32 bits
# Modules never quantized or cast: LoRA's matrices (trained in fp32) and the LM head (kept in
# full precision, as LLM.int8() and most weight-only schemes do; it also carries tied embeddings).
KEEP = ("lora_", "lm_head")
HEADS = ("model", "fp32")  # method cast: the LM head cast with the backbone, or kept in fp32


@dataclass(frozen=True)
class PrecisionConfig:
    """One ``configs/precision`` option, checked.

    Attributes:
        name: the option's name (the run label ends with ``@<name>``).
        weights: what the backbone's linear weights become (:data:`WEIGHTS`).
        method: how (:data:`METHODS`).
        runtime: the library that runs it (for the record).
        device: where it can run: ``any``, ``cpu`` or ``cuda``.
        inference_only: applied at evaluation to the trained weights (training key unchanged).
        package: an extra package the option needs (imported only when it runs), or None.
        note: one line on what the option does, for the record.
        smooth_alpha: SmoothQuant migration strength in [0, 1] before ``torch_dynamic``
            quantization (None: no smoothing); calibration_rows: train prompts it is calibrated on.
        keep: backbone layer names (a path component, e.g. ``down_proj``) left unquantized.
        activation_range: ``torch_dynamic`` activations in 7 bits (``reduced``, fbgemm's safe
            default) or the full 8 bits (``full``: needs a CPU with VNNI).
        head: ``cast`` only: the LM head is cast with the rest (``model``) or kept in fp32 with its
            input upcast (``fp32``), so the answer logits are not rounded to the cast dtype.
    """

    name: str
    weights: str
    method: str
    runtime: str = "torch"
    device: str = "any"
    inference_only: bool = True
    package: str | None = None
    note: str = ""
    smooth_alpha: float | None = None
    calibration_rows: int = 64
    keep: tuple[str, ...] = ()
    activation_range: str = "reduced"
    head: str = "model"

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTS:
            raise ConfigError(f"precision.weights: unknown '{self.weights}' (one of {', '.join(WEIGHTS)})")
        if self.method not in METHODS:
            raise ConfigError(f"precision.method: unknown '{self.method}' (one of {', '.join(METHODS)})")
        if self.device not in DEVICES:
            raise ConfigError(f"precision.device: unknown '{self.device}' (one of {', '.join(DEVICES)})")
        if self.smooth_alpha is not None:
            if self.method != "torch_dynamic":
                raise ConfigError(f"precision.smooth_alpha: smoothing applies to method torch_dynamic, not {self.method}")
            if isinstance(self.smooth_alpha, bool) or not isinstance(self.smooth_alpha, (int, float)) or not 0.0 <= float(self.smooth_alpha) <= 1.0:
                raise ConfigError(f"precision.smooth_alpha: {self.smooth_alpha!r} is not a number in [0, 1]")
            if isinstance(self.calibration_rows, bool) or not isinstance(self.calibration_rows, int) or not 1 <= self.calibration_rows <= 4096:
                raise ConfigError(f"precision.calibration_rows: {self.calibration_rows!r} is not a count in [1, 4096]")
        if self.activation_range not in ACTIVATION_RANGES:
            raise ConfigError(
                f"precision.activation_range: unknown {self.activation_range!r} (one of {', '.join(ACTIVATION_RANGES)})"
            )
        if self.activation_range == "full" and self.method != "torch_dynamic":
            raise ConfigError(f"precision.activation_range: applies to method torch_dynamic, not {self.method}")
        if self.head not in HEADS:
            raise ConfigError(f"precision.head: unknown {self.head!r} (one of {', '.join(HEADS)})")
        if self.head != "model" and self.method != "cast":
            raise ConfigError(f"precision.head: applies to method cast, not {self.method}")
        if not all(isinstance(k, str) and k for k in self.keep):
            raise ConfigError(f"precision.keep: layer names expected, got {list(self.keep)!r}")
        if not self.inference_only:
            raise ConfigError(
                f"precision={self.name}: training in a quantized precision (QLoRA-style) is not "
                "supported; options apply to the trained weights at evaluation (inference_only: true)"
            )


def precision_config(node: Any) -> PrecisionConfig:
    """A :class:`PrecisionConfig` from a config node or mapping (unknown keys are an error)."""
    if isinstance(node, PrecisionConfig):
        return node
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    known = set(PrecisionConfig.__dataclass_fields__)
    unknown = sorted(set(plain) - known)
    if unknown:
        raise ConfigError(f"precision.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    missing = [k for k in ("name", "weights", "method") if k not in plain]
    if missing:
        raise ConfigError(f"precision.{missing[0]}: required")
    if "keep" in plain:
        if not isinstance(plain["keep"], (list, tuple)):
            raise ConfigError(f"precision.keep: a list of layer names expected, got {plain['keep']!r}")
        plain["keep"] = tuple(plain["keep"])
    return PrecisionConfig(**plain)


def cuda_available() -> bool:
    """Whether a CUDA device is visible (a function, so tests can stand in for a GPU)."""
    return torch.cuda.is_available()


def cpu_flags() -> list[str] | None:
    """The CPU's low-precision instruction flags (a function, so tests can stand in for a CPU)."""
    from benchmark.util import cpu_features

    flags = cpu_features()["flags"]
    return None if flags is None else list(flags)


def cpu_refusal(spec: PrecisionConfig) -> str | None:
    """Why this CPU cannot run the option (one line), or None: 8-bit activations need VNNI."""
    if spec.activation_range != "full":
        return None
    flags = cpu_flags()
    if flags and set(flags) & set(VNNI_FLAGS):
        return None
    return (
        f"precision={spec.name}: 8-bit activations need a CPU with VNNI ({', '.join(VNNI_FLAGS)}); "
        f"this one has {'none of them' if flags is not None else 'no /proc/cpuinfo to tell'} "
        f"(use precision={spec.name.replace('_vnni', '')})"
    )


def check_precision(node: Any, model_cfg: Any, adapter: Any = None) -> PrecisionConfig | None:
    """Refuse an option that cannot run here, before any data is read (ConfigError, one line).

    Args:
        node: the run's ``precision`` node (None: the model's own dtype, nothing to check).
        model_cfg: the run's ``model`` node (an LLM model: ``family: llm``).
        adapter: the run's ``adapter`` node (item soft tokens cannot run in llama.cpp).

    Returns:
        the checked option, or None.
    """
    if node is None:
        return None
    spec = precision_config(node)
    if model_cfg.get("family") != "llm":
        raise ConfigError(
            f"precision={spec.name}: model {model_cfg.get('name')} has no LLM backbone "
            "(precision applies to tallrec, llm_rerank and p5)"
        )
    if spec.method == "llama_cpp":
        from benchmark.models.components.adapter import is_active_node
        from benchmark.models.components.gguf_runtime import check_gguf

        check_gguf(spec.name, model_cfg, is_active_node(adapter))
        return spec
    refusal = cpu_refusal(spec)
    if refusal:
        raise ConfigError(refusal)
    if spec.device == "cuda" and not cuda_available():
        raise ConfigError(
            f"precision={spec.name}: needs a CUDA GPU ({spec.runtime}); none is visible here "
            "(CPU options: fp32, bf16, int8)"
        )
    if spec.package and importlib.util.find_spec(spec.package) is None:
        raise ConfigError(
            f"precision={spec.name}: package '{spec.package}' is not installed (pip install {spec.package})"
        )
    target = str((model_cfg.get("module") or {}).get("_target_", ""))
    if spec.smooth_alpha is not None and target not in CALIBRATED:
        raise ConfigError(
            f"precision={spec.name}: smoothing is calibrated on the model's train prompts, which "
            f"only tallrec, tallrec_zeroshot and llm_rerank define (model {model_cfg.get('name')}: use precision=int8)"
        )
    if spec.method == "vllm":  # CUDA and vllm are here: refuse what vLLM cannot score
        from benchmark.models.components.adapter import is_active_node
        from benchmark.models.components.vllm_runtime import check_vllm

        check_vllm(spec.name, model_cfg, is_active_node(adapter))
    return spec


# ----------------------------------------------------------------------------- applying


def _kept(name: str, keep: tuple[str, ...] = ()) -> bool:
    parts = name.split(".")
    return any(part.startswith(KEEP) for part in parts) or any(k in parts for k in keep)


def _linear_layers(lm: nn.Module, keep: tuple[str, ...] = ()) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) of every plain ``nn.Linear`` of the backbone outside :data:`KEEP` and ``keep``."""
    out = []
    for name, parent in lm.named_modules():
        for attr, child in parent.named_children():
            full = f"{name}.{attr}" if name else attr
            if type(child) is nn.Linear and not _kept(full, keep):
                out.append((parent, attr, child))
    return out


def quantize_int8(lm: nn.Module, keep: tuple[str, ...] = (), activation_range: str = "reduced") -> int:
    """Replace the backbone's linear layers by torch dynamic-quantized int8 layers, in place.

    Weights are quantized per output channel (symmetric int8), activations per batch at run
    time, in 7 bits (``reduced``) or 8 bits (``full``); outputs stay fp32. LoRA matrices, the LM
    head and layers named in ``keep`` are left as they are.

    Returns:
        the number of layers quantized.
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    layers = _linear_layers(lm, keep)
    for parent, attr, layer in layers:
        layer.qconfig = per_channel_dynamic_qconfig
        q = DynamicLinear.from_float(layer)
        if activation_range == "full":
            q.__class__ = full_range_linear()
        setattr(parent, attr, q)
    return len(layers)


@functools.cache
def full_range_linear() -> type:
    """torch's dynamic int8 linear class with 8-bit activations (made once, on first use: the
    ``torch.ao`` import is slow and only quantized runs need it)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    class FullRange(DynamicLinear):
        """torch's dynamic int8 linear with activations quantized to the full 8-bit range."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)

        def _get_name(self) -> str:
            return "FullRangeDynamicQuantizedLinear"

    FullRange.__name__ = FullRange.__qualname__ = "FullRangeDynamicLinear"
    return FullRange


def smooth_backbone(model: nn.Module, lm: nn.Module, alpha: float, rows: int) -> dict[str, Any]:
    """Calibrate on ``rows`` of the model's train prompts and fold smoothing factors into ``lm``.

    The model provides ``calibrate(rows)``, which runs that many train-part prompts through its own
    scoring path (never a valid or test row).

    Returns:
        the facts recorded: alpha, calibration rows and their digest, layers smoothed.
    """
    from benchmark.models.components.smoothing import activation_ranges, smooth

    calibrate = getattr(model, "calibrate", None)
    if not callable(calibrate):
        raise ConfigError(f"precision: model {type(model).__name__} has no train prompts to calibrate smoothing on")
    used: dict[str, Any] = {}
    ranges = activation_ranges(lm, lambda: used.update(calibrate(rows)))
    return {"alpha": alpha, "calibration": used, "layers_smoothed": smooth(lm, ranges, alpha)}


class Fp32Head(nn.Module):
    """An LM head in fp32 behind a backbone of another dtype: its input is upcast, so the logits
    (and the P("Yes") read from two of them) are not rounded to bf16's 8-bit mantissa."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(head.weight.detach().to(torch.float32).clone(), requires_grad=False)
        self.bias = None if head.bias is None else nn.Parameter(head.bias.detach().to(torch.float32).clone(), requires_grad=False)
        self.in_features, self.out_features = head.in_features, head.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(torch.float32), self.weight, self.bias)


def fp32_head(lm: nn.Module) -> int:
    """Replace the backbone's ``lm_head`` linear layers by :class:`Fp32Head` copies (untying them
    from the input embeddings), before the rest is cast.

    Returns:
        the number of heads replaced.
    """
    n = 0
    for _, parent in list(lm.named_modules()):
        head = parent._modules.get("lm_head")  # its own child (wrappers forward getattr to the model)
        if isinstance(head, nn.Linear):
            parent.lm_head = Fp32Head(head)
            n += 1
    return n


def cast_backbone(lm: nn.Module, dtype: torch.dtype) -> int:
    """Cast the backbone's floating-point parameters and buffers to ``dtype``, LoRA's and an
    :class:`Fp32Head`'s excepted.

    Returns:
        the number of parameters cast.
    """
    n = 0
    for name, module in lm.named_modules():
        if any(part.startswith("lora_") for part in name.split(".")) or isinstance(module, Fp32Head):
            continue
        for p in module.parameters(recurse=False):
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
                n += 1
        for bname, b in module.named_buffers(recurse=False):
            if b.is_floating_point() and b.dtype != dtype:
                module._buffers[bname] = b.to(dtype)
    return n


def quantize_bnb(lm: nn.Module, weights: str) -> int:
    """Replace the backbone's linear layers by bitsandbytes 8-bit (LLM.int8()) or NF4 layers.

    The weights are quantized when the model moves to the CUDA device (evaluation does that).

    Returns:
        the number of layers replaced.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError(
            "precision: package 'bitsandbytes' is not installed (pip install bitsandbytes)"
        ) from None
    layers = _linear_layers(lm)
    for parent, attr, layer in layers:
        bias = layer.bias is not None
        if weights == "int8":
            new = bnb.nn.Linear8bitLt(
                layer.in_features, layer.out_features, bias, has_fp16_weights=False, threshold=6.0
            )
            new.weight = bnb.nn.Int8Params(
                layer.weight.data.half(), requires_grad=False, has_fp16_weights=False
            )
        else:
            new = bnb.nn.Linear4bit(
                layer.in_features, layer.out_features, bias, compute_dtype=torch.bfloat16, quant_type="nf4"
            )
            new.weight = bnb.nn.Params4bit(layer.weight.data, requires_grad=False, quant_type="nf4")
        if bias:
            new.bias = nn.Parameter(layer.bias.data.clone(), requires_grad=False)
        setattr(parent, attr, new)
    return len(layers)


def _facts_of(model: nn.Module) -> dict[str, Any] | None:
    for attr in ("lm_facts", "backbone_facts"):
        facts = getattr(model, attr, None)
        if isinstance(facts, dict):
            return facts
    return None


def apply_precision(model: nn.Module, node: Any, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Put the model's backbone (``model.lm``) in the option's precision, in place.

    Args:
        model: a built (and trained or reused) LLM model with its backbone in ``lm``.
        node: a ``precision`` config node, mapping or :class:`PrecisionConfig`.
        cache_dir: the run's outputs folder; ``gguf`` caches converted LoRA adapters under it
            (default ``outputs``).

    Returns:
        the facts recorded (also added to the model's LLM facts as ``precision``): name, weights,
        method, runtime and version, layers quantized or parameters cast, LoRA layers kept in
        fp32, seconds taken.

    Raises:
        ConfigError: a model without an ``lm`` backbone, or an option that cannot run here.
    """
    spec = precision_config(node) if not isinstance(node, PrecisionConfig) else node
    lm = getattr(model, "lm", None)
    if not isinstance(lm, nn.Module):
        raise ConfigError(f"precision={spec.name}: model {type(model).__name__} has no LLM backbone (lm)")
    t0 = time.perf_counter()
    facts: dict[str, Any] = {
        "name": spec.name,
        "weights": spec.weights,
        "method": spec.method,
        "runtime": f"torch {torch.__version__}",
        "inference_only": spec.inference_only,
    }
    if spec.method == "llama_cpp":  # scoring leaves torch: llama.cpp on the GGUF file
        from benchmark.models.components.gguf_runtime import attach_gguf_scorer

        facts.update(attach_gguf_scorer(model, cache_dir))
    elif spec.method == "vllm":  # scoring leaves torch: vLLM's prompt log-probabilities on CUDA
        from benchmark.models.components.vllm_runtime import attach_vllm_scorer

        facts.update(attach_vllm_scorer(model, spec.weights, cache_dir))
    elif spec.method == "torch_dynamic":
        facts["engine"] = torch.backends.quantized.engine
        if spec.smooth_alpha is not None:
            facts["smoothing"] = smooth_backbone(model, lm, float(spec.smooth_alpha), spec.calibration_rows)
        facts["linear_quantized"] = quantize_int8(lm, spec.keep, spec.activation_range)
        if spec.activation_range != "reduced":  # records made before the option keep their facts
            facts["activation_range"] = spec.activation_range
        if spec.keep:
            facts["kept_fp32"] = {"names": list(spec.keep), "layers": len(_linear_layers(lm))}  # the plain ones left
    elif spec.method == "cast":
        if spec.head == "fp32":  # records made before the option keep their facts
            facts["head"] = {"dtype": "float32", "replaced": fp32_head(lm)}
        facts["params_cast"] = cast_backbone(lm, getattr(torch, spec.weights))
    elif spec.method == "bitsandbytes":
        facts["linear_quantized"] = quantize_bnb(lm, spec.weights)
        from benchmark.util import package_version

        facts["runtime"] = f"bitsandbytes {package_version('bitsandbytes')}"
    else:
        raise ConfigError(f"precision={spec.name}: method {spec.method} cannot be applied to a torch model")
    if spec.method not in ("llama_cpp", "vllm"):  # runtimes outside torch hold LoRA themselves
        facts["lora_layers_fp32"] = sum(
            1
            for n, m in lm.named_modules()
            if type(m) is nn.Linear and ".lora_" in f".{n}" and m.weight.dtype == torch.float32
        )
    facts["seconds"] = round(time.perf_counter() - t0, 3)
    own = _facts_of(model)
    if own is not None:
        own["precision"] = {k: v for k, v in facts.items() if k != "seconds"}
        if spec.method in ("cast", "vllm"):
            own["dtype"] = spec.weights
    return facts


def describe(node: Mapping[str, Any] | None) -> str:
    """``int8 (torch_dynamic)`` or ``model dtype`` for the default: a short label for logs."""
    if node is None:
        return "model dtype"
    return f"{node.get('name')} ({node.get('method')})"
