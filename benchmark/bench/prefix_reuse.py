"""TALLRec pair scoring of candidate lists with and without the shared key/value prefix.

On ml-100k ``loo``, the first ``users`` test users each get their ``eval=candidates`` list (the
target and 19 negatives, ``sample_negatives`` with the default seed), and the TALLRec-style scorer
(SmolLM2-135M-Instruct, dequantized Q4_1, fp32, zero-shot, prompt ``tallrec``) gives P("Yes") of
every (user, candidate) pair twice on the same rows: ``model.module.prefix_reuse`` on (each user's
shared prompt part computed once, :func:`~benchmark.models.components.llm.shared_prefix_next_logits`)
and off (every prompt on its own, batches of 16). Reported per mode: pairs per second, full-prompt
tokens per second, tokens the LM actually ran, CPU share; the largest |P(yes)| difference between
the two; and the floor: a plain forward pass (last position only) of the same full prompts in
the same batches, without prompt building or answer reading.

One torch thread in a child process. Results go to ``<out_dir>/prefix_reuse.json``.

Run: ``python -m benchmark.bench prefix_reuse`` or
``python -m benchmark.bench.prefix_reuse --users 10``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from benchmark.bench import in_child, write_result

OUT_NAME = "prefix_reuse.json"
BACKBONE = "smollm2-135m-instruct"
NEGATIVES = 19
BATCH = 16
REPO = Path(__file__).resolve().parents[2]


def child(users: int) -> dict[str, Any]:
    """Both modes and the floor on the first ``users`` ml-100k loo test users' candidate lists."""
    import numpy as np
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from benchmark.bench.precision import _movielens
    from benchmark.config import EvalConfig, SplitConfig
    from benchmark.data.splits import build_split
    from benchmark.data.views import ranking_rows, sample_negatives
    from benchmark.models.tallrec import TallRec

    data = _movielens()
    split = build_split(data, SplitConfig(protocol="loo"))
    rows = ranking_rows(split, "test")
    negatives = sample_negatives(split, rows, NEGATIVES, EvalConfig().negatives_seed)[:users]
    u = torch.as_tensor(rows.users[:users])
    items = torch.as_tensor(np.c_[rows.targets[:users], negatives])
    prompt = instantiate(OmegaConf.load(REPO / "configs" / "prompt" / "tallrec.yaml"))
    model = TallRec(split, data, BACKBONE, prompt, lora=None, seed=1, dtype="float32", score_batch_size=BATCH).eval()
    model.score_pairs(u[:1], items[:1, :2])  # warm-up
    return measure(model, u, items)


def measure(model: Any, users: Any, items: Any) -> dict[str, Any]:
    """Time ``model.score_pairs(users, items)`` with prefix reuse on and off, and the floor.

    Args:
        model: a :class:`~benchmark.models.tallrec.TallRec` in eval mode.
        users: [U] user indices; items: [U, C] candidate item indices per user.
    """
    import torch

    from benchmark.models.components.llm import common_prefix_length, left_pad, next_token_logits

    texts = [model._prompt(int(a), int(b)) for a, row in zip(users.tolist(), items.tolist(), strict=True) for b in row]
    seqs = model._tokens(texts)
    tokens = sum(len(s) for s in seqs)
    size = items.shape[1]
    ran = 0
    for g in range(len(users)):
        group = seqs[g * size : (g + 1) * size]
        cut = common_prefix_length(group)
        ran += cut + sum(len(s) - cut for s in group)
    out: dict[str, Any] = {"users": len(users), "pairs": len(seqs), "prompt_tokens_mean": round(tokens / len(seqs), 1)}
    scores = {}
    for mode, reuse in (("reuse", True), ("plain", False)):
        model.prefix_reuse = reuse
        c0, t0 = time.process_time(), time.perf_counter()
        scores[mode] = model.score_pairs(users, items)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[mode] = {
            "seconds": round(wall, 3),
            "pairs_per_second": round(len(seqs) / wall, 3),
            "prompt_tokens_per_second": round(tokens / wall, 1),
            "tokens_run": ran if reuse else tokens,
            "cpu_per_wall": round(cpu / wall, 2),
        }
    model.prefix_reuse = True
    order = sorted(range(len(seqs)), key=lambda r: len(seqs[r]))
    t0 = time.perf_counter()
    with torch.no_grad():  # the floor: the same full prompts through the LM, nothing else
        for start in range(0, len(order), BATCH):
            batch = [seqs[r] for r in order[start : start + BATCH]]
            next_token_logits(model.lm, left_pad(batch, model.tokenizer.pad_token_id))
    floor = time.perf_counter() - t0
    out["floor"] = {"seconds": round(floor, 3), "prompt_tokens_per_second": round(tokens / floor, 1)}
    out["speedup"] = round(out["plain"]["seconds"] / out["reuse"]["seconds"], 2)
    out["speedup_vs_floor"] = round(floor / out["reuse"]["seconds"], 2)
    out["max_abs_p_yes_diff"] = float((scores["reuse"] - scores["plain"]).abs().max())
    return out


def main(out_dir: Path, users: int = 10) -> dict[str, Any]:
    """Run :func:`child` in a one-thread child process and write ``prefix_reuse.json``."""
    load = os.getloadavg()[0]
    measured = in_child("benchmark.bench.prefix_reuse", "child", "prefix_reuse", users=users)
    result = {
        "what": "TALLRec-style P(yes) of ml-100k loo candidate lists (1 + 19), with and without prefix reuse",
        "backbone": f"{BACKBONE} (dequantized Q4_1 GGUF, fp32, zero-shot)",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": 1, "load_average_start": round(load, 2),
                    "load_average_end": round(os.getloadavg()[0], 2)},
        **measured,
    }
    write_result(Path(out_dir) / OUT_NAME, result)
    print(json.dumps({k: result[k] for k in ("users", "pairs", "speedup", "max_abs_p_yes_diff")}))
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    a = ap.parse_args()
    main(a.out, a.users)
