"""CPU time and peak memory of LLM training steps with and without gradient checkpointing.

LLaRA in text mode (``experiment=llara_ml100k model.module.mode=text adapter=none``: SmolLM2-135M
dequantized to fp32, LoRA r=8 on q/k/v/o, batches of 8 candidate-list prompts from ml-100k loo
train windows) runs the same ``steps`` AdamW steps on the same batches once with
``model.module.gradient_checkpointing=false`` and once with ``true``, each in a fresh one-thread
child process (its own peak RSS, ``ru_maxrss``, which includes loading the model). Reported per
mode: CPU seconds per step (``time.process_time``, robust to a shared machine), tokens per batch,
peak RSS; and the ratio of the two.

Results go to ``<out_dir>/checkpointing.json``.
Run: ``python -m benchmark.bench checkpointing`` or ``python -m benchmark.bench.checkpointing --steps 3``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from benchmark.bench import in_child, write_result

OUT_NAME = "checkpointing.json"
BATCH = 8


def child(on: bool, steps: int) -> dict[str, Any]:
    """``steps`` training steps of LLaRA (text mode) with checkpointing ``on`` or off."""
    import resource
    import time

    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from benchmark.bench.precision import _movielens
    from benchmark.compose import compose
    from benchmark.config import SplitConfig
    from benchmark.data.splits import build_split
    from benchmark.models.llara import LLaRA

    cfg = compose(["experiment=llara_ml100k", "seed=1", "model.module.mode=text", "adapter=none"])
    module = OmegaConf.to_container(cfg.model.module, resolve=True)
    module.pop("_target_")
    module["gradient_checkpointing"] = on
    data = _movielens()
    split = build_split(data, SplitConfig(protocol="loo"))
    torch.manual_seed(1)
    model = LLaRA(split, data, seed=1, **module).train()
    users, ends = model._windows()
    pick = np.random.default_rng(0).permutation(len(users))[: steps * BATCH]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    seconds, tokens = [], []
    for b in range(steps):
        idx = pick[b * BATCH : (b + 1) * BATCH]
        batch = model.collate(users[idx], ends[idx], np.zeros(len(idx), int), epoch=0, batch=b, progress=0.0)
        c0 = time.process_time()
        model.loss(batch).backward()
        opt.step()
        opt.zero_grad()
        seconds.append(round(time.process_time() - c0, 2))
        tokens.append(int(batch["attention_mask"].sum()))
    return {
        "checkpointing": on,
        "cpu_s_per_step": seconds,
        "tokens_per_batch": tokens,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def summarize(off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    """Both modes and the ratios (mean CPU seconds per step, peak RSS) of on against off."""
    mean = lambda r: sum(r["cpu_s_per_step"]) / len(r["cpu_s_per_step"])  # noqa: E731
    return {
        "off": off,
        "on": on,
        "cpu_time_ratio": round(mean(on) / mean(off), 2),
        "peak_rss_ratio": round(on["peak_rss_mb"] / off["peak_rss_mb"], 2),
    }


def main(out_dir: Path, steps: int = 3) -> dict[str, Any]:
    """Run both modes in one-thread child processes, one after the other; write the result."""
    results = {
        on: in_child("benchmark.bench.checkpointing", "child", f"checkpointing {'on' if on else 'off'}", on=on, steps=steps)
        for on in (False, True)
    }
    result = {
        "what": "LLaRA text-mode training steps (SmolLM2-135M fp32 + LoRA, batch 8, ml-100k loo), "
        "gradient checkpointing off vs on, same batches",
        "load_average": round(os.getloadavg()[0], 2),
        **summarize(results[False], results[True]),
    }
    write_result(Path(out_dir) / OUT_NAME, result)
    print(json.dumps({k: result[k] for k in ("cpu_time_ratio", "peak_rss_ratio")}))
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    a = ap.parse_args()
    main(a.out, a.steps)
