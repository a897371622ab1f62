"""Aggregate run records into leaderboard tables: one row per (dataset, protocol, model config).

Runs that differ only by seed form one row (mean ± sample std over seeds).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.eval.metrics import higher_is_better
from benchmark.results.record import RECORD

# Columns shown in the Markdown table per protocol (the CSV has every metric).
HEADLINE = {
    "ranking": ["hr@10", "ndcg@10", "mrr@10", "recall@20", "ndcg@20", "coverage@10"],
    "labeled": ["auc", "gauc", "logloss"],
}
SLICE_HEADLINE = {"ranking": "ndcg@10", "labeled": "auc"}
SLICES = ("cold_user", "cold_item", "strict_cold_item")


def load_records(runs_dir: Path) -> list[dict[str, Any]]:
    """Every ``*/record.json`` under ``runs_dir`` (temporary folders skipped)."""
    out = []
    for p in sorted(Path(runs_dir).glob(f"*/{RECORD}")):
        if p.parent.name.startswith("."):
            continue
        out.append(json.loads(p.read_text()))
    return out


def _kind(protocol: str) -> str:
    return "labeled" if protocol == "labeled" else "ranking"


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group runs by seed group; mean and std of every metric over seeds."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r["group_key"]].append(r)
    rows = []
    for key, runs in groups.items():
        runs.sort(key=lambda r: r["seed"])
        first = runs[0]
        names = sorted({m for r in runs for m in r["metrics"]})
        stats = {}
        for m in names:
            vals = [r["metrics"].get(m) for r in runs]
            vals = [v for v in vals if v is not None]
            if vals:
                stats[m] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None)
        split = first["split"]
        rows.append(
            {
                "dataset": first["dataset"]["name"],
                "split": split["protocol"] + ("+holdout" if split["stats"].get("holdout_items") else ""),
                "eval": first["eval"]["protocol"],
                "model": first["model"]["label"],
                "family": first["model"].get("family", ""),
                "seeds": len(runs),
                "seed_list": [r["seed"] for r in runs],
                "device": first.get("labels", {}).get("device", ""),
                "split_fingerprint": split["fingerprint"][:12],
                "group_key": key[:12],
                "train_seconds": float(np.mean([r["efficiency"]["train_seconds"] for r in runs])),
                "params": first["model"].get("params_total"),
                "metrics": stats,
            }
        )
    rows.sort(key=lambda r: (r["dataset"], r["split"], r["eval"], r["model"]))
    return rows


def _fmt(stat: tuple[float, float | None] | None) -> str:
    if stat is None:
        return "—"
    mean, std = stat
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """One Markdown table per (dataset, split, eval); best mean per column in bold."""
    out = []
    tables: dict[tuple, list] = defaultdict(list)
    for r in rows:
        tables[(r["dataset"], r["split"], r["eval"])].append(r)
    for (ds, sp, ev), trs in tables.items():
        kind = _kind(ev)
        cols = [f"test/{m}" for m in HEADLINE[kind]]
        cols += [
            f"test/{s}/{SLICE_HEADLINE[kind]}"
            for s in SLICES
            if any(f"test/{s}/{SLICE_HEADLINE[kind]}" in r["metrics"] for r in trs)
        ]
        label = "sampled (100 negatives)" if ev == "sampled" else ev
        out.append(f"### {ds} · split={sp} · eval={label}\n")
        out.append("| model | seeds | " + " | ".join(c.removeprefix("test/") for c in cols) + " | train s |")
        out.append("|---|---|" + "---|" * len(cols) + "---|")
        best = {}
        for c in cols:
            vals = [r["metrics"][c][0] for r in trs if c in r["metrics"]]
            if vals:
                best[c] = max(vals) if higher_is_better(c) else min(vals)
        for r in trs:
            cells = []
            for c in cols:
                s = _fmt(r["metrics"].get(c))
                if c in r["metrics"] and len(trs) > 1 and math.isclose(r["metrics"][c][0], best[c]):
                    s = f"**{s}**"
                cells.append(s)
            out.append(
                f"| {r['model']} | {r['seeds']} | " + " | ".join(cells) + f" | {r['train_seconds']:.1f} |"
            )
        out.append("")
    return "\n".join(out)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Every metric as ``<metric>`` (mean) and ``<metric>_std`` columns."""
    metrics = sorted({m for r in rows for m in r["metrics"]})
    head = [
        "dataset",
        "split",
        "eval",
        "model",
        "family",
        "seeds",
        "device",
        "split_fingerprint",
        "group_key",
        "params",
        "train_seconds",
    ]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head + [c for m in metrics for c in (m, f"{m}_std")])
    for r in rows:
        vals = []
        for m in metrics:
            mean, std = r["metrics"].get(m, (None, None))
            vals += ["" if mean is None else f"{mean:.6f}", "" if std is None else f"{std:.6f}"]
        w.writerow([r[h] if not isinstance(r[h], float) else f"{r[h]:.3f}" for h in head] + vals)
    return buf.getvalue()


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_leaderboard(runs_dir: Path, out_dir: Path) -> str:
    """Write ``leaderboard.md`` and ``leaderboard.csv`` into ``out_dir``; return the Markdown."""
    rows = aggregate(load_records(runs_dir))
    md = (
        "# Leaderboard\n\nGenerated by `llm4rec leaderboard` from run records; mean ± std over seeds.\n\n"
        + markdown(rows)
    )
    _atomic_write(out_dir / "leaderboard.md", md)
    _atomic_write(out_dir / "leaderboard.csv", to_csv(rows))
    return md
