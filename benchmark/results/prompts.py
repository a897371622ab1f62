"""The prompt ablations, from the committed records: templates, in-context selection, history under a
token budget and the bandit-driven prompt pool, each against its reference on the same rows.

For every leaderboard table (dataset, split, eval setting) holding runs of the prompted LLMs
(``tallrec_zeroshot``, ``tallrec_pool``, ``llm_rerank``), one row per configuration (seeds
aggregated, as on the leaderboard): its template, in-context selection (``random:2``), history rule
(``relevant@176``), mean prompt tokens, seeds and the table's headline metric (AUC for labeled
rows, NDCG@10 for ranking). The reference is the configuration with the model's default template,
no in-context examples and no history budget; every other row gets its difference to it and a
paired two-sided Wilcoxon test on the per-user values (per-user AUC, per-user NDCG@10) of the same
test rows, Holm-corrected within the table. Rows that differ only in how their in-context
examples are chosen are also set against the ``random`` row of their group (same table, model,
template, number of examples and history rule), Holm within the group. For each prompt-pool run: the bandit against every
single template, the template best on valid, a random template per request and the per-group
oracle (test labels: an upper bound), and per user group the template the bandit chose most often
on the test rows; per pool configuration, the bandit's per-user values (NDCG@10, or AUC for users
with both labels) averaged over its seeds and tested, paired, against the template chosen on the
feedback rows and against the random template (Holm over the two).

Run: ``python -m benchmark.results.prompts [results/runs] [--doc docs/prompts.md]``
(``--doc`` writes the tables between the file's ``prompt-ablations`` markers).
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.eval.significance import holm, paired_pvalue
from benchmark.results.documents import records_document_main
from benchmark.results.leaderboard import (
    DEFAULT_TEMPLATE,
    _clean_text,
    _md_cell,
    aggregate,
    load_runs,
    run_predictions,
)
from benchmark.results.tables import SIGNIFICANCE_METRIC, kind_of

START, END = "<!-- prompt-ablations:start -->", "<!-- prompt-ablations:end -->"
MODELS = ("tallrec_zeroshot", "tallrec_pool", "llm_rerank", "llm_rerank_pool")
# The prompt pools' comparisons: (model, metric key, where the fixed choice was made, title)
POOLS = (
    ("tallrec_pool", "auc", "best_on_valid", "test AUC, same rows", "best on valid", "random per request", "test labels"),
    ("llm_rerank_pool", "ndcg@10", "best_on_feedback", "test NDCG@10, same users", "best on train feedback", "random per user", "test targets"),
)
ALPHA = 0.05


def _fmt(stat: tuple[float, float | None] | None) -> str:
    if stat is None:
        return "-"
    mean, std = stat
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def _is_reference(row: dict[str, Any]) -> bool:
    """The model's default prompt, no examples, the whole history, in the model's own precision."""
    default = row["prompt"] == DEFAULT_TEMPLATE.get(row["model_name"]) and not row["icl"] and not row["history"]
    return default and "@" not in str(row["model"])


def _tests(rows: list[dict[str, Any]], metric: str) -> dict[int, tuple[float, float]]:
    """Row index -> (difference of means to the reference, Holm-adjusted p) for rows paired with it."""
    refs = [i for i, r in enumerate(rows) if _is_reference(r)]
    return _paired_tests(rows, refs[0], metric) if len(refs) == 1 else {}


def _paired_tests(rows: list[dict[str, Any]], ref: int, metric: str) -> dict[int, tuple[float, float]]:
    """Row index -> (difference of means to ``rows[ref]``, Holm-adjusted paired p) for the rows with
    per-user values on the same users as the reference (Holm over those rows)."""
    base = rows[ref]["_per_user"]
    if base is None or metric not in rows[ref]["metrics"]:
        return {}
    paired = [
        i for i, r in enumerate(rows)
        if i != ref and r["_per_user"] is not None and len(r["_per_user"]) == len(base) and metric in r["metrics"]
    ]
    pvals = holm([paired_pvalue(rows[i]["_per_user"], base) for i in paired]) if paired else []
    at = rows[ref]["metrics"][metric][0]
    return {i: (rows[i]["metrics"][metric][0] - at, p) for i, p in zip(paired, pvals, strict=True)}


def _change_cells(i: int, tests: dict[int, tuple[float, float]], reference: bool) -> tuple[str, str]:
    """A row's "change" and "p (Holm)" cells: ``reference``, a marked difference, or ``-``."""
    if i not in tests:
        return ("reference" if reference else "-"), "-"
    d, pv = tests[i]
    mark = (" ▲" if d > 0 else " ▼") if pv < ALPHA else ""
    return f"{d:+.4f}{mark}", f"{pv:.3g}"


