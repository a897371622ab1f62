"""Candidate lists next to full ranking: each model's place under both protocols, from the leaderboard.

Reads ``leaderboard.csv`` (written by ``llm4rec leaderboard``) and, for every candidates table
(``eval=candidates``, ``candidates[...]`` for other settings such as a user subset), lists each
model with its candidate-list metrics (hit@1 = LLaRA's HitRatio@1, ndcg@10, valid_ratio) and the
same model's full-ranking row (``full_ranking:`` columns: the same split and label under
``eval=full``), with the model's rank under each protocol (1 = best: by hit@1 on the candidate
lists, by NDCG@10 in full ranking). A model that only ranks candidate lists (the LLM answerers)
has no full-ranking place.

Run: ``python -m benchmark.results.protocols [results/leaderboard.csv] [--doc docs/candidates.md]``
(``--doc`` writes the tables between the file's ``candidates-vs-full`` markers).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

from benchmark.util import write_marked_block

START, END = "<!-- candidates-vs-full:start -->", "<!-- candidates-vs-full:end -->"
LIMIT = 64 * 1024 * 1024  # bytes of leaderboard.csv read at most
CAND = ("test/hit@1", "test/ndcg@10", "test/valid_ratio")
FULL = ("full_ranking:test/hr@10", "full_ranking:test/ndcg@10")


def _num(text: str | None) -> float | None:
    try:
        x = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return x if x is not None and math.isfinite(x) else None


def _ranks(values: dict[str, float | None]) -> dict[str, int]:
    """1-based competition ranks of the models with a value, highest first; values equal to 9
    decimals (means of seeds, e.g. (0.07 + 0.04) / 2 and (0.05 + 0.06) / 2) share a rank."""
    kept = {m: round(v, 9) for m, v in values.items() if v is not None}
    return {m: 1 + sum(1 for w in kept.values() if w > v) for m, v in kept.items()}


def _cell(row: dict[str, str], key: str) -> str:
    mean, std = _num(row.get(key)), _num(row.get(f"{key}_std"))
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None and _num(row.get("seeds")) not in (None, 1.0) else "")


def tables(csv_text: str) -> str:
    """Markdown: one table per candidates setting of the leaderboard (see the module docstring)."""
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    settings: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for r in rows:
        ev = r.get("eval") or ""
        if ev == "candidates" or ev.startswith("candidates["):
            settings.setdefault((r.get("dataset") or "", r.get("split") or "", ev), []).append(r)
    out: list[str] = []
    for (data, split, ev), members in sorted(settings.items()):
        cand = _ranks({r["model"]: _num(r.get(CAND[0])) for r in members})
        full = _ranks({r["model"]: _num(r.get(FULL[1])) for r in members})
        out += [
            f"**{data} · {split} · {ev}**",
            "",
            "| model | seeds | hit@1 | ndcg@10 | valid_ratio | place (candidates, hit@1) | full ranking: hr@10 | full ranking: ndcg@10 | place (full, ndcg@10) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(members, key=lambda r: (cand.get(r["model"], 10**6), r["model"])):
            m = r["model"]
            out.append(
                f"| {m} | {r.get('seeds', '')} | " + " | ".join(_cell(r, k) for k in CAND)
                + f" | {cand.get(m, '-')} | " + " | ".join(_cell(r, k) for k in FULL) + f" | {full.get(m, '-')} |"
            )
        out.append("")
    return "\n".join(out) if out else "No candidates rows in the leaderboard.\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmark.results.protocols", description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="?", type=Path, default=Path("results/leaderboard.csv"))
    ap.add_argument("--doc", type=Path, help=f"write the tables between {START} and {END} of this file")
    a = ap.parse_args(argv)
    try:
        if a.csv.is_symlink() or not a.csv.is_file() or a.csv.stat().st_size > LIMIT:
            raise ValueError(f"{a.csv}: not a regular file of at most {LIMIT} bytes")
        text = tables(a.csv.read_text(encoding="utf-8"))
        if a.doc is not None:
            write_marked_block(a.doc, START, END, text)
    except (OSError, ValueError, csv.Error) as e:
        print(str(e), file=sys.stderr)
        return 2
    if a.doc is None:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
