"""Dispatcher: ``python -m benchmark.bench all|<name> [--out DIR]``.

Each registered benchmark is a module with ``main(out_dir: Path) -> dict`` that writes
its JSON under ``out_dir``; modules are imported only when their benchmark runs.
``all`` runs every benchmark in turn; one that fails is reported and the others
still run, and the command then exits non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

BENCHMARKS: dict[str, str] = {
    "ranking": "benchmark.bench.ranking_eval",
    "prepare_memory": "benchmark.bench.prepare_memory",
    "scaling": "benchmark.bench.scaling",
    "decoding": "benchmark.bench.decoding",
    "llm_cost": "benchmark.bench.llm_cost",
    "recbole_throughput": "benchmark.bench.recbole_throughput",
    "features": "benchmark.bench.feature_cache",
    "descriptions": "benchmark.bench.descriptions",
    "audit_scale": "benchmark.bench.audit_scale",
    "align": "benchmark.bench.align_cost",
    "precision": "benchmark.bench.precision",
    "prefix_reuse": "benchmark.bench.prefix_reuse",
    "checkpointing": "benchmark.bench.checkpointing",
}
DEFAULT_OUT = Path("results/perf")


def run_one(name: str, out_dir: Path = DEFAULT_OUT) -> dict:
    """Import benchmark ``name`` and run its ``main(out_dir)``.

    Args:
        name: a key of :data:`BENCHMARKS`.
        out_dir: folder the benchmark writes its JSON into.

    Returns:
        what the benchmark's ``main`` returned.
    """
    print(f"== bench {name} ({BENCHMARKS[name]})", flush=True)
    module = importlib.import_module(BENCHMARKS[name])
    return module.main(out_dir)


def run(name: str, out_dir: Path = DEFAULT_OUT) -> tuple[dict[str, dict], list[str]]:
    """Run one benchmark, or every registered one in turn for ``name == "all"``.

    Args:
        name: a key of :data:`BENCHMARKS` or ``"all"``.
        out_dir: folder the benchmarks write their JSON into.

    Returns:
        (benchmark name -> the dict its ``main`` returned, names of the benchmarks that
        failed). A single named benchmark is not caught: its error propagates.
    """
    if name != "all":
        return {name: run_one(name, out_dir)}, []
    results, failed = {}, []
    for n in BENCHMARKS:
        try:
            results[n] = run_one(n, out_dir)
        except Exception:  # keep going: one broken benchmark must not hide the others
            traceback.print_exc()
            print(f"== bench {n} FAILED", file=sys.stderr, flush=True)
            failed.append(n)
    return results, failed


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen benchmark(s); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.bench", description="Run performance benchmarks."
    )
    parser.add_argument("name", choices=["all", *BENCHMARKS], help="benchmark to run, or all")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    _, failed = run(args.name, args.out)
    if failed:
        print(f"failed benchmarks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
