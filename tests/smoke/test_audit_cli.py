"""``llm4rec audit`` end to end (in-process): configured splits, external files, exit statuses."""

from __future__ import annotations

import json

import pytest

from benchmark.cli import main

DATA = ("data=atomic", "data.name=tiny")


def audit(*args: str) -> int:
    with pytest.raises(SystemExit) as e:
        main(["audit", *args])
    return int(e.value.code or 0)


def test_a_configured_split_and_its_indexes(tiny_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = audit(*DATA, f"data.path={tiny_dir}", "audit.indexes=[random,sequential]", "--out", str(out))
    text = capsys.readouterr().out
    assert code == 0 and "PASSED" in text and f"report written to {out}" in text
    report = json.loads(out.read_text())
    assert report["passed"] and set(report["sections"]["indexes"]) == {"random", "sequential"}
    assert report["audited"]["protocol"] == "loo" and len(report["audited"]["fingerprint"]) == 64
    assert all(f["severity"] in ("info", "warning") for f in report["findings"])
    # a threshold exceeded: the report is still printed and written, the exit status is 1
    code = audit(*DATA, f"data.path={tiny_dir}", "audit.fail.train_after_test=0", f"--out={out}")
    assert code == 1 and "FAILED: 1 errors" in capsys.readouterr().out
    assert json.loads(out.read_text())["passed"] is False


def test_an_exported_split_audits_like_the_configured_one(tiny_dir, tmp_path, capsys):
    args = [*DATA, f"data.path={tiny_dir}", "split=temporal", "eval=sampled", "eval.num_negatives=20"]
    main(["export-split", *args, f"out={tmp_path / 'export'}"])
    assert audit(*args, "--out", str(tmp_path / "a.json")) == 0
    assert audit("--files", str(tmp_path / "export"), "--out", str(tmp_path / "b.json")) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["sections"] == b["sections"] and a["sections"]["sampling"]["negatives_interacted"] == 0.0
    assert b["audited"]["layout"] == "export" and b["audited"]["fingerprint"] == a["audited"]["fingerprint"]


def test_p5_files_with_ids_numbered_over_whole_sequences_fail(tmp_path, capsys):
    folder = tmp_path / "p5"
    folder.mkdir()
    # ids as P5's original code assigned them: by first appearance over the whole sequences
    (folder / "sequential_data.txt").write_text("1 1 2 3 4 5\n2 6 7 8 9\n3 2 10 11 12\n4 13 1 14 15\n")
    (folder / "item_collaborative_indexing.txt").write_text(
        "\n".join(f"{i} <CI{i % 3}><CI{i}>" for i in range(1, 16)) + "\n"
    )
    index = tmp_path / "extra_index.txt"
    index.write_text("\n".join(f"{i}\t{100 - i}" for i in range(1, 16)) + "\n")
    code = audit("--files", str(folder), "--index", str(index), "--out", str(tmp_path / "r.json"))
    text = capsys.readouterr().out
    assert code == 1
    assert "ERROR   index:file item ids" in text and "consecutive_test_ids=1" in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["sections"]["indexes"]) == {
        "file item ids",
        "item_collaborative_indexing.txt",
        "extra_index.txt",
    }
    assert report["sections"]["timeline"]["applicable"] is False


@pytest.mark.parametrize(
    "args",
    [
        ["split=nope"],
        ["--files", "{missing}"],
        ["--files", "{bad}"],
        ["--files", "{bad}", "split=loo"],
        ["--layout", "p5"],
        ["audit.fail.train_after_test=-1"],
        ["audit.indexes=[sequentail]"],
        ["--index", "{missing}"],
        ["--frobnicate"],
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tiny_dir, tmp_path, capsys, args):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.tsv").write_text("user\titem\n1\t2\n")
    (bad / "test.tsv").write_text("user\titem\n1\t2\t3\n")
    out = tmp_path / "never.json"
    args = [a.format(missing=tmp_path / "missing", bad=bad) for a in args]
    config = [] if args[0] == "--files" else [*DATA, f"data.path={tiny_dir}"]
    assert audit(*config, *args, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm4rec: error: ") and err.count("\n") == 1, err
    assert not out.exists()


def test_help():
    with pytest.raises(SystemExit) as e:
        main(["audit", "--help"])
    assert e.value.code == 0


def test_a_run_record_carries_its_audit_summary_and_validate_checks_it(tiny_dir, tmp_path):
    from benchmark.results.submission import validate
    from tests.smoke.test_cli import runs, tiny_args

    main(["run", "model=pop", *tiny_args(tiny_dir, tmp_path)])
    (run_dir,) = runs(tmp_path)
    record_file = run_dir / "record.json"
    record = json.loads(record_file.read_text())
    summary = record["audit"]
    assert summary["version"] == 1 and "index" not in summary  # pop has no item index
    assert summary["split"]["test_rows_in_train"] == 0.0 and 0 < summary["split"]["train_after_test"] < 1
    report = validate(run_dir, data_path=tiny_dir)
    assert report.ok and any(c.name == "audit" and c.ok for c in report.checks), report.summary()
    record["audit"]["split"]["train_after_test"] = 0.0  # claims a leak-free timeline
    record_file.write_text(json.dumps(record))
    report = validate(run_dir, data_path=tiny_dir)
    assert not report.ok and report.failed.name == "audit" and "train_after_test" in report.verdict()
    del record["audit"]  # a record made before summaries: not checked
    record_file.write_text(json.dumps(record))
    report = validate(run_dir, data_path=tiny_dir)
    assert report.ok and not any(c.name == "audit" for c in report.checks)
