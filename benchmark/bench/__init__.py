"""Performance benchmarks run by ``make bench`` (``python -m benchmark.bench``); results go to ``results/perf``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmark.util import atomic_write


def write_result(path: Path, result: Any, indent: int = 1) -> Path:
    """Write a benchmark result as JSON atomically (temp file in the same folder + rename), world-readable.

    The document is serialised before anything is written, so a value that is not JSON leaves
    an earlier result in place.
    """
    return atomic_write(Path(path), json.dumps(result, indent=indent) + "\n")


def in_child(module: str, fn: str, what: str, **kwargs: Any) -> dict[str, Any]:
    """``module.fn(**kwargs)`` in a fresh one-thread Python process: its JSON result.

    A fresh process gives the measurement its own peak RSS and no state of an earlier one.

    Raises:
        RuntimeError: the child failed or printed no result (its last error line, named ``what``).
    """
    import os
    import subprocess
    import sys

    code = (
        "import json, sys, torch\n"
        "torch.set_num_threads(1)\n"
        f"from {module} import {fn}\n"
        f"print('@@RESULT ' + json.dumps({fn}(**json.loads(sys.argv[1]))), flush=True)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail[0]}")
    return json.loads(lines[-1][len("@@RESULT ") :])
