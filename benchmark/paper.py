"""Regenerate the paper's tables, numbers and figures from ``results/``, then build the PDF.

    python -m benchmark.paper [--results results] [--paper paper] [--no-pdf]

Every number the paper shows is generated here, never typed into ``paper/main.tex``:

- ``paper/tables/<dataset>-<split>-<eval>.tex``: one booktabs table per leaderboard table,
  cells read from ``results/leaderboard.csv`` and rounded once (to 4 decimals);
- ``paper/tables/values.tex``: ``\\lb{<dataset>/<split>/<eval>/<model>/<column>}`` for every
  cell of the leaderboard CSV (the same rounding), the training budget of each row read from
  its run records (``.../max_epochs``, ``.../batch_size``, ``.../shots``, ``.../epochs_run``,
  ``.../params_trainable``), split and dataset statistics, and
  ``\\cc{<path>}`` for the RecBole ``Pop`` reproduction in
  ``results/crosscheck/recbole_pop_ml100k.json``. An unknown key stops the LaTeX run with an error;
- ``paper/tables/conversation.tex`` and ``\\lb{conversation/...}``: the committed conversation runs
  (``results/conversation``, read by the checked run-folder reader);
- ``paper/figures/*.pdf`` (and ``.png`` previews): matplotlib.

Run records are data written by strangers: only JSON values of the expected types are read
from them, and no path in them is used.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmark.eval.metrics import higher_is_better
from benchmark.results.leaderboard import ALPHA
from benchmark.results.tables import HEADLINE, SIGNIFICANCE_METRIC, SLICES, kind_of
from benchmark.util import atomic_write

REQUIRED = ("dataset", "split", "eval", "model", "seeds")
POP_JSON = Path("crosscheck/recbole_pop_ml100k.json")
# Debian packages that provide what paper/main.tex needs (pdflatex, bibtex, latexmk, fonts) and pdftotext.
TEX_PACKAGES = "texlive-latex-recommended texlive-fonts-recommended latexmk poppler-utils"
MAX_JSON_BYTES = 4 * 2**20


class PaperError(Exception):
    """Bad or missing input; the message is one line naming the file and field."""


# ----------------------------------------------------------------------------- reading


def value(raw: str | None) -> float | None:
    """A CSV cell as a finite float, or None when empty/NaN/infinite."""
    if raw is None or raw.strip() == "":
        return None
    try:
        v = float(raw)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def num(raw: str | float | None) -> str:
    """The one rounding every metric in the paper gets: 4 decimals of the CSV's full-precision value."""
    v = value(raw) if isinstance(raw, str) or raw is None else float(raw)
    return "--" if v is None else f"{v:.4f}"


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of the leaderboard CSV; a missing file or column, or a non-numeric metric, is a PaperError."""
    if not path.is_file():
        raise PaperError(f"{path}: not found; run `llm4rec leaderboard` first")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise PaperError(f"{path}: column {missing[0]!r} missing")
        rows = []
        for i, r in enumerate(reader, start=2):
            for c, v in r.items():
                if c is None:
                    raise PaperError(f"{path}: line {i} has more cells than the header")
                if c.startswith("test/") and v and v.strip().lower() not in ("nan", "inf", "-inf"):
                    try:
                        float(v)
                    except ValueError:
                        raise PaperError(f"{path}: line {i}, column {c!r}: {v[:40]!r} is not a number") from None
            if not r.get("model"):
                raise PaperError(f"{path}: line {i}, column 'model' is empty")
            rows.append({k: (v or "") for k, v in r.items()})
    if not rows:
        raise PaperError(f"{path}: no rows")
    return rows


def slug(*parts: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def esc(s: str) -> str:
    """Plain text for LaTeX (every special character escaped)."""
    table = {
        "\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    }  # fmt: skip
    return "".join(table.get(ch, ch) for ch in s)


def key_of(r: dict[str, str]) -> tuple[str, str, str]:
    return (r["dataset"], r["split"], r["eval"])


def by_table(rows: list[dict[str, str]]) -> dict[tuple[str, str, str], list[dict[str, str]]]:
    out: dict[tuple[str, str, str], list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        out[key_of(r)].append(r)
    return out


# ----------------------------------------------------------------------------- tables


def table_columns(rows: list[dict[str, str]], kind: str) -> list[str]:
    """Headline metrics, then the headline metric on each slice some row has."""
    head = SIGNIFICANCE_METRIC[kind]
    cols = [f"test/{m}" for m in HEADLINE[kind]]
    cols += [f"test/{s}/{head}" for s in SLICES if any(value(r.get(f"test/{s}/{head}")) is not None for r in rows)]
    return cols


def _header(col: str) -> str:
    name = col.removeprefix("test/")
    if "/" in name:
        sl, metric = name.split("/", 1)
        return r"\begin{tabular}[b]{@{}r@{}}" + esc(sl.replace("_", " ")) + r"\\" + esc(metric) + r"\end{tabular}"
    return esc(name)


def tuned_note(rows: list[dict[str, str]]) -> str:
    """A caption sentence saying which rows were tuned (empty when none was): the leaderboard ends a
    tuned row's model label with ``(tuned N trials)``."""
    if not any("(tuned " in r.get("model", "") for r in rows):
        return ""
    return (
        " Rows marked (tuned N trials) ran the configuration chosen by an N-trial search on the validation "
        "metric (\\texttt{llm4rec tune}: the best trial's configuration re-run with each seed); the other rows ran their "
        "configurations' values untuned."
    )


