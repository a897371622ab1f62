"""precision=vllm: TALLRec's P(yes) and the reranker's candidate scores read from vLLM's prompt
log-probabilities equal the torch path's; the exported backbone and LoRA folders are keyed and
reused; what vLLM cannot run (no CUDA, no vllm, P5, item soft tokens) is refused with one line.

Without a GPU, ``vllm`` is a stand-in registered in ``sys.modules`` that implements only the
documented API the runtime uses (``vllm.LLM(model=, tokenizer=, dtype=, seed=, enable_lora=,
max_lora_rank=, max_loras=, enable_prefix_caching=)``, ``LLM.generate(prompts, sampling_params,
use_tqdm=, lora_request=)`` returning request outputs whose ``prompt_logprobs`` hold, per prompt
position after the first, token id -> ``Logprob(logprob=...)``; ``SamplingParams``,
``vllm.inputs.TokensPrompt``, ``vllm.lora.request.LoRARequest(name, int_id, path)``), computed by
a real torch causal LM loaded from the exported folder (and the exported peft adapter). The
``gpu``-marked test runs the real vllm.
"""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from benchmark.config import CONFIG_DIR, SplitConfig
from benchmark.data.atomic import read_atomic
from benchmark.data.splits import build_split
from benchmark.errors import ConfigError
from benchmark.models.components import vllm_runtime as vr
from benchmark.models.components.precision import PrecisionConfig, apply_precision, check_precision
from benchmark.models.llm_rerank import LLMRerank
from benchmark.models.tallrec import TallRec
from tests.conftest import random_rows, write_atomic
from tests.unit.test_tallrec import fake_first_stage, load_prompt, make_tiny_lm, template_words

TOL = 1e-5
STAND_IN_VERSION = "0.0+stand-in"
# The vllm option with fp32 weights: the stand-in then runs the very weights of the torch path.
VLLM_FP32 = PrecisionConfig(
    name="vllm", weights="float32", method="vllm", runtime="vllm", device="cuda", package="vllm"
)


def option(name: str):
    return OmegaConf.load(CONFIG_DIR / "precision" / f"{name}.yaml")


# ----------------------------------------------------------------------------- the stand-in


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    token_ids: list[int]


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None]
    outputs: list[CompletionOutput] = field(default_factory=list)


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]


