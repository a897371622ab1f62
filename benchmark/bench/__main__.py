"""Dispatcher: ``python -m benchmark.bench all|<name> [--out DIR]``.

Each registered benchmark is a module with ``main(out_dir: Path) -> dict`` that writes
its JSON under ``out_dir``; modules are imported only when their benchmark runs.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

BENCHMARKS: dict[str, str] = {
    "ranking": "benchmark.bench.ranking_eval",
    "prepare_memory": "benchmark.bench.prepare_memory",
}
DEFAULT_OUT = Path("results/perf")


def run(name: str, out_dir: Path = DEFAULT_OUT) -> dict[str, dict]:
    """Run one benchmark, or every registered one in turn for ``name == "all"``.

    Args:
        name: a key of :data:`BENCHMARKS` or ``"all"``.
        out_dir: folder the benchmarks write their JSON into.

    Returns:
        benchmark name -> the dict its ``main`` returned.
    """
    names = list(BENCHMARKS) if name == "all" else [name]
    results = {}
    for n in names:
        print(f"== bench {n} ({BENCHMARKS[n]})", flush=True)
        module = importlib.import_module(BENCHMARKS[n])
        results[n] = module.main(out_dir)
    return results


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the chosen benchmark(s)."""
    parser = argparse.ArgumentParser(prog="python -m benchmark.bench", description=__doc__)
    parser.add_argument("name", choices=["all", *BENCHMARKS], help="benchmark to run, or all")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    run(args.name, args.out)


if __name__ == "__main__":
    main()
