"""Accuracy, speed and memory of the LLM backbone in every CPU precision (fp32, bf16, int8).

Each option runs in a fresh child process (its own peak RSS, ``ru_maxrss``), on the same rows:

- ``tallrec``: P("Yes") of the first ``rows`` ``split=tallrec_movie`` test rows (ml-100k, prompt
  ``tallrec``, SmolLM2-135M-Instruct, batches of 16): zero-shot weights, or the fp32-trained LoRA
  adapters of a run when ``weights`` names its ``outputs/models/<training key>`` folder. Seconds per
  row, prompt tokens per second, peak RSS, AUC; against fp32: the AUC change and the largest
  |P(yes) difference|. The floor: a plain forward pass (last position only) of the same token
  batches in the same precision, without prompt building or answer reading.
- ``rerank``: :class:`benchmark.models.llm_rerank.LLMRerank` over a first-stage run's top 20
  (ml-100k loo, default: the committed BPR seed-1 run) for the first ``users`` test users: seconds
  per user, NDCG@10 of the reranked lists and its change against fp32.

``gguf`` (llama.cpp on the Q4_1 file, :mod:`benchmark.models.components.gguf_runtime`) joins the
tallrec rows where ``llama_cpp`` imports, and is skipped with a note in the result otherwise; its
floor is llama.cpp's forward pass of the same token ids, one prompt at a time.

Options slower than fp32 on this CPU (bf16 without AVX512-BF16/AMX kernels) can run on fewer rows
(``slow_rows``/``slow_users``); their comparisons with fp32 are taken on the rows both scored.
Results go to ``<out_dir>/precision.json``.

Run: ``python -m benchmark.bench precision`` or
``python -m benchmark.bench.precision --rows 200 --users 100 [--weights outputs/models/<key>]``.
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
from benchmark.util import cpu_features

OUT_NAME = "precision.json"
BACKBONE = "smollm2-135m-instruct"
OPTIONS = ("fp32", "bf16", "int8", "int8_smooth", "int8_vnni", "int8_smooth_vnni")
OPTIONAL = {"gguf": "llama_cpp"}  # tallrec only, where the package imports (pip install '.[gguf]')
SLOW = ("bf16",)  # no bf16 matmul kernels on AVX2-only CPUs
BATCH = 16
REPO = Path(__file__).resolve().parents[2]
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
FIRST_STAGE = "results/runs/ml-100k-loo-full-bpr-s1-*"


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _option(name: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.load(REPO / "configs" / "precision" / f"{name}.yaml")


def _movielens() -> Any:
    from benchmark.config import DataConfig
    from benchmark.data.loading import load_dataset

    return load_dataset(
        DataConfig(
            name="ml-100k", item_fields={"title": "movie_title", "year": "release_year", "genres": "class"}
        )
    )


def child_tallrec(option: str, rows: int, weights: str | None) -> dict[str, Any]:
    """P(yes) of the first ``rows`` tallrec_movie test rows in one precision, timed, plus the floor."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from benchmark.config import SplitConfig
    from benchmark.data.splits import build_tallrec_movie
    from benchmark.models.components.llm import left_pad, next_token_logits
    from benchmark.models.components.precision import apply_precision
    from benchmark.models.tallrec import TallRec, part_labels

    data = _movielens()
    split = build_tallrec_movie(data, SplitConfig())
    prompt = instantiate(OmegaConf.load(REPO / "configs" / "prompt" / "tallrec.yaml"))
    model = TallRec(
        split,
        data,
        BACKBONE,
        prompt,
        lora=LORA if weights else None,
        shots=64,
        seed=1,
        dtype="float32",
        score_batch_size=BATCH,
    )
    if weights:
        model.load_state_dict(torch.load(Path(weights) / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    model.prefix_reuse = False  # every prompt in full, as the floor: precision alone is compared
    facts = apply_precision(model, _option(option))
    test = split.test.iloc[:rows]
    texts = [model._prompt(int(u), int(i)) for u, i in zip(test["user"], test["item"], strict=True)]
    model.p_yes(texts[:2])  # warm-up
    c0, t0 = time.process_time(), time.perf_counter()
    p = model.p_yes(texts)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    seqs = model._tokens(texts)
    tokens = sum(len(s) for s in seqs)
    order = sorted(range(len(seqs)), key=lambda r: len(seqs[r]))
    t0 = time.perf_counter()
    with torch.no_grad():  # the floor: the same batches through the LM, nothing else
        if model.scorer is not None:  # llama.cpp: one prompt at a time
            for r in order:
                model.scorer.last_logits(seqs[r])
        else:
            for start in range(0, len(order), BATCH):
                next_token_logits(
                    model.lm,
                    left_pad([seqs[r] for r in order[start : start + BATCH]], model.tokenizer.pad_token_id),
                )
    floor = time.perf_counter() - t0
    return {
        "option": option,
        "precision": {k: v for k, v in facts.items()},
        "rows": len(texts),
        "prompt_tokens_mean": round(tokens / len(texts), 1),
        "seconds_per_row": round(seconds / len(texts), 4),
        "tokens_per_second": round(tokens / seconds, 1),
        "floor_seconds_per_row": round(floor / len(texts), 4),
        "floor_tokens_per_second": round(tokens / floor, 1),
        "cpu_per_wall": round(cpu / seconds, 2),
        "peak_rss_mb": _peak_rss_mb(),
        "p_yes": [round(float(x), 6) for x in p],
        "labels": part_labels(split, "test")[: len(texts)].tolist(),
    }


def child_rerank(option: str, users: int, first_stage: str) -> dict[str, Any]:
    """Rerank the first-stage top 20 of the first ``users`` test users in one precision, timed."""
    import numpy as np
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from benchmark.config import SplitConfig
    from benchmark.data.splits import build_split
    from benchmark.models.components.precision import apply_precision
    from benchmark.models.llm_rerank import LLMRerank

    data = _movielens()
    split = build_split(data, SplitConfig(protocol="loo"))
    prompt = instantiate(OmegaConf.load(REPO / "configs" / "prompt" / "rerank_listwise.yaml"))
    model = LLMRerank(
        split, data, first_stage, BACKBONE, prompt, top_n=20, order="random", dtype="float32", seed=1,
        prefix_reuse=False,  # every prompt in full, as for the TALLRec rows: precision alone is compared
    )
    model.eval()
    facts = apply_precision(model, _option(option))
    test = split.test.iloc[:users]
    u = torch.as_tensor(test["user"].to_numpy())
    t0 = time.perf_counter()
    scores = model.score(u)
    seconds = time.perf_counter() - t0
    ranked = torch.topk(scores, 10, dim=1).indices.numpy()
    target = test["item"].to_numpy()
    hit = ranked == target[:, None]
    ndcg = (hit / np.log2(np.arange(2, 12))[None, :]).sum(axis=1)
    first = model.candidates[test["user"].to_numpy(), :10] == target[:, None]
    return {
        "option": option,
        "precision": facts,
        "users": len(test),
        "seconds_per_user": round(seconds / len(test), 3),
        "peak_rss_mb": _peak_rss_mb(),
        "ndcg@10_per_user": [round(float(x), 6) for x in ndcg],
        "first_stage_ndcg@10": round(
            float((first / np.log2(np.arange(2, 12))[None, :]).sum(axis=1).mean()), 6
        ),
    }


# ----------------------------------------------------------------------------- parent


def _in_child(fn: str, **kwargs: Any) -> dict[str, Any]:
    code = (
        "import json, sys, torch\n"
        "torch.set_num_threads(1)\n"
        f"from benchmark.bench.precision import {fn}\n"
        f"print('@@RESULT ' + json.dumps({fn}(**json.loads(sys.argv[1]))), flush=True)\n"
    )
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True, env=env
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"precision {fn} failed (exit {proc.returncode}): {tail[0]}")
    out = json.loads(lines[-1][len("@@RESULT ") :])
    out["child_wall_seconds"] = round(time.perf_counter() - t0, 2)
    return out


def compare_tallrec(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per option: AUC, and against fp32 on the rows both scored, the AUC change and max |dP(yes)|."""
    import numpy as np

    from benchmark.eval.metrics import auc

    ref = results["fp32"]
    out = {}
    for name, r in results.items():
        n = min(len(r["p_yes"]), len(ref["p_yes"]))
        labels = np.asarray(r["labels"][:n])
        mine, base = np.asarray(r["p_yes"][:n]), np.asarray(ref["p_yes"][:n])
        out[name] = {
            "rows_compared": n,
            "auc": round(auc(labels, mine), 5),
            "auc_fp32_same_rows": round(auc(labels, base), 5),
            "auc_change": round(auc(labels, mine) - auc(labels, base), 5),
            "max_abs_p_yes_diff": round(float(np.abs(mine - base).max()), 6),
            "speedup_vs_fp32": round(ref["seconds_per_row"] / r["seconds_per_row"], 2),
        }
        if _cpu_per_row(r) and _cpu_per_row(ref):  # robust to a loaded machine: one thread's CPU time
            out[name]["cpu_speedup_vs_fp32"] = round(_cpu_per_row(ref) / _cpu_per_row(r), 2)
    return out


def _cpu_per_row(r: dict[str, Any]) -> float | None:
    """CPU seconds per row of a one-thread child (wall seconds x CPU share), or None if unmeasured."""
    share = r.get("cpu_per_wall")
    return round(r["seconds_per_row"] * share, 4) if share else None


def compare_rerank(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per option: NDCG@10 and its change against fp32 on the users both reranked."""
    import numpy as np

    ref = results["fp32"]
    out = {}
    for name, r in results.items():
        n = min(len(r["ndcg@10_per_user"]), len(ref["ndcg@10_per_user"]))
        mine, base = np.mean(r["ndcg@10_per_user"][:n]), np.mean(ref["ndcg@10_per_user"][:n])
        out[name] = {
            "users_compared": n,
            "ndcg@10": round(float(mine), 5),
            "ndcg@10_change": round(float(mine - base), 5),
            "speedup_vs_fp32": round(ref["seconds_per_user"] / r["seconds_per_user"], 2),
        }
    return out


def _first_stage(spec: str) -> str:
    found = sorted(REPO.glob(spec)) if any(c in spec for c in "*?[") else [Path(spec)]
    if not found:
        raise FileNotFoundError(f"first-stage run {spec} not found")
    return str(found[0])


def measure(
    rows: int = 200,
    users: int = 100,
    weights: str | None = None,
    slow_rows: int | None = None,
    slow_users: int | None = None,
    first_stage: str = FIRST_STAGE,
    options: tuple[str, ...] = OPTIONS,
    earlier: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every CPU option on the tallrec rows, then (``users`` > 0) on the rerank users.

    With ``earlier`` (a result of the same rows, users and weights), only ``options`` are measured
    and the other options' entries are kept from it; comparisons are recomputed over all.
    """
    result: dict[str, Any] = {
        "backbone": BACKBONE,
        "weights": weights or "zero-shot (no adapters)",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "cpu": cpu_features(),
            "torch_threads": 1,
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
        },
        "tallrec": {},
        "rerank": {},
    }
    import importlib.util

    extra = [name for name, pkg in OPTIONAL.items() if importlib.util.find_spec(pkg) is not None]
    result["skipped"] = {
        name: f"{pkg} is not installed (pip install '.[gguf]')"
        for name, pkg in OPTIONAL.items()
        if name not in extra
    }
    from benchmark.models.components.precision import cpu_refusal, precision_config

    for name in [o for o in OPTIONS if o in options]:
        refusal = cpu_refusal(precision_config(_option(name)))
        if refusal:  # e.g. 8-bit activations on a CPU without VNNI
            result["skipped"][name] = refusal
    options = [o for o in options if o not in result["skipped"]]
    if earlier is not None:
        for key in ("backbone", "weights"):
            if earlier.get(key) != result[key]:
                raise ValueError(f"--update: the earlier result has {key}={earlier.get(key)!r}, not {result[key]!r}")
        result["tallrec"] = dict(earlier.get("tallrec", {}))
        result["rerank"] = dict(earlier.get("rerank", {}))
        if "rerank_first_stage" in earlier:
            result["rerank_first_stage"] = earlier["rerank_first_stage"]
        result["updated"] = {"options": list(options), "earlier_machine": earlier.get("machine")}
    for name in [o for o in (*OPTIONS, *extra) if o in options]:
        n = slow_rows if name in SLOW and slow_rows is not None else rows
        result["tallrec"][name] = _in_child("child_tallrec", option=name, rows=n, weights=weights)
        print(f"precision tallrec {name}: {result['tallrec'][name]['seconds_per_row']} s/row", flush=True)
    result["tallrec_vs_fp32"] = compare_tallrec(result["tallrec"])
    if users > 0:
        stage = _first_stage(first_stage)
        result["rerank_first_stage"] = (
            str(Path(stage).relative_to(REPO)) if Path(stage).is_relative_to(REPO) else stage
        )
        for name in [o for o in OPTIONS if o in options]:
            n = slow_users if name in SLOW and slow_users is not None else users
            if n <= 0:
                continue
            result["rerank"][name] = _in_child("child_rerank", option=name, users=n, first_stage=stage)
            print(f"precision rerank {name}: {result['rerank'][name]['seconds_per_user']} s/user", flush=True)
        if "fp32" in result["rerank"]:
            result["rerank_vs_fp32"] = compare_rerank(result["rerank"])
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def table(result: dict[str, Any]) -> str:
    """The measured figures as a markdown table (what the README shows), from a result of :func:`measure`."""
    lines = [
        "| option | TALLRec rows | s/row | CPU s/row | tokens/s | floor s/row | peak RSS MB | AUC | AUC change | max abs dP(yes) "
        "| rerank users | s/user | NDCG@10 change |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t in result["tallrec"].items():
        c = result["tallrec_vs_fp32"][name]
        r = result.get("rerank", {}).get(name)
        rc = result.get("rerank_vs_fp32", {}).get(name)
        rerank = (
            f"{r['users']} | {r['seconds_per_user']} | {rc['ndcg@10_change']:+}" if r and rc else "- | - | -"
        )
        lines.append(
            f"| `{name}` | {t['rows']} | {t['seconds_per_row']} | {_cpu_per_row(t) or '-'} | {t['tokens_per_second']} | "
            f"{t['floor_seconds_per_row']} | {t['peak_rss_mb']} | {c['auc']} | {c['auc_change']:+} | "
            f"{c['max_abs_p_yes_diff']} | {rerank} |"
        )
    return "\n".join(lines)


START, END = "<!-- precision-bench:start -->", "<!-- precision-bench:end -->"


def _machine_line(path: Path, result: dict[str, Any]) -> str:
    m = result.get("machine", {})
    cpu = m.get("cpu") or {}
    where = f"{cpu['model']} ({', '.join(cpu.get('flags') or [])})" if cpu.get("model") else "CPU not recorded in the file"
    before, after = m.get("load_average_before"), m.get("load_average_after")
    loads = f"{before[0]} before, {after[0]} after" if before and after else "not recorded"
    extra = ""
    if "updated" in result:
        extra = f"; {', '.join(result['updated'].get('options', []))} measured later with `--update` on the same rows"
    return (
        f"`{path}`: {where}, {m.get('cpu_count', '?')} cores, "
        f"{m.get('torch_threads', '?')} torch thread per child, load average {loads}; "
        f"weights `{result.get('weights') or 'zero-shot'}`, rerank first stage `{result.get('rerank_first_stage', '-')}`"
        f"{extra}."
    )


def readme_block(paths: list[Path]) -> str:
    """Each measurement file as its machine line and :func:`table` (the README's precision block)."""
    parts = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        parts += [_machine_line(path, result), "", table(result), ""]
    return "\n".join(parts)


def main(
    out_dir: Path,
    rows: int = 200,
    users: int = 100,
    weights: str | None = None,
    slow_rows: int | None = None,
    slow_users: int | None = None,
    options: tuple[str, ...] = OPTIONS,
    update: bool = False,
) -> dict[str, Any]:
    """Measure and write ``<out_dir>/precision.json``; returns what was written.

    ``update``: measure only ``options`` and keep the other options of the existing file.
    """
    path = Path(out_dir) / OUT_NAME
    earlier = json.loads(path.read_text()) if update and path.exists() else None
    unknown = sorted(set(options) - set(OPTIONS) - set(OPTIONAL))
    if unknown:
        raise SystemExit(f"--options: unknown option {unknown[0]} (one of {', '.join((*OPTIONS, *OPTIONAL))})")
    if "fp32" not in options and not (earlier and "fp32" in earlier.get("tallrec", {})):
        raise SystemExit("--options: fp32 is the reference; measure it or --update a file that has it")
    result = measure(rows, users, weights, slow_rows, slow_users, options=options, earlier=earlier)
    write_result(Path(out_dir) / OUT_NAME, result)
    print(table(result))
    for name, c in result["tallrec_vs_fp32"].items():
        print(
            f"precision {name}: AUC {c['auc']} ({c['auc_change']:+}), max|dP| {c['max_abs_p_yes_diff']}, "
            f"x{c['speedup_vs_fp32']} vs fp32"
        )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.bench.precision", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("results/perf"))
    parser.add_argument("--rows", type=int, default=200, help="tallrec_movie test rows (the first N)")
    parser.add_argument("--users", type=int, default=100, help="rerank test users (the first N; 0 skips)")
    parser.add_argument(
        "--weights", default=None, help="outputs/models/<training key> folder of fp32-trained adapters"
    )
    parser.add_argument(
        "--slow-rows", type=int, default=None, help="rows for options slower than fp32 (bf16)"
    )
    parser.add_argument(
        "--slow-users", type=int, default=None, help="users for options slower than fp32 (bf16)"
    )
    parser.add_argument("--options", default=",".join(OPTIONS), help="comma-separated options to measure")
    parser.add_argument(
        "--update", action="store_true", help="keep the other options' entries of the existing precision.json"
    )
    parser.add_argument(
        "--readme",
        type=Path,
        help=f"write the tables of --render files (default <out>/{OUT_NAME}) between {START} and {END}; no measuring",
    )
    parser.add_argument("--render", type=Path, nargs="*", default=None, help="precision.json files for --readme")
    a = parser.parse_args()
    if a.readme is not None:
        from benchmark.util import write_marked_block

        write_marked_block(a.readme, START, END, readme_block(a.render or [a.out / OUT_NAME]))
        raise SystemExit(0)
    main(a.out, a.rows, a.users, a.weights, a.slow_rows, a.slow_users, tuple(a.options.split(",")), a.update)
