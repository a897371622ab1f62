"""Run records -> pandas DataFrame -> accuracy against cost (PNG), as one does after a sweep.

    python examples/runs_to_dataframe.py outputs/quickstart/runs
    python examples/runs_to_dataframe.py results/runs --metric test/hr@10 --out hr_vs_cost.png --csv runs.csv

One DataFrame row per run record found under RUNS_DIR (unreadable records are skipped with a
warning, as the leaderboard does); cost = training + evaluation seconds. The plot has one panel per
test setting (runs scored on the same test rows: dataset, split, evaluation protocol and options),
one point per model (mean over seeds, bars = min..max when there are several), cost on a log axis.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.results.leaderboard import load_runs, setting_of


def _number(x: Any) -> float:
    """A finite float, or NaN for anything else (records are untrusted input)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return math.nan
    return float(x) if math.isfinite(x) else math.nan


def runs_frame(runs_dir: Path) -> pd.DataFrame:
    """One row per run: identity, test setting, overall test metrics and seconds.

    Args:
        runs_dir: folder searched recursively for ``record.json`` files.

    Returns:
        Columns ``run_id, model, family, setting, seed, train_seconds, eval_seconds,
        cost_seconds`` and one ``test/<metric>`` column per overall metric (slices left out).
    """
    rows = []
    for rec, _folder in load_runs(runs_dir):
        eff = rec["efficiency"]
        (dataset, split, ev), _ = setting_of(rec)
        row = {
            "run_id": rec["run_id"],
            "model": rec["model"]["label"],
            "family": rec["model"]["family"],
            "setting": f"{dataset} / {split} / {ev}",
            "seed": rec["seed"],
            "train_seconds": _number(eff.get("train_seconds")),
            "eval_seconds": _number(eff.get("eval_seconds")),
        }
        row.update({k: _number(v) for k, v in rec["metrics"].items() if k.count("/") == 1})
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df["cost_seconds"] = df["train_seconds"] + df["eval_seconds"]
    return df


def plot_accuracy_vs_cost(df: pd.DataFrame, metric: str, out: Path) -> pd.DataFrame:
    """Save the accuracy-vs-cost plot of ``metric``; return the plotted points (per setting, model).

    Args:
        df: :func:`runs_frame` output.
        metric: a metric column, e.g. ``test/ndcg@10``.
        out: PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have = df.dropna(subset=[metric, "cost_seconds"]) if metric in df else df.iloc[0:0]
    if have.empty:
        raise ValueError(f"no run has both {metric} and its train/eval seconds")
    points = (
        have.groupby(["setting", "model"], sort=True)
        .agg(
            cost_seconds=("cost_seconds", "mean"),
            value=(metric, "mean"),
            low=(metric, "min"),
            high=(metric, "max"),
            seeds=("seed", "nunique"),
        )
        .reset_index()
    )
    settings = list(points["setting"].unique())
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.5), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        part = points[points["setting"] == setting]
        err = [(part["value"] - part["low"]).clip(lower=0), (part["high"] - part["value"]).clip(lower=0)]
        ax.errorbar(part["cost_seconds"], part["value"], yerr=err, fmt="o", capsize=3)
        for _, p in part.iterrows():
            ax.annotate(p["model"], (p["cost_seconds"], p["value"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("cost per run: train + eval seconds (log scale)")
        ax.set_ylabel(metric)
        ax.set_title(setting, fontsize=9)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return points


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring. Returns the exit status."""
    p = argparse.ArgumentParser(description="Run records -> DataFrame -> accuracy-vs-cost PNG.")
    p.add_argument("runs_dir", type=Path, help="folder of run folders (record.json), e.g. outputs/quickstart/runs")
    p.add_argument("--metric", default="test/ndcg@10", help="metric on the y axis (default test/ndcg@10)")
    p.add_argument("--out", type=Path, default=Path("accuracy_vs_cost.png"), help="PNG written")
    p.add_argument("--csv", type=Path, default=None, help="also write the DataFrame as CSV")
    a = p.parse_args(argv)
    if not a.runs_dir.is_dir():
        print(f"runs_to_dataframe: error: {a.runs_dir}: not a directory", file=sys.stderr)
        return 2
    df = runs_frame(a.runs_dir)
    if df.empty:
        print(f"runs_to_dataframe: error: {a.runs_dir}: no readable run record", file=sys.stderr)
        return 2
    try:
        points = plot_accuracy_vs_cost(df, a.metric, a.out)
    except ValueError as e:
        print(f"runs_to_dataframe: error: {a.runs_dir}: {e}", file=sys.stderr)
        return 2
    if a.csv:
        df.to_csv(a.csv, index=False)
    with pd.option_context("display.width", 160, "display.max_columns", 8):
        print(points.to_string(index=False))
    print(f"{len(df)} runs; plot written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
