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