def table_tex(key: tuple[str, str, str], rows: list[dict[str, str]]) -> str:
    """One booktabs table: mean and std over seeds of each column, rounded once to 4 decimals."""
    ds, sp, ev = key
    kind = kind_of(ev)
    cols = table_columns(rows, kind)
    best: dict[str, float] = {}
    for c in cols:
        vals = [v for r in rows if (v := value(r.get(c))) is not None]
        if vals:
            best[c] = max(vals) if higher_is_better(c) else min(vals)
    label = "sampled, 100 negatives" if ev == "sampled" else ev
    unit = "per-user AUC, not the pooled AUC" if kind == "labeled" else "per-user NDCG@10"
    out = [
        "% Generated by `make paper` from results/leaderboard.csv; do not edit.",
        r"\begin{table*}[tbp]\centering\footnotesize\setlength{\tabcolsep}{3.5pt}",
        rf"\caption{{{esc(ds)}, split \texttt{{{esc(sp)}}}, evaluation {esc(label)}: mean (std over seeds, "
        r"in small type; none for one seed). Bold: best per column. "
        r"$\blacktriangle$/$\blacktriangledown$: significantly better/worse than the table's best baseline "
        rf"(paired Wilcoxon on {unit}, Holm, $p<{ALPHA:g}$); b: that baseline.{tuned_note(rows)}}}",
        rf"\label{{tab:{slug(ds, sp, ev)}}}",
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        r"\begin{tabular}{l r " + "r " * len(cols) + "}",
        r"\toprule",
        "Model & Seeds & " + " & ".join(_header(c) for c in cols) + r" \\",
        r"\midrule",
    ]
    for r in rows:
        cells = []
        for c in cols:
            mean = value(r.get(c))
            if mean is None:
                cells.append("--")
                continue
            s = num(mean)
            if len(rows) > 1 and mean == best[c]:
                s = r"\textbf{" + s + "}"
            std = value(r.get(c + "_std"))
            if std is not None:
                s += r"\,{\tiny(" + num(std) + ")}"
            cells.append(s)
        sig = r.get("sig", "")
        mark = {"▲": r"$^{\blacktriangle}$", "▼": r"$^{\blacktriangledown}$"}.get(sig, "")
        if r.get("sig_vs") == "(best baseline)":
            mark = r"$^{\mathrm{b}}$"
        out.append(rf"\texttt{{{esc(r['model'])}}}{mark} & {esc(r['seeds'])} & " + " & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}}", r"\end{table*}", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- values (macros)


def _fmt_seconds(raw: str) -> str:
    v = value(raw)
    return "--" if v is None else f"{v:,.0f}".replace(",", "{,}")


def _fmt_p(raw: str) -> str:
    v = value(raw)
    if v is None:
        return "--"
    if v >= 0.001:
        return f"{v:.3f}"
    mant, exp = f"{v:.1e}".split("e")
    return rf"${mant}\times10^{{{int(exp)}}}$"


def _fmt_int(v: int) -> str:
    return f"{v:,}".replace(",", "{,}")


def _define(macro: str, key: str, text: str) -> str:
    if any(ch in key for ch in "\\{}%#~$^&"):
        raise PaperError(f"paper: key {key[:60]!r} has a character LaTeX cannot name")
    return rf"\expandafter\def\csname {macro}@{key}\endcsname{{{text}}}"


def csv_values(rows: list[dict[str, str]]) -> dict[str, str]:
    """``<dataset>/<split>/<eval>/<model>/<column>`` -> text, for every cell of the CSV."""
    out: dict[str, str] = {"alpha": f"{ALPHA:g}"}
    for r in rows:
        base = "/".join((*key_of(r), r["model"]))
        out[f"{base}/seeds"] = esc(r["seeds"])
        out[f"{base}/train_s"] = _fmt_seconds(r.get("train_seconds", ""))
        out[f"{base}/p_holm"] = _fmt_p(r.get("p_holm", ""))
        out[f"{base}/sig"] = {"▲": "better", "▼": "worse"}.get(r.get("sig", ""), "n.s.")
        for c, v in r.items():
            if c.startswith("test/") and value(v) is not None:
                out[f"{base}/{c.removeprefix('test/')}"] = num(v)
    return out


def _int(d: Any, *path: str) -> int | None:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d if isinstance(d, int) and not isinstance(d, bool) else None


def _read_json(path: Path) -> Any:
    if path.is_symlink() or not path.is_file():
        raise PaperError(f"{path}: not a regular file")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise PaperError(f"{path}: larger than {MAX_JSON_BYTES // 2**20} MiB")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        raise PaperError(f"{path}: not JSON ({str(e)[:80]})") from None


def record_values(rows: list[dict[str, str]], runs_dir: Path) -> dict[str, str]:
    """Budget and data facts of each leaderboard row, from its run records (matched by group key).

    Only integers at known places are read: ``config.model.train.{max_epochs,batch_size}``,
    ``config.model.module.{shots,sample_windows,top_n}``, ``config.eval.num_negatives``,
    ``config.split.{history,keep_last}``, ``config.slices.{cold_item,cold_user}_max``,
    ``training.epochs``, ``model.params_{total,trainable}``,
    ``model.item_descriptions.check.{items,unsupported_any}`` (as ``desc_items``, ``desc_unsupported``),
    ``split.stats.*`` and ``dataset.stats.*``. A fact that differs between the seeds of a row is
    left out (so the paper cannot state it as one number).
    """
    by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if runs_dir.is_dir():
        for p in sorted(runs_dir.glob("*/record.json")):
            try:
                rec = _read_json(p)
            except PaperError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("group_key"), str):
                by_group[rec["group_key"]].append(rec)
    out: dict[str, str] = {}
    for r in rows:
        gk = r.get("group_key", "")
        recs = [x for k, xs in by_group.items() if gk and k.startswith(gk) for x in xs]
        if not recs:
            continue
        base = "/".join((*key_of(r), r["model"]))
        facts: dict[str, set] = defaultdict(set)
        for rec in recs:
            cfg = rec.get("config")
            for name, v in (
                ("max_epochs", _int(cfg, "model", "train", "max_epochs")),
                ("batch_size", _int(cfg, "model", "train", "batch_size")),
                ("shots", _int(cfg, "model", "module", "shots")),
                ("sample_windows", _int(cfg, "model", "module", "sample_windows")),
                ("top_n", _int(cfg, "model", "module", "top_n")),
                ("num_negatives", _int(cfg, "eval", "num_negatives")),
                ("history", _int(cfg, "split", "history")),
                ("keep_last", _int(cfg, "split", "keep_last")),
                ("cold_item_max", _int(cfg, "slices", "cold_item_max")),
                ("cold_user_max", _int(cfg, "slices", "cold_user_max")),
                ("epochs_run", _int(rec, "training", "epochs")),
                ("params_total", _int(rec, "model", "params_total")),
                ("params_trainable", _int(rec, "model", "params_trainable")),
                # generated item descriptions: how many name a genre or year absent from the metadata
                ("desc_items", _int(rec, "model", "item_descriptions", "check", "items")),
                ("desc_unsupported", _int(rec, "model", "item_descriptions", "check", "unsupported_any")),
            ):
                facts[name].add(v)
            for part in ("split", "dataset"):
                stats = rec.get(part, {}).get("stats") if isinstance(rec.get(part), dict) else None
                for k, v in (stats or {}).items() if isinstance(stats, dict) else ():
                    if isinstance(v, int) and not isinstance(v, bool) and re.fullmatch(r"[a-z_]+", str(k)):
                        facts[f"{part}_{k}"].add(v)
        for name, vs in facts.items():
            if len(vs) == 1 and None not in vs:
                out[f"{base}/{name}"] = _fmt_int(next(iter(vs)))
        epochs = sorted(v for v in facts["epochs_run"] if v is not None)
        if epochs:
            out[f"{base}/epochs_run_range"] = (
                str(epochs[0]) if epochs[0] == epochs[-1] else f"{epochs[0]}--{epochs[-1]}"
            )
    return out


