"""The CUDA-only precision options on a GPU (``pytest -m gpu``, ``make test-gpu``): each loads, scores
every prompt close to the fp32 scores of the same model on the same GPU, quantizes or casts what it
says, and records itself. Skipped without CUDA (and bitsandbytes for ``bnb8``/``bnb4``).

Models are the tiny randomly initialised Llama with non-zero LoRA of ``test_precision``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.models.components.precision import apply_precision
from tests.unit.test_precision import option, prompts, tallrec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# largest |P(yes) - fp32| allowed on the tiny model: casts round activations, 8-bit weights move
# them a little more, 4-bit NF4 weights more again
TOLERANCE = {"fp16": 0.02, "bf16": 0.05, "bnb8": 0.05, "bnb4": 0.15}


@pytest.fixture(scope="module")
def fp32_on_gpu(yesno_split, yesno_data, yesno_lm):
    model = tallrec(yesno_split, yesno_data, yesno_lm).to("cuda")
    texts = prompts(model, yesno_split)
    return texts, model.p_yes(texts).cpu()


@pytest.mark.parametrize("name", list(TOLERANCE))
def test_gpu_option_scores_close_to_fp32_and_records_itself(name, yesno_split, yesno_data, yesno_lm, fp32_on_gpu):
    if name.startswith("bnb"):
        bnb = pytest.importorskip("bitsandbytes")
    texts, p32 = fp32_on_gpu
    model = tallrec(yesno_split, yesno_data, yesno_lm)
    facts = apply_precision(model, option(name))
    model = model.to("cuda")  # bitsandbytes quantizes its weights here
    p = model.p_yes(texts).cpu()
    assert torch.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    diff = (p - p32).abs()
    assert diff.max() < TOLERANCE[name], float(diff.max())
    assert diff.max() > 0  # the option changed the arithmetic
    assert model.prediction_facts()["llm"]["precision"]["name"] == name
    assert facts["lora_layers_fp32"] == 2 * 2 * 2  # q/v x 2 layers x (A, B) stay fp32
    if name.startswith("bnb"):
        kind = bnb.nn.Linear8bitLt if name == "bnb8" else bnb.nn.Linear4bit
        assert sum(isinstance(m, kind) for m in model.lm.modules()) == facts["linear_quantized"] == 14
    else:
        dtype = getattr(torch, option(name).weights)
        body = [p.dtype for n, p in model.lm.named_parameters() if "lora_" not in n and "lm_head" not in n]
        assert body and all(d == dtype for d in body)
        assert all(m.weight.dtype == torch.float32 for n, m in model.lm.named_modules() if type(m) is nn.Linear and "lora_" in n)
