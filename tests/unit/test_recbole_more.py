"""The wrapped RecBole baselines of the tuned tables (ItemKNN, EASE, SLIM, GRU4Rec, BERT4Rec,
SASRec-CE; LR, FM, WideDeep, xDeepFM): each trains (or is fitted) and evaluates on a tiny split
through ``llm4rec run`` in-process, and its metrics recompute from the written predictions."""

from __future__ import annotations

import pytest

from tests.conftest import random_rows, write_atomic
from tests.smoke.test_cli import assert_metrics_recompute, llm4rec, runs, tiny_args
from tests.unit.test_baselines_bridge import write_features

pytest.importorskip("recbole")


@pytest.fixture(scope="module")
def feat_dir(tmp_path_factory):
    d = write_atomic(tmp_path_factory.mktemp("feat") / "tiny", "tiny", random_rows())
    write_features(d, "tiny")
    return d


def run_one(feat_dir, tmp_path, *args: str) -> dict:
    llm4rec("run", *tiny_args(feat_dir, tmp_path), *args)
    (run_dir,) = runs(tmp_path)
    return assert_metrics_recompute(run_dir)


@pytest.mark.parametrize("model", ["itemknn", "ease", "slim"])
def test_fitted_models_fit_once_from_train(feat_dir, tmp_path, one_torch_thread, model):
    rec = run_one(feat_dir, tmp_path, f"model={model}", "split=loo", "eval=full")
    assert rec["model"]["label"] == f"{model}-recbole" and rec["model"]["params_trainable"] == 0
    fit = rec["model"]["recbole"]["fit"]
    assert fit["epochs"] == 0 and fit["from"] == "train" and fit["seconds"] >= 0
    assert "epochs" not in rec["training"] and rec["training"]["seconds"] == 0.0  # no pointless epochs
    assert 0.0 <= rec["metrics"]["test/ndcg@10"] <= 1.0 and rec["eval"]["rows"] == 40


def test_fitted_model_reads_train_part_only(feat_dir, one_torch_thread):
    """EASE's interaction matrix is the train part: no valid/test interaction is in it."""
    from baselines.recbole_model import RecBoleModel
    from benchmark.config import DataConfig, SplitConfig
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split

    data = load_dataset(DataConfig(name="tiny", source="atomic", path=str(feat_dir)))
    split = build_split(data, SplitConfig(protocol="loo"))
    model = RecBoleModel(split, data, "EASE", {"reg_weight": 10.0}, user_features=[], item_features=[])
    x = model.recbole.interaction_matrix.tocoo()
    pairs = zip(split.train["user"], split.train["item"], strict=True)
    seen = {(int(model._user_rb[u]), int(model._item_rb[i])) for u, i in pairs}
    assert set(zip(x.row.tolist(), x.col.tolist(), strict=True)) == seen
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("model", ["gru4rec", "bert4rec", "sasrec_ce"])
def test_sequential_models_train_and_rank(feat_dir, tmp_path, one_torch_thread, model):
    rec = run_one(feat_dir, tmp_path, f"model={model}", "model.train.max_epochs=1", "split=loo", "eval=full")
    assert rec["model"]["params_trainable"] > 0 and rec["training"]["epochs"] == 1
    assert 0.0 <= rec["metrics"]["test/ndcg@10"] <= 1.0


@pytest.mark.parametrize("model", ["lr", "fm", "widedeep", "xdeepfm"])
def test_ctr_models_train_and_score(feat_dir, tmp_path, one_torch_thread, model):
    rec = run_one(
        feat_dir,
        tmp_path,
        f"model={model}",
        "model.train.max_epochs=1",
        "split=random",
        "eval=labeled",
        "model.module.user_features=[age,gender]",
        "model.module.item_features=[genre,year,price]",
    )
    assert rec["eval"]["probabilities"] and rec["training"]["valid_metric"] == "auc"
    assert 0.0 <= rec["metrics"]["test/auc"] <= 1.0 and rec["metrics"]["test/logloss"] > 0