def crosscheck_values(path: Path) -> dict[str, str]:
    """Every number of the Pop reproduction JSON as ``<key path>`` -> text (floats to 4 decimals)."""
    if not path.exists():
        return {}
    out: dict[str, str] = {}

    def walk(d: Any, prefix: str) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                if isinstance(k, str) and re.fullmatch(r"[A-Za-z0-9_@.\-]+", k):
                    walk(v, f"{prefix}/{k}" if prefix else k)
        elif isinstance(d, bool):
            return
        elif isinstance(d, int):
            out[prefix] = _fmt_int(d)
        elif isinstance(d, float) and math.isfinite(d):
            out[prefix] = num(d)
        elif isinstance(d, str) and prefix.endswith("version") and re.fullmatch(r"[0-9A-Za-z.+\-]{1,20}", d):
            out[prefix] = d

    walk(_read_json(path), "")
    return out


def values_tex(lb: dict[str, str], cc: dict[str, str]) -> str:
    """``\\lb{key}`` and ``\\cc{key}``: the value, or a LaTeX error naming the unknown key."""
    out = [
        "% Generated by `make paper` from results/; do not edit.",
        r"\makeatletter",
        r"\newcommand{\lb}[1]{\@ifundefined{lb@#1}{\PackageError{values}{unknown leaderboard value #1}{}}"
        r"{\csname lb@#1\endcsname}}",
        r"\newcommand{\cc}[1]{\@ifundefined{cc@#1}{\PackageError{values}{unknown crosscheck value #1}{}}"
        r"{\csname cc@#1\endcsname}}",
    ]
    out += [_define("lb", k, v) for k, v in sorted(lb.items())]
    out += [_define("cc", k, v) for k, v in sorted(cc.items())]
    out += [r"\makeatother", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "legend.fontsize": 7, "pdf.fonttype": 42})
    return plt


