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

A listwise workload, ``rerank`` (:func:`rerank`): the reranker
(:class:`~benchmark.models.llm_rerank.LLMRerank`) over the committed SASRec seed-1 run's top 20
for the first ``rerank_users`` ml-100k ``loo`` test users, candidates in random order, after 2
in-context examples drawn once per run (the ``random`` arm of
``configs/experiment/prompt_selection_rerank_ml100k.yaml``), 4 users per batch: the scores with
the instruction and examples run once for the run (``prefix_reuse``, :class:`~benchmark.models.
components.llm.PromptPrefix`) and with every prompt run whole (each prompt's candidates read its
cache either way).

A third workload, ``continuations`` (:func:`continuations`), times
:func:`~benchmark.models.components.llm.shared_prefix_logprobs` in place and copied on the shape
of a hybrid conversation turn (8 prompts of ~450 tokens, 24 continuations each).

One torch thread in a child process. Results go to ``<out_dir>/prefix_reuse.json``.

Run: ``python -m benchmark.bench prefix_reuse`` or
``python -m benchmark.bench.prefix_reuse --users 10 --rows 64 --rerank-users 12``; ``--only rerank``
(or ``candidates,labeled,continuations``) reruns those workloads and keeps the others of an
existing ``prefix_reuse.json`` (each workload states the load average it ran under); ``--readme README.md`` (without
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
WORKLOADS = ("candidates", "labeled", "continuations", "rerank")
FIRST_STAGE = "results/runs/ml-100k-loo-full-sasrec-recbole-s1-5b4ecd46"  # the reranker experiments' first stage


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def child(users: int, rows: int, icl_shots: int = ICL_SHOTS, rerank_users: int = 12,
          parts: list[str] | tuple[str, ...] = WORKLOADS) -> dict[str, Any]:
    """The workloads named in ``parts``, each in its modes (see the module docstring)."""
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
    out: dict[str, Any] = {}
    split = build_split(data, SplitConfig(protocol="loo"))
    test = ranking_rows(split, "test")
    if "rerank" in parts:
        from benchmark.models.llm_rerank import LLMRerank

        listwise = instantiate(OmegaConf.load(REPO / "configs" / "prompt" / "rerank_listwise.yaml"))
        start = _load()
        model = LLMRerank(split, data, first_stage=str(REPO / FIRST_STAGE), backbone=BACKBONE, prompt=listwise,
                          order="random", icl_shots=2, icl_select="random", icl_candidates=5, icl_history=5, seed=1,
                          dtype="float32").eval()
        out["rerank"] = {**rerank(model, [int(u) for u in test.users[:rerank_users]]),
                         "load_average": [start, _load()]}
    if not {"candidates", "labeled", "continuations"} & set(parts):
        return out
    prompt = instantiate(OmegaConf.load(REPO / "configs" / "prompt" / "tallrec.yaml"))
    negatives = sample_negatives(split, test, NEGATIVES, EvalConfig().negatives_seed)[:users]
    u = torch.as_tensor(test.users[:users])
    items = torch.as_tensor(np.c_[test.targets[:users], negatives])
    model = TallRec(split, data, BACKBONE, prompt, lora=None, seed=1, dtype="float32", score_batch_size=BATCH).eval()
    model.score_pairs(u[:1], items[:1, :2])  # warm-up
    if "candidates" in parts:
        start = _load()
        out["candidates"] = {"users": users, **measure(model, u, items), "load_average": [start, _load()]}
    if "continuations" in parts:
        start = _load()
        out["continuations"] = {**continuations(), "load_average": [start, _load()]}
    if "labeled" not in parts:
        return out
    split = build_tallrec_movie(data, SplitConfig())
    labeled = split.test.iloc[:rows]
    model = TallRec(
        split, data, BACKBONE, prompt, lora=None, seed=1, dtype="float32", score_batch_size=BATCH, icl_shots=icl_shots
    ).eval()
    u = torch.as_tensor(labeled["user"].to_numpy(copy=True))
    items = torch.as_tensor(labeled["item"].to_numpy(copy=True))[:, None]
    model.score_pairs(u[:2], items[:2])  # warm-up
    start = _load()
    out["labeled"] = {"split": "tallrec_movie", "rows": len(labeled), "icl_shots": icl_shots, "icl_select": "random",
                      **measure(model, u, items), "load_average": [start, _load()]}
    return out


def rerank(model: Any, users: list[int]) -> dict[str, Any]:
    """Time the reranker's scoring of ``users`` (``user_batch_size`` per batch) with the prompts'
    shared prefix run once (``prompt_prefix``) and with every prompt run whole, on the same users.

    Args:
        model: a :class:`~benchmark.models.llm_rerank.LLMRerank` in eval mode with a first stage.
        users: test user indices.
    """
    import numpy as np

    from benchmark.models.components.llm import PromptPrefix

    model._score_users(users[:1])  # warm-up (tokenizer, first allocations); scored again below
    found: dict[str, dict[int, np.ndarray]] = {}
    out: dict[str, Any] = {"users": len(users), "user_batch_size": model.user_batch_size, "top_n": model.top_n,
                           "icl_shots": model.icl_shots, "icl_select": model.icl_select}
    for mode in ("plain", "reuse"):
        model.prompt_prefix = PromptPrefix() if mode == "reuse" else None
        model._scores, model._token_stats = {}, [0, 0, 0]
        t0 = time.perf_counter()
        for start in range(0, len(users), model.user_batch_size):
            model._score_users(users[start : start + model.user_batch_size])
        wall = time.perf_counter() - t0
        prompts, tokens, _ = model._token_stats
        saved = model.prompt_prefix.reused_tokens if model.prompt_prefix is not None else 0
        out[mode] = {"seconds": round(wall, 3), "users_per_second": round(len(users) / wall, 3),
                     "prompt_tokens_per_second": round(tokens / wall, 1), "prompt_tokens_run": tokens - saved}
        found[mode] = dict(model._scores)
        out["prompt_tokens_mean"] = round(tokens / prompts, 1)
    out["prefix_tokens"] = len(model.prompt_prefix.tokens)
    out["speedup"] = round(out["plain"]["seconds"] / out["reuse"]["seconds"], 2)
    out["max_abs_score_diff"] = float(max(np.abs(found["reuse"][u] - found["plain"][u]).max() for u in users))
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


def main(out_dir: Path, users: int = 10, rows: int = 64, rerank_users: int = 12,
         only: list[str] | None = None) -> dict[str, Any]:
    """Run :func:`child` in a one-thread child process and write ``prefix_reuse.json`` (with
    ``only``: those workloads, the others kept from the existing file)."""
    parts = list(only or WORKLOADS)
    unknown = sorted(set(parts) - set(WORKLOADS))
    if unknown:
        raise SystemExit(f"prefix_reuse --only: unknown workload(s) {unknown} (one of {list(WORKLOADS)})")
    path = Path(out_dir) / OUT_NAME
    kept: dict[str, Any] = {}
    if only and path.is_file():
        before = json.loads(path.read_text())
        was = before.get("machine", {})
        for k in WORKLOADS:
            if k in before and k not in parts:  # a workload measured before loads were kept per workload
                kept[k] = {"load_average": [was.get("load_average_start"), was.get("load_average_end")], **before[k]}
    load = os.getloadavg()[0]
    measured = in_child("benchmark.bench.prefix_reuse", "child", "prefix_reuse", users=users, rows=rows,
                        rerank_users=rerank_users, parts=parts)
    result = {
        "what": "TALLRec-style P(yes) with and without prefix reuse: ml-100k loo candidate lists (1 + 19) "
                "and tallrec_movie labeled rows with fixed in-context examples; the listwise reranker's "
                "candidate log-likelihoods with and without the run-wide prompt prefix",
        "backbone": f"{BACKBONE} (dequantized Q4_1 GGUF, fp32, zero-shot)",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": 1, "load_average_start": round(load, 2),
                    "load_average_end": round(os.getloadavg()[0], 2)},
        **kept,
        **measured,
    }
    missing = [w for w in WORKLOADS if w not in result]
    if missing:
        raise SystemExit(f"prefix_reuse --only: {path} has no {missing} to keep; run all workloads once")
    write_result(path, result)
    print(json.dumps({w: {k: result[w][k] for k in ("pairs", "speedup", "speedup_in_place", "max_abs_p_yes_diff")}
                      for w in ("candidates", "labeled")}))
    print(json.dumps({w: result[w] for w in ("continuations", "rerank")}))
    return result


