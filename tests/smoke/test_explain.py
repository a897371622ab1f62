"""``llm4rec explain`` end to end: a first-stage run, its top-1 items explained, stored, and checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.cli import main
from tests.smoke.test_cli import runs, tiny_args


def explain_args(tiny_dir: Path, tmp_path: Path, first_stage: Path) -> list[str]:
    return [
        f'run_overrides=["data=atomic","data.path={tiny_dir}","data.name=tiny"]',
        f"pairs.first_stage={first_stage}",
        "users=8",
        "judge=none",
        f"out={tmp_path / 'explain'}",
    ]


def test_rouge_leaves_logging_as_it_was():
    """rouge-score logs through absl when its scorer is built; absl's handler must not keep (and later
    close, when Hydra reconfigures logging) a captured stderr: the next test runs Hydra under capsys."""
    import logging
    import sys

    from absl import logging as absl_logging

    from benchmark.eval.text_metrics import rouge_rows

    before = list(logging.root.handlers)
    assert rouge_rows(["a b"], ["a c"])[0]["rouge1"] == 0.5
    assert logging.root.handlers == before
    assert absl_logging.get_absl_handler().python_handler.stream is sys.__stderr__


def test_explain_a_first_stage_run_then_check_it(tiny_dir, tmp_path, capsys):
    main(["run", "model=pop", *tiny_args(tiny_dir, tmp_path)])
    (first,) = runs(tmp_path)
    capsys.readouterr()
    main(["explain", *explain_args(tiny_dir, tmp_path, first)])
    out = capsys.readouterr().out
    assert "explain/grounded\t1.0" in out and "explain/bleu4\tnull" in out
    (run_dir,) = sorted((tmp_path / "explain").iterdir())
    assert run_dir.name.startswith("tiny-loo-explain-template-pop-u8-s0-")
    record = json.loads((run_dir / "record.json").read_text())
    assert record["pairs"]["first_stage"]["run_id"] == first.name and record["pairs"]["users"] == 8
    rows = [json.loads(x) for x in (run_dir / "explanations.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["explanation"].startswith("Because you liked Title ") for r in rows)

    main(["explain", "--check", str(run_dir), "data=atomic", f"data.path={tiny_dir}", "data.name=tiny"])
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("PASS") and "checks  recorded=8  recomputed=8  ok" in out

    rec = json.loads((run_dir / "record.json").read_text())
    rec["metrics"]["explain/length"] = 99.0
    (run_dir / "record.json").write_text(json.dumps(rec))
    with pytest.raises(SystemExit) as e:
        main(["explain", "--check", str(run_dir)])
    assert e.value.code == 1 and "explain/length  recorded=99.0" in capsys.readouterr().out


def test_bad_explain_input_is_one_line_and_exit_2(tiny_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["explain", *explain_args(tiny_dir, tmp_path, tmp_path / "missing")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "pairs.first_stage" in err
    with pytest.raises(SystemExit) as e:
        main(["explain", "generator=nope"])
    assert e.value.code == 2 and "generator" in capsys.readouterr().err
    assert not (tmp_path / "explain").exists()
    with pytest.raises(SystemExit) as e:
        main(["explain", "--help"])
    assert e.value.code == 0 and "llm4rec explain" in capsys.readouterr().out
