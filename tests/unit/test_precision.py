"""Backbone precision of the LLM models (``precision=<option>``): CPU options load, score and stay
close to fp32; int8 quantizes the base linear layers and keeps LoRA in fp32; GPU-only options
refuse on CPU with one line; config hashes of existing runs and training keys do not move.

Models are the tiny randomly initialised Llama of ``test_tallrec`` (``make_tiny_lm``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from benchmark.config import CONFIG_DIR
from benchmark.errors import ConfigError
from benchmark.models.components.precision import apply_precision, check_precision, precision_config
from benchmark.models.tallrec import TallRec
from benchmark.util import cpu_features
from tests.unit.test_tallrec import load_prompt

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "results" / "runs"
CPU_OPTIONS = ("fp32", "bf16", "int8", "int8_smooth", "int8_vnni", "int8_smooth_vnni")
GPU_OPTIONS = ("fp16", "bnb8", "bnb4", "vllm")


def option(name: str):
    return OmegaConf.load(CONFIG_DIR / "precision" / f"{name}.yaml")


def tallrec(split, data, lm) -> TallRec:
    """A TallRec with LoRA on q/v whose lora_B is non-zero (as after training); every LoRA weight is
    drawn from a fixed generator, so two calls build the same model (peft's own lora_A init reads
    the global random state)."""
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
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def prompts(model: TallRec, split) -> list[str]:
    test = split.test
    return [model._prompt(int(u), int(i)) for u, i in zip(test["user"][:24], test["item"][:24], strict=True)]


@pytest.fixture(scope="module")
def fp32_scores(yesno_split, yesno_data, yesno_lm):
    model = tallrec(yesno_split, yesno_data, yesno_lm)
    return model.p_yes(prompts(model, yesno_split))


@pytest.mark.parametrize("name", CPU_OPTIONS)
def test_cpu_option_loads_scores_and_records_itself(name, yesno_split, yesno_data, yesno_lm, fp32_scores):
    model = tallrec(yesno_split, yesno_data, yesno_lm)
    facts = apply_precision(model, option(name))
    p = model.p_yes(prompts(model, yesno_split))
    assert torch.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert (p - fp32_scores).abs().max() < 0.05  # close to fp32 on a tiny model
    recorded = model.prediction_facts()["llm"]["precision"]
    assert recorded["name"] == facts["name"] == name
    assert recorded["method"] == option(name).method and "seconds" not in recorded
    assert facts["lora_layers_fp32"] == 2 * 2 * 2  # q/v x 2 layers x (A, B)


def test_int8_quantizes_base_linears_only_and_changes_scores(yesno_split, yesno_data, yesno_lm, fp32_scores):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    model = tallrec(yesno_split, yesno_data, yesno_lm)
    before = sum(1 for m in model.lm.modules() if type(m) is nn.Linear)
    facts = apply_precision(model, option("int8"))
    named = dict(model.lm.named_modules())
    quantized = [n for n, m in named.items() if isinstance(m, DynamicLinear)]
    # 2 layers x (q, k, v, o, gate, up, down) base layers; LoRA A/B (8) and the LM head stay nn.Linear
    assert len(quantized) == facts["linear_quantized"] == 14
    assert not any("lora_" in n or "lm_head" in n for n in quantized)
    kept = [n for n, m in named.items() if type(m) is nn.Linear]
    assert len(kept) == before - 14 and all(named[n].weight.dtype == torch.float32 for n in kept)
    assert sum("lora_" in n for n in kept) == 8 and any(n.endswith("lm_head") for n in kept)
    p = model.p_yes(prompts(model, yesno_split))
    diff = (p - fp32_scores).abs()
    assert diff.max() > 0  # quantization happened
    assert diff.max() < 0.05  # and stays close
    with model.lm.disable_adapter():  # the fp32 LoRA still acts on the int8 base
        assert (model.p_yes(prompts(model, yesno_split)[:4]) - p[:4]).abs().max() > 1e-4


def test_full_range_activations_use_8_bits_and_are_recorded(yesno_split, yesno_data, yesno_lm):
    from benchmark.models.components.precision import full_range_linear

    model = tallrec(yesno_split, yesno_data, yesno_lm)
    facts = apply_precision(model, option("int8_vnni"))
    full = [m for m in model.lm.modules() if isinstance(m, full_range_linear())]
    assert len(full) == facts["linear_quantized"] == 14 and facts["activation_range"] == "full"
    assert model.prediction_facts()["llm"]["precision"]["activation_range"] == "full"
    reduced = tallrec(yesno_split, yesno_data, yesno_lm)
    assert "activation_range" not in apply_precision(reduced, option("int8"))  # records as before
    assert not any(isinstance(m, full_range_linear()) for m in reduced.lm.modules())


VNNI = bool(set(cpu_features()["flags"] or ()) & {"avx512_vnni", "avx_vnni", "amx_int8"})


@pytest.mark.skipif(not VNNI, reason="8-bit activations are only exact to 8 bits on a CPU with VNNI (without it fbgemm's 16-bit sums may saturate)")
def test_8_bit_activations_are_closer_to_fp32_than_7_bit():
    from benchmark.models.components.precision import quantize_int8

    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(256, 128))
    x = torch.randn(64, 256)
    exact = lin(x).detach()
    errors = {}
    for rng in ("reduced", "full"):
        q = nn.Sequential(nn.Linear(256, 128))
        q.load_state_dict(lin.state_dict())
        quantize_int8(q, activation_range=rng)
        errors[rng] = float((q(x) - exact).abs().mean())
    # one more activation bit halves the activation step: the error falls by well over a quarter
    assert errors["full"] < 0.75 * errors["reduced"], errors


def test_full_range_refuses_without_vnni_and_outside_torch_dynamic(monkeypatch):
    llm = OmegaConf.create({"name": "tallrec", "family": "llm", "module": {"_target_": "benchmark.models.tallrec.TallRec"}})
    monkeypatch.setattr("benchmark.models.components.precision.cpu_flags", lambda: ["avx2", "avx512f"])
    with pytest.raises(ConfigError, match=r"^precision=int8_smooth_vnni: 8-bit activations need a CPU with VNNI .*has none of them \(use precision=int8_smooth\)$"):
        check_precision(option("int8_smooth_vnni"), llm)
    monkeypatch.setattr("benchmark.models.components.precision.cpu_flags", lambda: None)
    with pytest.raises(ConfigError, match="no /proc/cpuinfo to tell"):
        check_precision(option("int8_vnni"), llm)
    monkeypatch.setattr("benchmark.models.components.precision.cpu_flags", lambda: ["avx2", "avx512_vnni"])
    assert check_precision(option("int8_smooth_vnni"), llm).activation_range == "full"
    with pytest.raises(ConfigError, match="precision.activation_range: unknown 'half'"):
        precision_config({**OmegaConf.to_container(option("int8")), "activation_range": "half"})
    with pytest.raises(ConfigError, match="precision.activation_range: applies to method torch_dynamic, not cast"):
        precision_config({**OmegaConf.to_container(option("bf16")), "activation_range": "full"})


def test_bf16_casts_the_backbone_and_keeps_lora_and_the_head_fp32(yesno_split, yesno_data, yesno_lm):
    from benchmark.models.components.precision import Fp32Head

    model = tallrec(yesno_split, yesno_data, yesno_lm)
    embed = model.lm.get_input_embeddings().weight.detach().clone()
    facts = apply_precision(model, option("bf16"))
    dtypes = {n: p.dtype for n, p in model.lm.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n or "lm_head" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "lora_" not in n and "lm_head" not in n)
    heads = [m for m in model.lm.modules() if isinstance(m, Fp32Head)]
    assert len(heads) == 1 and facts["head"] == {"dtype": "float32", "replaced": 1}
    assert torch.equal(heads[0].weight, embed)  # the tied embedding's fp32 values, untied
    assert model.prediction_facts()["llm"]["dtype"] == "bfloat16"
    assert model.prediction_facts()["llm"]["precision"]["head"]["dtype"] == "float32"


def _sharp(model) -> None:
    """Scale the (tied) head so that logits are ~20x larger: bf16's rounding of them then shows."""
    with torch.no_grad():
        model.lm.get_output_embeddings().weight.mul_(20.0)


