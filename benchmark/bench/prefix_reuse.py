"""TALLRec pair scoring with and without a shared key/value prefix, on the same rows, and the
prefix's cache read in place against repeated per row.

Two TALLRec workloads, the TALLRec-style scorer (SmolLM2-135M-Instruct, dequantized Q4_1, fp32,
zero-shot, prompt ``tallrec``, batches of 16):

- ``candidates``: the first ``users`` ml-100k ``loo`` test users each get their ``eval=candidates``
  list (the target and 19 negatives, ``sample_negatives`` with the default seed); a user's 20
  prompts share everything up to the target, computed once per user.
- ``labeled``: the first ``rows`` ``split=tallrec_movie`` test rows (``eval=labeled``, one pair a
  row) with ``icl_shots`` in-context examples drawn once per run (``icl_select=random``); the
  rows of a scoring batch share the instruction and the examples, computed once per batch.

Each workload gives P("Yes") of every pair with ``model.module.prefix_reuse`` on
(:func:`~benchmark.models.components.llm.shared_prefix_next_logits`; the rows read the prefix's
cache in place or through per-row copies, whichever the prompt-to-row length ratio favours,
:mod:`~benchmark.models.components.prefix_attention`), on with each of the two forced
(``reuse_in_place``, ``reuse_copied``) and off (every prompt on its own). Reported per mode: pairs per second, full-prompt tokens per second, tokens the
LM actually ran (the model's own count), CPU share; the largest |P(yes)| differences; and the
floor: a plain forward pass (last position only) of the same full prompts in the same batches,
without prompt building or answer reading.

A third workload, ``continuations`` (:func:`continuations`), times
:func:`~benchmark.models.components.llm.shared_prefix_logprobs` in place and copied on the shape
of a hybrid conversation turn (8 prompts of ~450 tokens, 24 continuations each).

One torch thread in a child process. Results go to ``<out_dir>/prefix_reuse.json``.

Run: ``python -m benchmark.bench prefix_reuse`` or
``python -m benchmark.bench.prefix_reuse --users 10 --rows 64``; ``--readme README.md`` (without
running anything) writes the measured sentences from ``prefix_reuse.json`` between the README's
``prefix-reuse`` markers.
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
from benchmark.util import write_marked_block

OUT_NAME = "prefix_reuse.json"
START, END = "<!-- prefix-reuse:start -->", "<!-- prefix-reuse:end -->"
BACKBONE = "smollm2-135m-instruct"
NEGATIVES = 19
BATCH = 16
ICL_SHOTS = 2
REPO = Path(__file__).resolve().parents[2]


def child(users: int, rows: int, icl_shots: int = ICL_SHOTS) -> dict[str, Any]:
    """Both workloads, each in both modes with its floor (see the module docstring)."""
    import numpy as np
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from benchmark.bench.precision import _movielens
    from benchmark.config import EvalConfig, SplitConfig
    from benchmark.data.splits import build_split, build_tallrec_movie
    from benchmark.data.views import ranking_rows, sample_negatives
    from benchmark.models.tallrec import TallRec

    data = _movielens()
    prompt = instantiate(OmegaConf.load(REPO / "configs" / "prompt" / "tallrec.yaml"))
    out: dict[str, Any] = {}
    split = build_split(data, SplitConfig(protocol="loo"))
    test = ranking_rows(split, "test")
    negatives = sample_negatives(split, test, NEGATIVES, EvalConfig().negatives_seed)[:users]
    u = torch.as_tensor(test.users[:users])
    items = torch.as_tensor(np.c_[test.targets[:users], negatives])
    model = TallRec(split, data, BACKBONE, prompt, lora=None, seed=1, dtype="float32", score_batch_size=BATCH).eval()
    model.score_pairs(u[:1], items[:1, :2])  # warm-up
    out["candidates"] = {"users": users, **measure(model, u, items)}
    out["continuations"] = continuations()
    split = build_tallrec_movie(data, SplitConfig())
    labeled = split.test.iloc[:rows]
    model = TallRec(
        split, data, BACKBONE, prompt, lora=None, seed=1, dtype="float32", score_batch_size=BATCH, icl_shots=icl_shots
    ).eval()
    u = torch.as_tensor(labeled["user"].to_numpy(copy=True))
    items = torch.as_tensor(labeled["item"].to_numpy(copy=True))[:, None]
    model.score_pairs(u[:2], items[:2])  # warm-up
    out["labeled"] = {"split": "tallrec_movie", "rows": len(labeled), "icl_shots": icl_shots, "icl_select": "random",
                      **measure(model, u, items)}
    return out


def measure(model: Any, users: Any, items: Any) -> dict[str, Any]:
    """Time ``model.score_pairs(users, items)`` with prefix reuse on and off, and the floor.

    Args:
        model: a :class:`~benchmark.models.tallrec.TallRec` in eval mode.
        users: [U] user indices; items: [U, C] candidate item indices per user (C = 1: labeled rows).
    """
    import torch

    from benchmark.models.components.llm import left_pad, next_token_logits
    from benchmark.models.components.prefix_attention import prefix_mode

    texts = [model._prompt(int(a), int(b)) for a, row in zip(users.tolist(), items.tolist(), strict=True) for b in row]
    seqs = model._tokens(texts)
    tokens = sum(len(s) for s in seqs)
    out: dict[str, Any] = {"pairs": len(seqs), "prompt_tokens_mean": round(tokens / len(seqs), 1)}
    scores = {}
    modes = (("reuse", True, "auto"), ("reuse_in_place", True, "in_place"), ("reuse_copied", True, "copied"),
             ("plain", False, "auto"))
    for mode, reuse, path in modes:
        model.prefix_reuse = reuse
        before = model.tokens_run
        c0, t0 = time.process_time(), time.perf_counter()
        with prefix_mode(path):
            scores[mode] = model.score_pairs(users, items)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[mode] = {
            "seconds": round(wall, 3),
            "pairs_per_second": round(len(seqs) / wall, 3),
            "prompt_tokens_per_second": round(tokens / wall, 1),
            "tokens_run": model.tokens_run - before,
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
    out["speedup_in_place"] = round(out["reuse_copied"]["seconds"] / out["reuse_in_place"]["seconds"], 2)
    out["max_abs_p_yes_diff"] = float((scores["reuse"] - scores["plain"]).abs().max())
    out["max_abs_p_yes_diff_copied"] = float((scores["reuse_in_place"] - scores["reuse_copied"]).abs().max())
    return out


def continuations(
    prompts: int = 8, prompt_tokens: int = 450, per_prompt: int = 24, seed: int = 0, backbone: str = BACKBONE
) -> dict[str, Any]:
    """Summed log-probabilities of several continuations per prompt (the hybrid conversation's
    turn: 8 dialogue prompts, each with 3 questions, RECOMMEND and 20 titles), the prompts' cache
    read in place against repeated per continuation. Random token ids of SmolLM2's vocabulary:
    prompts of ``prompt_tokens`` minus 0-7 x 7 tokens, continuations of 2-13 tokens."""
    import torch

    from benchmark.models.components.llm import load_causal_lm, shared_prefix_logprobs
    from benchmark.models.components.prefix_attention import prefix_mode

    lm = load_causal_lm(backbone, "float32", "cpu").model.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    top = min(40000, int(lm.config.vocab_size))
    ids = [torch.randint(3, top, (prompt_tokens - 7 * b,), generator=g).tolist() for b in range(prompts)]
    conts = [
        [torch.randint(3, top, (2 + (i * 7 + b) % 12,), generator=g).tolist() for i in range(per_prompt)]
        for b in range(prompts)
    ]
    shared_prefix_logprobs(lm, ids[:1], conts[:1], 0)  # warm-up
    out: dict[str, Any] = {"prompts": prompts, "prompt_tokens_mean": round(sum(map(len, ids)) / prompts, 1),
                           "continuations": prompts * per_prompt,
                           "continuation_tokens": sum(len(c) for cs in conts for c in cs)}
    found = {}
    for mode in ("in_place", "copied"):
        t0 = time.perf_counter()
        with prefix_mode(mode):
            found[mode] = torch.cat(shared_prefix_logprobs(lm, ids, conts, 0))
        out[mode] = {"seconds": round(time.perf_counter() - t0, 3)}
    out["speedup_in_place"] = round(out["copied"]["seconds"] / out["in_place"]["seconds"], 2)
    out["max_abs_logprob_diff"] = float((found["in_place"] - found["copied"]).abs().max())
    out["max_rel_logprob_diff"] = float(((found["in_place"] - found["copied"]).abs() / found["copied"].abs()).max())
    return out


def main(out_dir: Path, users: int = 10, rows: int = 64) -> dict[str, Any]:
    """Run :func:`child` in a one-thread child process and write ``prefix_reuse.json``."""
    load = os.getloadavg()[0]
    measured = in_child("benchmark.bench.prefix_reuse", "child", "prefix_reuse", users=users, rows=rows)
    result = {
        "what": "TALLRec-style P(yes) with and without prefix reuse: ml-100k loo candidate lists (1 + 19) "
                "and tallrec_movie labeled rows with fixed in-context examples",
        "backbone": f"{BACKBONE} (dequantized Q4_1 GGUF, fp32, zero-shot)",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": 1, "load_average_start": round(load, 2),
                    "load_average_end": round(os.getloadavg()[0], 2)},
        **measured,
    }
    write_result(Path(out_dir) / OUT_NAME, result)
    print(json.dumps({w: {k: result[w][k] for k in ("pairs", "speedup", "speedup_in_place", "max_abs_p_yes_diff")}
                      for w in ("candidates", "labeled")}))
    print(json.dumps(result["continuations"]))
    return result


def summary(result: dict[str, Any]) -> str:
    """The README's sentences on a ``prefix_reuse.json`` result: one per workload."""
    m = result["machine"]
    out = [f"Prefix reuse, measured with one thread (load average {m['load_average_start']}-{m['load_average_end']} "
           f"on the shared machine; {result['backbone']}):"]
    names = {"candidates": "candidate lists ({users} users, 1 + 19 each)",
             "labeled": "labeled rows ({rows} {split} test rows, {icl_shots} fixed in-context examples)"}
    for key, name in names.items():
        w = result[key]
        out.append(
            f"- {name.format(**w)}, {w['pairs']} pairs of {w['prompt_tokens_mean']} prompt tokens on average: "
            f"{w['reuse']['pairs_per_second']} pairs/s with the shared prefix against {w['plain']['pairs_per_second']} "
            f"without ({w['speedup']}x; the LM ran {w['reuse']['tokens_run']:,} instead of {w['plain']['tokens_run']:,} "
            f"tokens), {w['speedup_vs_floor']}x a plain forward pass of the full prompts "
            f"({w['floor']['prompt_tokens_per_second']} prompt tokens/s); P(\"Yes\") differs by "
            f"{w['max_abs_p_yes_diff']:.1e} at most. Reading the prefix's cache in place: "
            f"{w['reuse_in_place']['pairs_per_second']} pairs/s against {w['reuse_copied']['pairs_per_second']} with it "
            f"repeated per row ({w['speedup_in_place']}x; P(\"Yes\") differs by {w['max_abs_p_yes_diff_copied']:.1e} "
            f"at most)."
        )
    c = result["continuations"]
    out.append(
        f"- continuations ({c['prompts']} prompts of {c['prompt_tokens_mean']} tokens on average, {c['continuations']} "
        f"continuations of {c['continuation_tokens']:,} tokens in all, summed log-probabilities): "
        f"{c['in_place']['seconds']} s with the prompts' cache read in place against {c['copied']['seconds']} s "
        f"with it repeated per continuation ({c['speedup_in_place']}x; log-probabilities differ by "
        f"{c['max_rel_logprob_diff']:.1e} relative at most)."
    )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    ap.add_argument("--readme", type=Path, help=f"write the sentences of <out>/{OUT_NAME} between {START} and {END}")
    a = ap.parse_args()
    if a.readme is None:
        main(a.out, a.users, a.rows)
    else:
        write_marked_block(a.readme, START, END, summary(json.loads((a.out / OUT_NAME).read_text())))
