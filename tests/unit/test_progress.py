"""Progress counters (rows/s, ETA, chunks reported from inside a model), the run log, per-epoch
lines, and the per-run lock (waiting, and release when the holder dies)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from benchmark.progress import Progress, RunLog, format_rate, format_seconds, run_version, within_chunk
from benchmark.runlock import exclusive, lock_path
from benchmark.training import EpochLog

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_seconds_and_rate():
    assert format_seconds(42) == "42s"
    assert format_seconds(185) == "3m05s"
    assert format_seconds(3720) == "1h02m"
    assert format_seconds(float("inf")) == "?"
    assert format_rate(2530.4) == "2530" and format_rate(41.666) == "41.7" and format_rate(0.4213) == "0.421"


def test_run_version_names_time_and_process():
    assert run_version(now=0.0, pid=123) == "19700101-000000-123"


def test_run_log_writes_the_file_always_and_stdout_only_when_not_a_terminal(tmp_path):
    piped, tty = io.StringIO(), Terminal()
    RunLog(tmp_path / "a" / "run.log", stdout=piped).line("epoch 1/2")
    RunLog(tmp_path / "b" / "run.log", stdout=tty).line("epoch 1/2")
    RunLog(stdout=piped, quiet=True).line("from another process of a distributed run")
    assert piped.getvalue() == "epoch 1/2\n"
    assert tty.getvalue() == ""
    for d in ("a", "b"):
        (line,) = (tmp_path / d / "run.log").read_text().splitlines()
        assert line.endswith(" epoch 1/2")


def test_progress_status_lines_have_rate_and_eta(tmp_path):
    out, clock = io.StringIO(), FakeClock()
    log = RunLog(tmp_path / "run.log", stdout=out)
    p = Progress(100, "eval", log=log, interval=10, clock=clock, bar=False)
    clock.now = 5.0
    p.update(20)  # before the first interval: no line
    assert out.getvalue() == ""
    clock.now = 12.0
    p.update(10)  # 30 rows in 12 s: 2.5 rows/s, 70 left -> 28 s
    assert out.getvalue().splitlines() == ["eval: 30/100 rows (30%), 2.5 rows/s, ETA 28s"]
    clock.now = 20.0
    p.update(70)
    p.close()  # 100 rows in 20 s
    assert out.getvalue().splitlines()[-1] == "eval: 100/100 rows in 20s, 5 rows/s"
    assert len((tmp_path / "run.log").read_text().splitlines()) == 2


def test_disabled_progress_still_writes_the_log_file_but_not_stdout(tmp_path):
    out, clock = io.StringIO(), FakeClock()
    p = Progress(4, "eval", enabled=False, log=RunLog(tmp_path / "run.log", stdout=out), clock=clock, bar=False)
    clock.now = 2.0
    p.update(4)
    p.close()
    assert out.getvalue() == ""
    assert (tmp_path / "run.log").read_text().strip().endswith("eval: 4/4 rows in 2s, 2 rows/s")


def test_a_model_loop_advances_the_bar_inside_a_chunk():
    clock = FakeClock()
    p = Progress(10, "eval", log=RunLog(stdout=io.StringIO()), clock=clock, bar=False)
    seen = []
    with p.chunk(4):  # 4 rows scored as 8 prompts: each prompt is half a row
        advance = within_chunk(8)
        advance(2)
        seen.append(p.done)
        advance(2)
        seen.append(p.done)
        advance(100)  # over-reporting stops at the end of the chunk
        seen.append(p.done)
    seen.append(p.done)
    with p.chunk(6):  # a model that reports nothing: the chunk still counts when it ends
        pass
    assert seen == [1.0, 2.0, 4.0, 4.0] and p.done == 10.0
    within_chunk(5)(3)  # outside a chunk: nothing happens
    assert p.done == 10.0


def test_epoch_line_has_epoch_loss_metric_and_seconds():
    e = EpochLog(RunLog(stdout=io.StringIO()), "ndcg@10")
    first = e.line(0, 2, {"train/loss": torch.tensor(0.69314), "valid/ndcg@10": torch.tensor(0.1)})
    second = e.line(1, 2, {"train/loss": torch.tensor(0.5), "valid/ndcg@10": torch.tensor(0.05)})
    assert first.startswith("epoch 1/2  train/loss=0.6931  valid/ndcg@10=0.1000 best  (") and first.endswith("s)")
    assert second.startswith("epoch 2/2  train/loss=0.5000  valid/ndcg@10=0.0500  (")


def test_a_second_holder_waits_and_is_told_who_holds_the_lock(tmp_path):
    path = lock_path(tmp_path, "tiny-loo-full-bpr-s0-abc")
    said: list[str] = []
    result: dict[str, object] = {}
    with exclusive(path) as waited_first:
        assert waited_first is False

        def second() -> None:
            with exclusive(path, said.append, "[run] the same run is in progress") as waited:
                result["waited"] = waited
                result["at"] = time.monotonic()

        t = threading.Thread(target=second)
        t.start()
        deadline = time.monotonic() + 10
        while not said and time.monotonic() < deadline:
            time.sleep(0.01)
        released = time.monotonic()
        assert "waited" not in result  # still blocked while we hold the lock
    t.join(10)
    assert result["waited"] is True and result["at"] >= released
    (msg,) = said
    assert msg.startswith("[run] the same run is in progress: waiting for pid ") and str(path) in msg


def test_lock_files_stay_in_the_locks_folder_whatever_the_name(tmp_path):
    assert lock_path(tmp_path, "tiny-loo-full-bpr-s0-abc") == tmp_path / "locks" / "tiny-loo-full-bpr-s0-abc.lock"
    odd = ["../x", "a/b", "a\\b", ".hidden", "", "x" * 300]
    paths = [lock_path(tmp_path, n) for n in odd]
    assert all(p.parent == tmp_path / "locks" and p.name.startswith("id-") for p in paths)
    assert len(set(paths)) == len(odd)  # different names never share a lock


def test_a_killed_holder_releases_its_lock(tmp_path):
    path = lock_path(tmp_path, "run")
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path; from benchmark.runlock import exclusive\n"
        "with exclusive(Path(sys.argv[2])):\n    print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        said: list[str] = []
        with pytest.raises(BlockingIOError):  # really held by the other process
            import fcntl

            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        with exclusive(path, said.append) as waited:
            assert waited is False and said == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