def _save(fig: Any, fig_dir: Path, name: str) -> list[Path]:
    out = []
    for ext in ("pdf", "png"):
        p = fig_dir / f"{name}.{ext}"
        fig.savefig(p, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None)
        out.append(p)
    return out


def fig_ranking(rows: list[dict[str, str]], fig_dir: Path) -> list[Path]:
    """Per ranking table: headline metric (mean, std bars) per model, and against training time."""
    plt = _pyplot()
    made = []
    for key, trs in by_table(rows).items():
        if kind_of(key[2]) != "ranking":
            continue
        head = "test/" + SIGNIFICANCE_METRIC["ranking"]
        pts = [r for r in trs if value(r.get(head)) is not None]
        if len(pts) < 2:
            continue
        pts.sort(key=lambda r: value(r[head]) or 0.0)
        fig, axes = plt.subplots(
            1, 2, figsize=(7.0, 0.26 * len(pts) + 1.1), sharey=True, gridspec_kw={"width_ratios": [1.4, 1]}
        )
        ys = list(range(len(pts)))
        colors = ["tab:gray" if r.get("family") in ("classic", "recbole") else "tab:blue" for r in pts]
        means = [value(r[head]) or 0.0 for r in pts]
        stds = [value(r.get(head + "_std")) or 0.0 for r in pts]
        axes[0].barh(ys, means, xerr=stds, color=colors, capsize=2)
        for y, m, sd in zip(ys, means, stds, strict=True):
            axes[0].annotate(f"{m:.4f}", (m + sd, y), xytext=(3, -2.5), textcoords="offset points", fontsize=6)
        axes[0].set_yticks(ys, [r["model"] for r in pts])
        axes[0].set_xlabel(head.removeprefix("test/") + " (bars: std over seeds)")
        axes[0].set_xlim(0, max(m + s for m, s in zip(means, stds, strict=True)) * 1.25)
        secs = [1 + (value(r.get("train_seconds")) or 0.0) for r in pts]
        axes[1].barh(ys, secs, color=colors)
        axes[1].set_xscale("log")
        axes[1].set_xlabel("1 + training seconds (log)")
        for ax in axes:
            ax.grid(axis="x", alpha=0.3)
        fig.suptitle(f"{key[0]}, split {key[1]}, {key[2]} ranking (grey: baselines, blue: LLM models)", fontsize=8)
        fig.tight_layout()
        made += _save(fig, fig_dir, "rank-" + slug(*key))
        plt.close(fig)
    return made


# Accuracy against beyond-accuracy (x axis) in the trade-off figure: the first present of each pair.
BEYOND_AXES = (("test/ild@10", "test/ildgenre@10"), ("test/novelty@10", "test/longtail@10"))
BEYOND_LABELS = {
    "ild": " (1 - mean cosine of MiniLM item-text embeddings)",
    "ildgenre": " (1 - mean cosine of genre vectors)",
    "novelty": " (mean self-information, bits)",
    "longtail": " (share of list items outside the head)",
}


