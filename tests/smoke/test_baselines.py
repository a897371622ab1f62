"""One-epoch ``llm4rec run`` of every RecBole baseline (in-process) on a tiny atomic dataset
with user and item features; metrics recompute from the written predictions."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.results.record import load_record
from tests.conftest import random_rows, write_atomic
from tests.smoke.test_cli import assert_metrics_recompute, llm4rec, runs, tiny_args
from tests.unit.test_baselines_bridge import write_features

pytest.importorskip("recbole")


@pytest.fixture(scope="module")
def feat_dir(tmp_path_factory):
    d = write_atomic(tmp_path_factory.mktemp("feat") / "tiny", "tiny", random_rows())
    write_features(d, "tiny")
    return d


def one_epoch(feat_dir, tmp_path, *args: str) -> dict:
    llm4rec("run", "model.train.max_epochs=1", *tiny_args(feat_dir, tmp_path), *args)
    (run_dir,) = runs(tmp_path)
    rec = assert_metrics_recompute(run_dir)
    assert rec["model"]["family"] == "recbole" and rec["model"]["params_trainable"] > 0
    assert rec["training"]["epochs"] == 1
    return rec


@pytest.mark.parametrize(
    "model,extra",
    [
        (
            "deepfm",
            ["model.module.user_features=[age,gender]", "model.module.item_features=[genre,year,price]"],
        ),
        ("din", ["model.module.params.mlp_hidden_size=[16,16]"]),
    ],
)
def test_ctr_baselines_labeled(feat_dir, tmp_path, model, extra):
    rec = one_epoch(feat_dir, tmp_path, f"model={model}", "split=random", "eval=labeled", *extra)
    m = rec["metrics"]
    assert rec["eval"]["probabilities"] and 0.0 <= m["test/auc"] <= 1.0 and m["test/logloss"] > 0
    assert rec["training"]["valid_metric"] == "auc"
    assert rec["model"]["label"] == f"{model}-recbole"


@pytest.mark.parametrize("model", ["sasrec", "bpr_recbole", "lightgcn"])
def test_ranking_baselines_full(feat_dir, tmp_path, model):
    rec = one_epoch(feat_dir, tmp_path, f"model={model}", "split=loo", "eval=full")
    assert rec["eval"]["rows"] == 40 and not rec["eval"]["probabilities"]
    assert 0.0 <= rec["metrics"]["test/ndcg@10"] <= 1.0
    assert rec["training"]["valid_metric"] == "ndcg@10"


def test_generic_recbole_model_by_name(feat_dir, tmp_path):
    rec = one_epoch(
        feat_dir,
        tmp_path,
        "model=recbole",
        "model.module.name=GRU4Rec",
        "model.label=gru4rec-recbole",
        "eval=sampled",
        "eval.num_negatives=20",
    )
    assert rec["model"]["label"] == "gru4rec-recbole" and rec["eval"]["negatives_fingerprint"]


@pytest.mark.parametrize("name,needle", [("KGAT", "knowledge graph"), ("Pop", "closed form")])
def test_unsupported_recbole_model_is_one_line_error(feat_dir, tmp_path, capsys, name, needle):
    with pytest.raises(SystemExit) as e:
        llm4rec("run", "model=recbole", f"model.module.name={name}", *tiny_args(feat_dir, tmp_path))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err and needle in err, err
    assert runs(tmp_path) == []


def test_experiment_configs_compose():
    from benchmark.compose import compose

    for model, name in (("deepfm", "DeepFM"), ("din", "DIN")):
        ctr = compose(["experiment=baselines_ctr_ml100k", f"model={model}", "split=random"])
        assert ctr.eval.protocol == "labeled" and ctr.model.module.name == name and ctr.data.name == "ml-100k"
        assert list(ctr.model.module.user_features) == ["age", "gender", "occupation"]
        assert list(ctr.model.module.item_features) == ["release_year", "class"]
    for model, name in (("deepfm", "DeepFM"), ("din", "DIN"), ("sasrec", "SASRec")):
        movie = compose(["experiment=tallrec_movie_baselines", f"model={model}"])
        assert (movie.split.protocol, movie.eval.protocol, movie.model.module.name) == ("tallrec_movie", "labeled", name)
        assert movie.model.module.max_len == movie.split.history == 10
        assert movie.model.module.shots == "all" and movie.model.label == f"{model}-recbole-allshot"
    rank = compose(["experiment=baselines_rank_ml100k"])
    assert (
        rank.model.module.name == "SASRec" and rank.split.protocol == "loo" and rank.eval.protocol == "full"
    )


def test_two_processes_score_a_recbole_model_like_one(feat_dir, tmp_path):
    """DDP (gloo, 2 CPU processes): same test metrics and predictions as one process for the same weights."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    base = ["model=sasrec", *tiny_args(feat_dir, tmp_path)]
    llm4rec("run", *base, "model.train.max_epochs=2")
    weights = next((tmp_path / "out" / "models").glob("*/model.pt"))
    one, two = tmp_path / "one", tmp_path / "two"
    llm4rec("run", *base, f"load_weights={weights}", f"paths.results={one}")
    ddp = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "eval.chunk_users=7"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmark",
            "run",
            *base,
            f"load_weights={weights}",
            *ddp,
            f"paths.results={two}",
        ],
        cwd=root,
        env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (a,) = [load_record(d) for d in (one / "runs").iterdir() if not d.name.startswith(".")]
    (b,) = [load_record(d) for d in (two / "runs").iterdir() if not d.name.startswith(".")]
    assert b["labels"]["processes"] == 2 and a["eval"]["rows"] == b["eval"]["rows"] == 40
    for k, v in a["metrics"].items():
        assert (v is None and b["metrics"][k] is None) or abs(v - b["metrics"][k]) <= 1e-6, k
    assert a["predictions"]["sha256"] == b["predictions"]["sha256"]


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["model=deepfm", "split=random", "eval=labeled", "model.module.params.mlp_hidden_size=[16]"], "auc"),
        (["model=sasrec", "split=loo", "eval=full", "model.module.params.hidden_size=16"], "ndcg@10"),
    ],
)
def test_crosscheck_against_recbole_native(feat_dir, tmp_path, capsys, overrides, key):
    from baselines.crosscheck import main

    out = tmp_path / "cc.json"
    main([*overrides, "model.train.max_epochs=2", *tiny_args(feat_dir, tmp_path), f"out={out}"])
    import json

    result = json.loads(out.read_text())
    row = next(r for r in result["metrics"] if r["metric"] == key)
    assert {"ours", "recbole", "diff", "recbole_weights_our_evaluator", "tolerance"} <= set(row)
    assert row["diff"] == pytest.approx(row["ours"] - row["recbole"])
    assert result["training"]["recbole"]["epochs"] == result["training"]["ours"]["epochs"] == 2
    if key == "auc":  # same rows, same definitions: RecBole's evaluator and ours agree on the same weights
        for r in result["metrics"]:
            assert r["recbole_weights_our_evaluator"] == pytest.approx(r["recbole"], abs=1e-4)
    printed = capsys.readouterr().out
    assert f"crosscheck {result['model']}" in printed and key in printed
    assert not (Path.cwd() / "log_tensorboard").exists()
