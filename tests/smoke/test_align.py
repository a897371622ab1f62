"""End-to-end alignment runs through ``llm4rec run ... align=<method>`` (in-process): a tiny P5 SFT
parent on the tiny dataset, then one short aligned run per method; bad input as one line, exit 2,
no record."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmark.results.record import load_record
from tests.smoke.test_cli import assert_metrics_recompute, llm4rec, runs, tiny_args
from tests.smoke.test_p5 import TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = ["align.steps=2", "align.batch_size=4", "align.valid_every=1", "align.valid_users=8", "align.lr=1e-3"]
METHODS = {
    "dpo": [],
    "sdpo": ["align.k=3", "align.negatives=hard"],
    "grpo": ["align.group=3"],
    "pgrm": ["align.group=2", "align.list_length=2"],
}


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """The tiny dataset, a trained P5 parent run and the overrides that made it."""
    from tests.conftest import random_rows, write_atomic
    from tests.unit.test_tallrec import make_tiny_lm

    base = tmp_path_factory.mktemp("align")
    tiny_dir = write_atomic(base / "tiny", "tiny", random_rows(), {f"i{i}": f"Title {i}" for i in range(60)})
    args = [*TINY, "model.indexing=collaborative", *tiny_args(tiny_dir, base)]
    llm4rec("run", *args)
    (run_dir,) = runs(base)
    judge = make_tiny_lm(base / "judge", ["Title 1 2 3 4 5 diverse list movies", "Objective: Recommended"])
    return base, run_dir, args, judge


@pytest.mark.parametrize("method", list(METHODS))
def test_aligned_run_names_its_parent_and_records_its_trace(parent, method, tmp_path):
    base, parent_dir, args, judge = parent
    # pgrm's judge reads titles: the dataset's title column is named (the parent did not need it).
    extra = [f"align.judge.model={judge}", "+data.item_fields.title=title"] if method == "pgrm" else []
    res = tmp_path / "res"
    llm4rec(
        "run",
        *args,
        f"align={method}",
        f"align.parent={parent_dir}",
        *STEPS,
        *METHODS[method],
        *extra,
        f"paths.results={res}",
    )
    (run_dir,) = sorted(p for p in (res / "runs").iterdir() if not p.name.startswith("."))
    rec = assert_metrics_recompute(run_dir)
    parent_rec = load_record(parent_dir)
    assert rec["model"]["label"] == f"p5-collaborative+{method}" and rec["run_id"] != parent_rec["run_id"]
    align = rec["training"]["align"]
    assert align["parent"]["run_id"] == parent_rec["run_id"]
    assert align["parent"]["split_fingerprint"] == rec["split"]["fingerprint"]
    assert [r["step"] for r in align["trace"]] == [0, 1, 2] and align["method"]["method"] == method
    assert all(r["valid_metric"] is not None for r in align["trace"])
    assert set(align["hacking"]) == {"flag", "reward_change", "valid_change", "max_valid_drop"}
    if method == "pgrm":
        assert align["method"]["reward"]["objective"] == "a diverse list that covers many different genres"
    json.dumps(rec)  # plain JSON
    if method == "dpo":
        llm4rec("validate", str(run_dir), "--data", str(base / "tiny"))


def test_bad_alignment_input_is_one_line_exit_2_and_no_record(parent, tmp_path, capsys):
    base, parent_dir, args, _ = parent
    res = tmp_path / "res"
    cases = [
        (["align=dpo", f"align.parent={tmp_path / 'nope'}"], "no run folder"),
        (["align=dpo", f"align.parent={parent_dir}", "split=temporal"], "another split config"),
        (["align=dpo", f"align.parent={parent_dir}", "model.module.num_beams=7"], "another model config"),
        (["align=sdpo", f"align.parent={parent_dir}", "align.k=59"], "align.k=59: more negatives"),
        (["align=pgrm", f"align.parent={parent_dir}"], "align.reward=pgrm needs item titles"),
    ]
    for over, message in cases:
        with pytest.raises(SystemExit) as e:
            llm4rec("run", *args, *over, *STEPS, f"paths.results={res}")
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and message in err and len(err.splitlines()) == 1, err
        assert not (res / "runs").exists() or not runs(tmp_path)
    # A parent without weights (another outputs folder) is refused too.
    moved = tmp_path / "copy"
    shutil.copytree(parent_dir, moved)
    with pytest.raises(SystemExit):
        llm4rec(
            "run",
            *args,
            "align=dpo",
            f"align.parent={moved}",
            *STEPS,
            f"paths.outputs={tmp_path / 'o'}",
            f"paths.results={res}",
        )
    assert "no trained weights" in capsys.readouterr().err


def test_tallrec_parent_is_aligned_with_dpo_over_its_answers(tmp_path):
    from tests.conftest import random_rows, write_atomic
    from tests.unit.test_tallrec import make_tiny_lm, template_words

    tiny_dir = write_atomic(
        tmp_path / "tiny", "tiny", random_rows(), {f"i{i}": f"Title {i}" for i in range(60)}
    )
    lm = make_tiny_lm(tmp_path / "lm", template_words("tallrec") + [f"Title {i}" for i in range(60)])
    args = [
        "model=tallrec",
        f"model.module.backbone={lm}",
        "model.module.shots=16",
        "model.train.max_epochs=1",
        "split=random",
        "eval=labeled",
        *tiny_args(tiny_dir, tmp_path),
    ]
    llm4rec("run", *args)
    (parent_dir,) = runs(tmp_path)
    res = tmp_path / "aligned"
    llm4rec("run", *args, "align=dpo", f"align.parent={parent_dir}", *STEPS, f"paths.results={res}")
    (run_dir,) = sorted(p for p in (res / "runs").iterdir() if not p.name.startswith("."))
    rec = assert_metrics_recompute(run_dir)
    align = rec["training"]["align"]
    assert rec["model"]["label"].endswith("+dpo") and align["parent"]["run_id"] == parent_dir.name
    assert align["method"]["valid_metric"] == "auc" and [r["step"] for r in align["trace"]] == [0, 1, 2]
    with pytest.raises(SystemExit):
        llm4rec("run", *args, "align=grpo", f"align.parent={parent_dir}", *STEPS, f"paths.results={res}")


def test_reproduce_of_an_aligned_run_retrains_its_parent_first(parent, tmp_path, monkeypatch, capsys):
    """`llm4rec reproduce` of an aligned record runs the parent's recorded config, then the aligned
    one, in one fresh outputs folder, and compares both; a parent path from the record is checked
    like every recorded path."""
    base, parent_dir, args, _ = parent
    monkeypatch.chdir(base)
    rel_parent = parent_dir.relative_to(base)
    res = tmp_path / "res"
    llm4rec("run", *args, "align=dpo", f"align.parent={rel_parent}", *STEPS, f"paths.results={res}")
    (run_dir,) = runs(tmp_path)
    capsys.readouterr()
    llm4rec("reproduce", str(run_dir), f"data.path={base / 'tiny'}")
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out
    assert "parent test/ndcg@10" in out and out.count("test/ndcg@10") >= 2  # the parent's and its own

    rec = json.loads((run_dir / "record.json").read_text())
    for hostile in ("/etc", "../outside", "res/../../x"):
        rec["config"]["align"]["parent"] = hostile
        (run_dir / "record.json").write_text(json.dumps(rec))
        with pytest.raises(SystemExit) as e:
            llm4rec("reproduce", str(run_dir), f"data.path={base / 'tiny'}")
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1
        assert f"align.parent={hostile!r}: a path from the record must be relative" in err[0]


def test_alignment_summary_puts_each_aligned_row_next_to_its_parent(parent, tmp_path):
    """The summary's Δ is the aligned run's NDCG@10 minus its parent's (one seed each: the mean of
    per-user values is the metric), from the records alone; the trace's last values are shown."""
    from benchmark.align.summary import main as summary_main

    base, parent_dir, args, _ = parent
    res = tmp_path / "res"
    shutil.copytree(parent_dir, res / "runs" / parent_dir.name)
    llm4rec("run", *args, "align=dpo", f"align.parent={parent_dir}", *STEPS, f"paths.results={res}")
    aligned = next(d for d in (res / "runs").iterdir() if "+dpo" in d.name)
    rec, par = load_record(aligned), load_record(parent_dir)
    out = tmp_path / "summary.md"
    assert summary_main([str(res / "runs"), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    (row,) = [ln for ln in lines if ln.startswith("| p5-collaborative+dpo |")]
    (sft,) = [ln for ln in lines if ln.startswith("| p5-collaborative |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    delta = rec["metrics"]["test/ndcg@10"] - par["metrics"]["test/ndcg@10"]
    assert cells[1] == "1" and cells[2] == f"{rec['metrics']['test/ndcg@10']:.4f}"
    assert cells[3] == f"{delta:+.4f}"
    last = rec["training"]["align"]["trace"][-1]
    assert f"{last['valid_metric']:.4f}" in cells and f"{last['reward']:.3f}" in cells
    assert sft.split("|")[3].strip() == f"{par['metrics']['test/ndcg@10']:.4f}"
    assert summary_main([str(tmp_path / "nope")]) == 2
