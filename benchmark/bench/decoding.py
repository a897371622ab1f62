"""Cost of trie-constrained beam search for P5-style generative recommendation.

- ``generation``: the P5 model (``t5-small-scratch`` preset, random weights, collaborative ids)
  on MovieLens-100K (``split=loo``) ranks test rows by beam search with 20 beams and 20 returned
  ids, constrained (prefix trie + the row's excluded train/valid items) and free (no
  constraint), with the same batches and the same number of new tokens (the longest id). The two
  modes alternate batch by batch, so a load change on a shared machine hits both; the median
  seconds per row of each give the ratio (target: constrained <= 1.5 x free). The first batch
  warms both modes up untimed. The time spent inside the constraint itself is measured too, and
  1 + (constraint time / free time) is the ratio without the machine's noise.
- ``processor``: one call of the constraint at each of the first three id tokens on a synthetic
  100,000-item catalogue (3 codes of 256 + EOS), 16 rows x 20 beams, 100 excluded items per row:
  the tensorised trie against a Python dict walk per beam (``prefix_allowed_tokens_fn``, the
  usual implementation, which does not even handle exclusions); best of 20 calls, with 1 torch
  thread and with the default number.

Results go to ``<out_dir>/decoding.json`` with the machine's load average before and after.

Run: ``python -m benchmark.bench.decoding [--out results/perf] [--rows 48]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.bench import write_result

OUT_NAME = "decoding.json"
BEAMS = 20
BATCH = 16


def _p5() -> Any:
    """The P5 model on ml-100k loo with collaborative ids and a random t5-small-sized backbone."""
    from omegaconf import OmegaConf

    from benchmark.config import DataConfig, SplitConfig
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split
    from benchmark.models.components.seq_prompts import SeqPromptSet
    from benchmark.models.p5 import P5

    root = Path(__file__).resolve().parents[2] / "configs"
    data = load_dataset(
        DataConfig(
            **{k: v for k, v in OmegaConf.load(root / "data" / "ml-100k.yaml").items() if k != "defaults"}
        )
    )
    split = build_split(data, SplitConfig(protocol="loo"))
    prompts = SeqPromptSet.from_config(OmegaConf.load(root / "p5_prompt" / "sequential.yaml"))
    torch.manual_seed(0)
    model = P5(
        split,
        data,
        backbone="t5-small-scratch",
        indexing={"scheme": "collaborative"},
        prompts=prompts,
        num_beams=BEAMS,
        seed=0,
    )
    return model.eval(), split


def measure_generation(rows: int) -> dict[str, Any]:
    """Seconds per row, constrained vs free, same batches and new-token budget."""
    from benchmark.data.views import ranking_rows
    from benchmark.models.components.trie import TrieConstraint

    t0 = time.perf_counter()
    model, split = _p5()
    build_seconds = time.perf_counter() - t0
    test = ranking_rows(split, "test")
    trie = model.trie
    inside = [0.0]

    class Timed(TrieConstraint):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            s = time.perf_counter()
            out = super().__call__(input_ids, scores)
            inside[0] += time.perf_counter() - s
            return out

    times: dict[str, list[float]] = {"constrained": [], "free": []}
    lengths: dict[str, list[int]] = {"constrained": [], "free": []}
    valid_free = []
    with torch.no_grad():
        for b, start in enumerate(range(-BATCH, rows, BATCH)):  # the first batch warms up, untimed
            ids = np.arange(max(start, 0), min(max(start, 0) + BATCH, rows))
            prompts = [model._eval_prompt(int(u), "test") for u in test.users[ids]]
            excluded = [test.exclude[test.exclude_ptr[r] : test.exclude_ptr[r + 1]] for r in ids]
            enc = model._inputs(model._prompt_ids(prompts))
            for mode in ("constrained", "free") if b % 2 else ("free", "constrained"):  # ABBA order
                procs = (
                    [Timed(trie, 1, BEAMS, trie.blocked_counts(excluded))] if mode == "constrained" else []
                )
                spent = inside[0]
                s = time.perf_counter()
                seqs = model._generate(enc, BEAMS, trie.depth, procs)
                if start < 0:
                    inside[0] = spent
                    continue
                times[mode].append((time.perf_counter() - s) / len(ids))
                lengths[mode].append(int(seqs.shape[1] - 1))
                if mode == "free":
                    items = trie.items_of(seqs[:, 1:])
                    valid_free.append(float((items >= 0).float().mean()))
    med = {m: statistics.median(v) for m, v in times.items()}
    return {
        "model": "P5 t5-small-scratch (random weights), collaborative ids, ml-100k loo test rows",
        "params": sum(p.numel() for p in model.parameters()),
        "items": split.n_items,
        "trie_nodes": trie.n_nodes,
        "id_tokens_max": trie.depth,
        "build_seconds": round(build_seconds, 2),
        "rows": rows,
        "batch_rows": BATCH,
        "beams": BEAMS,
        "returned": BEAMS,
        "new_tokens_max": trie.depth,
        "generated_tokens": {m: max(v) for m, v in lengths.items()},
        "seconds_per_row": {m: round(v, 4) for m, v in med.items()},
        "seconds_per_row_per_batch": {m: [round(x, 4) for x in v] for m, v in times.items()},
        "constraint_seconds_per_row": round(inside[0] / rows, 4),
        "ratio_constrained_over_free": round(med["constrained"] / med["free"], 3),
        "ratio_from_constraint_time": round(1 + inside[0] / rows / statistics.mean(times["free"]), 3),
        "target_ratio_at_most": 1.5,
        "free_outputs_that_are_items": round(float(np.mean(valid_free)), 4),
    }


def measure_processor(
    n_items: int = 100_000, rows: int = 16, excluded: int = 100, reps: int = 20
) -> dict[str, Any]:
    """One constraint call at a 100k catalogue: tensorised trie vs a dict walk per beam."""
    from benchmark.models.components.trie import ItemTrie, TrieConstraint

    rng = np.random.default_rng(0)
    eos, vocab = 1, 2 + 3 * 256
    codes = np.unique(rng.integers(0, 256, size=(int(n_items * 1.2), 3)), axis=0)[:n_items]
    seqs = [[2 + c[0], 2 + 256 + c[1], 2 + 512 + c[2], eos] for c in codes.tolist()]
    t0 = time.perf_counter()
    trie = ItemTrie(seqs, vocab, eos)
    build = time.perf_counter() - t0
    banned = [rng.choice(len(seqs), excluded, replace=False) for _ in range(rows)]
    proc = TrieConstraint(trie, 1, BEAMS, trie.blocked_counts(banned))
    picks = rng.integers(len(seqs), size=rows * BEAMS)
    prefixes = {n: torch.as_tensor([[0, *seqs[int(i)][:n]] for i in picks]) for n in range(3)}
    scores = torch.randn(rows * BEAMS, vocab)

    nested: dict = {}
    for s in seqs:
        node = nested
        for tok in s:
            node = node.setdefault(tok, {})

    def allowed(batch_id: int, ids: torch.Tensor) -> list[int]:  # the usual dict walk
        node = nested
        for tok in ids.tolist()[1:]:
            node = node.get(tok, {})
        return list(node)

    from transformers import PrefixConstrainedLogitsProcessor

    dict_proc = PrefixConstrainedLogitsProcessor(allowed, BEAMS)

    def best(fn) -> float:
        out = []
        for _ in range(reps):
            s = time.perf_counter()
            fn()
            out.append(time.perf_counter() - s)
        return min(out)

    steps: dict[str, dict[str, Any]] = {}
    default = torch.get_num_threads()
    try:
        for threads in sorted({1, default}):
            torch.set_num_threads(threads)
            for n, prefix in prefixes.items():
                a, b = proc(prefix, scores.clone()), dict_proc(prefix, scores.clone())
                steps[f"threads_{threads}/token_{n + 1}"] = {
                    "tensorised_ms": round(1000 * best(lambda p=prefix: proc(p, scores.clone())), 2),
                    "dict_walk_ms": round(1000 * best(lambda p=prefix: dict_proc(p, scores.clone())), 2),
                    # ours also forbids the excluded items: it allows a subset of the dict walk's tokens
                    "allows_subset_of_dict_walk": bool((torch.isinf(b) <= torch.isinf(a)).all()),
                }
    finally:
        torch.set_num_threads(default)
    return {
        "items": len(seqs),
        "trie_nodes": trie.n_nodes,
        "trie_build_seconds": round(build, 2),
        "beams": rows * BEAMS,
        "excluded_per_row": excluded,
        "per_step": steps,
        "note": "with more torch threads than free cores, every small op waits on descheduled threads",
    }


def main(out_dir: Path, rows: int = 48) -> dict[str, Any]:
    """Measure and write ``<out_dir>/decoding.json``; returns what was written."""
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before": [round(x, 2) for x in load_before],
        },
        "generation": measure_generation(rows),
        "processor": measure_processor(),
    }
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out_dir = Path(out_dir)
    write_result(out_dir / OUT_NAME, result)
    g, p = result["generation"], result["processor"]
    print(
        f"decoding: constrained {g['seconds_per_row']['constrained']} s/row, free {g['seconds_per_row']['free']} "
        f"s/row (ratio {g['ratio_constrained_over_free']}, from constraint time "
        f"{g['ratio_from_constraint_time']}); 100k-item constraint, ms per call (ours / dict walk): "
        + ", ".join(f"{k} {v['tensorised_ms']}/{v['dict_walk_ms']}" for k, v in p["per_step"].items())
        + f" -> {out_dir / OUT_NAME}"
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.bench.decoding", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("results/perf"))
    parser.add_argument("--rows", type=int, default=48, help="test rows decoded in each mode")
    a = parser.parse_args()
    main(a.out, a.rows)
