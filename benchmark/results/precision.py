"""The precision ablation, from the committed records: every LLM run evaluated in another precision
(``precision=<option>``, label ``<model>@<option>``) next to the same model and seed in fp32.

For each model with precision runs (the same dataset, split, eval setting and base label), one row
per option and seed: the headline metric (AUC for labeled rows, NDCG@10 for ranking), its change
against fp32 of the same seed, how far the outputs moved (labeled: mean and max |dP("Yes")| over
the rows both scored; ranking: the mean share of each user's top 10 that fp32 also ranked in its
top 10), the evaluation's CPU seconds, its speed-up over fp32 and the peak RSS. The reference of a
seed is its explicit ``@fp32`` run where there is one, else the run in the model's own dtype (fp32
on CPU). A speed-up is only given when both records measured CPU time on the same CPU (model and
flags under ``environment.cpu``); otherwise it is ``-``.

Per option, a summary over seeds and the issue's target for int8 on CPU: at least 1.5x the fp32
speed with an AUC change within 0.005 on every seed (``met`` / ``not met`` / ``-`` when no speed
was measured on one CPU).

Run: ``python -m benchmark.results.precision [results/runs] [--doc docs/precision.md]``
(``--doc`` writes the tables between the file's ``precision-ablation`` markers).
"""

from __future__ import annotations

import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmark.results.documents import records_document_main
from benchmark.results.leaderboard import _clean_text, _md_cell, load_runs, run_predictions
from benchmark.results.tables import SIGNIFICANCE_METRIC, kind_of

START, END = "<!-- precision-ablation:start -->", "<!-- precision-ablation:end -->"
TARGET_SPEEDUP, TARGET_AUC_CHANGE = 1.5, 0.005
REFERENCE = "fp32"
MODEL_DTYPE = "fp32 (model dtype)"  # a run without precision=, in the model's own fp32


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _dig(rec: Any, *keys: str) -> Any:
    for k in keys:
        rec = rec.get(k) if isinstance(rec, dict) else None
    return rec


def option_of(rec: dict[str, Any]) -> str | None:
    """The run's precision option as shown (``int8``, ``bf16``, ``bf16 (bf16 head)`` for a cast
    run made before the head was kept in fp32),
    ``fp32 (model dtype)`` for a run without an option in the model's own fp32 dtype, or None
    (another dtype without an option, e.g. bf16 on a GPU)."""
    node = _dig(rec, "config", "precision")
    if isinstance(node, dict) and isinstance(node.get("name"), str):
        name = _clean_text(node["name"], 40)
        if node.get("method") == "cast" and node.get("weights") != "float32" and node.get("head", "model") == "model":
            return f"{name} (head in {name})"
        return name
    dtype = _dig(rec, "model", "llm", "dtype")
    return MODEL_DTYPE if dtype in (None, "float32") else None


