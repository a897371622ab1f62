"""Wall time and peak memory of ``llm4rec audit`` on a synthetic 10M-interaction split.

A leave-one-out split of a synthetic dataset (users and items with heavy-tailed activity and
popularity, timestamps spread over a year) is audited in a fresh child process: every split
check, and the random and sequential item indexes built from its train part and refit on the
train part alone. The child reports its wall and CPU time per stage (on a shared machine the
CPU time is the fairer figure) and its peak RSS (``VmHWM``);
the bar is 4 GB. Written to ``<out_dir>/audit_scale.json``.

Run: ``python -m benchmark.bench audit_scale`` or
``python -m benchmark.bench.audit_scale --interactions 1000000 --out results/perf``.
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

import numpy as np

from benchmark.bench import write_result

OUT_NAME = "audit_scale.json"
DEFAULT_INTERACTIONS = 10_000_000
USERS_PER_INTERACTION = 0.01  # 100k users for 10M interactions
ITEMS_PER_INTERACTION = 0.005  # 50k items
MEMORY_BAR_GB = 4.0
SEED = 0


def synthetic_split(n: int, seed: int = SEED) -> Any:
    """A leave-one-out :class:`~benchmark.data.splits.Split` of ``n`` synthetic interactions.

    Users and items are drawn with Zipf-like weights; each user's interactions are ordered by a
    random timestamp; the last is the test row, the one before it the valid row.
    """
    import pandas as pd

    from benchmark.data.splits import Split

    rng = np.random.default_rng(seed)
    n_users = max(3, int(n * USERS_PER_INTERACTION))
    n_items = max(3, int(n * ITEMS_PER_INTERACTION))
    user_w = 1.0 / np.arange(1, n_users + 1) ** 0.6
    item_w = 1.0 / np.arange(1, n_items + 1) ** 0.9
    user = rng.choice(n_users, size=n, p=user_w / user_w.sum()).astype(np.int64)
    item = rng.choice(n_items, size=n, p=item_w / item_w.sum()).astype(np.int64)
    ts = rng.integers(0, 365 * 86_400, size=n).astype(np.float64)
    order = np.lexsort((ts, user))
    users_sorted = user[order]
    from_end = np.empty(n, dtype=np.int64)
    ends = np.r_[np.flatnonzero(users_sorted[1:] != users_sorted[:-1]), n - 1]
    run_end = np.repeat(ends, np.diff(np.r_[-1, ends]))
    from_end[order] = run_end - np.arange(n)
    part = np.where(from_end == 0, 2, np.where(from_end == 1, 1, 0))
    del order, users_sorted, run_end, from_end
    rating = rng.integers(1, 6, size=n).astype(np.float64)
    frame = pd.DataFrame({"user": user, "item": item, "rating": rating, "timestamp": ts, "row": np.arange(n)})
    parts = {
        name: frame[part == k].reset_index(drop=True) for k, name in enumerate(("train", "valid", "test"))
    }
    del frame, user, item, ts, rating, part
    ids = np.array([f"{k:07d}" for k in range(max(n_users, n_items))])
    return Split("loo", ids[:n_users], ids[:n_items], parts)


def child(n: int) -> dict[str, Any]:
    """Build the split and audit it; wall time per stage and peak RSS of this process."""
    from omegaconf import OmegaConf

    from benchmark.audit.findings import default_thresholds
    from benchmark.audit.report import built_indexes, run_audit
    from benchmark.audit.table import from_split

    clock = [(time.perf_counter(), time.process_time())]
    split = synthetic_split(n)
    clock.append((time.perf_counter(), time.process_time()))
    cfg = OmegaConf.create({"seed": 0, "model": {}})
    indexes = built_indexes(cfg, split, None, ["random", "sequential"])
    clock.append((time.perf_counter(), time.process_time()))
    report = run_audit(from_split(split, "synthetic loo"), indexes, default_thresholds())
    clock.append((time.perf_counter(), time.process_time()))
    stages = ("build_split", "build_indexes", "audit")
    return {
        "interactions": n,
        "stats": report["stats"],
        "seconds": {k: round(clock[i + 1][0] - clock[i][0], 2) for i, k in enumerate(stages)},
        "cpu_seconds": {k: round(clock[i + 1][1] - clock[i][1], 2) for i, k in enumerate(stages)},
        "peak_rss_gb": round(_vm_hwm_kb() / 2**20, 3),
        "errors": report["counts"]["error"],
        "train_after_test": report["sections"]["timeline"]["test"]["mean_over_rows"],
    }


def _vm_hwm_kb() -> int:
    """Peak resident set size of this process in KiB (Linux ``VmHWM``; ru_maxrss elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def main(out_dir: Path, interactions: int = DEFAULT_INTERACTIONS) -> dict[str, Any]:
    """Run the audit in a child process and write ``audit_scale.json``."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "benchmark.bench.audit_scale", "--child", str(interactions)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    result = {
        "benchmark": "audit_scale",
        "what": "llm4rec audit of a synthetic leave-one-out split: every split check, random and sequential "
        "indexes built from train and refit on train alone; one child process",
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "omp_num_threads": env["OMP_NUM_THREADS"],
        },
        **measured,
        "memory_bar_gb": MEMORY_BAR_GB,
        "within_memory_bar": measured["peak_rss_gb"] < MEMORY_BAR_GB,
    }
    write_result(Path(out_dir) / OUT_NAME, result)
    s = measured["seconds"]
    print(
        f"audit_scale: {interactions:,} interactions, audit {s['audit']:.1f}s (+ indexes {s['build_indexes']:.1f}s), "
        f"peak RSS {measured['peak_rss_gb']:.2f} GB (bar {MEMORY_BAR_GB:g} GB)"
    )
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        prog="python -m benchmark.bench.audit_scale", description=__doc__.splitlines()[0]
    )
    p.add_argument("--interactions", type=int, default=DEFAULT_INTERACTIONS)
    p.add_argument("--out", type=Path, default=Path("results/perf"))
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.child)))
    else:
        main(a.out, a.interactions)