def fig_beyond(rows: list[dict[str, str]], fig_dir: Path) -> list[Path]:
    """Per ranking table: the headline metric against diversity (text ILD, else genre ILD) and
    novelty (else long-tail share), one point per model (bars: std over seeds)."""
    plt = _pyplot()
    made = []
    head = "test/" + SIGNIFICANCE_METRIC["ranking"]
    for key, trs in by_table(rows).items():
        if kind_of(key[2]) != "ranking":
            continue
        panels = []
        for choices in BEYOND_AXES:
            for x in choices:
                pts = [r for r in trs if value(r.get(head)) is not None and value(r.get(x)) is not None]
                if len(pts) >= 2:
                    panels.append((x, pts))
                    break
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(3.5 * len(panels), 2.8), sharey=True, squeeze=False)
        for ax, (x, pts) in zip(axes[0], panels, strict=True):
            for r in pts:
                base = r.get("family") in ("classic", "recbole")
                ax.errorbar(
                    value(r[x]), value(r[head]), xerr=value(r.get(x + "_std")) or 0.0,
                    yerr=value(r.get(head + "_std")) or 0.0, fmt="o", ms=3, capsize=2,
                    color="tab:gray" if base else "tab:blue",
                )  # fmt: skip
                ax.annotate(r["model"], (value(r[x]), value(r[head])), xytext=(3, 2), textcoords="offset points", fontsize=5)
            ax.set_xlabel(x.removeprefix("test/") + BEYOND_LABELS[x.split("/")[-1].split("@")[0]])
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(head.removeprefix("test/") + " (mean over seeds)")
        fig.suptitle(f"{key[0]}, split {key[1]}, {key[2]}: accuracy against diversity and novelty (grey: baselines)", fontsize=8)
        fig.tight_layout()
        made += _save(fig, fig_dir, "beyond-" + slug(*key))
        plt.close(fig)
    return made


def shot_series(trs: list[dict[str, str]]) -> tuple[dict[str, list[tuple[float, dict[str, str]]]], list[dict[str, str]]]:
    """The shot curves of a labeled table (``<model>-<N>shot`` rows: model -> [(N, row)], ``all`` as
    infinity; tuned rows, ``<model>-<N>shot (tuned T trials)``, are the curve ``<model> (tuned)``)
    and the zero-shot LLM rows (no LoRA) drawn as reference lines (``<model>-icl0``); variants of either
    (``@bf16``, ``+dpo``, ``[history=...]``) are neither."""
    series: dict[str, list[tuple[float, dict[str, str]]]] = defaultdict(list)
    flat = []
    for r in trs:
        m = re.fullmatch(r"(.+)-(\d+|all)shot( \(tuned \d+ trials\))?", r["model"])
        if m:
            name = m.group(1) + (" (tuned)" if m.group(3) else "")
            series[name].append((float("inf") if m.group(2) == "all" else float(m.group(2)), r))
        elif re.fullmatch(r"[\w.-]+-icl0", r["model"]):
            flat.append(r)
    return series, flat


def fig_shots(rows: list[dict[str, str]], fig_dir: Path) -> list[Path]:
    """Labeled tables with ``<model>-<N>shot`` rows: AUC and GAUC against the number of train rows,
    with the zero-shot LLM (``<model>-icl0``, no variant) as a dashed line."""
    plt = _pyplot()
    made = []
    for key, trs in by_table(rows).items():
        series, flat = shot_series(trs)
        if kind_of(key[2]) != "labeled" or not series:
            continue
        finite = sorted({n for s in series.values() for n, _ in s if math.isfinite(n)})
        all_x = (max(finite) * 4) if finite else 1.0
        fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.6), sharey=True)
        for ax, metric in zip(axes, ("test/auc", "test/gauc"), strict=True):
            for name, pts in sorted(series.items()):
                pts.sort(key=lambda t: t[0])
                xs = [all_x if not math.isfinite(n) else n for n, _ in pts]
                ys = [value(r.get(metric)) for _, r in pts]
                es = [value(r.get(metric + "_std")) or 0.0 for _, r in pts]
                keep = [i for i, y in enumerate(ys) if y is not None]
                ax.errorbar([xs[i] for i in keep], [ys[i] for i in keep], yerr=[es[i] for i in keep],
                            marker="o", ms=3, capsize=2, label=name)  # fmt: skip
            for r in flat:
                y = value(r.get(metric))
                if y is not None:
                    ax.axhline(y, ls="--", lw=0.8, color="k")
                    ax.annotate(r["model"] + " (zero-shot)", (all_x, y), fontsize=6, va="bottom", ha="right")
            ax.axhline(0.5, ls=":", lw=0.8, color="tab:gray")
            ax.set_xscale("log")
            ticks = finite + [all_x]
            ax.set_xticks(ticks, [str(int(t)) for t in finite] + ["all"])
            ax.minorticks_off()
            ax.set_xlabel("train rows (shots)")
            ax.set_title(metric.removeprefix("test/") + (" (pooled)" if metric == "test/auc" else " (per-user)"))
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("mean over seeds (bars: std)")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False, fontsize=7)
        fig.suptitle(f"{key[0]}, split {key[1]}: dotted line = chance (0.5)", fontsize=8)
        fig.tight_layout(rect=(0, 0.02 + 0.06 * math.ceil(len(labels) / 4), 1, 1))  # room for the legend's rows
        made += _save(fig, fig_dir, "shots-" + slug(*key))
        plt.close(fig)
    return made


