"""The command line shared by the documents generated from a folder of run records."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from benchmark.results.leaderboard import _clean_text
from benchmark.util import write_marked_block


def records_document_main(
    argv: list[str] | None, prog: str, description: str, what: str, render: Callable[[Path], str], start: str, end: str
) -> int:
    """``python -m <prog> [RUNS] [--doc FILE]``: ``render(RUNS)`` to stdout, or between ``start`` and
    ``end`` of FILE. A missing folder, a link, a file without the markers: one line, exit 2, nothing written."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("runs", nargs="?", default="results/runs", help="folder of run records")
    parser.add_argument("--doc", help=f"markdown file whose {what} block is rewritten")
    args = parser.parse_args(argv)
    runs_dir = Path(args.runs)
    if not runs_dir.is_dir() or runs_dir.is_symlink():
        print(f"error: {runs_dir}: not a folder of run records", file=sys.stderr)
        return 2
    text = render(runs_dir)
    if args.doc:
        try:
            write_marked_block(args.doc, start, end, text)
        except (OSError, ValueError) as e:
            print(f"error: {_clean_text(e)}", file=sys.stderr)
            return 2
    else:
        sys.stdout.write(text)
    return 0
