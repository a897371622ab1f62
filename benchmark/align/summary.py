"""The alignment table (``results/align/summary.md``): every aligned row next to its SFT parents.

``python -m benchmark.align.summary [RUNS_DIR] [--out FILE]`` reads the run records under
``RUNS_DIR`` (default ``results/runs``) through the leaderboard's bounded loader and aggregation
(:func:`benchmark.results.leaderboard.aggregate`: mean ± std over seeds, metrics recomputed where
the leaderboard recomputes them, the paired Wilcoxon test of each aligned row against exactly
the parent runs it names, Holm-corrected). A table is written for each (dataset, split, eval) that
holds an aligned run, with the parents' rows first; nothing is typed by hand.

Columns: seeds; the headline metric (NDCG@10 or AUC) with Δ against the parents and the test's
mark and p; HR@10, the cold slices and catalogue coverage@10 / average recommended popularity
(ranking tables) and the genre intra-list diversity ildgenre@10; the validity of generated ids at test time (``model.generation.valid_rate``,
P5); the last traced reward and validation metric; whether any seed was flagged for possible
reward hacking; the median seconds per alignment step and the training seconds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.results.leaderboard import aggregate, load_runs
from benchmark.results.tables import kind_of, table_key
from benchmark.util import atomic_write, write_marked_block

OUT = Path("results/align/summary.md")
COST = Path("results/perf/align_cost.json")
START, END = "<!-- align-table:start -->", "<!-- align-table:end -->"
RANKING_COLUMNS = ("hr@10", "cold_user/ndcg@10", "cold_item/ndcg@10", "coverage@10", "arp@10", "ildgenre@10")
LABELED_COLUMNS = ("gauc", "cold_user/auc", "cold_item/auc", "logloss")


def _num(x: Any) -> float | None:
    """A finite float, else None (records are data from strangers)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if np.isfinite(x) else None


def _get(node: Any, *keys: str) -> Any:
    for k in keys:
        node = node.get(k) if isinstance(node, dict) else None
    return node


