"""End-to-end runs through the ``llm4rec`` command (in-process), and bad-input handling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.results.item_facts import facts_for_config
from benchmark.results.recompute import recompute_metrics
from benchmark.results.record import load_record, read_predictions


def llm4rec(*args: str) -> None:
    main(list(args))


def tiny_args(tiny_dir: Path, tmp_path: Path) -> list[str]:
    return [
        "data=atomic",
        f"data.path={tiny_dir}",
        "data.name=tiny",
        "logger=none",
        f"paths.results={tmp_path / 'res'}",
        f"paths.outputs={tmp_path / 'out'}",
        "trainer.enable_progress_bar=false",
    ]


def runs(tmp_path: Path) -> list[Path]:
    d = tmp_path / "res" / "runs"
    return sorted(p for p in d.iterdir() if not p.name.startswith(".")) if d.exists() else []


def assert_metrics_recompute(run_dir: Path) -> dict:
    rec = load_record(run_dir)
    facts = None  # ranking runs record beyond-accuracy metrics: recompute them from the train part's facts
    if rec["eval"]["protocol"] != "labeled":
        facts = facts_for_config(rec["config"]["data"], rec["config"]["split"])[2]
    again = recompute_metrics(rec, read_predictions(run_dir / rec["predictions"]["file"]), facts)
    for k, v in rec["metrics"].items():
        if v is None:
            assert math.isnan(again[k])
        else:
            assert again[k] == pytest.approx(v, abs=1e-9), k
    assert set(again) == set(rec["metrics"])
    return rec


def test_pop_run_writes_a_complete_record(tiny_dir, tmp_path, capsys):
    llm4rec("run", "model=pop", *tiny_args(tiny_dir, tmp_path))
    (run_dir,) = runs(tmp_path)
    rec = assert_metrics_recompute(run_dir)
    assert rec["model"]["name"] == "pop" and rec["split"]["protocol"] == "loo"
    assert rec["eval"]["rows"] == 40 and len(rec["split"]["fingerprint"]) == 64
    assert "test/cold_item/ndcg@10" in rec["metrics"]
    assert rec["environment"]["packages"]["torch"]
    assert rec["config"]["seed"] == 0
    assert rec["run_id"] in capsys.readouterr().out  # one-line summary


def test_bpr_run_is_deterministic(tiny_dir, tmp_path):
    args = [
        "model=bpr",
        "model.train.max_epochs=3",
        "eval=sampled",
        "eval.num_negatives=20",
        *tiny_args(tiny_dir, tmp_path),
    ]
    llm4rec("run", *args)
    (run_dir,) = runs(tmp_path)
    first = assert_metrics_recompute(run_dir)
    assert first["training"]["epochs"] == 3 and first["model"]["params_trainable"] > 0
    assert first["eval"]["negatives_fingerprint"]
    llm4rec("run", *args)
    second = load_record(run_dir)
    assert second["metrics"] == first["metrics"]
    assert second["predictions"]["sha256"] == first["predictions"]["sha256"]
    assert second["split"]["fingerprint"] == first["split"]["fingerprint"]


def test_labeled_protocol_and_multirun_leaderboard(tiny_dir, tmp_path, capsys):
    llm4rec(
        "run", "-m", "model=pop", "split=random", "eval=labeled", "seed=1,2", *tiny_args(tiny_dir, tmp_path)
    )
    found = runs(tmp_path)
    assert len(found) == 2
    for d in found:
        rec = assert_metrics_recompute(d)
        assert 0.0 <= rec["metrics"]["test/auc"] <= 1.0
    llm4rec("leaderboard", "--runs", str(tmp_path / "res" / "runs"), "--out", str(tmp_path / "lb"))
    csv = (tmp_path / "lb" / "leaderboard.csv").read_text().splitlines()
    assert len(csv) == 2 and ",2," in csv[1]  # one row, two seeds
    assert "| pop | 2 | cpu |" in (tmp_path / "lb" / "leaderboard.md").read_text()


def test_export_split_matches_the_run(tiny_dir, tmp_path):
    llm4rec("run", "model=pop", *tiny_args(tiny_dir, tmp_path))
    (run_dir,) = runs(tmp_path)
    out = tmp_path / "export"
    llm4rec(
        "export-split", *tiny_args(tiny_dir, tmp_path), "eval=sampled", "eval.num_negatives=20", f"out={out}"
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["fingerprint"] == load_record(run_dir)["split"]["fingerprint"]
    test_lines = (out / "test.tsv").read_text().splitlines()
    assert test_lines[0] == "user\titem\trating\ttimestamp" and len(test_lines) == 41
    negatives = (out / "test_negatives.tsv").read_text().splitlines()
    assert len(negatives) == 41 and all(len(n.split("\t")[1].split()) == 20 for n in negatives[1:])
    assert meta["negatives"]["num_negatives"] == 20


@pytest.mark.parametrize(
    "override,needle",
    [
        ("foo=1", "foo"),
        ("model=nope", "model/nope"),
        ("eval.ks=[0,10]", "eval.ks"),
        ("eval.protocl=full", "protocl"),
        ("split.ratios=[0.5,0.5,0.5]", "split.ratios"),
        ("data.path=/does/not/exist", "/does/not/exist"),
        ("model.shotz=16", "model.shotz"),
    ],
)
def test_bad_input_is_one_line_nonzero_and_writes_nothing(tiny_dir, tmp_path, capsys, override, needle):
    with pytest.raises(SystemExit) as e:
        llm4rec("run", "model=pop", *tiny_args(tiny_dir, tmp_path), override)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert runs(tmp_path) == []


def test_model_shorthand_reaches_the_module_and_keeps_the_run_id():
    from benchmark.compose import compose, expand_overrides
    from benchmark.results.identity import config_hashes

    short = compose(["model=tallrec", "model.shots=64", "model.lora.r=4", "seed=0"])
    long = compose(["model=tallrec", "model.module.shots=64", "model.module.lora.r=4", "seed=0"])
    assert short.model.module.shots == 64 and short.model.module.lora.r == 4 and "shots" not in short.model
    assert config_hashes(short) == config_hashes(long)
    # Keys the model config has at its top level stay there.
    kept = ["model=tallrec", "model.label=x", "model.train.max_epochs=2", "model.prompt.name=p"]
    assert expand_overrides(kept) == kept
    # A sweep: every model it picks keeps `shots` in its module (DeepFM, DIN, SASRec here).
    assert expand_overrides(["experiment=tallrec_movie_baselines", "model.shots=16,all"]) == [
        "experiment=tallrec_movie_baselines",
        "model.module.shots=16,all",
    ]
    # One of the swept models has no such module key: left for Hydra to reject.
    assert expand_overrides(["model=pop,tallrec", "model.shots=16"]) == ["model=pop,tallrec", "model.shots=16"]


def test_cache_location_is_not_part_of_the_run_id(monkeypatch):
    from benchmark.compose import compose
    from benchmark.results.identity import config_hashes

    base = config_hashes(compose(["model=tallrec", "split=tallrec_movie", "eval=labeled", "seed=1"]))
    monkeypatch.setenv("LLM4REC_CACHE", "/elsewhere/llm4rec")
    moved = compose(["model=tallrec", "split=tallrec_movie", "eval=labeled", "seed=1"])
    assert moved.data.cache_dir == "/elsewhere/llm4rec"
    assert config_hashes(moved) == base
    assert config_hashes(compose(["model=tallrec", "split=tallrec_movie", "eval=labeled", "seed=2"]))[0] != base[0]


def test_empty_split_is_an_error(tmp_path, capsys):
    from tests.conftest import write_atomic

    d = write_atomic(tmp_path / "one", "one", [("a", "x", 5, 1), ("b", "y", 5, 2)])
    with pytest.raises(SystemExit):
        # Two items: cut-offs within the catalogue, so the split itself is what fails.
        llm4rec("run", "model=pop", *tiny_args(d, tmp_path), "data.name=one", "eval.ks=[1]", "eval.valid_metric=ndcg@1")
    assert "train part is empty" in capsys.readouterr().err
    assert runs(tmp_path) == []


def test_quickstart_experiment_on_bundled_movielens(tmp_path):
    # The make-run job, restricted to its pop row (the rows that train: tests/smoke/test_quickstart.py).
    llm4rec(
        "run",
        "-m",
        "experiment=quickstart",
        "quickstart=pop",
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"paths.results={tmp_path / 'res'}",
        f"paths.outputs={tmp_path / 'out'}",
    )
    (run_dir,) = runs(tmp_path)
    rec = assert_metrics_recompute(run_dir)
    assert rec["model"]["name"] == "pop" and rec["eval"]["protocol"] == "full"
    assert rec["dataset"]["stats"]["interactions"] == 100_000
    # Leave-one-out: one test row per scored user (all 943, or the configured subset).
    assert rec["eval"]["rows"] == (rec["config"]["eval"].get("test_users") or 943)


def test_trained_weights_are_reused_across_eval_protocols(tiny_dir, tmp_path):
    base = ["model=bpr", "model.train.max_epochs=2", *tiny_args(tiny_dir, tmp_path)]
    llm4rec("run", *base, "eval=sampled", "eval.num_negatives=20")
    llm4rec("run", *base, "eval=full")
    full = [load_record(d) for d in runs(tmp_path) if "-full-" in d.name][0]
    assert "reused_from" in full["training"]
    llm4rec("run", *base, "eval=full", "reuse_trained=false", f"paths.results={tmp_path / 'fresh'}")
    fresh = load_record(next((tmp_path / "fresh" / "runs").iterdir()))
    assert "reused_from" not in fresh["training"]
    assert fresh["metrics"] == full["metrics"] and fresh["config_hash"] == full["config_hash"]


def test_labeled_protocol_validates_with_auc(tiny_dir, tmp_path):
    llm4rec("run", "model=bpr", "model.train.max_epochs=2", "split=random", "eval=labeled", *tiny_args(tiny_dir, tmp_path))
    (run_dir,) = runs(tmp_path)
    rec = assert_metrics_recompute(run_dir)
    assert rec["training"]["valid_metric"] == "auc" and 0.0 <= rec["training"]["best_valid"] <= 1.0


def test_skip_existing_continues_a_sweep(tiny_dir, tmp_path, capsys):
    llm4rec("run", "model=pop", *tiny_args(tiny_dir, tmp_path))
    (run_dir,) = runs(tmp_path)
    before = (run_dir / "record.json").read_text()
    capsys.readouterr()
    llm4rec("run", "-m", "model=pop", "seed=0,1", "skip_existing=true", *tiny_args(tiny_dir, tmp_path))
    out = capsys.readouterr().out
    assert "skipped (skip_existing=true)" in out and len(runs(tmp_path)) == 2
    assert (run_dir / "record.json").read_text() == before  # the existing record was not rewritten


# --- help, version, unknown commands, and `run --cfg job` (nothing runs, nothing is written) ---


def exits(code: int, *args: str) -> None:
    with pytest.raises(SystemExit) as e:
        llm4rec(*args)
    assert e.value.code == code


def succeeds(*args: str) -> None:
    """Hydra ends some commands (--hydra-help) with exit status 0, others by returning."""
    try:
        llm4rec(*args)
    except SystemExit as e:
        assert e.code in (0, None)


def test_top_level_help_version_and_unknown_command(capsys):
    from importlib.metadata import version

    from benchmark.cli import COMMANDS

    for flag in ("--help", "-h"):
        exits(0, flag)
        out = capsys.readouterr().out
        assert out.startswith("usage: llm4rec COMMAND")
        assert all(f"\n  {name} " in out for name in COMMANDS), out
    exits(0, "--version")
    assert capsys.readouterr().out.strip() == f"llm4rec-bench {version('llm4rec-bench')}"
    exits(2, "foo")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("llm4rec: error: unknown command 'foo'")


@pytest.mark.parametrize("command", ["run", "export-split", "leaderboard", "data", "submit", "validate", "reproduce", "slurm-scripts", "crosscheck"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_has_help(capsys, command, flag):
    exits(0, command, flag)
    out = capsys.readouterr()
    assert out.out.startswith(f"usage: llm4rec {command}"), out.out
    assert out.err == "" and "no such" not in out.out


def test_run_help_lists_every_config_group_and_option(capsys):
    from benchmark.compose import CONFIG_DIR
    from benchmark.help import describe

    exits(0, "run", "--help")
    out = capsys.readouterr().out
    lines = out.splitlines()
    groups = sorted({p.parent.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*/*.yaml")})
    assert {"data", "split", "eval", "model", "trainer", "logger", "experiment", "adapter/encoder"} <= set(groups)
    for group in groups:
        assert f"  {group}" in lines, group
        for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
            text = describe(path)
            assert text, f"{path} has no leading description comment"
            row = [ln for ln in lines if ln[5:].split(" ")[0] == path.stem]
            assert row and any(text.rstrip("…")[:30] in ln for ln in row), (path, row)
    assert "   * ml-100k " in out and "   * bpr " in out  # the root config's defaults are marked
    for key in ("seed", "reuse_trained", "skip_existing", "load_weights", "ckpt_path"):
        assert any(ln.startswith(f"  {key} ") and len(ln.split()) > 2 for ln in lines), key


def test_run_help_is_generated_from_the_config_folder(tmp_path):
    from benchmark.help import run_help

    (tmp_path / "widget" / "deep").mkdir(parents=True)
    (tmp_path / "config.yaml").write_text("defaults:\n  - widget: small\n  - _self_\n# The answer. Not this.\nanswer: 42\n")
    (tmp_path / "widget" / "small.yaml").write_text("# @package _global_\n# A small widget, e.g. a test\n# double. Ignored.\nx: 1\n")
    (tmp_path / "widget" / "big.yaml").write_text("x: 2  # no leading comment\n")
    (tmp_path / "widget" / "deep" / "one.yaml").write_text("# Nested option.\n")
    text = run_help(tmp_path)
    assert "\n  widget\n     big\n   * small  A small widget, e.g. a test double.\n" in text, text
    assert "\n  widget/deep\n     one    Nested option.\n" in text  # options aligned across groups
    assert "  answer  The answer.\n" in text and "Not this" not in text and "Ignored" not in text


def test_run_short_help_and_hydra_flags_run_nothing(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exits(0, "run", "-h")
    assert "config groups" in capsys.readouterr().out
    succeeds("run", "hydra/help")
    assert "Hydra (1." in capsys.readouterr().out
    succeeds("run", "--info", "defaults", "model=pop", *tiny_args(tiny_dir, tmp_path))
    assert "Defaults List" in capsys.readouterr().out
    exits(2, "run", "--bogus")
    assert capsys.readouterr().err.strip() == "llm4rec: error: run: unknown option --bogus (see llm4rec run --help)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_cfg_job_prints_config_run_id_and_existing_outputs_and_writes_nothing(tiny_dir, tmp_path, capsys, monkeypatch):
    import yaml

    from benchmark.compose import compose
    from benchmark.results.identity import config_hashes, run_id_for, training_key

    monkeypatch.chdir(tmp_path)
    args = ["model=bpr", *tiny_args(tiny_dir, tmp_path)]
    llm4rec("run", "--cfg", "job", *args)
    out = capsys.readouterr().out
    cfg = compose(args)
    run_id = run_id_for(cfg, config_hashes(cfg)[0])
    shown = yaml.safe_load(out)  # the facts are YAML comments: the output is the config itself
    assert shown["model"]["name"] == "bpr" and shown["data"]["path"] == str(tiny_dir) and shown["seed"] == 0
    assert f"# run id: {run_id}\n" in out
    assert "# record: none yet" in out and "this run trains" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no res/, out/, outputs/ or hydra folder

    # Existing outputs are reported: a record, and trained weights with their training facts.
    record = tmp_path / "res" / "runs" / run_id / "record.json"
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    weights = tmp_path / "out" / "models" / training_key(cfg)[:16]
    weights.mkdir(parents=True)
    (weights / "training.json").write_text("{}")
    llm4rec("run", "-c", "job", *args)
    out = capsys.readouterr().out
    assert f"# record: {record} exists; rewritten by this run" in out
    assert f"# trained weights: {weights} exist; reused (no training)" in out

    # A sweep: one config and run id per job.
    llm4rec("run", "-m", "--cfg", "job", "model=pop", "seed=1,2", *tiny_args(tiny_dir, tmp_path))
    out = capsys.readouterr().out
    ids = [ln.split(": ", 1)[1] for ln in out.splitlines() if ln.startswith("# run id: ")]
    assert len(ids) == 2 and ids[0].endswith(ids[0][-8:]) and "-s1-" in ids[0] and "-s2-" in ids[1]
    assert "trains nothing" in out
    assert sorted(p.name for p in (tmp_path / "res" / "runs").iterdir()) == [run_id]
