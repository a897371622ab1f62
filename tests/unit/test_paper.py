"""Paper tables and values are generated from results/leaderboard.csv and match it exactly."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from benchmark.paper import PaperError, generate, main, num, read_csv

ROOT = Path(__file__).resolve().parents[2]
HEAD = "dataset,split,eval,model,family,backbone,seeds,device,split_fingerprint,group_key,params,train_seconds,sig_vs,p_holm,sig"


def _write_csv(path: Path, bpr_hr: str = "0.123456") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["test/hr@10", "test/ndcg@10", "test/cold_item/ndcg@10"]
    head = HEAD + "," + ",".join(f"{c},{c}_std" for c in cols)
    rows = [
        f"d,loo,full,bpr,classic,,3,cpu,abc,def,10,12.5,(best baseline),,,{bpr_hr},0.01,0.061234,0.002,0.01,",
        "d,loo,full,pop,classic,,1,cpu,abc,xyz,0,0.0,bpr,0.001,▼,0.0859,,0.0449,,0.0,",
    ]
    path.write_text(head + "\n" + "\n".join(rows) + "\n")


def _numbers(tex: str) -> list[float]:
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0]
    return [float(x) for x in re.findall(r"\d+\.\d{4}", body)]


def test_tables_reproduce_csv_values(tmp_path):
    _write_csv(tmp_path / "results" / "leaderboard.csv")
    files = generate(tmp_path / "results", tmp_path / "paper")
    tex = (tmp_path / "paper" / "tables" / "d-loo-full.tex").read_text()
    # bpr: hr 0.1235 (0.0100), ndcg 0.0612 (0.0020), cold 0.0100; pop: 0.0859, 0.0449, 0.0000
    assert _numbers(tex) == [0.1235, 0.0100, 0.0612, 0.0020, 0.0100, 0.0859, 0.0449, 0.0000]
    assert r"\textbf{0.1235}\,{\tiny(0.0100)}" in tex
    assert r"\texttt{pop}$^{\blacktriangledown}$" in tex and r"\texttt{bpr}$^{\mathrm{b}}$" in tex
    assert any(p.suffix == ".png" for p in files) and any(p.suffix == ".pdf" for p in files)
    assert "\\input{tables/d-loo-full}" in (tmp_path / "paper" / "tables" / "all.tex").read_text()


def test_a_table_the_text_does_not_place_goes_to_the_appendix(tmp_path):
    _write_csv(tmp_path / "results" / "leaderboard.csv")
    paper = tmp_path / "paper"
    paper.mkdir()
    # No main.tex: every table is "further"; one that places the table: the appendix is a comment.
    generate(tmp_path / "results", paper, figures=False)
    appendix = (paper / "tables" / "appendix.tex").read_text()
    assert "\\section{Further leaderboard tables}" in appendix and "\\input{tables/d-loo-full}" in appendix
    (paper / "main.tex").write_text("text \\input{tables/d-loo-full} more\n\\input{tables/appendix}\n")
    generate(tmp_path / "results", paper, figures=False)
    appendix = (paper / "tables" / "appendix.tex").read_text()
    assert "\\input" not in appendix and "\\section" not in appendix and appendix.startswith("%")
    assert "appendix" not in (paper / "tables" / "all.tex").read_text()


def test_conversation_tables_come_from_checked_run_folders(tmp_path):
    """No conversation runs: a comment; a run folder that fails its checks: one line naming it."""
    from benchmark.paper import PaperError

    _write_csv(tmp_path / "results" / "leaderboard.csv")
    generate(tmp_path / "results", tmp_path / "paper", figures=False)
    assert (tmp_path / "paper" / "tables" / "conversation.tex").read_text() == "% No conversation runs.\n"
    bad = tmp_path / "results" / "conversation" / "forged"
    bad.mkdir(parents=True)
    (bad / "record.json").write_text('{"run_id": "forged", "dialogues": {"file": "dialogues.jsonl.gz", "sha256": "0"}}')
    (bad / "dialogues.jsonl.gz").write_bytes(b"")
    with pytest.raises(PaperError, match=r"conversation: .*forged: .*sha256"):
        generate(tmp_path / "results", tmp_path / "paper", figures=False)
    assert (tmp_path / "paper" / "tables" / "conversation.tex").read_text() == "% No conversation runs.\n"  # kept


@pytest.mark.parametrize(
    ("csv_value", "shown"),
    [
        # A mean just above .01695 (the full-precision CSV keeps it) rounds up once; a 6-decimal
        # CSV would have held 0.016950, whose binary value is below .01695 and shows 0.0169.
        ("0.016950000000000003", "0.0170"),
        ("0.016949999999999998", "0.0169"),
        ("0.01695", "0.0169"),  # the float nearest 0.01695 lies below it: Python's f"{:.4f}" agrees
    ],
)
def test_values_are_rounded_once_from_the_csv(tmp_path, csv_value, shown):
    _write_csv(tmp_path / "results" / "leaderboard.csv", bpr_hr=csv_value)
    generate(tmp_path / "results", tmp_path / "paper", figures=False)
    tex = (tmp_path / "paper" / "tables" / "d-loo-full.tex").read_text()
    assert _numbers(tex)[0] == float(shown)
    values = (tmp_path / "paper" / "tables" / "values.tex").read_text()
    assert rf"\csname lb@d/loo/full/bpr/hr@10\endcsname{{{shown}}}" in values
    assert num(csv_value) == shown == f"{float(csv_value):.4f}"


def test_leaderboard_csv_keeps_full_precision():
    """The CSV carries each mean exactly, so the paper and the Markdown table round the same float once."""
    from benchmark.results.leaderboard import CSV_HEAD, fmt, to_csv

    mean, std = 0.0169500000000001, 0.0123456789
    row = {h: "" for h in CSV_HEAD}
    row.update(seeds=3, train_seconds=1.0, params=None, p_holm=None, metrics={"test/gauc": (mean, std)})
    back = next(csv.DictReader(to_csv([row]).splitlines()))
    assert float(back["test/gauc"]) == mean and float(back["test/gauc_std"]) == std
    assert fmt((mean, std)) == f"{num(back['test/gauc'])} ± {num(back['test/gauc_std'])}" == "0.0170 ± 0.0123"


def test_values_cover_every_csv_cell_and_the_crosscheck(tmp_path):
    _write_csv(tmp_path / "results" / "leaderboard.csv")
    cc = tmp_path / "results" / "crosscheck" / "recbole_pop_ml100k.json"
    cc.parent.mkdir(parents=True)
    cc.write_text(json.dumps({"recbole": {"version": "1.2.1", "train_batches": 3}, "metrics": {"hr@10": 0.07104},
                              "item_counts": {"recbole": [3, 1, 0], "true": [7, 1, 0]}}))  # fmt: skip
    generate(tmp_path / "results", tmp_path / "paper")
    values = (tmp_path / "paper" / "tables" / "values.tex").read_text()
    for key, text in [
        ("lb@d/loo/full/pop/hr@10", "0.0859"),
        ("lb@d/loo/full/bpr/ndcg@10_std", "0.0020"),
        ("lb@d/loo/full/bpr/seeds", "3"),
        ("lb@d/loo/full/pop/sig", "worse"),
        ("lb@d/loo/full/pop/p_holm", "0.001"),
        ("cc@recbole/version", "1.2.1"),
        ("cc@recbole/train_batches", "3"),
        ("cc@metrics/hr@10", "0.0710"),
    ]:
        assert rf"\csname {key}\endcsname{{{text}}}" in values, key
    assert (tmp_path / "paper" / "figures" / "recbole-pop-counts.pdf").exists()


def test_bad_csv_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "results" / "leaderboard.csv"
    bad.parent.mkdir(parents=True)
    bad.write_text("dataset,split,eval,model\nd,loo,full,bpr\n")
    with pytest.raises(PaperError, match=r"leaderboard.csv: column 'seeds' missing"):
        read_csv(bad)
    _write_csv(bad)
    bad.write_text(bad.read_text().replace("0.0859", "12abc"))
    with pytest.raises(PaperError, match=r"line 3, column 'test/hr@10': '12abc' is not a number"):
        read_csv(bad)
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "main.tex").write_text("")
    with pytest.raises(SystemExit) as e:
        main(["--results", str(tmp_path / "results"), "--paper", str(tmp_path / "paper"), "--no-pdf"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "is not a number" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "paper" / "tables").exists()  # nothing half-written


def test_committed_paper_tables_match_committed_leaderboard(tmp_path):
    csv_path = ROOT / "results" / "leaderboard.csv"
    if not csv_path.exists():
        pytest.skip("no committed leaderboard yet")
    shutil.copy(ROOT / "paper" / "main.tex", tmp_path / "main.tex")  # the appendix holds what it does not place
    generate(ROOT / "results", tmp_path, figures=False)
    for p in (tmp_path / "tables").glob("*.tex"):
        committed = ROOT / "paper" / "tables" / p.name
        assert committed.exists() and committed.read_text() == p.read_text(), f"paper/tables/{p.name} is stale"
    # And every number in the tables is a CSV value rounded (once) to 4 decimals.
    values = {f"{float(v):.4f}" for r in csv.DictReader(csv_path.open()) for k, v in r.items() if k.startswith("test/") and v}
    for p in (tmp_path / "tables").glob("*-*.tex"):
        for n in re.findall(r"\d+\.\d{4}", p.read_text().split(r"\midrule")[1]):
            assert n in values


def test_main_tex_types_no_numbers():
    """Results in the text come from generated macros: no decimal or multi-digit number is typed."""
    tex = (ROOT / "paper" / "main.tex").read_text()
    body = tex.split(r"\begin{document}")[1]
    body = re.sub(r"(?<!\\)%.*", "", body)  # comments
    body = re.sub(r"\\(lb|cc|R|PT|PA|PP|PQ|PR|PH|CV|ref|label|cite[tp]?|input|includegraphics|nolinkurl|bibliography\w*)(\[[^\]]*\])?\{[^}]*\}", "", body)
    body = re.sub(r"\\\w+\[[^\]]*\]", "", body)  # optional arguments such as [4pt], [width=...]
    typed = re.findall(r"(?<![\w@.\-])\d*\.\d+|(?<![\w@.\-])\d{2,}(?![\w])", body)
    assert typed == [], f"numbers typed into paper/main.tex instead of generated: {typed}"


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


def test_audit_tables_come_from_the_committed_reports(tmp_path):
    import json
    import shutil
    from pathlib import Path

    from benchmark.audit.committed import AUDITS, LEAKY
    from benchmark.paper import audit_tex

    src = Path(__file__).resolve().parents[2] / "results" / "audit"
    assert audit_tex(tmp_path / "none") is None  # no reports: no table
    for name in [*AUDITS, LEAKY]:
        shutil.copy(src / f"{name}.json", tmp_path / f"{name}.json")
    # Plant a figure in one report: the table must show it, escaped for LaTeX.
    loo = json.loads((tmp_path / "ml-100k-loo.json").read_text())
    loo["sections"]["timeline"]["test"]["mean_over_rows"] = 0.5
    loo["counts"] = {**loo["counts"], "error": 7}
    (tmp_path / "ml-100k-loo.json").write_text(json.dumps(loo))
    tex = audit_tex(tmp_path)
    row = next(line for line in tex.splitlines() if line.startswith("loo & "))
    assert row.split(" & ")[2] == r"50\%" and row.split(" & ")[6].startswith("7 / ")
    assert r"strict\_cold\_item & full" in tex
    assert r"p5-original-sequential & loo & 81.8\%" in tex
    assert r"\newcommand{\auditleaky}{" in tex and "index\\_refit\\_changes" in tex


def test_shot_figure_draws_curves_and_only_the_zero_shot_llm_as_a_line():
    from benchmark.paper import shot_series

    names = ["tallrec-16shot", "tallrec-allshot", "deepfm-recbole-64shot", "tallrec-icl0", "tallrec-64shot@bf16",
             "tallrec-64shot+dpo", "tallrec-icl0 [history=relevant@176]", "tallrec-pool-thompson-activity3",
             "deepfm-recbole-16shot (tuned 10 trials)", "deepfm-recbole-allshot (tuned 10 trials)",
             "deepfm-recbole-64shot (tuned 10 trials) [x]"]
    series, flat = shot_series([{"model": n} for n in names])
    assert {k: [x for x, _ in v] for k, v in series.items()} == {
        "tallrec": [16.0, float("inf")],
        "deepfm-recbole": [64.0],
        "deepfm-recbole (tuned)": [16.0, float("inf")],
    }
    assert [r["model"] for r in flat] == ["tallrec-icl0"]