def _mean(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return float(np.mean(xs)) if xs else None


def _cell(stat: tuple[float, float | None] | None, digits: int = 4) -> str:
    if stat is None:
        return "-"
    mean, std = stat
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def run_facts(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-row facts from the records of its seeds: validity, last trace values, flags, costs."""
    traces = [_get(r, "training", "align", "trace") for r in recs]
    last = [t[-1] if isinstance(t, list) and t and isinstance(t[-1], dict) else {} for t in traces]
    return {
        "validity": _mean([_num(_get(r, "model", "generation", "valid_rate")) for r in recs]),
        "reward": _mean([_num(x.get("reward")) for x in last]),
        "valid_metric": _mean([_num(x.get("valid_metric")) for x in last]),
        "flagged": sum(_get(r, "training", "align", "hacking", "flag") is True for r in recs),
        "step_seconds": _mean([_num(_get(r, "training", "align", "seconds_per_step")) for r in recs]),
        "train_seconds": _mean([_num(_get(r, "efficiency", "train_seconds")) for r in recs]),
    }


def _records(row: dict[str, Any], by_dir: dict[Path, dict[str, Any]]) -> list[dict[str, Any]]:
    return [by_dir[d] for d in row["run_dirs"] if d in by_dir]


def table(rows: list[dict[str, Any]], by_dir: dict[Path, dict[str, Any]]) -> list[str]:
    """Markdown lines of one table: the parents' rows, then each aligned row."""
    kind = kind_of(rows[0]["eval"])
    head = "ndcg@10" if kind == "ranking" else "auc"
    extra = RANKING_COLUMNS if kind == "ranking" else LABELED_COLUMNS
    parents = {p for r in rows for p in r["_parents"]}
    sft = [r for r in rows if parents & set(r["_per_user_runs"])]
    aligned = [r for r in rows if r["_parents"]]
    cols = ["model", "seeds", head, f"Δ {head} vs SFT", "vs SFT (p, Holm)", *extra]
    cols += ["validity", "last reward", "last valid metric", "flagged", "s/step", "train s"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(sft, key=lambda r: r["model"]) + sorted(aligned, key=lambda r: r["model"]):
        facts = run_facts(_records(r, by_dir))
        own = r["metrics"].get(f"test/{head}")
        delta = "-"
        if r["_parents"] and own is not None:
            base = [q for q in sft if set(r["_parents"]) <= set(q["_per_user_runs"])]
            if base and r["_per_user"] is not None:
                found = np.mean([base[0]["_per_user_runs"][p] for p in r["_parents"]], axis=0)
                delta = f"{float(np.mean(r['_per_user'] - found)):+.4f}"
        test = "-" if r["p_parent"] is None else f"{r['vs_parent']} ({r['p_parent']:.3g})"
        cells = [r["model"], str(r["seeds"]), _cell(own), delta, test]
        cells += [_cell(r["metrics"].get(f"test/{c}")) for c in extra]
        cells += [
            _f(facts["validity"], 3),
            _f(facts["reward"], 3),
            _f(facts["valid_metric"]),
            f"{facts['flagged']}/{r['seeds']}" if r["_parents"] else "-",
            _f(facts["step_seconds"], 2),
            _f(facts["train_seconds"], 0),
        ]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return out


def summary(runs_dir: Path) -> str:
    """The whole Markdown document (empty tables are left out)."""
    runs = load_runs(runs_dir, warn=lambda m: print(m, file=sys.stderr))
    by_dir = {d: rec for rec, d in runs}
    rows = aggregate(runs, warn=lambda m: print(m, file=sys.stderr))
    tables: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        tables.setdefault(table_key(r), []).append(r)
    out = [
        "# Preference alignment after SFT",
        "",
        f"Generated by `python -m benchmark.align.summary` from the run records in `{runs_dir}`; "
        "mean ± std over seeds. `Δ vs SFT`: mean per-user difference of the headline metric against "
        "exactly the parent runs each aligned row names; `vs SFT`: paired Wilcoxon test on those per-user "
        "values, Holm over the aligned rows of the table (▲/▼ p < 0.05, n.s. otherwise). `validity`: share of "
        "generated test slots that are catalogue items (P5). `last reward` / `last valid metric`: the trace's "
        "final values (mean over seeds). `flagged`: seeds whose reward rose while the validation metric fell "
        "by more than `align.max_valid_drop`. `s/step`: median seconds per alignment step (one torch thread, CPU).",
        "",
    ]
    for key, trs in tables.items():
        if not any(r["_parents"] for r in trs):
            continue
        out += [f"## {' · '.join(key)}", "", *table(trs, by_dir), ""]
    return "\n".join(out)


def cost_table(path: Path) -> list[str]:
    """Markdown lines of the ``make bench`` alignment cost (``results/perf/align_cost.json``), if present."""
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        rows = doc["methods"]
        load = doc["machine"]["load_avg"][0]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return []
    out = [
        f"Cost per step (`{path}`: {doc.get('setting', '')}; one torch thread, CPU, load average {load:.1f} "
        "while it ran):",
        "",
        "| method | batch | s/step (median) | s/step (best) | s/example | x SFT step | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['method']} | {r['batch_size']} | {r['seconds_per_step_median']:.3f} | "
            f"{r['seconds_per_step_best']:.3f} | {r['seconds_per_example']:.4f} | {r['x_sft_step']:.2f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    return [*out, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.align.summary", description=__doc__.splitlines()[0]
    )
    parser.add_argument("runs", nargs="?", type=Path, default=Path("results/runs"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--readme", type=Path, help=f"also write the tables between {START} and {END} there")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        print(f"{args.runs}: not a folder of run records", file=sys.stderr)
        return 2
    text = summary(args.runs) + "\n" + "\n".join(cost_table(COST))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, text + "\n")
    print(f"wrote {args.out}")
    if args.readme is not None:
        body = text.split("\n", 2)[2] if text.startswith("# ") else text  # the tables, without the title
        try:
            write_marked_block(args.readme, START, END, body.lstrip("\n") + "\n")
        except (OSError, ValueError) as e:
            print(str(e), file=sys.stderr)
            return 2
        print(f"wrote the tables into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
