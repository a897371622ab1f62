"""docs/precision.md: the precision ablation generated from the records (benchmark.results.precision)."""

from __future__ import annotations

from pathlib import Path

from benchmark.results.precision import END, START, document, option_of, tables
from benchmark.results.record import encode_predictions

REPO = Path(__file__).resolve().parents[2]
EPYC = {"model": "AMD EPYC", "flags": ["avx512_vnni"]}
OTHER = {"model": "Intel Xeon", "flags": ["avx2"]}


def _run(tmp: Path, name: str, label: str, seed: int, auc: float, scores: list[float], precision=None,
         cpu_s=None, cpu=None, ranked=None) -> tuple[dict, Path]:
    folder = tmp / name
    folder.mkdir()
    if ranked is None:
        lines = [{"row": i, "score": s} for i, s in enumerate(scores)]
    else:
        lines = [{"row": i, "user": str(u), "ranked": r} for i, (u, r) in enumerate(ranked.items())]
    (folder / "p.jsonl.gz").write_bytes(encode_predictions(lines))
    rec = {
        "seed": seed,
        "config": {} if precision is None else {"precision": precision},
        "model": {"label": label, "family": "llm", "llm": {"dtype": "float32"}},
        "dataset": {"name": "d"},
        "split": {"protocol": "s"},
        "eval": {"protocol": "labeled" if ranked is None else "full"},
        "metrics": {"test/auc" if ranked is None else "test/ndcg@10": auc},
        "efficiency": {"eval_cpu_seconds": cpu_s, "peak_rss_mb": 100.0},
        "predictions": {"file": "p.jsonl.gz"},
    }
    if cpu is not None:
        rec["environment"] = {"cpu": cpu}
    return rec, folder


def _opt(name, method="torch_dynamic", weights="int8", **kw):
    return {"name": name, "method": method, "weights": weights, **kw}


def _body(text: str) -> dict[str, str]:
    """Row lines of the per-run table keyed by 'option|seed'."""
    out = {}
    for ln in text.splitlines():
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) == 9 and cells[1].isdigit():
            out[f"{cells[0]}|{cells[1]}"] = ln
    return out


def test_option_names_mark_runs_in_the_model_dtype_and_bf16_heads():
    assert option_of({"config": {}, "model": {"llm": {"dtype": "float32"}}}) == "fp32 (model dtype)"
    assert option_of({"config": {}, "model": {"llm": {"dtype": "bfloat16"}}}) is None  # a GPU run: no reference
    assert option_of({"config": {"precision": _opt("bf16", "cast", "bfloat16")}}) == "bf16 (head in bf16)"
    assert option_of({"config": {"precision": _opt("bf16", "cast", "bfloat16", head="fp32")}}) == "bf16"
    assert option_of({"config": {"precision": _opt("fp32", "cast", "float32")}}) == "fp32"
    assert option_of({"config": {"precision": _opt("int8")}}) == "int8"


def test_each_run_is_compared_with_its_seeds_fp32_and_speed_only_on_one_cpu(tmp_path):
    runs = [
        _run(tmp_path, "a", "m", 1, 0.70, [0.9, 0.1, 0.6, 0.4], cpu_s=900.0, cpu=OTHER),  # model dtype, other CPU
        _run(tmp_path, "b", "m@fp32", 1, 0.71, [0.8, 0.2, 0.6, 0.4], _opt("fp32", "cast", "float32"), 600.0, EPYC),
        _run(tmp_path, "c", "m@int8", 1, 0.708, [0.7, 0.2, 0.5, 0.45], _opt("int8"), 300.0, EPYC),
        _run(tmp_path, "d", "m", 2, 0.60, [0.5, 0.5, 0.5, 0.5], cpu_s=500.0, cpu=OTHER),
        _run(tmp_path, "e", "m@int8", 2, 0.59, [0.5, 0.4, 0.5, 0.5], _opt("int8"), 250.0, EPYC),
    ]
    text = tables(runs)
    rows = _body(text)
    assert text.startswith("### m: d / s / labeled")
    assert rows["fp32|1"].split("|")[5].strip() == "reference"  # the explicit @fp32 run is seed 1's reference
    # seed 1 int8 against @fp32: change -0.002; |dP| = .1, 0, .1, .05 -> mean .0625, max .1; 600/300 = 2x
    assert "| int8 | 1 | 0.7080 | -0.0020 | 0.0625 / 0.1000 | 300 | 2.00x | 100 |" in rows["int8|1"]
    # the model-dtype run of seed 1 is compared with @fp32 too (other CPU: no speed-up)
    assert "| fp32 (model dtype) | 1 | 0.7000 | -0.0100 | 0.0500 / 0.1000 | 900 | - |" in rows["fp32 (model dtype)|1"]
    # seed 2 has only the model-dtype run as reference, measured on another CPU: no speed-up
    assert "| int8 | 2 | 0.5900 | -0.0100 | 0.0250 / 0.1000 | 250 | - |" in rows["int8|2"]
    summary = [ln for ln in text.splitlines() if ln.startswith("| int8 | 2 |") and ln.count("|") == 7]
    # two seeds compared: mean change (-0.002 - 0.01) / 2; speed only from seed 1; |change| .01 > .005
    assert summary == ["| int8 | 2 | -0.0060 | 0.0100 | 2.00x | not met |"]
    met = tables(runs[:3])
    assert "| int8 | 1 | -0.0020 | 0.0020 | 2.00x | met |" in met
    assert tables([runs[0], runs[3]]) == ""  # no other precision: no table


