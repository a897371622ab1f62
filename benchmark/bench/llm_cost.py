"""Memory and speed of the TALLRec-style LLM recommender: dequantize/load, scoring, LoRA training.

Each measurement runs in a fresh child process, which reports its own wall times and peak RSS
(``ru_maxrss``), so one measurement's memory never hides another's:

- ``dequantize``: the SmolLM2-135M-Instruct Q4_1 GGUF dequantized to an fp32 safetensors
  folder in a temporary cache (what the first run on a machine pays once);
- ``load``: loading that folder (every later run);
- ``score``: P("Yes") of real TALLRec prompts (``split=tallrec_movie`` test rows, prompt
  ``tallrec``) in batches of 16, left-padded, every prompt run in full (``prefix_reuse`` off,
  measured on its own by ``prefix_reuse``); seconds per row and tokens per second;
- ``train``: LoRA (r=8, alpha=16, q_proj/v_proj) training steps of batch 8 on train rows:
  forward, cross-entropy of the answer token, backward, AdamW step.

On CPU always (fp32); on CUDA too when a GPU is present (bf16 when supported, plus peak GPU
memory). Results go to ``<out_dir>/llm_cost.json``. A shared machine slows every number down,
so each timed section also reports per-batch/per-step times (the best one is the closest to an
idle machine), the CPU time it got (``cpu_per_wall``: process CPU seconds
per wall second, at most the torch thread count on an idle machine) and the load average.

Run: ``python -m benchmark.bench llm_cost`` or ``python -m benchmark.bench.llm_cost --out results/perf``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmark.bench import write_result

OUT_NAME = "llm_cost.json"
BACKBONE = "smollm2-135m-instruct"
SCORE_BATCH = 16
TRAIN_BATCH = 8
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
PROMPT = Path(__file__).resolve().parents[2] / "configs" / "prompt" / "tallrec.yaml"


# ----------------------------------------------------------------------------- children


def _cpu_share(cpu_seconds: float, wall_seconds: float) -> dict[str, Any]:
    """How much CPU the timed section got: process CPU seconds / wall seconds (at most the torch
    thread count when nothing else competes), and the load average right after it."""
    import torch

    return {
        "cpu_seconds": round(cpu_seconds, 2),
        "cpu_per_wall": round(cpu_seconds / wall_seconds, 2) if wall_seconds else None,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _model(device: str, cache_dir: str | None) -> Any:
    """A TallRec on split=tallrec_movie (ml-100k) with the tallrec prompt and LoRA q/v r=8."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from benchmark.config import DataConfig, SplitConfig
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_tallrec_movie
    from benchmark.models.tallrec import TallRec

    data = load_dataset(
        DataConfig(
            name="ml-100k", item_fields={"title": "movie_title", "year": "release_year", "genres": "class"}
        )
    )
    split = build_tallrec_movie(data, SplitConfig())  # TALLRec's defaults (history 10, last 10,000 rows)
    prompt = instantiate(OmegaConf.load(PROMPT))
    accelerator = "gpu" if device == "cuda" else "cpu"
    model = TallRec(
        split,
        data,
        BACKBONE,
        prompt,
        lora=LORA,
        shots="all",
        seed=0,
        accelerator=accelerator,
        score_batch_size=SCORE_BATCH,
        cache_dir=cache_dir,
    )
    return model.to(torch.device(device)), split


def child_load(cache_dir: str) -> dict[str, Any]:
    """Dequantize (empty cache) or load (filled cache) the backbone once."""
    from benchmark.models.components.llm import load_causal_lm

    t0 = time.perf_counter()
    lm = load_causal_lm(BACKBONE, "float32", "cpu", cache_dir)
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "cache": lm.facts.get("cache"),
        "dequantize_seconds": lm.facts.get("dequantize_seconds"),
        "params_total": lm.facts["params_total"],
        "peak_rss_mb": _peak_rss_mb(),
    }


def child_score(device: str, batches: int, cache_dir: str | None) -> dict[str, Any]:
    """Seconds per row of P("Yes") scoring, batch 16, real TALLRec prompts."""
    import torch

    model, split = _model(device, cache_dir)
    model.eval()
    model.prefix_reuse = False  # the cost of every prompt in full; reuse is the prefix_reuse bench
    test = split.test
    n = SCORE_BATCH * batches
    prompts = [
        model._prompt(int(u), int(i))
        for u, i in zip(test["user"][: n + 2], test["item"][: n + 2], strict=True)
    ]
    tokens = [len(s) for s in model._tokens(prompts[2:])]
    model.p_yes(prompts[:2])  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    c0 = time.process_time()
    for start in range(2, n + 2, SCORE_BATCH):
        t0 = time.perf_counter()
        model.p_yes(prompts[start : start + SCORE_BATCH])
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    dt, cpu = sum(times), time.process_time() - c0
    return {
        "rows": n,
        "batch_size": SCORE_BATCH,
        "prompt_tokens_mean": round(sum(tokens) / len(tokens), 1),
        "prompt_tokens_max": max(tokens),
        "seconds_per_batch": [round(t, 3) for t in times],
        "seconds_per_row": round(dt / n, 4),
        "seconds_per_row_best_batch": round(min(times) / SCORE_BATCH, 4),
        "tokens_per_second": round(sum(tokens) / dt, 1),
        "cpu_share": _cpu_share(cpu, dt),
        "dtype": model.lm_facts["dtype"],
        "peak_rss_mb": _peak_rss_mb(),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
    }


