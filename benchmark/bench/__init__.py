"""Performance benchmarks run by ``make bench`` (``python -m benchmark.bench``); results go to ``results/perf``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_result(path: Path, result: Any, indent: int = 1) -> Path:
    """Write a benchmark result as JSON atomically (temp file in the same folder + rename), world-readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(result, indent=indent) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
