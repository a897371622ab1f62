"""Training throughput on 1 and N processes (``trainer=ddp``) and the scaling efficiency.

On a GPU machine N = all visible GPUs (NCCL); otherwise N = 2 CPU processes (gloo), which on
a small CPU machine measures the overhead of the distributed path rather than a speed-up.
Written to ``results/perf/scaling.json`` with the machine it was measured on.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmark.bench import write_result

EPOCHS = 5
MODEL = ["model=bpr", f"model.train.max_epochs={EPOCHS}", "model.train.patience=1000"]


def _train(devices: int, accelerator: str, tmp: Path) -> dict:
    trainer = ["trainer=ddp", f"trainer.devices={devices}"] if devices > 1 else ["trainer=cpu" if accelerator == "cpu" else "trainer=gpu"]
    if devices > 1:
        trainer.append(f"trainer.accelerator={accelerator}")
    out = tmp / f"d{devices}"
    cmd = [sys.executable, "-m", "benchmark", "run", *MODEL, *trainer, "logger=none", "reuse_trained=false",
           "trainer.enable_progress_bar=false", f"paths.results={out}/res", f"paths.outputs={out}/out"]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True)
    rec = json.loads(next((out / "res" / "runs").glob("*/record.json")).read_text())
    rows = rec["split"]["stats"]["train_rows"]
    return {
        "devices": devices,
        "train_seconds": rec["training"]["seconds"],
        "epochs": rec["training"]["epochs"],
        "samples_per_s": rows * rec["training"]["epochs"] / rec["training"]["seconds"],
        "test_ndcg@10": rec["metrics"]["test/ndcg@10"],
    }


def main(out_dir: Path) -> dict:
    gpus = torch.cuda.device_count()
    accelerator, n = ("gpu", gpus) if gpus > 1 else ("cpu", 2)
    with tempfile.TemporaryDirectory() as tmp:
        one = _train(1, accelerator, Path(tmp))
        many = _train(n, accelerator, Path(tmp))
    result = {
        "benchmark": "scaling",
        "what": f"BPR on ml-100k (loo), {EPOCHS} epochs, batch 2048 split across processes",
        "machine": {"cpu_count": os.cpu_count(), "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)],
                    "platform": platform.platform(), "torch": torch.__version__},
        "accelerator": accelerator,
        "one": one,
        "many": many,
        "speedup": many["samples_per_s"] / one["samples_per_s"],
        "efficiency": many["samples_per_s"] / (one["samples_per_s"] * n),
    }
    write_result(out_dir / "scaling.json", result)
    print(f"scaling ({accelerator}): 1 -> {n} processes, speed-up {result['speedup']:.2f}, efficiency {result['efficiency']:.2f}")
    return result
