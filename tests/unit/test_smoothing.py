"""SmoothQuant-style smoothing before int8 (precision=int8_smooth): exact in fp32, fewer int8 errors.

The tiny Llama of tests/unit/test_tallrec.py has grouped-query attention (4 query heads, 2 key/value
heads), so the o_proj factor's sharing across the query heads of one value head is exercised.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from benchmark.errors import ConfigError
from benchmark.models.components.precision import apply_precision, check_precision, precision_config
from benchmark.models.components.smoothing import activation_ranges, decoder_blocks, factors, smooth
from tests.unit.test_precision import option, prompts, tallrec


def test_factors_by_hand():
    # s_j = a_j^alpha / w_j^(1 - alpha); an inactive channel (a = 0) keeps s = 1
    s = factors(torch.tensor([4.0, 1.0, 0.0]), torch.tensor([1.0, 4.0, 2.0]), 0.5)
    assert torch.allclose(s, torch.tensor([2.0, 0.5, 1.0]))
    s = factors(torch.tensor([8.0, 1.0]), torch.tensor([2.0, 2.0]), 1.0)  # alpha 1: all range moves
    assert torch.allclose(s, torch.tensor([8.0, 1.0]))
    with pytest.raises(ConfigError, match="smooth_alpha"):
        smooth(torch.nn.Linear(2, 2), {}, 1.5)


def _uneven(model) -> None:
    """Give the norms uneven per-channel weights (a trained model's are), so factors are far from 1."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for _, block in decoder_blocks(model.lm):
            for norm in (block.input_layernorm, block.post_attention_layernorm):
                norm.weight.copy_(torch.rand(norm.weight.shape, generator=g) * 3 + 0.1)


def test_smoothing_is_exact_in_fp32(yesno_split, yesno_data, yesno_lm):
    model = tallrec(yesno_split, yesno_data, yesno_lm)
    _uneven(model)
    texts = prompts(model, yesno_split)
    before = model.p_yes(texts)
    norms = [b.input_layernorm.weight.clone() for _, b in decoder_blocks(model.lm)]
    ranges = activation_ranges(model.lm, lambda: model.calibrate(16))
    assert len(ranges) == 2 * 4  # q (k, v share it), o, gate (up shares it), down per block
    assert smooth(model.lm, ranges, 0.8) == 14
    moved = [(b.input_layernorm.weight / n).log().abs().max() for n, (_, b) in zip(norms, decoder_blocks(model.lm), strict=True)]
    assert min(moved) > 0.1  # the factors did move range into the weights
    assert (model.p_yes(texts) - before).abs().max() < 1e-5


def _plant_outlier(model, channel: int = 3, factor: float = 60.0) -> None:
    """One input channel of q/k/v 60x larger, its weight columns 60x smaller: the same function."""
    with torch.no_grad():
        for _, block in decoder_blocks(model.lm):
            block.input_layernorm.weight[channel] *= factor
            for name in ("q_proj", "k_proj", "v_proj"):
                layer = getattr(block.self_attn, name)
                getattr(layer, "base_layer", layer).weight[:, channel] /= factor
                for a in getattr(layer, "lora_A", {}).values():
                    a.weight[:, channel] /= factor


def test_smoothing_shrinks_int8_error_on_an_outlier_channel(yesno_split, yesno_data, yesno_lm):
    errors = {}
    for name in ("int8", "int8_smooth"):
        model = tallrec(yesno_split, yesno_data, yesno_lm)
        _uneven(model)
        _plant_outlier(model)
        texts = prompts(model, yesno_split)
        exact = model.p_yes(texts)
        spec = OmegaConf.merge(option(name), {"keep": []})  # every layer int8 in both
        apply_precision(model, spec)
        errors[name] = float((model.p_yes(texts) - exact).abs().mean())
    assert errors["int8"] > 0 and errors["int8_smooth"] < errors["int8"] / 2, errors


def test_int8_smooth_records_calibration_on_train_rows_and_keeps_down_proj(yesno_split, yesno_data, yesno_lm):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    model = tallrec(yesno_split, yesno_data, yesno_lm)
    train_prompts = {
        model._render(h, lk, int(i))
        for i, h, lk in zip(model._train[0], model._train[1], model._train[2], strict=True)
    }
    seen: list[str] = []
    p_yes = model.p_yes
    model.p_yes = lambda texts: seen.extend(texts) or p_yes(texts)  # type: ignore[method-assign]
    truncated = model.truncated
    facts = apply_precision(model, option("int8_smooth"))
    assert seen and set(seen) <= train_prompts  # calibration read train rows only
    assert model.truncated == truncated
    cal = facts["smoothing"]["calibration"]
    assert cal["part"] == "train" and cal["rows"] == min(64, len(yesno_split.train)) == len(seen)
    assert facts["smoothing"]["alpha"] == 0.8 and facts["smoothing"]["layers_smoothed"] == 14
    named = dict(model.lm.named_modules())
    assert facts["linear_quantized"] == sum(isinstance(m, DynamicLinear) for m in named.values()) == 12
    assert facts["kept_fp32"] == {"names": ["down_proj"], "layers": 2}
    assert all(type(m.base_layer if hasattr(m, "base_layer") else m) is torch.nn.Linear
               for n, m in named.items() if n.endswith("mlp.down_proj"))
    model.p_yes = p_yes  # type: ignore[method-assign]
    p = model.p_yes(prompts(model, yesno_split))
    assert torch.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert model.prediction_facts()["llm"]["precision"]["smoothing"]["calibration"]["part"] == "train"


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"smooth_alpha": 1.5}, "precision.smooth_alpha"),
        ({"smooth_alpha": "high"}, "precision.smooth_alpha"),
        ({"smooth_alpha": True}, "precision.smooth_alpha"),
        ({"method": "cast", "weights": "bfloat16"}, "smoothing applies to method torch_dynamic"),
        ({"calibration_rows": 0}, "precision.calibration_rows"),
        ({"keep": "down_proj"}, "precision.keep"),
    ],
)
def test_bad_smoothing_settings_are_one_line(change, needle):
    node = OmegaConf.merge(option("int8_smooth"), change)
    with pytest.raises(ConfigError, match=needle) as e:
        precision_config(node)
    assert "\n" not in str(e.value)


def test_smoothing_needs_a_model_with_train_prompts():
    from benchmark.compose import compose

    for name, ok in (("llm_rerank", True), ("p5", False), ("tallrec", True), ("tallrec_zeroshot", True)):
        model_cfg = compose([f"model={name}"]).model
        if ok:
            assert check_precision(option("int8_smooth"), model_cfg).smooth_alpha == 0.8
        else:
            with pytest.raises(ConfigError, match="only tallrec, tallrec_zeroshot and llm_rerank define"):
                check_precision(option("int8_smooth"), model_cfg)