def fig_pop(path: Path, fig_dir: Path) -> list[Path]:
    """RecBole's Pop counts against true train counts, per item (from the reproduction JSON)."""
    if not path.exists():
        return []
    d = _read_json(path)
    counts = d.get("item_counts") if isinstance(d, dict) else None
    if not isinstance(counts, dict):
        return []
    rec, true = counts.get("recbole"), counts.get("true")
    ok = isinstance(rec, list) and isinstance(true, list) and len(rec) == len(true)
    if not ok or not all(isinstance(v, (int, float)) for v in rec + true):
        raise PaperError(f"{path}: item_counts.recbole/true: not two number lists of one length")
    batches = _int(d, "recbole", "train_batches")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.4, 2.6))
    ax.scatter(true, rec, s=4, alpha=0.5)
    if batches:
        ax.axhline(batches, ls="--", lw=0.8, color="tab:red", label=f"number of training batches ({batches})")
        ax.legend(loc="lower right")
    ax.set_xlabel("true train count of the item")
    ax.set_ylabel("RecBole Pop's learned count")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    made = _save(fig, fig_dir, "recbole-pop-counts")
    plt.close(fig)
    return made


# ----------------------------------------------------------------------------- driver


AUDIT_DIR = "audit"  # results/audit: the committed audit reports (make audit)


def audit_tex(audit_dir: Path) -> str | None:
    """``tables/audit.tex``: the committed audits of every split protocol and item index (the
    README's audit tables, compacted), None when ``audit_dir`` holds no reports."""
    from benchmark.audit.committed import (
        LEAKY,
        index_cells,
        leaky_summary,
        ordered_indexes,
        read_reports,
        split_cells,
    )

    try:
        reports = read_reports(audit_dir)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as e:
        raise PaperError(f"{audit_dir}: unreadable audit report ({e})") from None
    out = [
        r"\begin{table}[tbp]\centering\footnotesize",
        r"\caption{Audit of the ml-100k split protocols (\texttt{llm4rec audit}; shares of test rows).}\label{tab:audit-splits}",
        r"\begin{tabular}{llrrrrl}\toprule",
        r"split & eval & train after target & new test items & test pairs in train & test rows in train & err./warn. \\\midrule",
    ]
    for name, r in reports.items():
        if name == LEAKY:
            continue
        c = split_cells(r)
        out.append(" & ".join(esc(x) for x in (c[0], c[1], c[3], c[4], c[5], c[7], c[10])) + r" \\")
    out += [r"\bottomrule\end{tabular}", r"\end{table}", ""]
    out += [
        r"\begin{table}[tbp]\centering\footnotesize",
        r"\caption{Audit of the item indexes: ids changed by a refit on the train part alone, test ids"
        r" following the user's previous item, id--time correlation and semantic-code collisions; the"
        r" last row is the original P5 code's sequential index, built by the audit on purpose.}\label{tab:audit-indexes}",
        r"\begin{tabular}{llrrrrr}\toprule",
        r"index & split & refit changes & previous $+1$ & $\rho$(id, time) & collisions & errors \\\midrule",
    ]
    for _, r in reports.items():
        for scheme, f in ordered_indexes(r):
            c = index_cells(scheme, f, r)
            out.append(" & ".join(esc(x) for x in (c[0], c[1], c[2], c[3], c[5], c[6], c[8])) + r" \\")
    out += [r"\bottomrule\end{tabular}", r"\end{table}", ""]
    if LEAKY in reports:  # one sentence, Markdown code marks as typewriter text
        text = re.sub(r"`([^`]*)`", lambda m: r"\texttt{" + m.group(1) + "}", esc(leaky_summary(reports[LEAKY])))
        out += [r"\newcommand{\auditleaky}{" + text.strip() + "}", ""]
    return "\n".join(out)


