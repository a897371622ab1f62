"""Paper tables are generated from results/leaderboard.csv and match it exactly."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from benchmark.paper import generate

ROOT = Path(__file__).resolve().parents[2]
HEAD = "dataset,split,eval,model,family,backbone,seeds,device,split_fingerprint,group_key,params,train_seconds,sig_vs,p_holm,sig"


def _write_csv(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["test/hr@10", "test/ndcg@10", "test/cold_item/ndcg@10"]
    head = HEAD + "," + ",".join(f"{c},{c}_std" for c in cols)
    rows = [
        "d,loo,full,bpr,classic,,3,cpu,abc,def,10,12.5,(best baseline),,,0.123456,0.010000,0.061234,0.002000,0.010000,",
        "d,loo,full,pop,classic,,1,cpu,abc,xyz,0,0.0,bpr,0.001,▼,0.085900,,0.044900,,0.000000,",
    ]
    path.write_text(head + "\n" + "\n".join(rows) + "\n")


def _numbers(tex: str) -> list[float]:
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0]
    return [float(x) for x in re.findall(r"\d+\.\d{4}", body)]


def test_tables_reproduce_csv_values(tmp_path):
    _write_csv(tmp_path / "results" / "leaderboard.csv")
    files = generate(tmp_path / "results", tmp_path / "paper")
    tex = (tmp_path / "paper" / "tables" / "d-loo-full.tex").read_text()
    # bpr: hr 0.1235 ± 0.0100, ndcg 0.0612 ± 0.0020, cold 0.0100; pop: 0.0859, 0.0449, 0.0000
    assert _numbers(tex) == [0.1235, 0.0100, 0.0612, 0.0020, 0.0100, 0.0859, 0.0449, 0.0000]
    assert r"\textbf{0.1235 $\pm$ 0.0100}" in tex and r"pop$^{\blacktriangledown}$" in tex
    assert any(p.suffix == ".png" for p in files) and any(p.suffix == ".pdf" for p in files)
    assert "\\input{tables/d-loo-full}" in (tmp_path / "paper" / "tables" / "all.tex").read_text()


def test_committed_paper_tables_match_committed_leaderboard(tmp_path):
    csv_path = ROOT / "results" / "leaderboard.csv"
    if not csv_path.exists():
        pytest.skip("no committed leaderboard yet")
    generate(ROOT / "results", tmp_path)
    for p in (tmp_path / "tables").glob("*.tex"):
        committed = ROOT / "paper" / "tables" / p.name
        assert committed.exists() and committed.read_text() == p.read_text(), f"paper/tables/{p.name} is stale"
    # And every number in the tables is a CSV value rounded to 4 decimals.
    values = {f"{float(v):.4f}" for r in csv.DictReader(csv_path.open()) for k, v in r.items() if k.startswith("test/") and v}
    for p in (tmp_path / "tables").glob("*-*.tex"):
        for n in re.findall(r"\d+\.\d{4}", p.read_text().split(r"\midrule")[1]):
            assert n in values


def test_leaderboard_orders_model_labels_by_number():
    from benchmark.results.leaderboard import natural_key

    labels = ["tallrec-allshot", "tallrec-256shot", "bpr", "tallrec-16shot", "tallrec-64shot", "p5-title"]
    assert sorted(labels, key=natural_key) == [
        "bpr",
        "p5-title",
        "tallrec-16shot",
        "tallrec-64shot",
        "tallrec-256shot",
        "tallrec-allshot",
    ]