class SamplingParams:
    def __init__(
        self, *, max_tokens: int | None = 16, temperature: float = 1.0, prompt_logprobs: int | None = None
    ):
        self.max_tokens, self.temperature, self.prompt_logprobs = max_tokens, temperature, prompt_logprobs


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class LLM:
    """vllm.LLM over a Hugging Face folder, scoring with transformers (+ peft for LoRA requests)."""

    made: list[LLM] = []

    def __init__(
        self,
        model: str,
        tokenizer: str | None = None,
        dtype: str = "auto",
        seed: int = 0,
        enable_prefix_caching: bool | None = None,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        max_loras: int = 1,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        assert max_lora_rank in vr.LORA_RANKS and max_loras >= 1 and isinstance(seed, int)
        self.path, self.dtype = model, getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=self.dtype).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.enable_lora, self.max_lora_rank = enable_lora, max_lora_rank
        self.loras: dict[int, Any] = {}
        self.requests = 0
        LLM.made.append(self)

    def _net(self, lora: LoRARequest | None):
        if lora is None:
            return self.model
        assert self.enable_lora, "a LoRA request to an engine built without enable_lora"
        if lora.lora_int_id not in self.loras:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            cfg = json.loads((Path(lora.lora_path) / "adapter_config.json").read_text())
            assert cfg["r"] <= self.max_lora_rank
            base = AutoModelForCausalLM.from_pretrained(self.path, dtype=self.dtype)
            self.loras[lora.lora_int_id] = PeftModel.from_pretrained(base, lora.lora_path).eval()
        return self.loras[lora.lora_int_id]

    @torch.no_grad()
    def generate(
        self, prompts, sampling_params=None, use_tqdm=True, lora_request=None
    ) -> list[RequestOutput]:
        net = self._net(lora_request)
        k = sampling_params.prompt_logprobs
        out = []
        for p in prompts:
            ids = list(p["prompt_token_ids"])
            self.requests += 1
            lp = net(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(dim=-1)  # [T, V]
            plp: list[dict[int, Logprob] | None] = [None]
            for pos in range(1, len(ids)):
                row = lp[pos - 1]
                entry = {ids[pos]: Logprob(float(row[ids[pos]]))}
                if k:  # the top-k besides the prompt's own token
                    vals, idx = row.topk(k)
                    entry.update({int(i): Logprob(float(v)) for v, i in zip(vals, idx, strict=True)})
                plp.append(entry)
            out.append(RequestOutput(ids, plp, [CompletionOutput([int(lp[-1].argmax())])]))
        return out


def stand_in_modules() -> dict[str, types.ModuleType]:
    root = types.ModuleType("vllm")
    root.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    root.__version__ = STAND_IN_VERSION
    root.LLM, root.SamplingParams, root.TokensPrompt = LLM, SamplingParams, TokensPrompt
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = TokensPrompt
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    lora.request = request
    root.inputs, root.lora = inputs, lora
    return {"vllm": root, "vllm.inputs": inputs, "vllm.lora": lora, "vllm.lora.request": request}


@pytest.fixture
def fake_vllm(monkeypatch):
    for name, module in stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    LLM.made.clear()
    return LLM


# ----------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    rows = random_rows(n_users=12, n_items=30, per_user=14)
    write_atomic(d, "tiny", rows, {f"i{i}": f"Title {i}" for i in range(30)})
    return read_atomic(d, "tiny")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    titles = [f"Title {i}" for i in range(30)]
    words = template_words("tallrec", "rerank_listwise") + titles
    return make_tiny_lm(tmp_path_factory.mktemp("lm"), words, seed=5)


def tallrec(data, lm, seed: int = 7) -> tuple[TallRec, list[str]]:
    """A TALLRec with LoRA on q/v whose lora_B is non-zero (as after training), and 16 test prompts."""
    split = build_split(data, SplitConfig(protocol="temporal"))
    torch.manual_seed(0)  # peft draws lora_A from the global stream: the same A in every model
    model = TallRec(
        split,
        data,
        backbone=str(lm),
        prompt=load_prompt("tallrec"),
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        shots=16,
        seed=0,
        dtype="float32",
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    test = split.test
    prompts = [
        model._prompt(int(u), int(i)) for u, i in zip(test["user"][:16], test["item"][:16], strict=True)
    ]
    return model.eval(), prompts


def rerank(data, lm, directory: Path, length_norm: bool) -> LLMRerank:
    split = build_split(data, SplitConfig(protocol="loo"))
    first = fake_first_stage(directory, split)
    return LLMRerank(
        split,
        data,
        first_stage=str(first),
        backbone=str(lm),
        prompt=load_prompt("rerank_listwise"),
        top_n=6,
        order="random",
        seed=0,
        length_norm=length_norm,
        dtype="float32",
    )


# ----------------------------------------------------------------------------- scores


def test_vllm_p_yes_equals_the_torch_path(fake_vllm, tiny_data, tiny_lm, tmp_path):
    model, prompts = tallrec(tiny_data, tiny_lm)
    torch_p = model.p_yes(prompts)
    facts = apply_precision(model, VLLM_FP32, tmp_path)
    assert isinstance(model.scorer, vr.VllmScorer)
    engine = fake_vllm.made[-1]
    vllm_p = model.p_yes(prompts)
    assert engine.requests == 2 * len(prompts)  # (prompt + yes, prompt + no) per prompt
    assert torch_p.std() > 3e-4  # the scores differ between prompts (by 100x TOL): not vacuous
    assert (vllm_p - torch_p).abs().max() < TOL
    # the LoRA request matters: the same prompts without it score differently
    base = vr.VllmScorer(engine.path, vr.engine_settings("float32", None))
    seqs = model._tokens(prompts)
    assert (base.p_yes(seqs, model.answer_ids) - torch_p).abs().max() > 1e-3
    assert facts["runtime"] == f"vllm {STAND_IN_VERSION}" and facts["dtype"] == "float32"
    assert facts["engine"] == {
        "dtype": "float32",
        "seed": 0,
        "enable_prefix_caching": False,
        "enable_lora": True,
        "max_lora_rank": 8,
        "max_loras": 1,
    }
    assert facts["lora_used"] and facts["lora"]["r"] == 4 and len(facts["lora"]["sha256"]) == 64
    recorded = model.prediction_facts()["llm"]
    assert recorded["precision"]["runtime"] == facts["runtime"] and recorded["dtype"] == "float32"
    assert "seconds" not in recorded["precision"]


@pytest.mark.parametrize("length_norm", [True, False])
def test_vllm_rerank_scores_equal_the_torch_path(fake_vllm, tiny_data, tiny_lm, tmp_path, length_norm):
    model = rerank(tiny_data, tiny_lm, tmp_path / "first", length_norm)
    users = torch.arange(6)
    torch_scores = model.score(users)
    model._scores.clear()
    model._positions.clear()
    facts = apply_precision(model, VLLM_FP32, tmp_path / "out")
    vllm_scores = model.score(users)
    assert fake_vllm.made[-1].requests == 6 * 6  # one sequence per (user, candidate)
    finite = torch.isfinite(torch_scores)
    assert finite.sum() == 36 and torch.equal(finite, torch.isfinite(vllm_scores))
    assert (vllm_scores[finite] - torch_scores[finite]).abs().max() < TOL
    assert torch_scores[finite].std() > 1e-3
    assert not facts["lora_used"] and facts["engine"]["enable_lora"] is False
    if length_norm:  # eval=candidates generates answers: not through the scoring backend
        rows = types.SimpleNamespace(negatives=np.zeros((1, 3), dtype=np.int64))
        with pytest.raises(ConfigError) as e:
            model.answer_candidates(rows, np.array([0]), 1, "cpu")
        assert "eval=candidates" in one_line(e)


def test_exported_folders_are_keyed_and_reused(fake_vllm, tiny_data, tiny_lm, tmp_path):
    model, _ = tallrec(tiny_data, tiny_lm)
    apply_precision(model, VLLM_FP32, tmp_path)
    assert model.vllm_export_created and model.vllm_lora_created
    models = sorted((tmp_path / "vllm_models").iterdir())
    loras = sorted((tmp_path / "vllm_lora").iterdir())
    assert len(models) == len(loras) == 1 and models[0].name.endswith("-float32")
    assert {p.name for p in loras[0].iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    from safetensors.torch import load_file

    saved = load_file(loras[0] / "adapter_model.safetensors")
    assert saved and all(".lora_" in k for k in saved)  # the adapter alone, no base weights

    again, _ = tallrec(tiny_data, tiny_lm)  # same weights: both folders reused, nothing written
    facts = apply_precision(again, VLLM_FP32, tmp_path)
    assert not again.vllm_export_created and not again.vllm_lora_created
    assert sorted((tmp_path / "vllm_lora").iterdir()) == loras and facts["backbone_export"] == models[0].name

    other, _ = tallrec(tiny_data, tiny_lm, seed=8)  # other LoRA weights: a new adapter folder
    apply_precision(other, VLLM_FP32, tmp_path)
    assert not other.vllm_export_created and other.vllm_lora_created
    assert len(list((tmp_path / "vllm_lora").iterdir())) == 2

    bf16, _ = tallrec(tiny_data, tiny_lm)  # the option's own dtype (bf16): another export
    facts = apply_precision(bf16, option("vllm"), tmp_path)
    folder = tmp_path / "vllm_models" / facts["backbone_export"]
    assert folder.name.endswith("-bfloat16") and bf16.vllm_export_created
    weights = load_file(next(folder.glob("*.safetensors")))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert fake_vllm.made[-1].dtype == torch.bfloat16 and facts["dtype"] == "bfloat16"


# ----------------------------------------------------------------------------- refusals


TALLREC_CFG = {"name": "tallrec", "family": "llm", "module": {"_target_": vr.TALLREC}}
RERANK_CFG = {"name": "llm_rerank", "family": "llm", "module": {"_target_": vr.RERANK}}
P5_CFG = {"name": "p5", "family": "llm", "module": {"_target_": vr.P5}}


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg.startswith("precision=vllm: ") and "\n" not in msg, msg
    return msg


def test_refusals_without_cuda_or_vllm(monkeypatch):
    monkeypatch.setattr("benchmark.models.components.precision.cuda_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        check_precision(option("vllm"), OmegaConf.create(TALLREC_CFG))
    assert "CUDA" in one_line(e)
    monkeypatch.setattr("benchmark.models.components.precision.cuda_available", lambda: True)
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    with pytest.raises(ConfigError) as e:
        check_precision(option("vllm"), OmegaConf.create(TALLREC_CFG))
    assert "pip install vllm" in one_line(e)


def test_cuda_and_vllm_present_let_tallrec_and_rerank_through(fake_vllm, monkeypatch):
    monkeypatch.setattr("benchmark.models.components.precision.cuda_available", lambda: True)
    for cfg in (TALLREC_CFG, RERANK_CFG):
        spec = check_precision(option("vllm"), OmegaConf.create(cfg))
        assert spec.method == "vllm" and spec.weights == "bfloat16"
    with pytest.raises(ConfigError) as e:
        check_precision(option("vllm"), OmegaConf.create(P5_CFG))
    assert one_line(e) == (
        "precision=vllm: constrained generation for p5 is not supported by the vLLM backend; use fp16/bnb8/bnb4"
    )
    with pytest.raises(ConfigError) as e:
        check_precision(
            option("vllm"), OmegaConf.create(TALLREC_CFG), OmegaConf.create({"name": "clip_proj"})
        )
    assert "soft tokens" in one_line(e)
    assert check_precision(option("vllm"), OmegaConf.create(TALLREC_CFG), OmegaConf.create({"name": "none"}))


def test_attach_refuses_models_without_a_vllm_path(tmp_path):
    class Bare(torch.nn.Module):
        def __init__(self, **attrs: Any) -> None:
            super().__init__()
            self.lm = torch.nn.Linear(2, 2)
            self.__dict__.update(attrs)

    with pytest.raises(ConfigError) as e:
        apply_precision(Bare(), VLLM_FP32, tmp_path)  # P5-like: no scorer hook
    assert "no vLLM scoring path" in one_line(e)
    with pytest.raises(ConfigError) as e:
        apply_precision(Bare(scorer=None, lm_facts={}, adapter=object()), VLLM_FP32, tmp_path)
    assert "soft tokens" in one_line(e)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["experiment=p5_tiny_ml100k"], "constrained generation for p5"),
        (["experiment=tallrec_movie_64", "adapter=clip_proj"], "soft tokens"),
    ],
)
def test_cli_refuses_with_one_line_before_reading_data(
    fake_vllm, overrides, needle, tmp_path, capsys, monkeypatch
):
    from benchmark.cli import main

    def no_data(*a, **k):
        raise AssertionError("data was read")

    monkeypatch.setattr("benchmark.models.components.precision.cuda_available", lambda: True)
    monkeypatch.setattr("benchmark.data.loading.load_dataset", no_data)
    args = ["run", *overrides, "precision=vllm", "logger=none"]
    args += [f"paths.results={tmp_path / 'res'}", f"paths.outputs={tmp_path / 'out'}"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "precision=vllm" in err and needle in err, err
    assert not any(tmp_path.rglob("*.json")) and not (tmp_path / "res").exists()


def test_read_logprobs_refuses_a_missing_token():
    with pytest.raises(ConfigError, match="no log-probability for prompt token 7"):
        vr._read_logprobs([None, {3: Logprob(-1.0)}], [5, 7], 1)
    with pytest.raises(ConfigError, match="positions"):
        vr._read_logprobs([None], [5, 7], 1)
    assert vr._read_logprobs([None, {7: Logprob(-0.5)}, {1: Logprob(-2.0)}], [5, 7, 1], 1).tolist() == [
        -0.5,
        -2.0,
    ]
    assert vr.lora_rank_limit(4) == 8 and vr.lora_rank_limit(16) == 16
    with pytest.raises(ConfigError, match="max_lora_rank"):
        vr.lora_rank_limit(1024)


# ----------------------------------------------------------------------------- the real vllm


def _real_vllm() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not _real_vllm(), reason="needs a CUDA GPU and the real vllm package")
def test_real_vllm_matches_the_torch_path(tiny_data, tmp_path):
    """bf16 vLLM against the fp32 torch path on a tiny Llama with head size 64 (attention kernels
    need one): P(yes) within 0.02 and rerank scores within 0.05 nats per token."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    titles = [f"Title {i}" for i in range(30)]
    lm = make_tiny_lm(tmp_path / "lm", template_words("tallrec", "rerank_listwise") + titles, seed=5)
    tok = AutoTokenizer.from_pretrained(lm)
    torch.manual_seed(5)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(lm)
    model, prompts = tallrec(tiny_data, lm)
    torch_p = model.p_yes(prompts)
    apply_precision(model, option("vllm"), tmp_path / "out")
    assert (model.p_yes(prompts) - torch_p).abs().max() < 0.02
    rr = rerank(tiny_data, lm, tmp_path / "first", length_norm=True)
    users = torch.arange(4)
    torch_scores = rr.score(users)
    rr._scores.clear()
    # one engine per process (vLLM takes most of the GPU's memory): the reranker shares the
    # TALLRec engine (the same exported backbone), its requests without the LoRA adapter
    rr.scorer = copy.copy(model.scorer)
    rr.scorer.lora = None
    finite = torch.isfinite(torch_scores)
    assert np.allclose(rr.score(users)[finite].numpy(), torch_scores[finite].numpy(), atol=0.05)
