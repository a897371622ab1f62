"""End-to-end ``llm4rec run model=p5`` (in-process) with a tiny T5 trained from scratch on the tiny dataset."""

from __future__ import annotations

import pytest

from benchmark.results.record import load_record, read_predictions
from tests.smoke.test_cli import assert_metrics_recompute, llm4rec, runs, tiny_args

TINY = [
    "model=p5",
    "model.backbone=t5-tiny-scratch",
    "model.module.indexing.n_clusters=4",
    "model.module.indexing.max_leaf=8",
    "model.train.max_epochs=1",
    "model.train.batch_size=32",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_p5_run_records_validity_and_recomputes(tiny_dir, tmp_path):
    args = [*TINY, "model.indexing=collaborative", *tiny_args(tiny_dir, tmp_path)]
    llm4rec("run", *args)
    (run_dir,) = runs(tmp_path)
    rec = assert_metrics_recompute(run_dir)
    assert rec["eval"]["rows"] == 40 and rec["training"]["epochs"] == 1
    gen = rec["model"]["generation"]
    assert gen["constrained"] is True and gen["hallucination_rate"] == 0.0 and gen["rows"] == 40
    assert len(gen["validity_at_rank"]) == rec["eval"]["list_length"] == 20
    assert all(v == 1.0 for v in gen["validity_at_rank"])  # 60 items, at most 12 excluded: always 20 left
    p5 = rec["model"]["p5"]
    assert p5["backbone"]["init"] == "random (trained from scratch)" and p5["kind"] == "seq2seq"
    assert p5["indexing"]["scheme"] == "collaborative" and p5["indexing"]["built_from"] == "train part only"
    assert p5["prompt"]["eval_template"] == "seen-1" and len(p5["prompt"]["train_templates"]) == 5
    assert (
        rec["model"]["label"] == "p5-collaborative" and rec["model"]["notes"]["backbone"] == "t5-tiny-scratch"
    )
    lines = read_predictions(run_dir / rec["predictions"]["file"])
    assert all(len(line["ranked"]) == 20 and None not in line["ranked"] for line in lines)


def test_p5_run_is_deterministic(tiny_dir, tmp_path):
    args = [
        *TINY,
        "model.indexing=semantic",
        "model.module.indexing.codebook=4",
        *tiny_args(tiny_dir, tmp_path),
    ]
    llm4rec("run", *args)
    (run_dir,) = runs(tmp_path)
    first = assert_metrics_recompute(run_dir)
    llm4rec("run", *args, "reuse_trained=false")  # fresh training, same config
    second = load_record(run_dir)
    assert second["predictions"]["sha256"] == first["predictions"]["sha256"]
    assert second["model"]["p5"]["indexing"]["sha256"] == first["model"]["p5"]["indexing"]["sha256"]


def test_free_decoding_reports_hallucinations_as_misses(tiny_dir, tmp_path):
    llm4rec(
        "run",
        *TINY,
        "model.indexing=sequential",
        "model.module.constrained=false",
        *tiny_args(tiny_dir, tmp_path),
    )
    (run_dir,) = runs(tmp_path)
    rec = assert_metrics_recompute(run_dir)
    gen = rec["model"]["generation"]
    assert gen["constrained"] is False and 0.0 <= gen["hallucination_rate"] <= 1.0
    lines = read_predictions(run_dir / rec["predictions"]["file"])
    nulls = sum(x is None for line in lines for x in line["ranked"])
    invalid = gen["no_item_rate"] + gen["excluded_rate"] + gen["duplicate_rate"] + gen["unfilled_rate"]
    assert nulls == round(invalid * 40 * 20)  # every output that is no usable item is a null (a miss)


def test_bad_indexing_scheme_is_a_one_line_error(tiny_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        llm4rec("run", *TINY, "model.indexing=semantik", *tiny_args(tiny_dir, tmp_path))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "semantik" in err
    assert runs(tmp_path) == []


def test_two_processes_rank_every_row_once_and_gather_the_rates(tiny_dir, tmp_path):
    from tests.smoke.test_distributed import DDP, cli

    base = [*TINY, *tiny_args(tiny_dir, tmp_path)]
    llm4rec("run", *base)
    (single,) = runs(tmp_path)
    one = load_record(single)
    weights = next((tmp_path / "out" / "models").glob("*/model.pt"))
    two_dir = tmp_path / "two"
    r = cli("run", *base, f"load_weights={weights}", f"paths.results={two_dir}", *DDP, "eval.chunk_users=7")
    assert r.returncode == 0, r.stderr[-3000:]
    (d,) = [p for p in (two_dir / "runs").iterdir() if not p.name.startswith(".")]
    two = assert_metrics_recompute(d)
    assert two["labels"]["processes"] == 2 and two["eval"]["rows"] == one["eval"]["rows"]
    assert two["model"]["generation"]["rows"] == 40  # codes of both processes, each row once
    # Shards of 7 rows pad prompts differently from one process's batches; on CPU the lists agree exactly.
    assert two["predictions"]["sha256"] == one["predictions"]["sha256"]
    assert two["metrics"] == one["metrics"]
