"""Two identical runs started at once: exactly one trains and writes the record, the other waits
for it and takes its record; both exit 0 without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.results.record import load_record
from benchmark.runlock import exclusive, lock_path
from tests.smoke.test_cli import runs, tiny_args

ROOT = Path(__file__).resolve().parents[2]


def start(args: list[str], out: Path) -> subprocess.Popen:
    """``llm4rec run ARGS`` as a separate process, stdout and stderr to files (not a terminal)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "benchmark", "run", *args],
        cwd=ROOT,
        env=env,
        stdout=(out.with_suffix(".out")).open("w"),
        stderr=(out.with_suffix(".err")).open("w"),
    )


@pytest.mark.slow
def test_two_identical_runs_at_once_train_and_write_once(tiny_dir, tmp_path):
    from benchmark.compose import compose
    from benchmark.results.identity import config_hashes, run_id_for

    args = ["model=bpr", "model.train.max_epochs=3", *tiny_args(tiny_dir, tmp_path)]
    run_id = run_id_for(compose(args), config_hashes(compose(args))[0])
    lock = lock_path(tmp_path / "out", run_id)
    # Hold the run's lock while both start, so both are surely started "at once" (their start-up
    # takes seconds); on release they race for it like two runs started in the same instant.
    with exclusive(lock):
        procs = [start(args, tmp_path / name) for name in ("a", "b")]
        deadline = time.time() + 300
        errs = [tmp_path / "a.err", tmp_path / "b.err"]
        while time.time() < deadline and not all("waiting for" in e.read_text() for e in errs):
            assert all(p.poll() is None for p in procs), [e.read_text()[-2000:] for e in errs]
            time.sleep(0.2)
    codes = [p.wait(600) for p in procs]
    outs = [(tmp_path / f"{n}.out").read_text() for n in ("a", "b")]
    errs_text = [e.read_text() for e in errs]
    assert codes == [0, 0], errs_text
    assert not any("Traceback" in e for e in errs_text), errs_text
    for e in errs_text:  # one line saying who it waits for
        (line,) = [ln for ln in e.splitlines() if "waiting for" in ln]
        assert line.startswith(f"[{run_id}] the same run is in progress: waiting for pid ")
    trained = [o for o in outs if "epoch 1/3" in o]
    waited = [o for o in outs if "recorded meanwhile by the run it waited for" in o]
    assert len(trained) == 1 and len(waited) == 1, outs
    assert "epoch" not in waited[0] and "eval:" not in waited[0]  # it neither trained nor evaluated
    (run_dir,) = runs(tmp_path)
    rec = load_record(run_dir)
    assert rec["run_id"] == run_id and "reused_from" not in rec["training"]
    assert f"[{run_id}] " in trained[0].splitlines()[-1]
    # Each invocation logged into a folder of its own; only the one that trained has epoch lines.
    logs = sorted((tmp_path / "out" / "logs" / run_id).glob("*/run.log"))
    assert len(logs) == 2
    assert sorted(log.read_text().count(" epoch ") for log in logs) == [0, 3]