def _cpu(rec: dict[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    cpu = _dig(rec, "environment", "cpu")
    if not isinstance(cpu, dict) or not isinstance(cpu.get("model"), str) or not isinstance(cpu.get("flags"), list):
        return None
    return cpu["model"], tuple(str(f) for f in cpu["flags"])


def _table_key(rec: dict[str, Any]) -> tuple[str, str, str, str] | None:
    label = _dig(rec, "model", "label")
    if not isinstance(label, str) or _dig(rec, "model", "family") != "llm":
        return None
    ev = str(_dig(rec, "eval", "protocol"))
    users = _dig(rec, "eval", "test_users")
    if isinstance(users, int) and not isinstance(users, bool):
        ev += f"[test_users={users}]"
    return str(_dig(rec, "dataset", "name")), str(_dig(rec, "split", "protocol")), ev, label.split("@", 1)[0]


def _outputs(folder: Path, rec: dict[str, Any], labeled: bool) -> dict[Any, Any]:
    """Row -> P("Yes") (labeled) or user -> top-10 ids (ranking), from the bounded predictions file."""
    out: dict[Any, Any] = {}
    for ln in run_predictions(folder, rec):
        if labeled and _num(ln.get("score")) is not None:
            out[ln.get("row")] = float(ln["score"])
        elif not labeled and isinstance(ln.get("ranked"), list):
            out[str(ln.get("user"))] = [str(x) for x in ln["ranked"][:10]]
    return out


def _moved(mine: dict[Any, Any], ref: dict[Any, Any], labeled: bool) -> str:
    both = [k for k in mine if k in ref]
    if not both:
        return "-"
    if labeled:
        d = [abs(mine[k] - ref[k]) for k in both]
        return f"{sum(d) / len(d):.4f} / {max(d):.4f}"
    overlap = [len(set(mine[k]) & set(ref[k])) / max(1, len(ref[k])) for k in both]
    return f"{sum(overlap) / len(overlap):.3f}"


def _fmt(x: float | None, spec: str = ".4f", sign: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+{spec}}" if sign else f"{x:{spec}}"


def compare(runs: list[tuple[dict[str, Any], Path]]) -> list[dict[str, Any]]:
    """Per model with precision runs: its table key, kind, metric, one row per run (option, seed,
    value, change, moved, CPU seconds, speed-up, RSS, CPU) and per option a summary over seeds
    (changes, speed-ups, target). See the module doc."""
    groups: dict[tuple[str, str, str, str], list[tuple[dict[str, Any], Path, str]]] = defaultdict(list)
    for rec, folder in runs:
        key, opt = _table_key(rec), option_of(rec)
        if key is not None and opt is not None:
            groups[key].append((rec, folder, opt))
    cache: dict[tuple[str, bool], dict[Any, Any]] = {}

    def outputs(rec: dict[str, Any], folder: Path, labeled: bool) -> dict[Any, Any]:
        if (str(folder), labeled) not in cache:
            try:
                cache[str(folder), labeled] = _outputs(folder, rec, labeled)
            except Exception as e:  # noqa: BLE001 - predictions come from strangers: a verdict, not a traceback
                print(f"{folder}: predictions not compared ({_clean_text(e) or type(e).__name__})", file=sys.stderr)
                cache[str(folder), labeled] = {}
        return cache[str(folder), labeled]

    out: list[dict[str, Any]] = []
    for key, members in sorted(groups.items()):
        if not any(o not in (REFERENCE, MODEL_DTYPE) for _, _, o in members):
            continue
        kind = kind_of(key[2].split("[", 1)[0])
        labeled = kind == "labeled"
        metric = "test/" + SIGNIFICANCE_METRIC[kind]
        refs: dict[int, tuple[dict[str, Any], Path]] = {}
        for rec, folder, opt in sorted(members, key=lambda m: m[2] != REFERENCE):
            if opt in (REFERENCE, MODEL_DTYPE) and rec["seed"] not in refs:  # an explicit @fp32 run first
                refs[rec["seed"]] = (rec, folder)

        rows: list[dict[str, Any]] = []
        summary: dict[str, dict[str, Any]] = defaultdict(lambda: {"change": [], "speedup": []})
        order = sorted(members, key=lambda m: (m[2] not in (REFERENCE, MODEL_DTYPE), m[2] != REFERENCE, m[2], m[0]["seed"]))
        for rec, folder, opt in order:
            seed = rec["seed"]
            value = _num(_dig(rec, "metrics", metric))
            ref = refs.get(seed)
            is_ref = ref is not None and ref[0] is rec
            change = speed = None
            moved = "reference" if is_ref else "-"
            if ref is not None and not is_ref:
                base_value = _num(_dig(ref[0], "metrics", metric))
                change = None if value is None or base_value is None else value - base_value
                cpu_mine, cpu_ref = _num(_dig(rec, "efficiency", "eval_cpu_seconds")), _num(_dig(ref[0], "efficiency", "eval_cpu_seconds"))
                if cpu_mine and cpu_ref and _cpu(rec) is not None and _cpu(rec) == _cpu(ref[0]):
                    speed = cpu_ref / cpu_mine
                moved = _moved(outputs(rec, folder, labeled), outputs(*ref, labeled), labeled)
                if change is not None:
                    summary[opt]["change"].append(change)
                if speed is not None:
                    summary[opt]["speedup"].append(speed)
            rows.append({
                "option": opt, "seed": seed, "value": value, "change": change, "moved": moved, "speedup": speed,
                "cpu_seconds": _num(_dig(rec, "efficiency", "eval_cpu_seconds")),
                "peak_rss_mb": _num(_dig(rec, "efficiency", "peak_rss_mb")), "cpu": _cpu(rec),
            })
        for opt, sm in summary.items():
            ch, sp = sm["change"], sm["speedup"]
            sm["target"] = None
            if labeled and opt.startswith("int8") and ch and sp:
                ok = all(abs(c) <= TARGET_AUC_CHANGE for c in ch) and min(sp) >= TARGET_SPEEDUP
                sm["target"] = "met" if ok else "not met"
        out.append({"key": key, "labeled": labeled, "metric": metric, "rows": rows, "summary": dict(summary)})
    return out


def tables(runs: list[tuple[dict[str, Any], Path]]) -> str:
    """Markdown: one table per model with precision runs (see the module doc)."""
    out: list[str] = []
    for group in compare(runs):
        (dataset, split, ev, base), labeled = group["key"], group["labeled"]
        name = group["metric"].removeprefix("test/")
        out += [
            f"### {base}: {dataset} / {split} / {ev}",
            "",
            f"| option | seed | {name} | change vs fp32 | "
            + ("mean / max abs dP(yes)" if labeled else "top-10 overlap with fp32")
            + " | eval CPU s | speed-up vs fp32 | peak RSS MB | CPU |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in group["rows"]:
            speed, cpu = r["speedup"], r["cpu"]
            out.append(
                f"| {_md_cell(r['option'])} | {r['seed']} | {_fmt(r['value'])} | {_fmt(r['change'], '.4f', True)} | {r['moved']} "
                f"| {_fmt(r['cpu_seconds'], '.0f')} | {_fmt(speed, '.2f')}{'x' if speed else ''} "
                f"| {_fmt(r['peak_rss_mb'], '.0f')} "
                f"| {_md_cell(_clean_text(cpu[0] + ' ' + ','.join(cpu[1]), 80)) if cpu else 'not recorded'} |"
            )
        out.append("")
        if group["summary"]:
            out += [
                "| option | seeds compared | mean change | largest abs change | speed-up vs fp32 (same CPU) | "
                + (f"target (>= {TARGET_SPEEDUP}x, abs change <= {TARGET_AUC_CHANGE})" if labeled else "target")
                + " |",
                "|---|---|---|---|---|---|",
            ]
            for opt, sm in sorted(group["summary"].items()):
                ch, sp = sm["change"], sm["speedup"]
                out.append(
                    f"| {_md_cell(opt)} | {len(ch)} | {_fmt(sum(ch) / len(ch) if ch else None, '.4f', True)} "
                    f"| {_fmt(max((abs(c) for c in ch), default=None))} "
                    f"| {', '.join(f'{x:.2f}x' for x in sp) or '-'} | {sm['target'] or '-'} |"
                )
            out.append("")
    return "\n".join(out)


def paper_values(runs: list[tuple[dict[str, Any], Path]]) -> dict[str, str]:
    """``precision/<dataset>/<split>/<eval>/<model>/<option>/<fact>`` -> text for the paper: per option,
    ``seeds`` compared, ``mean_change``, ``largest_change``, ``speedup`` (the smallest measured) and
    ``target``; names are reduced to letters, digits, ``-``, ``_`` and ``.``."""

    def part(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.\-]+", "-", text).strip("-")

    out: dict[str, str] = {"precision/target_speedup": f"{TARGET_SPEEDUP}", "precision/target_auc_change": f"{TARGET_AUC_CHANGE}"}
    for group in compare(runs):
        prefix = "/".join(["precision", *(part(k) for k in group["key"])])
        for opt, sm in group["summary"].items():
            ch, sp = sm["change"], sm["speedup"]
            if not ch:
                continue
            base = f"{prefix}/{part(opt)}"
            out[f"{base}/seeds"] = str(len(ch))
            out[f"{base}/mean_change"] = f"{sum(ch) / len(ch):+.4f}"
            out[f"{base}/largest_change"] = f"{max(abs(c) for c in ch):.4f}"
            if sp:
                out[f"{base}/speedup"] = f"{min(sp):.2f}"
            if sm["target"]:
                out[f"{base}/target"] = sm["target"]
    return out


def document(runs_dir: Path) -> str:
    return tables(load_runs(runs_dir))


def main(argv: list[str] | None = None) -> int:
    return records_document_main(
        argv, "python -m benchmark.results.precision", __doc__.split("\n")[0], "precision-ablation", document, START, END
    )


if __name__ == "__main__":
    raise SystemExit(main())
