"""Aggregate run records into leaderboard tables: one row per (dataset, protocol, model config).

Runs that differ only by seed form one row (mean ± sample std over seeds). Each
row is compared with the best baseline of its table by a paired Wilcoxon test over
per-user values of the table's headline metric (averaged over seeds), with Holm
correction over the rows of the table; ▲/▼ follow the sign of the mean paired
difference. For labeled tables the paired unit is the per-user AUC, which can
disagree in direction with the pooled AUC of the table.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.eval.metrics import higher_is_better
from benchmark.eval.significance import holm, paired_pvalue
from benchmark.results.recompute import per_row_values
from benchmark.results.record import RECORD, read_predictions

# Columns shown in the Markdown/LaTeX tables per protocol (the CSV and HTML have every metric).
HEADLINE = {
    "ranking": ["hr@10", "ndcg@10", "mrr@10", "recall@20", "ndcg@20", "coverage@10"],
    "labeled": ["auc", "gauc", "logloss"],
}
SIGNIFICANCE_METRIC = {"ranking": "ndcg@10", "labeled": "auc"}
SLICES = ("cold_user", "cold_item", "strict_cold_item")
BASELINE_FAMILIES = ("classic", "recbole")
ALPHA = 0.05


def natural_key(label: str) -> tuple[Any, ...]:
    """Sort key that orders digit runs by value: ``x-16shot < x-64shot < x-256shot < x-allshot``."""
    parts = re.split(r"(\d+)", label)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def load_runs(runs_dir: Path) -> list[tuple[dict[str, Any], Path]]:
    """Every ``*/record.json`` under ``runs_dir`` with its folder (temporary folders skipped)."""
    out = []
    for p in sorted(Path(runs_dir).glob(f"*/{RECORD}")):
        if not p.parent.name.startswith("."):
            out.append((json.loads(p.read_text()), p.parent))
    return out


def kind_of(protocol: str) -> str:
    return "labeled" if protocol == "labeled" else "ranking"


def table_key(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row["dataset"], row["split"], row["eval"])


def aggregate(runs: list[tuple[dict[str, Any], Path]]) -> list[dict[str, Any]]:
    """Group runs by seed group: mean/std of every metric, per-user headline values, significance."""
    groups: dict[str, list[tuple[dict[str, Any], Path]]] = defaultdict(list)
    for rec, d in runs:
        groups[rec["group_key"]].append((rec, d))
    rows = []
    for key, members in groups.items():
        members.sort(key=lambda m: m[0]["seed"])
        recs = [m[0] for m in members]
        first = recs[0]
        stats = {}
        for m in sorted({m for r in recs for m in r["metrics"]}):
            vals = [r["metrics"][m] for r in recs if r["metrics"].get(m) is not None]
            if vals:
                stats[m] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None)
        kind = kind_of(first["eval"]["protocol"])
        sig_metric = SIGNIFICANCE_METRIC[kind]
        per_user = [per_row_values(r, read_predictions(d / r["predictions"]["file"]))[sig_metric] for r, d in members]
        split = first["split"]
        notes = first["model"].get("notes") or {}
        rows.append(
            {
                "dataset": first["dataset"]["name"],
                "split": split["protocol"] + ("+holdout" if split["stats"].get("holdout_items") else ""),
                "eval": first["eval"]["protocol"],
                "model": first["model"]["label"],
                "family": first["model"].get("family", ""),
                "backbone": notes.get("backbone", ""),
                "seeds": len(recs),
                "seed_list": [r["seed"] for r in recs],
                "device": first.get("labels", {}).get("device", ""),
                "split_fingerprint": split["fingerprint"][:12],
                "group_key": key[:12],
                "train_seconds": float(np.mean([r["efficiency"]["train_seconds"] for r in recs])),
                "params": first["model"].get("params_total"),
                "metrics": stats,
                "_per_user": np.mean(per_user, axis=0) if len({len(p) for p in per_user}) == 1 else None,
                "sig_vs": "",
                "p_holm": None,
                "sig": "",
            }
        )
    rows.sort(key=lambda r: (r["dataset"], r["split"], r["eval"], natural_key(r["model"])))
    _significance(rows)
    return rows


def _significance(rows: list[dict[str, Any]]) -> None:
    """Mark each row against the best baseline of its table (Holm over the table's rows)."""
    tables: dict[tuple, list] = defaultdict(list)
    for r in rows:
        tables[table_key(r)].append(r)
    for trs in tables.values():
        metric = "test/" + SIGNIFICANCE_METRIC[kind_of(trs[0]["eval"])]
        base = [r for r in trs if r["family"] in BASELINE_FAMILIES and metric in r["metrics"]]
        if not base:
            continue
        best = max(base, key=lambda r: r["metrics"][metric][0])
        others = [r for r in trs if r is not best and r["_per_user"] is not None and best["_per_user"] is not None]
        others = [r for r in others if len(r["_per_user"]) == len(best["_per_user"])]
        pvals = [paired_pvalue(r["_per_user"], best["_per_user"]) for r in others]
        for r, p in zip(others, holm(pvals) if pvals else [], strict=True):
            r["sig_vs"], r["p_holm"] = best["model"], p
            if p < ALPHA:  # direction from the tested unit: for labeled tables, per-user AUC, not pooled AUC
                r["sig"] = "▲" if float(np.mean(r["_per_user"] - best["_per_user"])) > 0 else "▼"
        best["sig_vs"] = "(best baseline)"


def fmt(stat: tuple[float, float | None] | None) -> str:
    if stat is None:
        return "—"
    mean, std = stat
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def table_columns(trs: list[dict[str, Any]]) -> list[str]:
    kind = kind_of(trs[0]["eval"])
    cols = [f"test/{m}" for m in HEADLINE[kind]]
    head = SIGNIFICANCE_METRIC[kind]
    cols += [f"test/{s}/{head}" for s in SLICES if any(f"test/{s}/{head}" in r["metrics"] for r in trs)]
    return cols


def best_values(trs: list[dict[str, Any]], cols: list[str]) -> dict[str, float]:
    best = {}
    for c in cols:
        vals = [r["metrics"][c][0] for r in trs if c in r["metrics"]]
        if vals:
            best[c] = max(vals) if higher_is_better(c) else min(vals)
    return best


def tables(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    out: dict[tuple, list] = defaultdict(list)
    for r in rows:
        out[table_key(r)].append(r)
    return out


def table_title(key: tuple[str, str, str]) -> str:
    ds, sp, ev = key
    return f"{ds} · split={sp} · eval=" + ("sampled (100 negatives)" if ev == "sampled" else ev)


def markdown(rows: list[dict[str, Any]]) -> str:
    """One Markdown table per (dataset, split, eval); best mean per column in bold."""
    out = []
    for key, trs in tables(rows).items():
        cols = table_columns(trs)
        best = best_values(trs, cols)
        out.append(f"### {table_title(key)}\n")
        out.append("| model | seeds | device | " + " | ".join(c.removeprefix("test/") for c in cols) + " | sig. | train s |")
        out.append("|---|---|---|" + "---|" * len(cols) + "---|---|")
        for r in trs:
            cells = []
            for c in cols:
                s = fmt(r["metrics"].get(c))
                if c in r["metrics"] and len(trs) > 1 and math.isclose(r["metrics"][c][0], best[c]):
                    s = f"**{s}**"
                cells.append(s)
            sig = "base" if r["sig_vs"] == "(best baseline)" else (r["sig"] or ("n.s." if r["sig_vs"] else ""))
            out.append(
                f"| {r['model']} | {r['seeds']} | {r['device']} | " + " | ".join(cells) + f" | {sig} | {r['train_seconds']:.1f} |"
            )
        out.append("")
    return "\n".join(out)


CSV_HEAD = [
    "dataset", "split", "eval", "model", "family", "backbone", "seeds", "device", "split_fingerprint",
    "group_key", "params", "train_seconds", "sig_vs", "p_holm", "sig",
]


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Every metric as ``<metric>`` (mean) and ``<metric>_std`` columns, 6 decimals."""
    metrics = sorted({m for r in rows for m in r["metrics"]})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEAD + [c for m in metrics for c in (m, f"{m}_std")])
    for r in rows:
        vals = []
        for m in metrics:
            mean, std = r["metrics"].get(m, (None, None))
            vals += ["" if mean is None else f"{mean:.6f}", "" if std is None else f"{std:.6f}"]
        head = []
        for h in CSV_HEAD:
            v = r[h]
            head.append("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v))
        w.writerow(head + vals)
    return buf.getvalue()


def _tex_escape(s: str) -> str:
    return s.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("&", r"\&").replace("%", r"\%").replace("#", r"\#")


def latex(rows: list[dict[str, Any]]) -> str:
    """booktabs tables, one per (dataset, split, eval); best mean per column in bold."""
    out = ["% Generated by `llm4rec leaderboard` from results/runs; do not edit."]
    for key, trs in tables(rows).items():
        cols = table_columns(trs)
        best = best_values(trs, cols)
        out.append(r"\begin{table}[t]\centering\small")
        out.append(r"\caption{" + _tex_escape(table_title(key).replace("·", ",")) + r". Mean $\pm$ std over seeds.}")
        out.append(r"\begin{tabular}{l r " + "r " * len(cols) + "}")
        out.append(r"\toprule")
        out.append("Model & Seeds & " + " & ".join(_tex_escape(c.removeprefix("test/")) for c in cols) + r" \\")
        out.append(r"\midrule")
        for r in trs:
            cells = []
            for c in cols:
                st = r["metrics"].get(c)
                if st is None:
                    cells.append("--")
                    continue
                s = f"{st[0]:.4f}" + (f" $\\pm$ {st[1]:.4f}" if st[1] is not None else "")
                if len(trs) > 1 and math.isclose(st[0], best[c]):
                    s = r"\textbf{" + s + "}"
                cells.append(s)
            mark = {"▲": r"$^{\blacktriangle}$", "▼": r"$^{\blacktriangledown}$"}.get(r["sig"], "")
            out.append(_tex_escape(r["model"]) + mark + f" & {r['seeds']} & " + " & ".join(cells) + r" \\")
        out.append(r"\bottomrule")
        out.append(r"\end{tabular}")
        out.append(r"\end{table}")
        out.append("")
    return "\n".join(out)


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_leaderboard(runs_dir: Path, out_dir: Path) -> str:
    """Write ``leaderboard.{md,csv,tex,html}`` into ``out_dir``; return the Markdown."""
    from benchmark.results.html import render_html

    rows = aggregate(load_runs(runs_dir))
    md = (
        "# Leaderboard\n\nGenerated by `llm4rec leaderboard` from the run records in `results/runs/`: "
        "mean ± std over seeds. `sig.`: paired Wilcoxon test on per-user values of the headline metric "
        "(NDCG@10 or AUC) against the best baseline of the table, Holm-corrected; "
        "▲/▼ significantly better/worse (p < 0.05) on those per-user values, n.s. not significant. "
        "In labeled tables the paired unit is the per-user AUC (see GAUC), not the pooled AUC.\n\n" + markdown(rows)
    )
    atomic_write(out_dir / "leaderboard.md", md)
    atomic_write(out_dir / "leaderboard.csv", to_csv(rows))
    atomic_write(out_dir / "leaderboard.tex", latex(rows))
    atomic_write(out_dir / "leaderboard.html", render_html(rows))
    return md