def test_an_fp32_head_keeps_bf16_answer_logits_from_rounding(yesno_split, yesno_data, yesno_lm):
    """A bf16 head rounds the logits to 8 mantissa bits, so P("Yes") of different prompts ties;
    the fp32 head (same bf16 body) returns unrounded fp32 logits and as many distinct P("Yes") as fp32."""
    ref = tallrec(yesno_split, yesno_data, yesno_lm)
    _sharp(ref)
    texts = prompts(ref, yesno_split)
    n32 = len(set(ref.p_yes(texts).tolist()))
    batch = ref.tokenizer(texts[:4], return_tensors="pt", padding=True)
    assert float(ref.lm(**batch).logits.abs().max()) > 8.0  # large logits: bf16's steps there are >= 0.0625
    distinct, on_grid = {}, {}
    for head in ("model", "fp32"):
        m = tallrec(yesno_split, yesno_data, yesno_lm)
        _sharp(m)
        apply_precision(m, {**OmegaConf.to_container(option("bf16")), "head": head})
        distinct[head] = len(set(m.p_yes(texts).tolist()))
        with torch.no_grad():
            logits = m.lm(**batch).logits[:, -1].float()
        on_grid[head] = float((logits == logits.to(torch.bfloat16).float()).float().mean())
    assert on_grid["model"] == 1.0 and on_grid["fp32"] < 0.1  # rounded vs full fp32 logits
    assert distinct["model"] < distinct["fp32"] == n32  # ties only from the rounded head
    with pytest.raises(ConfigError, match="precision.head: applies to method cast, not torch_dynamic"):
        precision_config({**OmegaConf.to_container(option("int8")), "head": "fp32"})
    with pytest.raises(ConfigError, match="precision.head: unknown 'half'"):
        precision_config({**OmegaConf.to_container(option("bf16")), "head": "half"})