def _tokens(r: dict[str, Any]) -> str:
    tokens = r.get("prompt_tokens")
    return "-" if tokens is None else f"{tokens:.1f}"


def _ablations(
    rows: list[dict[str, Any]],
) -> list[tuple[tuple[str, str, str], str, list[dict[str, Any]], dict[int, tuple[float, float]]]]:
    """Per leaderboard table holding prompted-LLM rows: (dataset, split, eval), its metric, its rows
    (the reference first) and each paired row's (change vs the reference, Holm-adjusted p)."""
    by_table: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_table[(r["dataset"], r["split"], r["eval"])].append(r)
    out = []
    for key, trs in by_table.items():
        metric = "test/" + SIGNIFICANCE_METRIC[kind_of(key[2])]
        trs = sorted(trs, key=lambda r: (not _is_reference(r), r["model_name"], r["prompt"], r["icl"], r["history"], r["model"]))
        out.append((key, metric, trs, _tests(trs, metric)))
    return out


def ablation_tables(rows: list[dict[str, Any]]) -> str:
    """Markdown: one table per leaderboard table holding prompted-LLM rows (see the module doc)."""
    out: list[str] = []
    for (dataset, split, ev), metric, trs, tests in _ablations(rows):
        name = metric.removeprefix("test/")
        out += [
            f"### {dataset} / {split} / {ev}",
            "",
            f"| model | template | in-context | history | prompt tokens | seeds | {name} | change vs reference | p (Holm) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(trs):
            change, p = _change_cells(i, tests, _is_reference(r))
            out.append(
                f"| {_md_cell(r['model'])} | {_md_cell(r['prompt'] or '-')} | {_md_cell(r['icl'] or 'none')} "
                f"| {_md_cell(r['history'] or 'all')} | {_tokens(r)} | {r['seeds']} | {_fmt(r['metrics'].get(metric))} "
                f"| {change} | {p} |"
            )
        out.append("")
    return "\n".join(out)


def selection_tests(rows: list[dict[str, Any]]) -> list[tuple[tuple[str, str, str], str, list[dict[str, Any]], dict[int, tuple[float, float]]]]:
    """Per group of rows that differ only in how their in-context examples are chosen (one table,
    model, template, number of examples and history rule) and that holds a ``random`` row: the
    group's metric, its rows (``random`` first) and each other row's (change vs ``random``,
    Holm-adjusted paired p within the group; rows on other users are not tested)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        select, _, k = str(r["icl"] or "").partition(":")
        if select and k and "@" not in str(r["model"]):
            groups[(r["dataset"], r["split"], r["eval"], r["model_name"], r["prompt"], k, r["history"])].append(r)
    out = []
    for key, trs in groups.items():
        base = [r for r in trs if str(r["icl"]).startswith("random:")]
        if len(base) != 1 or len(trs) < 2:
            continue
        metric = "test/" + SIGNIFICANCE_METRIC[kind_of(key[2])]
        ref = base[0]
        trs = [ref, *sorted((r for r in trs if r is not ref), key=lambda r: str(r["icl"]))]
        out.append((key[:3], metric, trs, _paired_tests(trs, 0, metric)))
    return out


def selection_tables(rows: list[dict[str, Any]]) -> str:
    """Markdown: each in-context selection strategy against ``random`` examples (:func:`selection_tests`)."""
    found = selection_tests(rows)
    if not found:
        return ""
    out = [
        "### In-context example selection against random examples (same table, template, k and history)",
        "",
        "| table | model | in-context | prompt tokens | seeds | metric | value | change vs random | p (Holm) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, split, ev), metric, trs, tests in found:
        for i, r in enumerate(trs):
            change, p = _change_cells(i, tests, i == 0)
            out.append(
                f"| {dataset} / {split} / {ev} | {_md_cell(r['model'])} | {_md_cell(r['icl'])} "
                f"| {_tokens(r)} | {r['seeds']} | {metric.removeprefix('test/')} "
                f"| {_fmt(r['metrics'].get(metric))} | {change} | {p} |"
            )
    return "\n".join(out) + "\n"


def _pool_groups(folder: Path, rec: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """Per user group, the template the bandit chose most on the test rows and its share."""
    lines = run_predictions(folder, rec)
    chosen: dict[str, Counter] = defaultdict(Counter)
    for ln in lines:
        fact = ln.get("prompt") if isinstance(ln, dict) else None
        if isinstance(fact, dict) and isinstance(fact.get("group"), int) and isinstance(fact.get("template"), str):
            chosen[str(fact["group"])][_clean_text(fact["template"], 40)] += 1
    out = {}
    for g, counts in sorted(chosen.items(), key=lambda kv: int(kv[0])):
        tid, n = counts.most_common(1)[0]
        out[g] = (tid, n / sum(counts.values()))
    return out


def pool_table(runs: list[tuple[dict[str, Any], Path]]) -> str:
    """Markdown: every prompt-pool run's comparison (record ``eval.prompt_pool``) and its choices per
    group, one table per pool model (the TALLRec-style scorer's in AUC, the reranker's in NDCG@10)."""
    out = []
    for model, metric, fixed_key, unit, fixed_name, random_name, oracle_on in POOLS:
        lines = []
        for rec, folder in sorted(runs, key=lambda x: (str(x[0]["model"].get("label")), x[0]["seed"])):
            cmp = (rec.get("eval") or {}).get("prompt_pool")
            if rec["model"].get("name") != model or not isinstance(cmp, dict):
                continue
            try:
                groups = _pool_groups(folder, rec)
            except Exception as e:  # noqa: BLE001 - predictions come from strangers: a verdict, not a traceback
                groups = {}
                print(f"{folder}: no per-group choices ({_clean_text(e) or type(e).__name__})", file=sys.stderr)
            single = cmp.get("single") if isinstance(cmp.get("single"), dict) else {}
            best_single = max((v for v in single.values() if isinstance(v, (int, float))), default=None)
            fixed = cmp.get(fixed_key) if isinstance(cmp.get(fixed_key), dict) else {}
            oracle = cmp.get("oracle_per_group") if isinstance(cmp.get("oracle_per_group"), dict) else {}

            def num(x: Any) -> str:
                return f"{x:.4f}" if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else "-"

            lines.append(
                f"| {_md_cell(_clean_text(rec['model'].get('label'), 60))} | {rec['seed']} | {num(cmp.get('bandit'))} "
                f"| {_md_cell(_clean_text(fixed.get('template'), 30))} {num(fixed.get(metric))} | {num(cmp.get('random'))} "
                f"| {num(best_single)} | {num(oracle.get(metric))} "
                f"| {_md_cell('; '.join(f'{g}: {t} ({s:.0%})' for g, (t, s) in groups.items())) or '-'} |"
            )
        if lines:
            out += [
                f"### Prompt pool (`{model}`): the bandit against its baselines ({unit})",
                "",
                f"| run | seed | bandit | {fixed_name} | {random_name} | best single template (test) "
                f"| oracle per group ({oracle_on}) | most chosen per group |",
                "|---|---|---|---|---|---|---|---|",
                *lines,
                "",
            ]
    return "\n".join(out)


def pool_tests(runs: list[tuple[dict[str, Any], Path]]) -> list[dict[str, Any]]:
    """Per prompt-pool configuration (model label, over its seeds): the per-user values of the bandit,
    the template best on the feedback rows and the random policy (:func:`benchmark.eval.pool.
    paired_policy_values`), averaged per user over the seeds (same users in every seed), and the
    bandit's paired test against each of the two (Holm over the two). A run whose predictions do
    not give these values, or whose ranking values do not average to its record's comparison, is
    left out with a warning."""
    from benchmark.eval.pool import paired_policy_values

    found: dict[tuple[str, str], list[tuple[int, list[str], dict[str, Any]]]] = defaultdict(list)
    for rec, folder in runs:
        spec = next((x for x in POOLS if x[0] == rec["model"].get("name")), None)
        pool = rec["model"].get("prompt_pool")
        cmp = (rec.get("eval") or {}).get("prompt_pool")
        if spec is None or not isinstance(pool, dict) or not isinstance(cmp, dict):
            continue
        rank = spec[1] != "auc"
        try:
            arm_ids = [str(t["id"]) for t in pool["templates"]]
            best = str(pool["feedback"][spec[2]])
            got = paired_policy_values(
                run_predictions(folder, rec), arm_ids, best, int(pool["seed"]), rank
            )
            if got is None:
                continue
            users, values = got
            if rank and any(not abs(float(np.mean(values[k])) - float(v)) <= 1e-6 for k, v in  # NaN: not equal
                            (("bandit", cmp["bandit"]), ("fixed", cmp[spec[2]][spec[1]]), ("random", cmp["random"]))):
                raise ValueError("per-user values do not average to the record's comparison")
        except Exception as e:  # noqa: BLE001 - predictions come from strangers: a verdict, not a traceback
            print(f"{folder}: no paired pool test ({_clean_text(e) or type(e).__name__})", file=sys.stderr)
            continue
        found[(spec[0], *_pool_key(rec))].append((int(rec["seed"]), users, values))
    out = []
    for (model, *key), seeds in sorted(found.items()):
        seeds.sort(key=lambda x: x[0])
        row: dict[str, Any] = {"model": model, "label": key[-1], "key": tuple(key), "seeds": len(seeds), "users": len(seeds[0][1])}
        if all(users == seeds[0][1] for _, users, _ in seeds) and len(seeds[0][1]) > 1:
            mean = {k: np.mean([v[k] for _, _, v in seeds], axis=0) for k in ("bandit", "fixed", "random")}
            p = holm([paired_pvalue(mean["bandit"], mean[k]) for k in ("fixed", "random")])
            row |= {k: float(mean[k].mean()) for k in mean}
            row |= {f"{k}_change": float((mean["bandit"] - mean[k]).mean()) for k in ("fixed", "random")}
            row |= {"fixed_p": p[0], "random_p": p[1]}
        out.append(row)
    return out


def pool_test_table(runs: list[tuple[dict[str, Any], Path]]) -> str:
    """Markdown: :func:`pool_tests`, one line per pool configuration."""
    rows = pool_tests(runs)
    if not rows:
        return ""
    out = [
        "### Prompt pool: the bandit against its baselines, paired per user (values averaged over seeds)",
        "",
        "| run | metric per user | seeds | users | bandit | fixed template (chosen on feedback) | change | p (Holm) "
        "| random template | change | p (Holm) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        metric = "AUC" if r["model"] == "tallrec_pool" else "NDCG@10"
        if "bandit" not in r:
            out.append(f"| {_md_cell(_clean_text(r['label'], 60))} | {metric} | {r['seeds']} | {r['users']} | - | - | - | - | - | - | - |")
            continue
        cells = []
        for k in ("fixed", "random"):
            d, pv = r[f"{k}_change"], r[f"{k}_p"]
            mark = (" ▲" if d > 0 else " ▼") if pv < ALPHA else ""
            cells.append(f"{r[k]:.4f} | {d:+.4f}{mark} | {pv:.3g}")
        out.append(
            f"| {_md_cell(_clean_text(r['label'], 60))} | {metric} | {r['seeds']} | {r['users']} | {r['bandit']:.4f} "
            f"| {cells[0]} | {cells[1]} |"
        )
    return "\n".join(out) + "\n"


def _prompted(runs: list[tuple[dict[str, Any], Path]]) -> tuple[list[tuple[dict[str, Any], Path]], list[dict[str, Any]]]:
    """The prompted models' runs and their aggregated leaderboard rows (with ``model_name``)."""
    runs = [(rec, d) for rec, d in runs if rec["model"].get("name") in MODELS]
    rows = aggregate(runs)
    names = {str(d): rec["model"].get("name") for rec, d in runs}
    for r in rows:
        r["model_name"] = names.get(str(r["run_dirs"][0]), "")
    return runs, rows


def document(runs_dir: Path) -> str:
    """The whole generated block: the ablation tables and the prompt-pool table."""
    runs, rows = _prompted(load_runs(runs_dir))
    text = ablation_tables(rows)
    selection = selection_tables(rows)
    pool = pool_table(runs)
    paired = pool_test_table(runs)
    return text + "".join("\n" + part for part in (selection, pool, paired) if part)


def _part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", str(text)).strip("-")


def paper_values(all_runs: list[tuple[dict[str, Any], Path]]) -> dict[str, str]:
    """Values for the paper (names reduced to letters, digits, ``-``, ``_`` and ``.``):

    - ``prompts/<dataset>/<split>/<eval>/<row>/change`` and ``.../p``: a prompt-ablation row's
      difference of means to its table's reference row and the Holm-adjusted paired p;
    - ``selection/<dataset>/<split>/<eval>/<row>/change`` and ``.../p``: an in-context selection
      row's difference of means to the ``random`` row of its group and the Holm-adjusted paired p
      (:func:`selection_tests`);
    - ``pool/<dataset>/<split>/<eval>/<label>/<fact>``: a prompt pool's comparison on its test rows,
      the mean over its seeds of ``bandit``, ``fixed`` (the template chosen on valid or on the
      train feedback), ``random``, ``best_single`` (the best template on test) and ``oracle``, with
      ``seeds``.
    """
    runs, rows = _prompted(all_runs)
    return {
        **tested_values("prompts", _ablations(rows)),
        **tested_values("selection", selection_tests(rows)),
        **pool_values(runs),
    }


def tested_values(
    prefix: str, found: list[tuple[tuple[str, str, str], str, list[dict[str, Any]], dict[int, tuple[float, float]]]],
) -> dict[str, str]:
    """``<prefix>/<dataset>/<split>/<eval>/<row>/change`` and ``.../p`` of each tested row of
    :func:`_ablations` or :func:`selection_tests`."""
    out: dict[str, str] = {}
    for key, _metric, trs, tests in found:
        for i, (d, pv) in tests.items():
            base = "/".join([prefix, *(_part(k) for k in key), _part(trs[i]["model"])])
            out[f"{base}/change"], out[f"{base}/p"] = f"{d:+.4f}", f"{pv:.3g}"
    return out


def pool_values(runs: list[tuple[dict[str, Any], Path]]) -> dict[str, str]:
    """``pool/<dataset>/<split>/<eval>/<label>/<fact>`` of :func:`paper_values`, from the records'
    ``eval.prompt_pool`` (a record without a complete comparison is left out)."""
    out: dict[str, str] = {}
    pools: dict[tuple[str, ...], list[dict[str, float]]] = defaultdict(list)
    for rec, _ in runs:
        cmp = (rec.get("eval") or {}).get("prompt_pool")
        spec = next((x for x in POOLS if x[0] == rec["model"].get("name")), None)
        if not isinstance(cmp, dict) or spec is None:
            continue
        _, metric, fixed_key = spec[:3]
        single = cmp.get("single") if isinstance(cmp.get("single"), dict) else {}
        facts = {
            "bandit": cmp.get("bandit"),
            "fixed": (cmp.get(fixed_key) or {}).get(metric) if isinstance(cmp.get(fixed_key), dict) else None,
            "random": cmp.get("random"),
            "best_single": max((v for v in single.values() if _finite(v)), default=None),
            "oracle": (cmp.get("oracle_per_group") or {}).get(metric) if isinstance(cmp.get("oracle_per_group"), dict) else None,
        }
        if all(_finite(v) for v in facts.values()):
            pools[_pool_key(rec)].append(facts)
    for key, seeds in pools.items():
        base = "/".join(["pool", *(_part(k) for k in key)])
        out[f"{base}/seeds"] = str(len(seeds))
        for fact in ("bandit", "fixed", "random", "best_single", "oracle"):
            out[f"{base}/{fact}"] = f"{sum(x[fact] for x in seeds) / len(seeds):.4f}"
    for row in pool_tests(runs):
        base = "/".join(["pool", *(_part(k) for k in row["key"])])
        out[f"{base}/paired_users"] = str(row["users"])
        for k in ("fixed", "random") if "bandit" in row else ():
            out[f"{base}/paired_{k}_change"], out[f"{base}/paired_{k}_p"] = f"{row[f'{k}_change']:+.4f}", f"{row[f'{k}_p']:.3g}"
    return out


def _pool_key(rec: dict[str, Any]) -> tuple[str, str, str, str]:
    """(dataset, split, eval setting with its test-user subset, model label) of a pool run."""
    ev = str((rec.get("eval") or {}).get("protocol"))
    users = (rec.get("eval") or {}).get("test_users")
    ev += f"[test_users={users}]" if isinstance(users, int) and not isinstance(users, bool) else ""
    dataset, split = (rec.get("dataset") or {}).get("name"), (rec.get("split") or {}).get("protocol")
    return str(dataset), str(split), ev, str(rec["model"].get("label"))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def main(argv: list[str] | None = None) -> int:
    return records_document_main(
        argv, "python -m benchmark.results.prompts", __doc__.split("\n")[0], "prompt-ablations", document, START, END
    )


if __name__ == "__main__":
    raise SystemExit(main())