CONVERSATION_DIR = Path("conversation")


def conversation_tex(runs_dir: Path) -> tuple[str, dict[str, str]]:
    """``tables/conversation.tex`` (one booktabs table per session set of the committed
    conversation runs: the summary's columns without timings and run ids) and their
    ``conversation/...`` values; a comment and no values when there are no runs.

    Raises:
        PaperError: a run folder fails its checks (its one-line reason).
    """
    from benchmark.conversation import table
    from benchmark.errors import BenchmarkError

    if not runs_dir.is_dir():
        return "% No conversation runs.\n", {}
    try:
        sets = table.session_sets(runs_dir)
        values = table.paper_values(runs_dir)
    except BenchmarkError as e:
        raise PaperError(f"{runs_dir}: {e}") from None
    out = ["% Generated by `make paper` from results/conversation; do not edit."]
    for ss in sets:
        cols = ["recommender", "simulator", "sessions", "seeds", *table.columns(ss.turns, ss.k)]
        out += [
            r"\begin{table}[tbp]\centering\scriptsize\setlength{\tabcolsep}{3pt}",
            r"\caption{Conversational recommendation, " + esc(ss.title)
            + r" (rule: templated simulator answers; llm: SmolLM2 simulator). A starred count: runs on all"
            r" test rows, their sessions of these users only. Several seeds: mean (sample standard deviation"
            r" over the seeds, in small type).}\label{tab:conversation-" + ss.name.replace("/", "-") + "}",
            r"\resizebox{\linewidth}{!}{\begin{tabular}{ll" + "r" * (len(cols) - 2) + r"}\toprule",
            " & ".join(esc(c) for c in cols) + r" \\\midrule",
        ]
        spread = r"{}\,{{\tiny({})}}".format  # as the leaderboard tables: the std in small type
        for row in ss.rows:
            shown = [row.recommender, row.simulator, f"{row.sessions}{'*' if row.recomputed else ''}",
                     str(len(row.records))]
            out.append(" & ".join([*(esc(c) for c in shown), *table.cells(row, ss.turns, ss.k, spread)]) + r" \\")
        out += [r"\bottomrule\end{tabular}}", r"\end{table}", ""]
    return "\n".join(out) + "\n", values


INPUT = re.compile(r"\\input\{tables/([^}]+)\}")


def appendix_tex(tables: list[str], main: str) -> str:
    """An appendix with every leaderboard table that ``main`` does not ``\\input`` itself.

    A protocol that gets its first record (a new subset, a new split) then reaches the PDF at once,
    before the text discusses it; with every table placed in the text the file is a comment only.
    """
    placed = set(INPUT.findall(main))
    rest = [t for t in tables if t not in placed]
    out = ["% Generated by `make paper`: the leaderboard tables that main.tex does not place itself."]
    if rest:
        out += [
            r"\section{Further leaderboard tables}\label{sec:further}",
            "Tables of protocols the text above does not discuss, generated from the leaderboard like"
            " every table of this paper.",
            "",
            *(f"\\input{{tables/{t}}}" for t in rest),
        ]
    return "\n".join(out) + "\n"


