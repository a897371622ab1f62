"""The model contract (benchmark.models.contract): what a run needs of a model, checked when it is built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.utils import get_class
from torch import nn

from benchmark.errors import ConfigError
from benchmark.models.bpr import BPR
from benchmark.models.contract import (
    Recommender,
    check_model,
    has_own_train_data,
    missing,
    outputs_probabilities,
    prediction_facts,
    ranks_rows,
    reads_train,
)
from benchmark.models.pop import Pop

MODEL_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"


class ScoresOnly(nn.Module):
    def score(self, users: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(users), 5)


class RanksOnly(nn.Module):
    def rank_rows(self, rows, row_ids, k, device) -> np.ndarray:
        return np.zeros((len(row_ids), k), dtype=np.int64)


def test_a_missing_method_is_a_one_line_error_naming_model_and_method() -> None:
    with pytest.raises(ConfigError) as e:
        check_model(ScoresOnly(), "foo", "labeled")
    assert str(e.value) == "model foo: missing score_pairs(users, items) required by eval=labeled"
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^model foo: missing score_pairs\(users, items\) required by eval=sampled$"):
        check_model(ScoresOnly(), "foo", "sampled")
    with pytest.raises(ConfigError, match=r"^model bar: missing score\(users\) or rank_rows\(rows, row_ids, k, device\)"):
        check_model(nn.Linear(2, 2), "bar", "full")


def test_training_needs_a_loss_and_the_validation_method() -> None:
    check_model(ScoresOnly(), "foo", "full")  # evaluation alone: enough
    with pytest.raises(ConfigError, match=r"^model foo: missing loss\(batch\) required by training"):
        check_model(ScoresOnly(), "foo", "full", trains=True)
    assert missing(Pop, "sampled", trains=True) == [
        "loss(batch) required by training (model.train is set and the model has trainable parameters)"
    ]

    class PairsOnly(nn.Module):  # eval=sampled validates with the full ranking: score is needed too
        def score_pairs(self, users, items):
            return torch.zeros(items.shape)

        def loss(self, batch):
            return torch.zeros(())

    check_model(PairsOnly(), "p", "sampled")
    with pytest.raises(ConfigError, match=r"^model p: missing score\(users\) .* required by validation during training$"):
        check_model(PairsOnly(), "p", "sampled", trains=True)
    check_model(BPR(3, 5), "bpr", "sampled", trains=True)
    check_model(BPR(3, 5), "bpr", "labeled", trains=True)


def test_generative_models_need_no_catalogue_scores_for_full_ranking() -> None:
    check_model(RanksOnly(), "gen", "full")
    assert ranks_rows(RanksOnly()) and not ranks_rows(ScoresOnly())


def test_unknown_protocol_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown protocol"):
        check_model(BPR(3, 5), "bpr", "pairwise")


def test_optional_capabilities() -> None:
    pop, bpr = Pop(3, 5), BPR(3, 5)
    assert reads_train(pop) and not reads_train(bpr)
    assert not has_own_train_data(pop) and not has_own_train_data(bpr)
    assert prediction_facts(pop) == {} and not outputs_probabilities(pop)

    class Facts(ScoresOnly):
        outputs_probabilities = True

        def prediction_facts(self) -> dict:
            return {"validity": 1.0}

    assert prediction_facts(Facts()) == {"validity": 1.0} and outputs_probabilities(Facts())


def shipped_models() -> list[tuple[str, type, bool]]:
    """(config name, class, whether it trains) of every model config in configs/model."""
    out = []
    for path in sorted(MODEL_CONFIGS.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text()) or {}
        target = (cfg.get("module") or {}).get("_target_")
        if target:
            out.append((path.stem, get_class(target), bool(cfg.get("train"))))
    return out


def test_every_shipped_model_satisfies_the_contract() -> None:
    models = shipped_models()
    classes = {cls.__name__ for _, cls, _ in models}
    assert {"Pop", "BPR", "P5", "TallRec", "LLMRerank", "RecBoleModel"} <= classes
    for name, cls, trains in models:
        # a model may answer only some protocols (llara: candidate lists); the others are refused
        answers = getattr(cls, "eval_protocols", None) or ("full", "sampled", "labeled")
        for protocol in ("full", "sampled", "labeled", "candidates"):
            if protocol in answers:
                assert not missing(cls, protocol), (name, protocol)
                assert not trains or not missing(cls, protocol, trains=True), (name, protocol)
            elif getattr(cls, "eval_protocols", None):
                assert missing(cls, protocol), (name, protocol)
        assert all(callable(getattr(cls, m, None)) for m in ("score", "score_pairs")), name
    assert isinstance(Pop(3, 5), Recommender) and isinstance(BPR(3, 5), Recommender)