def summary(result: dict[str, Any]) -> str:
    """The README's sentences on a ``prefix_reuse.json`` result: one per workload."""
    out = [f"Prefix reuse, measured with one thread on the shared 2-core machine ({result['backbone']}; each "
           "workload's load average in parentheses):"]
    names = {"candidates": "candidate lists ({users} users, 1 + 19 each)",
             "labeled": "labeled rows ({rows} {split} test rows, {icl_shots} fixed in-context examples)"}
    for key, name in names.items():
        w = result[key]
        out.append(
            f"- {name.format(**w)} (load {_loads(w)}), {w['pairs']} pairs of {w['prompt_tokens_mean']} prompt tokens on average: "
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
        f"- continuations (load {_loads(c)}; {c['prompts']} prompts of {c['prompt_tokens_mean']} tokens on average, {c['continuations']} "
        f"continuations of {c['continuation_tokens']:,} tokens in all, summed log-probabilities): "
        f"{c['in_place']['seconds']} s with the prompts' cache read in place against {c['copied']['seconds']} s "
        f"with it repeated per continuation ({c['speedup_in_place']}x; log-probabilities differ by "
        f"{c['max_rel_logprob_diff']:.1e} relative at most)."
    )
    r = result["rerank"]
    out.append(
        f"- reranker (load {_loads(r)}; {r['users']} ml-100k `loo` test users, the SASRec top {r['top_n']} in random "
        f"order after {r['icl_shots']} in-context examples drawn once per run, {r['user_batch_size']} users per batch, "
        f"{r['prompt_tokens_mean']} prompt tokens on average): {r['reuse']['users_per_second']} users/s with the "
        f"{r['prefix_tokens']}-token prefix every prompt starts with run once for the run against "
        f"{r['plain']['users_per_second']} with every prompt run whole ({r['speedup']}x; the LM ran "
        f"{r['reuse']['prompt_tokens_run']:,} instead of {r['plain']['prompt_tokens_run']:,} prompt tokens, "
        f"{r['plain']['prompt_tokens_per_second']} prompt tokens/s whole); candidate scores differ by "
        f"{r['max_abs_score_diff']:.1e} at most."
    )
    return "\n".join(out) + "\n"


def _loads(w: dict[str, Any]) -> str:
    a, b = w.get("load_average", ["?", "?"])
    return f"{a}-{b}"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--rerank-users", type=int, default=12)
    ap.add_argument("--only", help=f"comma-separated workloads to rerun ({','.join(WORKLOADS)})")
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    ap.add_argument("--readme", type=Path, help=f"write the sentences of <out>/{OUT_NAME} between {START} and {END}")
    a = ap.parse_args()
    if a.readme is None:
        main(a.out, a.users, a.rows, a.rerank_users, a.only.split(",") if a.only else None)
    else:
        write_marked_block(a.readme, START, END, summary(json.loads((a.out / OUT_NAME).read_text())))
