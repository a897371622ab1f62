"""Progress a user can follow: the run's log, per-epoch lines, and row counters with rows/s and ETA.

Three pieces, shared by the training task, the evaluator loop and the LLM models:

- :class:`RunLog`: the lines of one run. Every line goes into the run's log file (when it has
  one); it is also printed to stdout when stdout is not a terminal (a cluster job's output file),
  where a progress bar would be noise and these lines are all the user sees.
- :class:`Progress`: rows done out of a total, with rows/s and an ETA. On a terminal (stderr) it
  is a tqdm bar; it also writes a status line to the :class:`RunLog` every ``interval`` seconds
  and a last line when it closes.
- :func:`within_chunk`: how a long loop inside a model (LLM scoring, beam search) advances the
  active counter while the evaluator waits for one chunk of rows, so a chunk that takes minutes
  shows movement, rate and ETA. Outside an active chunk it does nothing (e.g. during training
  validation, which Lightning's bar covers).
"""

from __future__ import annotations

import contextvars
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def is_terminal(stream: IO[str] | Any) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes, captured output)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def format_seconds(seconds: float) -> str:
    """A short duration: ``42s``, ``3m05s``, ``1h02m``; ``?`` when unknown."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):  # NaN, negative, inf
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_rate(per_second: float) -> str:
    """``2530``, ``41.7``, ``0.42``: whole numbers from 100 up, three significant digits below."""
    return f"{per_second:.0f}" if per_second >= 100 else f"{per_second:.3g}"


def run_version(now: float | None = None, pid: int | None = None) -> str:
    """A name for one invocation of a run: UTC time to the second and the process id.

    Logger folders are ``<run_id>/<version>``, so two invocations of the same run (a rerun, or a
    concurrent start that waits for the first) never write into each other's files.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{os.getpid() if pid is None else pid}"


class RunLog:
    """The lines of one run: appended to its log file, echoed to stdout when that is not a terminal.

    Args:
        path: the log file (its folder is created); None = no file (lines only echoed).
        stdout: where echoed lines go (default: ``sys.stdout`` at the time of each line).
        quiet: never echo (the processes of a distributed run other than the writing one).
    """

    def __init__(self, path: Path | None = None, stdout: IO[str] | None = None, quiet: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self._stdout = stdout
        self.quiet = quiet
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def stdout(self) -> IO[str]:
        return self._stdout if self._stdout is not None else sys.stdout

    @property
    def echoes(self) -> bool:
        """True when lines are printed to stdout (stdout is not a terminal)."""
        return not self.quiet and not is_terminal(self.stdout)

    def line(self, text: str, echo: bool = True) -> None:
        """Write one line to the log file, and to stdout when ``echo`` and stdout is not a terminal."""
        text = text.rstrip("\n")
        if self.path is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with self.path.open("a", encoding="utf-8") as f:
                f.write(f"{stamp} {text}\n")
        if echo and self.echoes:
            print(text, file=self.stdout, flush=True)

    def file_only(self, text: str) -> None:
        """Write one line to the log file only (for lines a terminal already shows)."""
        self.line(text, echo=False)


class Progress:
    """Rows done out of ``total``, with rows/s and ETA; a tqdm bar on a terminal, status lines in the log.

    Args:
        total: rows to do.
        desc: what is counted (``eval``).
        unit: the name of one row in messages.
        enabled: False = no bar and no status lines on stdout (the log file still gets them).
        log: where status lines go (default: a :class:`RunLog` without file).
        interval: seconds between status lines.
        clock: seconds since some origin (tests pass a fake one).
        bar: show a tqdm bar; default = enabled and stderr is a terminal.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "row",
        enabled: bool = True,
        log: RunLog | None = None,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        bar: bool | None = None,
    ) -> None:
        self.total = int(total)
        self.desc = desc
        self.unit = unit
        self.enabled = enabled
        self.log = log if log is not None else RunLog()
        self.interval = float(interval)
        self.clock = clock
        self.start = clock()
        self._last_line = self.start
        self.done = 0.0  # may be fractional while a chunk reports from inside
        self._shown = 0  # integer rows the bar shows
        self._chunk: tuple[float, float] | None = None  # (chunk start, chunk rows)
        self._bar = None
        if bar if bar is not None else (enabled and is_terminal(sys.stderr)):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)

    # ------------------------------------------------------------------ counting

    def update(self, n: float) -> None:
        """``n`` more rows are done (fractions allowed; the bar shows whole rows)."""
        self.done = min(float(self.total), self.done + float(n))
        if self._bar is not None:
            whole = int(self.done)
            if whole > self._shown:
                self._bar.update(whole - self._shown)
                self._shown = whole
        now = self.clock()
        if now - self._last_line >= self.interval and self.done < self.total:
            self._last_line = now
            self.log.line(self.status(), echo=self.enabled)

    def rate(self) -> float:
        """Rows per second so far (0 before any time passed)."""
        elapsed = self.clock() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float:
        """Seconds left at the current rate (inf before the first row)."""
        r = self.rate()
        return (self.total - self.done) / r if r > 0 else float("inf")

    def status(self) -> str:
        """``eval: 120/943 rows (13%), 4.1 rows/s, ETA 3m21s``."""
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.desc}: {int(self.done)}/{self.total} {self.unit}s ({pct:.0f}%), "
            f"{format_rate(self.rate())} {self.unit}s/s, ETA {format_seconds(self.eta())}"
        )

    def close(self) -> None:
        """Close the bar and write the last line (rows, seconds, rows/s)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elapsed = self.clock() - self.start
        rate = f", {format_rate(self.done / elapsed)} {self.unit}s/s" if elapsed > 0 else ""
        self.log.line(
            f"{self.desc}: {int(self.done)}/{self.total} {self.unit}s in {format_seconds(elapsed)}{rate}",
            echo=self.enabled,
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ chunks

    @contextmanager
    def chunk(self, rows: int) -> Iterator[None]:
        """Work on the next ``rows`` rows; loops inside may report via :func:`within_chunk`.

        When the block ends, the counter stands exactly at the end of the chunk, whatever was
        reported inside (nothing, or all of it).
        """
        start = self.done
        self._chunk = (start, float(rows))
        token = _ACTIVE.set(self)
        try:
            yield
        finally:
            _ACTIVE.reset(token)
            self._chunk = None
        self.update(start + rows - self.done)

    def _advance_in_chunk(self, fraction: float) -> None:
        if self._chunk is None:
            return
        start, rows = self._chunk
        target = min(start + rows, self.done + fraction * rows)
        if target > self.done:
            self.update(target - self.done)


_ACTIVE: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("benchmark_progress", default=None)


def _nothing(n: int) -> None:
    return None


def within_chunk(total: int) -> Callable[[int], None]:
    """``advance(n)`` for a loop of ``total`` steps inside the active chunk (a no-op outside one).

    Each call moves the active counter by ``n / total`` of the chunk's rows, so a model that
    scores 1024 rows x 101 candidates in batches of prompts reports in prompts and the bar still
    counts rows::

        advance = within_chunk(len(prompts))
        for start in range(0, len(prompts), batch):
            ...
            advance(len(batch))
    """
    active = _ACTIVE.get()
    if active is None or total <= 0:
        return _nothing

    def advance(n: int) -> None:
        active._advance_in_chunk(float(n) / float(total))

    return advance
