"""examples/runs_to_dataframe.py on committed run records (pop and BPR on MovieLens-100K loo)."""

from __future__ import annotations

import glob
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("runs_to_dataframe", ROOT / "examples" / "runs_to_dataframe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def committed_runs(tmp_path) -> tuple[Path, list[dict]]:
    """Copies of the committed pop/BPR runs on the plain loo split (full and sampled ranking)."""
    dst = tmp_path / "runs"
    dst.mkdir()
    records = []
    for folder in sorted(glob.glob(str(ROOT / "results/runs/ml-100k-loo-*-[pb][op][pr]-s[123]-*"))):
        rec = json.loads((Path(folder) / "record.json").read_text())
        split = rec["config"]["split"]
        plain = split.get("holdout_items", 0) == 0 and split.get("truncate_users", 0) == 0  # not the cold-start views
        if plain and rec["model"]["name"] in ("pop", "bpr") and rec["eval"]["protocol"] in ("full", "sampled"):
            shutil.copytree(folder, dst / Path(folder).name)
            records.append(rec)
    assert len(records) >= 4, "committed pop/BPR runs on ml-100k loo are missing"
    return dst, records


def test_dataframe_and_plot_points_match_the_records(example, committed_runs, tmp_path):
    runs_dir, records = committed_runs
    df = example.runs_frame(runs_dir)
    assert sorted(df["run_id"]) == sorted(r["run_id"] for r in records)
    for rec in records:
        row = df[df["run_id"] == rec["run_id"]].iloc[0]
        eff = rec["efficiency"]
        assert row["cost_seconds"] == pytest.approx(eff["train_seconds"] + eff["eval_seconds"])
        assert row["test/ndcg@10"] == pytest.approx(rec["metrics"]["test/ndcg@10"])
        assert row["model"] == rec["model"]["label"]
    assert not any(c.count("/") > 1 for c in df.columns)  # slice metrics left out

    points = example.plot_accuracy_vs_cost(df, "test/ndcg@10", tmp_path / "p.png")
    # expected: mean over seeds per (eval protocol, model), from the records themselves
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["eval"]["protocol"], rec["model"]["label"]), []).append(rec)
    assert len(points) == len(groups) and points["setting"].nunique() == len({p for p, _ in groups})
    for (protocol, model), recs in groups.items():
        got = points[(points["model"] == model) & points["setting"].str.endswith(protocol)]
        assert len(got) == 1
        vals = [r["metrics"]["test/ndcg@10"] for r in recs]
        costs = [r["efficiency"]["train_seconds"] + r["efficiency"]["eval_seconds"] for r in recs]
        assert got["value"].iloc[0] == pytest.approx(sum(vals) / len(vals))
        assert got["cost_seconds"].iloc[0] == pytest.approx(sum(costs) / len(costs))
        assert (got["low"].iloc[0], got["high"].iloc[0]) == (pytest.approx(min(vals)), pytest.approx(max(vals)))
        assert got["seeds"].iloc[0] == len(recs)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_line_writes_png_and_csv(example, committed_runs, tmp_path, capsys):
    runs_dir, records = committed_runs
    out, csv = tmp_path / "acc.png", tmp_path / "runs.csv"
    assert example.main([str(runs_dir), "--metric", "test/hr@10", "--out", str(out), "--csv", str(csv)]) == 0
    assert out.stat().st_size > 1000
    assert len(csv.read_text().strip().splitlines()) == len(records) + 1
    assert f"{len(records)} runs; plot written to {out}" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(example, tmp_path, capsys):
    assert example.main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"runs_to_dataframe: error: {tmp_path / 'nope'}: not a directory"
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "record.json").write_text("{not json")
    assert example.main([str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"runs_to_dataframe: error: {tmp_path / 'runs'}: no readable run record"