def test_option_needs_an_llm_backbone_and_known_keys():
    with pytest.raises(ConfigError, match="precision=int8: model bpr has no LLM backbone"):
        check_precision(option("int8"), OmegaConf.create({"name": "bpr", "family": "classic"}))
    with pytest.raises(ConfigError, match="precision.wieghts: unknown key"):
        precision_config({**OmegaConf.to_container(option("int8")), "wieghts": "int4"})
    with pytest.raises(ConfigError, match="precision.weights"):
        precision_config({"name": "x", "weights": "int3", "method": "cast"})
    with pytest.raises(ConfigError, match="no LLM backbone"):
        apply_precision(nn.Linear(2, 2), option("int8"))


@pytest.mark.parametrize("name", [*GPU_OPTIONS, "gguf"])
def test_gpu_only_and_absent_runtimes_refuse_on_cpu(name, monkeypatch):
    monkeypatch.setattr("benchmark.models.components.precision.cuda_available", lambda: False)
    monkeypatch.setattr("benchmark.models.components.gguf_runtime.llama_cpp_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        check_precision(option(name), OmegaConf.create({"name": "tallrec", "family": "llm"}))
    msg = str(e.value)
    assert msg.startswith(f"precision={name}: ") and "\n" not in msg
    if name != "gguf":
        assert "CUDA" in msg


@pytest.mark.parametrize("name", ["bnb4", "vllm", "gguf"])
def test_cli_refuses_before_reading_data_and_writes_nothing(name, tmp_path, capsys, monkeypatch):
    from benchmark.cli import main

    def no_data(*a, **k):
        raise AssertionError("data was read")

    monkeypatch.setattr("benchmark.models.components.precision.cuda_available", lambda: False)
    monkeypatch.setattr("benchmark.models.components.gguf_runtime.llama_cpp_available", lambda: False)
    monkeypatch.setattr("benchmark.data.loading.load_dataset", no_data)
    args = ["run", "experiment=tallrec_movie_64", f"precision={name}", "logger=none"]
    args += [f"paths.results={tmp_path / 'res'}", f"paths.outputs={tmp_path / 'out'}"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"precision={name}" in err, err
    assert not any(tmp_path.rglob("*.json")) and not (tmp_path / "res").exists()


# ----------------------------------------------------------------------------- identity


COMMITTED = [
    ("ml-100k-tallrec_movie-labeled-tallrec-64shot-s1-*", ["experiment=tallrec_movie_64", "seed=1"]),
    ("ml-100k-loo-full-bpr-s1-*", None),
    ("ml-100k-loo-full-llm_rerank-top20-random-s1-*", None),
]


@pytest.mark.parametrize("pattern, overrides", COMMITTED)
def test_committed_configs_hash_as_before_and_precision_keeps_the_training_key(pattern, overrides):
    """The root default (no precision) leaves every committed config hash unchanged; an
    inference-only option gives a new hash and run id labelled ``@<option>`` but the same
    training key, so the trained weights are reused."""
    from benchmark.compose import compose
    from benchmark.results.identity import config_hashes, model_label, training_key
    from benchmark.results.submission import recorded_config_hashes

    for path in sorted(RUNS.glob(f"{pattern}/record.json")):
        rec = json.loads(path.read_text())
        assert "precision" not in rec["config"]
        recorded = OmegaConf.create(rec["config"])
        assert (rec["config_hash"], rec["group_key"]) in recorded_config_hashes(rec["config"])
        if overrides is not None:  # composing it today hashes as its recorded config
            assert "precision" not in compose(overrides)
            assert config_hashes(compose(overrides)) == config_hashes(recorded)
        for name in CPU_OPTIONS:
            cfg = OmegaConf.create({**rec["config"], "precision": OmegaConf.to_container(option(name))})
            assert config_hashes(cfg)[0] != config_hashes(recorded)[0]
            assert training_key(cfg) == training_key(recorded)
            assert model_label(cfg) == model_label(recorded) + f"@{name}"


def test_precision_override_composes_and_labels_the_run():
    from benchmark.compose import compose
    from benchmark.results.identity import config_hashes, run_id_for, training_key

    base = compose(["experiment=tallrec_movie_64", "seed=1"])
    int8 = compose(["experiment=tallrec_movie_64", "seed=1", "precision=int8"])
    assert int8.precision.name == "int8"
    assert training_key(int8) == training_key(base)
    run_id = run_id_for(int8, config_hashes(int8)[0])
    assert "-tallrec-64shot@int8-s1-" in run_id
    assert config_hashes(int8)[0] != config_hashes(base)[0]


def test_bench_compares_every_option_with_fp32_on_the_rows_both_scored():
    from benchmark.bench.precision import compare_rerank, compare_tallrec, table
    from benchmark.eval.metrics import auc

    labels = [1, 0, 1, 0, 1, 0]
    fp32 = [0.9, 0.2, 0.6, 0.7, 0.8, 0.1]
    int8 = [0.9, 0.2, 0.15, 0.7, 0.8, 0.1]  # row 2 moves below a negative (0.2)
    row = {"prompt_tokens_mean": 10, "tokens_per_second": 1, "floor_seconds_per_row": 0.1, "peak_rss_mb": 1}
    res = {
        "fp32": {**row, "rows": 6, "p_yes": fp32, "labels": labels, "seconds_per_row": 1.0, "cpu_per_wall": 0.8},
        "int8": {**row, "rows": 6, "p_yes": int8, "labels": labels, "seconds_per_row": 0.5, "cpu_per_wall": 0.4},
        "bf16": {**row, "rows": 2, "p_yes": fp32[:2], "labels": labels[:2], "seconds_per_row": 4.0},
    }
    c = compare_tallrec(res)
    assert c["fp32"]["auc_change"] == 0 and c["fp32"]["max_abs_p_yes_diff"] == 0
    assert c["int8"]["auc_change"] == pytest.approx(auc(labels, int8) - auc(labels, fp32), abs=1e-5)
    assert c["int8"]["auc_change"] < 0
    assert c["int8"]["max_abs_p_yes_diff"] == pytest.approx(0.45) and c["int8"]["speedup_vs_fp32"] == 2.0
    assert c["int8"]["cpu_speedup_vs_fp32"] == 4.0  # 0.8 vs 0.2 CPU s/row
    assert c["bf16"]["rows_compared"] == 2 and c["bf16"]["speedup_vs_fp32"] == 0.25
    assert "cpu_speedup_vs_fp32" not in c["bf16"]  # no CPU share measured
    rr = {"fp32": {"ndcg@10_per_user": [1.0, 0.0], "seconds_per_user": 2.0, "users": 2}}
    rr["int8"] = {"ndcg@10_per_user": [0.5, 0.0], "seconds_per_user": 1.0, "users": 2}
    r = compare_rerank(rr)
    assert r["int8"]["ndcg@10_change"] == -0.25 and r["int8"]["speedup_vs_fp32"] == 2.0
    text = table({"tallrec": res, "tallrec_vs_fp32": c, "rerank": rr, "rerank_vs_fp32": r})
    assert text.count("\n") == 4 and "| `int8` | 6 | 0.5 | 0.2 |" in text and "| `bf16` | 2 | 4.0 | - |" in text and "| 2 | 1.0 | -0.25 |" in text


def test_bench_readme_block_renders_each_file_with_its_machine(tmp_path):
    import json
    import subprocess
    import sys

    from benchmark.bench.precision import END, START

    row = {"prompt_tokens_mean": 10, "tokens_per_second": 1, "floor_seconds_per_row": 0.1, "peak_rss_mb": 1}
    labels = [1, 0, 1, 0]
    fp32 = {**row, "rows": 4, "p_yes": [0.9, 0.2, 0.8, 0.1], "labels": labels, "seconds_per_row": 1.0}
    int8 = {**row, "rows": 4, "p_yes": [0.9, 0.2, 0.1, 0.3], "labels": labels, "seconds_per_row": 0.5}
    from benchmark.bench.precision import compare_tallrec

    res = {"fp32": fp32, "int8": int8}
    cpu = {"model": "Some CPU", "flags": ["avx2", "avx512_vnni"]}
    machine = {"cpu_count": 2, "torch_threads": 1, "load_average_before": [1.5, 1, 1], "load_average_after": [2.5, 2, 2]}
    a = {"machine": {**machine, "cpu": cpu}, "weights": "w", "tallrec": res, "tallrec_vs_fp32": compare_tallrec(res)}
    b = {"machine": {"cpu_count": 2}, "tallrec": {"fp32": fp32}, "tallrec_vs_fp32": compare_tallrec({"fp32": fp32})}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{START}\nold\n{END}\ntail\n")
    files = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    cmd = [sys.executable, "-m", "benchmark.bench.precision", "--readme", str(readme), "--render", *files]
    subprocess.run(cmd, check=True, capture_output=True)
    text = readme.read_text()
    assert text.startswith(f"head\n{START}\n") and text.endswith(f"{END}\ntail\n") and "old" not in text
    assert "Some CPU (avx2, avx512_vnni), 2 cores, 1 torch thread per child, load average 1.5 before, 2.5 after" in text
    assert "CPU not recorded in the file" in text and "load average not recorded" in text
    # AUC of int8 on these rows: 0.5 (pairs (0.9,0.2) (0.9,0.3) right; (0.1,0.2) (0.1,0.3) wrong), fp32 1.0
    assert "| `int8` | 4 | 0.5 | - |" in text and "| -0.5 |" in text
    assert text.count("| `fp32` |") == 2


def test_bench_update_measures_only_the_named_options_and_keeps_the_rest(monkeypatch):
    import benchmark.bench.precision as bench

    labels = [1, 0, 1, 0]
    row = {"prompt_tokens_mean": 10, "tokens_per_second": 1, "floor_seconds_per_row": 0.1, "peak_rss_mb": 1}
    earlier = {
        "backbone": bench.BACKBONE,
        "weights": "w",
        "machine": {"load_average_before": [3.0]},
        "tallrec": {
            "fp32": {**row, "rows": 4, "p_yes": [0.9, 0.1, 0.8, 0.2], "labels": labels, "seconds_per_row": 1.0},
            "int8": {**row, "rows": 4, "p_yes": [0.9, 0.1, 0.05, 0.2], "labels": labels, "seconds_per_row": 0.5},  # AUC 0.5
        },
        "rerank": {
            "fp32": {"ndcg@10_per_user": [1.0], "seconds_per_user": 2.0, "users": 1},
            "int8": {"ndcg@10_per_user": [0.5], "seconds_per_user": 1.0, "users": 1},
        },
        "rerank_first_stage": "results/runs/x",
    }
    calls = []

    def child(kind, **kw):
        calls.append((kind, kw["option"]))
        if kind == "child_rerank":
            return {"ndcg@10_per_user": [0.75], "seconds_per_user": 0.5, "users": 1}
        return {**row, "rows": 4, "p_yes": [0.8, 0.3, 0.7, 0.1], "labels": labels, "seconds_per_row": 0.25}

    monkeypatch.setattr(bench, "_in_child", child)
    monkeypatch.setattr(bench, "_first_stage", lambda spec: "results/runs/x")
    out = bench.measure(4, 1, "w", options=("int8_smooth",), earlier=earlier)
    assert calls == [("child_tallrec", "int8_smooth"), ("child_rerank", "int8_smooth")]  # the reranker calibrates too
    assert list(out["tallrec"]) == ["fp32", "int8", "int8_smooth"] and list(out["rerank"]) == ["fp32", "int8", "int8_smooth"]
    assert out["rerank_vs_fp32"]["int8_smooth"]["ndcg@10_change"] == -0.25
    assert out["tallrec_vs_fp32"]["int8_smooth"]["auc_change"] == 0.0  # same ranking as fp32 on these rows
    assert out["tallrec_vs_fp32"]["int8"]["auc_change"] == -0.5 and out["rerank_vs_fp32"]["int8"]["ndcg@10_change"] == -0.5
    assert out["updated"]["options"] == ["int8_smooth"]
    with pytest.raises(ValueError, match="weights"):
        bench.measure(4, 1, "other", options=("int8_smooth",), earlier=earlier)


def test_bench_skips_8_bit_activation_options_on_a_cpu_without_vnni(monkeypatch):
    import benchmark.bench.precision as bench

    labels = [1, 0, 1, 0]
    row = {"prompt_tokens_mean": 10, "tokens_per_second": 1, "floor_seconds_per_row": 0.1, "peak_rss_mb": 1,
           "rows": 4, "p_yes": [0.8, 0.3, 0.7, 0.1], "labels": labels, "seconds_per_row": 0.25}
    calls = []
    monkeypatch.setattr(bench, "_in_child", lambda kind, **kw: calls.append((kind, kw["option"])) or dict(row))
    monkeypatch.setattr("benchmark.models.components.precision.cpu_flags", lambda: ["avx2"])
    out = bench.measure(4, 0, None, options=("fp32", "int8_vnni", "int8_smooth_vnni"))
    assert calls == [("child_tallrec", "fp32")]
    assert {"int8_smooth_vnni", "int8_vnni"} <= set(out["skipped"])  # (gguf too, where llama_cpp is absent)
    assert out["skipped"]["int8_vnni"].startswith("precision=int8_vnni: 8-bit activations need a CPU with VNNI")
    monkeypatch.setattr("benchmark.models.components.precision.cpu_flags", lambda: ["avx2", "avx512_vnni"])
    calls.clear()
    out = bench.measure(4, 0, None, options=("fp32", "int8_vnni", "int8_smooth_vnni"))
    assert calls == [("child_tallrec", o) for o in ("fp32", "int8_vnni", "int8_smooth_vnni")]
    assert not set(out["skipped"]) & {"int8_vnni", "int8_smooth_vnni"}