def generate(results: Path, paper: Path, figures: bool = True) -> list[Path]:
    """Write ``paper/tables/*.tex`` (+ ``all.tex``, ``appendix.tex``, ``values.tex``) and ``paper/figures/*``.

    Args:
        results: the results folder (``leaderboard.csv``, ``runs/``, ``crosscheck/``).
        paper: the paper folder; its ``tables/`` and ``figures/`` are replaced.
        figures: also draw the figures (``False``: ``figures/`` is left as it is).

    Returns:
        the written files.

    Raises:
        PaperError: the leaderboard CSV or the reproduction JSON is missing or malformed.
    """
    rows = read_csv(results / "leaderboard.csv")
    pop = results / POP_JSON
    texts: dict[str, str] = {}
    for key, trs in by_table(rows).items():
        texts[f"{slug(*key)}.tex"] = table_tex(key, trs)
    texts["all.tex"] = "".join(f"\\input{{tables/{name[:-4]}}}\n" for name in texts)
    main_tex = paper / "main.tex"
    texts["appendix.tex"] = appendix_tex(
        [name[:-4] for name in texts if name != "all.tex"], main_tex.read_text(errors="replace") if main_tex.is_file() else ""
    )
    audit = audit_tex(results / AUDIT_DIR)
    if audit is not None:  # after all.tex: the audit is not a leaderboard table
        texts["audit.tex"] = audit
    conversation, conversation_values = conversation_tex(results / CONVERSATION_DIR)
    texts["conversation.tex"] = conversation
    from benchmark.results import precision, prompts
    from benchmark.results.leaderboard import load_runs

    runs = load_runs(results / "runs", warn=lambda _: None) if (results / "runs").is_dir() else []
    generated = {**precision.paper_values(runs), **prompts.paper_values(runs)} if runs else {}
    generated |= conversation_values
    texts["values.tex"] = values_tex(
        {**record_values(rows, results / "runs"), **csv_values(rows), **generated}, crosscheck_values(pop)
    )
    # Everything is written into temporary folders first and swapped in at the end: an error
    # (bad input, a failing figure) leaves the previous tables and figures as they were.
    paper.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".generate-", dir=paper))
    try:
        tdir, fdir = tmp / "tables", tmp / "figures"
        tdir.mkdir()
        fdir.mkdir()
        names = []
        for name, text in texts.items():
            atomic_write(tdir / name, text)
            names.append(f"tables/{name}")
        if figures:
            figs = fig_ranking(rows, fdir) + fig_beyond(rows, fdir) + fig_shots(rows, fdir) + fig_pop(pop, fdir)
            names += [f"figures/{p.name}" for p in figs]
        for sub in ("tables", "figures") if figures else ("tables",):
            if (paper / sub).exists():
                shutil.rmtree(paper / sub)
            os.replace(tmp / sub, paper / sub)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    written = [paper / n for n in names]
    return written


UNDEFINED = re.compile(r"(Reference|Citation) `[^']*' on page \d+ undefined|There were undefined (references|citations)")


def tex_tools() -> str | None:
    """The first missing tool the PDF build needs (latexmk, pdflatex, bibtex), or None."""
    for tool in ("latexmk", "pdflatex", "bibtex"):
        if shutil.which(tool) is None:
            return tool
    return None


def build_pdf(paper: Path) -> Path:
    """Compile ``paper/main.tex`` with latexmk (pdflatex + bibtex); undefined references are errors.

    Raises:
        PaperError: a tool is missing, LaTeX failed (the first error line of the log is named),
            or a reference or citation is undefined.
    """
    missing = tex_tools()
    if missing:
        raise PaperError(f"paper: {missing} not found; install: apt-get install {TEX_PACKAGES}")
    cmd = ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error", "main.tex"]
    # A fixed date makes the PDF a function of its sources (pdfTeX honours SOURCE_DATE_EPOCH).
    # max_print_line: log lines unwrapped, so an error or warning is read whole.
    env = {**os.environ, "SOURCE_DATE_EPOCH": "0", "FORCE_SOURCE_DATE": "1", "max_print_line": "100000"}
    proc = subprocess.run(cmd, cwd=paper, capture_output=True, text=True, env=env)
    log_path = paper / "main.log"
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    if proc.returncode != 0:
        first = next((ln for ln in log.splitlines() if ln.startswith("!") or ":" in ln and " error" in ln.lower()), "")
        raise PaperError(f"paper: latexmk failed ({first.strip()[:200] or 'see paper/main.log'})")
    bad = UNDEFINED.search(log)
    if bad:
        raise PaperError(f"paper: {bad.group(0)} (paper/main.log)")
    return paper / "main.pdf"


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmark.paper``: regenerate tables/values/figures, then build the PDF."""
    p = argparse.ArgumentParser(prog="python -m benchmark.paper")
    p.add_argument("--results", default="results")
    p.add_argument("--paper", default="paper")
    p.add_argument("--no-pdf", action="store_true", help="only regenerate tables, values and figures")
    a = p.parse_args(argv)
    paper = Path(a.paper)
    try:
        if not (paper / "main.tex").is_file():
            raise PaperError(f"{paper / 'main.tex'}: not found (--paper names the paper folder)")
        files = generate(Path(a.results), paper)
        print(f"paper: wrote {len(files)} files under {paper}/tables and {paper}/figures")
        if not a.no_pdf:
            t0 = time.perf_counter()
            pdf = build_pdf(paper)
            print(f"paper: built {pdf} in {time.perf_counter() - t0:.1f} s ({pdf.stat().st_size // 1024} KiB)")
    except PaperError as e:
        print(e, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