def child_train(device: str, steps: int, cache_dir: str | None) -> dict[str, Any]:
    """Seconds per LoRA training step (batch 8): forward, loss, backward, AdamW step."""
    import torch

    model, split = _model(device, cache_dir)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    stream = iter(model.train_dataset(split, TRAIN_BATCH, 0))
    batches = [next(stream) for _ in range(steps)]

    def step(batch: dict) -> None:
        loss = model.loss({k: v.to(device) for k, v in batch.items()})
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step({k: v[:2] for k, v in batches[0].items()})  # warm-up on two rows
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    c0 = time.process_time()
    for b in batches:
        t0 = time.perf_counter()
        step(b)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - c0
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    mean = sum(times) / len(times)
    return {
        "steps": steps,
        "batch_size": TRAIN_BATCH,
        "lora": LORA,
        "params_trainable": sum(p.numel() for p in params),
        "prompt_tokens_mean": round(sum(tokens) / (len(batches) * TRAIN_BATCH), 1),
        "seconds_per_step": [round(t, 3) for t in times],
        "seconds_per_step_mean": round(mean, 3),
        "seconds_per_row": round(mean / TRAIN_BATCH, 4),
        "seconds_per_step_min": round(min(times), 3),
        "cpu_share": _cpu_share(cpu, sum(times)),
        "dtype": model.lm_facts["dtype"],
        "peak_rss_mb": _peak_rss_mb(),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
    }


# ----------------------------------------------------------------------------- parent


def _in_child(fn: str, **kwargs: Any) -> dict[str, Any]:
    code = (
        "import json, sys\n"
        f"from benchmark.bench.llm_cost import {fn}\n"
        f"print('@@RESULT ' + json.dumps({fn}(**json.loads(sys.argv[1]))), flush=True)\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"llm_cost {fn} failed (exit {proc.returncode}): {tail[0]}")
    out = json.loads(lines[-1][len("@@RESULT ") :])
    out["child_wall_seconds"] = round(time.perf_counter() - t0, 2)
    return out


def measure(score_batches: int = 2, train_steps: int = 3, cache_dir: str | None = None) -> dict[str, Any]:
    """Every measurement, CPU first, then CUDA when available.

    Args:
        score_batches: timed scoring batches of 16 rows per device.
        train_steps: timed training steps of 8 rows per device.
        cache_dir: cache root holding (or receiving) the dequantized backbone for the score and
            train children (default ``$LLM4REC_CACHE`` or ``.cache/llm4rec``).
    """
    import torch

    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "backbone": BACKBONE,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_before": [round(x, 2) for x in load_before],
        },
    }
    with tempfile.TemporaryDirectory(prefix="llm_cost_") as fresh:
        result["dequantize"] = _in_child("child_load", cache_dir=fresh)  # empty cache: dequantize + save
        result["load"] = _in_child("child_load", cache_dir=fresh)  # filled cache: load only
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        result[device] = {
            "score": _in_child("child_score", device=device, batches=score_batches, cache_dir=cache_dir),
            "train": _in_child("child_train", device=device, steps=train_steps, cache_dir=cache_dir),
        }
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main(out_dir: Path, score_batches: int = 2, train_steps: int = 3) -> dict[str, Any]:
    """Measure and write ``<out_dir>/llm_cost.json``; returns what was written."""
    result = measure(score_batches, train_steps)
    out_dir = Path(out_dir)
    write_result(out_dir / OUT_NAME, result)
    cpu = result["cpu"]
    print(
        f"llm_cost: dequantize {result['dequantize']['seconds']}s, load {result['load']['seconds']}s, "
        f"score {cpu['score']['seconds_per_row']} s/row (best batch {cpu['score']['seconds_per_row_best_batch']}), "
        f"train {cpu['train']['seconds_per_step_mean']} s/step (best {cpu['train']['seconds_per_step_min']}) "
        f"-> {out_dir / OUT_NAME}"
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.bench.llm_cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("results/perf"))
    parser.add_argument("--score-batches", type=int, default=2, help="timed scoring batches of 16 rows")
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps of 8 rows")
    a = parser.parse_args()
    main(a.out, a.score_batches, a.train_steps)
