"""A run's progress lines (stdout not a terminal, and its log file), the record of reused weights,
and ``ckpt_path=last`` honoured before reuse or refused."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.results.record import load_record
from tests.smoke.test_cli import runs, tiny_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPOCH = re.compile(r"^epoch (\d+)/(\d+)  train/loss=\d+\.\d{4}  valid/ndcg@10=\d\.\d{4}( best)?  \(\d+\.\ds\)$")


def run_to_file(out: Path, *args: str) -> list[str]:
    """``llm4rec run ARGS`` in this process with stdout redirected to the file ``out``."""
    with out.open("w") as f, contextlib.redirect_stdout(f):
        main(["run", *args])
    return out.read_text().splitlines()


def bpr(tiny_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["model=bpr", "model.train.max_epochs=2", "model.train.patience=100", *tiny_args(tiny_dir, tmp_path), *extra]


def test_one_line_per_epoch_on_stdout_and_in_the_run_log(tiny_dir, tmp_path):
    lines = run_to_file(tmp_path / "stdout.txt", *bpr(tiny_dir, tmp_path))
    epochs = [m for m in map(EPOCH.match, lines) if m]
    assert [(m[1], m[2]) for m in epochs] == [("1", "2"), ("2", "2")]
    assert epochs[0][3] == " best"  # the first epoch is the best so far
    (run_dir,) = runs(tmp_path)
    assert lines[-1].startswith(f"[{run_dir.name}] ") and "(train " in lines[-1]
    assert not any(ln.startswith("eval: ") for ln in lines)  # progress lines off (enable_progress_bar=false)...
    (log,) = (tmp_path / "out" / "logs" / run_dir.name).glob("*/run.log")
    logged = [ln.split(" ", 2)[2] for ln in log.read_text().splitlines()]  # without the time stamp
    assert sum(1 for ln in logged if EPOCH.match(ln)) == 2
    assert any(re.match(r"^eval: 40/40 rows in \d+s, \d", ln) for ln in logged)  # ...but in the log file
    assert logged[-1] == lines[-1]
    assert (log.parent / "metrics.csv").exists() is False  # logger=none: only the run log


def test_reused_weights_are_recorded_with_zero_training_seconds(tiny_dir, tmp_path):
    run_to_file(tmp_path / "first.txt", *bpr(tiny_dir, tmp_path, "eval=sampled", "eval.num_negatives=20"))
    (first_dir,) = runs(tmp_path)
    first = load_record(first_dir)
    assert "reused_from" not in first["training"] and first["efficiency"]["train_seconds"] > 0
    lines = run_to_file(tmp_path / "second.txt", *bpr(tiny_dir, tmp_path, "eval=full"))
    (second_dir,) = [d for d in runs(tmp_path) if d != first_dir]
    rec = load_record(second_dir)
    t = rec["training"]
    assert t["seconds"] == 0.0 and rec["efficiency"]["train_seconds"] == 0.0
    assert rec["efficiency"]["original_train_seconds"] == first["efficiency"]["train_seconds"]
    for r in (first, rec):  # evaluation CPU time of the process beside its wall time (shared machines)
        assert 0.0 < r["efficiency"]["eval_cpu_seconds"] and r["efficiency"]["eval_seconds"] > 0.0
    assert round(t["original_seconds"], 3) == first["efficiency"]["train_seconds"]
    assert t["trained_by"] == first["run_id"] and len(t["reused_from"]) == 16
    assert not any(EPOCH.match(ln) for ln in lines)  # nothing trained
    assert f"reused weights models/{t['reused_from']} (trained by {first['run_id']} in " in lines[-1]
    assert "(train 0.0s, reused weights" in lines[-1]


def test_ckpt_path_last_resumes_instead_of_reusing(tiny_dir, tmp_path):
    args = bpr(tiny_dir, tmp_path)
    run_to_file(tmp_path / "first.txt", *args)
    (run_dir,) = runs(tmp_path)
    first = load_record(run_dir)
    # Weights of this training key exist, so a plain rerun would reuse them; ckpt_path=last resumes
    # from the run's last.ckpt (saved after epoch 2 of 2): Lightning restores it and trains no epoch.
    lines = run_to_file(tmp_path / "resumed.txt", *args, "ckpt_path=last")
    rec = load_record(run_dir)
    assert rec["training"]["resumed_from"] == "last" and "reused_from" not in rec["training"]
    assert rec["training"]["epochs"] == 2 and rec["training"]["best_epoch"] == first["training"]["best_epoch"]
    assert not any(EPOCH.match(ln) for ln in lines)
    assert rec["metrics"] == first["metrics"]
    assert "resumed from ckpt_path=last" in lines[-1]


@pytest.mark.parametrize("model", ["bpr", "pop"])
def test_ckpt_path_last_without_a_checkpoint_is_refused(tiny_dir, tmp_path, capsys, model):
    with pytest.raises(SystemExit) as e:
        main(["run", f"model={model}", *tiny_args(tiny_dir, tmp_path), "ckpt_path=last"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ckpt_path" in err, err
    assert runs(tmp_path) == []


def test_ckpt_path_last_is_refused_by_run_itself(tiny_dir, tmp_path):
    """The same refusal when ``run`` is called without the command line's checks."""
    from benchmark.compose import compose
    from benchmark.errors import ConfigError
    from benchmark.run import run

    cfg = compose(bpr(tiny_dir, tmp_path, "ckpt_path=last"))
    with pytest.raises(ConfigError, match=r"^ckpt_path=last: nothing to resume, .*last\.ckpt does not exist"):
        run(cfg)
    cfg = compose(bpr(tiny_dir, tmp_path, f"ckpt_path={tmp_path / 'x.ckpt'}", f"load_weights={tmp_path / 'w.pt'}"))
    with pytest.raises(ConfigError, match="^ckpt_path: cannot resume training and evaluate load_weights"):
        run(cfg)
    assert runs(tmp_path) == []
