"""Cost of one preference-alignment step per method, next to one SFT step (``make bench`` entry ``align``).

The setting is the committed alignment experiment (``experiment=align_ml100k``: MovieLens-100K
``loo``, P5 t5-tiny from scratch with collaborative ids, batch 8 for DPO/S-DPO/GRPO, batch 4
for PGRM, SFT batch 64 as the parents trained). Each method runs in a fresh child process that
builds the data, split and model exactly as a run does, takes ``warmup`` untimed steps and then
``steps`` timed ones, and reports the median and best seconds per step and its peak RSS
(``ru_maxrss``, so one method's memory never hides another's):

- ``sft``: one P5 training step (forward, cross-entropy of the target id, backward, AdamW);
- ``dpo`` / ``sdpo`` / ``grpo`` / ``pgrm``: one :class:`~benchmark.align.task.Aligner` step
  (negatives or generations, policy and reference log-probs, the loss, backward, AdamW; PGRM
  also asks its SmolLM2-135M judge about every generated list).

The weights are the model's initial ones, not a trained parent's: a step does the same work
whatever the weights' values (generation is trie-constrained to fixed-length ids), so the cost
is the same; this is recorded as ``weights: initial``. One torch thread, on CPU (on CUDA too
when present). Results go to ``<out_dir>/align_cost.json``.

Run: ``python -m benchmark.bench align`` or ``python -m benchmark.bench.align_cost --out results/perf``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmark.bench import write_result

OUT_NAME = "align_cost.json"
METHODS = ("sft", "dpo", "sdpo", "grpo", "pgrm")
EXPERIMENT = "align_ml100k"


def _overrides(method: str) -> list[str]:
    """The committed alignment experiment's overrides for ``method`` (the parent is not read)."""
    align = "dpo" if method == "sft" else method
    return [
        f"experiment={EXPERIMENT}",
        f"align={align}",
        "align.parent=unused",
        "seed=1",
        "trainer.accelerator=cpu",
    ]


def _sft_step(model: Any, cfg: Any, split: Any) -> Any:
    """A closure doing one SFT step on the model's own training windows (batch as the parents)."""
    import torch

    stream = iter(model.train_dataset(split, int(cfg.model.train.batch_size), int(cfg.seed)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()

    def step() -> None:
        loss = model.loss(next(stream))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(method: str, steps: int, warmup: int) -> dict[str, Any]:
    """Child side: build the run's model for ``method`` and time its steps."""
    import resource

    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from benchmark.align.config import AlignConfig
    from benchmark.align.stage import item_titles
    from benchmark.align.task import Aligner
    from benchmark.compose import compose
    from benchmark.run import _load, build_model

    torch.set_num_threads(1)
    cfg = compose(_overrides(method))
    t0 = time.perf_counter()
    _, data, split = _load(cfg)
    model = build_model(cfg.model, split, data, cfg.get("adapter"))
    build_seconds = time.perf_counter() - t0
    if method == "sft":
        step, batch = _sft_step(model, cfg, split), int(cfg.model.train.batch_size)
    else:
        acfg = AlignConfig.from_config(OmegaConf.to_container(cfg.align, resolve=True))
        titles = item_titles(data, split.item_ids) if method == "pgrm" else None
        aligner = Aligner(model, acfg, int(cfg.seed), "cpu", titles=titles)
        model.eval()  # as Aligner.run: dropout off in policy and reference alike

        def step() -> None:  # the body of Aligner.run's loop
            b = aligner.batch()
            if method in ("dpo", "sdpo"):
                aligner.preference_step(b)
            else:
                aligner.policy_step(b)

        batch = acfg.batch_size
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {
        "method": method,
        "batch_size": batch,
        "steps_timed": steps,
        "seconds_per_step_median": round(float(np.median(times)), 4),
        "seconds_per_step_best": round(float(np.min(times)), 4),
        "seconds_per_example": round(float(np.median(times)) / batch, 5),
        "build_seconds": round(build_seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _child(method: str, steps: int, warmup: int) -> dict[str, Any]:
    """Run :func:`measure` in a fresh interpreter (one torch thread) and parse its JSON line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "benchmark.bench.align_cost",
        "--child",
        method,
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = " ".join(done.stderr.strip().splitlines()[-1:])[:300]
        raise RuntimeError(f"align cost of {method}: child failed ({tail})")
    return json.loads(lines[-1])


def main(out_dir: Path, steps: int = 10, warmup: int = 2) -> dict[str, Any]:
    """Measure every method, write ``<out_dir>/align_cost.json`` and print a table."""
    rows = [_child(m, steps, warmup) for m in METHODS]
    sft = rows[0]["seconds_per_step_median"]
    for r in rows:
        r["x_sft_step"] = round(r["seconds_per_step_median"] / sft, 2) if sft else None
    result = {
        "setting": f"experiment={EXPERIMENT} (ml-100k loo, P5 t5-tiny-scratch, collaborative ids)",
        "weights": "initial (a step's work does not depend on the weights' values)",
        "device": "cpu",
        "torch_threads": 1,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg": list(os.getloadavg()),
        },
        "methods": rows,
    }
    write_result(Path(out_dir) / OUT_NAME, result)
    print(f"{'method':8} {'batch':>5} {'s/step':>8} {'x SFT':>6} {'peak RSS MB':>12}")
    for r in rows:
        print(
            f"{r['method']:8} {r['batch_size']:5d} {r['seconds_per_step_median']:8.3f} "
            f"{r['x_sft_step']:6.2f} {r['peak_rss_mb']:12.1f}"
        )
    return result


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.bench.align_cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("results/perf"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.warmup)))
        return 0
    main(args.out, args.steps, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