def test_ranking_tables_show_the_top_10_overlap(tmp_path):
    (tmp_path / "r").mkdir()
    ref = {"1": [str(i) for i in range(10)], "2": [str(i) for i in range(10)]}
    mine = {"1": [str(i) for i in range(10)], "2": [str(i) for i in range(5, 15)]}
    runs = [
        _run(tmp_path / "r", "f", "rr", 1, 0.06, [], ranked=ref),
        _run(tmp_path / "r", "q", "rr@int8", 1, 0.05, [], _opt("int8"), ranked=mine),
    ]
    rows = _body(tables(runs))
    assert "| int8 | 1 | 0.0500 | -0.0100 | 0.750 |" in rows["int8|1"]  # (10/10 + 5/10) / 2
    assert "| int8 | 1 | -0.0100 | 0.0100 | - | - |" in tables(runs)  # no target outside labeled tables


def test_a_broken_predictions_file_is_a_verdict_not_a_traceback(tmp_path, capsys):
    runs = [
        _run(tmp_path, "a", "m", 1, 0.70, [0.9, 0.1]),
        _run(tmp_path, "b", "m@int8", 1, 0.69, [0.8, 0.2], _opt("int8")),
    ]
    (runs[1][1] / "p.jsonl.gz").write_bytes(b"not gzip")
    rows = _body(tables(runs))
    assert "| int8 | 1 | 0.6900 | -0.0100 | - |" in rows["int8|1"]
    assert "predictions not compared" in capsys.readouterr().err


def test_the_committed_precision_document_matches_the_committed_records():
    doc = (REPO / "docs" / "precision.md").read_text()
    block = doc.split(START, 1)[1].split(END, 1)[0]
    assert block == "\n" + document(REPO / "results" / "runs")


def test_paper_values_name_each_option_summary(tmp_path):
    from benchmark.results.precision import paper_values

    runs = [
        _run(tmp_path, "b", "m@fp32", 1, 0.71, [0.8, 0.2], _opt("fp32", "cast", "float32"), 600.0, EPYC),
        _run(tmp_path, "c", "m@int8", 1, 0.708, [0.7, 0.2], _opt("int8"), 300.0, EPYC),
        _run(tmp_path, "d", "m@bf16", 1, 0.70, [0.7, 0.2], _opt("bf16", "cast", "bfloat16"), 400.0, OTHER),
    ]
    v = paper_values(runs)
    assert v["precision/d/s/labeled/m/int8/mean_change"] == "-0.0020" and v["precision/d/s/labeled/m/int8/speedup"] == "2.00"
    assert v["precision/d/s/labeled/m/int8/target"] == "met" and v["precision/d/s/labeled/m/int8/seeds"] == "1"
    assert v["precision/d/s/labeled/m/bf16-head-in-bf16/largest_change"] == "0.0100"
    assert "precision/d/s/labeled/m/bf16-head-in-bf16/speedup" not in v  # another CPU: no speed-up
    assert v["precision/target_speedup"] == "1.5" and v["precision/target_auc_change"] == "0.005"


def test_the_readme_bench_block_matches_the_committed_measurements(monkeypatch):
    from benchmark.bench import precision as bench

    block = (REPO / "README.md").read_text().split(bench.START + "\n", 1)[1].split(bench.END, 1)[0]
    monkeypatch.chdir(REPO)  # the block names the files by their paths from the repository root
    assert block == bench.readme_block([Path("results/perf/vnni/precision.json"), Path("results/perf/precision.json")])
