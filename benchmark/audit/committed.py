"""The committed audits: every split protocol and item indexing scheme on MovieLens-100K, and a
deliberately leaky index, written to ``results/audit/`` with their table (``make audit``).

``python -m benchmark.audit.committed [--out DIR] [--readme FILE]`` writes one JSON report per
audit, ``table.md`` from those reports, and the same table into README.md between the
``audit-table`` markers (``--table-only``: the tables again from the reports already there). Nothing here is typed by hand: the table is a function of the reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmark.audit.findings import pct
from benchmark.audit.report import SCHEMES
from benchmark.util import atomic_write, write_marked_block

OUT = Path("results/audit")
README = Path("README.md")
START, END = "<!-- audit-table:start -->", "<!-- audit-table:end -->"

# name -> overrides of `llm4rec audit` (each protocol with the eval protocol of its committed runs).
AUDITS: dict[str, list[str]] = {
    "ml-100k-loo": ["split=loo", "eval=sampled", "audit.indexes=all"],
    "ml-100k-temporal": ["split=temporal"],
    "ml-100k-random": ["split=random", "eval=labeled"],
    "ml-100k-strict_cold_item": ["split=strict_cold_item", "audit.indexes=all"],
    "ml-100k-tallrec_movie": ["split=tallrec_movie", "eval=labeled"],
}
LEAKY = "ml-100k-loo-leaky-p5-sequential"
LEAKY_INDEX = "p5-original-sequential"


def audit_one(overrides: list[str], leaky: bool = False) -> dict[str, Any]:
    """Compose ``+audit=default`` with ``overrides`` and audit the split (and, with ``leaky``, the
    original P5 code's sequential index over all parts instead of the configured indexes)."""
    from benchmark.audit.identifiers import AuditIndex, p5_original_sequential
    from benchmark.audit.report import configured, run_audit
    from benchmark.compose import check_config, compose

    cfg = compose(["+audit=default", *overrides])
    check_config(cfg)
    data, indexes, limits = configured(cfg)
    if leaky:
        ids = p5_original_sequential(data)
        indexes = [AuditIndex(LEAKY_INDEX, ids, facts={"built_from": "all parts (the original P5 code)"})]
    report = run_audit(data, indexes, limits)
    report["audited"]["overrides"] = overrides
    return report


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else pct(x)


def _split_name(r: dict[str, Any]) -> str:
    """The split option audited (``split=strict_cold_item`` is protocol loo with held-out items)."""
    chosen = [o.split("=", 1)[1] for o in r["audited"].get("overrides", []) if o.startswith("split=")]
    return chosen[0] if chosen else r["audited"]["protocol"]


def split_cells(r: dict[str, Any]) -> list[str]:
    """The split table's cells of one report: split, eval, rows per part, then the findings."""
    s, sec = r["stats"], r["sections"]
    tl = sec["timeline"]
    lab = sec["labels"]
    return [
        _split_name(r),
        r["audited"].get("eval", ""),
        f"{s['train_rows']:,}/{s['valid_rows']:,}/{s['test_rows']:,}",
        _fmt(tl["test"]["mean_over_rows"]) if tl.get("applicable") else "n/a",
        _fmt(tl["future_test_items"]["share"]) if tl.get("applicable") else "n/a",
        _fmt(sec["overlap"]["test_pairs_in_train"]),
        _fmt(sec["overlap"]["test_targets_in_history"]),
        _fmt(sec["duplicates"]["test_rows_in_train"]),
        _fmt(sec["sampling"].get("negatives_interacted")),
        (
            " / ".join(_fmt(lab[p]["positive_share"]) for p in ("train", "valid", "test"))
            if lab.get("applicable")
            else "n/a"
        ),
        f"{r['counts']['error']} / {r['counts']['warning']}",
    ]


def split_row(name: str, r: dict[str, Any]) -> str:
    cells = split_cells(r)
    return "| " + " | ".join([f"`{cells[0]}`", *cells[1:], f"[{name}.json](results/audit/{name}.json)"]) + " |"


def index_cells(scheme: str, f: dict[str, Any], r: dict[str, Any]) -> list[str]:
    """The index table's cells of one index in one report."""
    codes = f.get("codes") or {}
    errors = sum(1 for x in r["findings"] if x["scope"] == f"index:{scheme}" and x["severity"] == "error")
    rho = f["id_time_correlation"]["all_items"]
    return [
        scheme,
        _split_name(r),
        _fmt(f["refit"]["share"]),
        _fmt(f["consecutive_test_ids"]),
        _fmt(f["next_after_user_max"]),
        "n/a" if rho is None else f"{rho:+.2f}",
        _fmt(codes.get("collision_rate")) if codes else "n/a",
        (f"{codes['codes']:,} codes, dead {_fmt(codes['dead_codes'])}" if codes else "n/a"),
        str(errors),
    ]


def index_row(name: str, scheme: str, f: dict[str, Any], r: dict[str, Any]) -> str:
    cells = index_cells(scheme, f, r)
    return (
        "| "
        + " | ".join([f"`{cells[0]}`", f"`{cells[1]}`", *cells[2:], f"[{name}.json](results/audit/{name}.json)"])
        + " |"
    )


def ordered_indexes(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A report's indexes in the order of :data:`SCHEMES` (others after, by name)."""
    order = {s: k for k, s in enumerate(SCHEMES)}
    return sorted(r["sections"]["indexes"].items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def read_reports(out: Path) -> dict[str, dict[str, Any]]:
    """The committed reports in ``out`` (every audited split, then the leaky variant)."""
    return {n: json.loads((out / f"{n}.json").read_text()) for n in [*AUDITS, LEAKY]}


def table(reports: dict[str, dict[str, Any]]) -> str:
    """The Markdown tables of the committed reports (splits, then indexes)."""
    lines = [
        "| split | eval | train/valid/test rows | train after test target | test items new after history"
        " | test pairs in train | target in history | test rows in train | negatives interacted"
        " | positives train/valid/test | errors / warnings | report |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [split_row(n, r) for n, r in reports.items() if n != LEAKY]
    lines += [
        "",
        "| index | split | ids changed by a train-only refit | test id = previous item's + 1 | test id = user's max + 1"
        " | id-time rho | code collisions | codes | errors | report |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in reports.items():
        for scheme, f in ordered_indexes(r):
            lines.append(index_row(name, scheme, f, r))
    text = "\n".join(lines) + "\n"
    if LEAKY in reports:
        text += "\n" + leaky_summary(reports[LEAKY])
    return text


def leaky_summary(report: dict[str, Any]) -> str:
    """One paragraph: what the audit says about the original P5 code's sequential index."""
    f = report["sections"]["indexes"][LEAKY_INDEX]
    errors = [
        x for x in report["findings"] if x["scope"] == f"index:{LEAKY_INDEX}" and x["severity"] == "error"
    ]
    refit = f["refit"]
    return (
        f"The leaky index (`{LEAKY_INDEX}`: items numbered by first appearance over whole user sequences,"
        f" test items included, as the original P5 code did) follows the numbering over all parts for"
        f" {_fmt(refit['follows_sequential_all_parts'])} of train items and the train-only numbering for"
        f" {_fmt(refit['follows_sequential_train_only'])}: {_fmt(refit['share'])} of its ids change when refit on"
        f" the train part alone. Its test ids follow the user's previous item's for"
        f" {_fmt(f['consecutive_test_ids'])} of rows and the user's largest id for {_fmt(f['next_after_user_max'])}"
        f" (chance {_fmt(f['chance'])}); errors: {', '.join(e['check'] for e in errors) or 'none'}.\n"
    )


def write_readme_table(readme: Path, text: str) -> None:
    """Replace the text between the audit-table markers of ``readme`` (which must have both)."""
    try:
        write_marked_block(readme, START, END, text)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    from benchmark.audit.report import write_report

    p = argparse.ArgumentParser(
        prog="python -m benchmark.audit.committed", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--readme", default=str(README), help="README whose audit table is rewritten ('' = none)")
    p.add_argument("--table-only", action="store_true", help="rebuild the tables from the reports in --out")
    a = p.parse_args(argv)
    if a.table_only:
        reports = read_reports(a.out)
    else:
        reports = {name: audit_one(o) for name, o in AUDITS.items()}
        reports[LEAKY] = audit_one(["split=loo"], leaky=True)
        for name, r in reports.items():
            write_report(r, a.out / f"{name}.json")
            print(f"{name}: {r['counts']['error']} errors, {r['counts']['warning']} warnings")
    text = table(reports)
    atomic_write(a.out / "table.md", text)
    if a.readme:
        write_readme_table(Path(a.readme), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
