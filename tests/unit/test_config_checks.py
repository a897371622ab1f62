"""Every config value is checked before the first job starts: one line ``<key>: <reason>``, exit 2,
nothing written (benchmark.checks, benchmark.config.TrainConfig, ``llm4rec run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from benchmark.checks import catalogue_size, check_arguments, check_paths, last_checkpoint, matches
from benchmark.cli import main
from benchmark.compose import compose
from benchmark.config import TrainConfig, to_object
from benchmark.errors import ConfigError
from tests.conftest import write_atomic

# Five items (a..e), three users: the catalogue under full ranking has exactly 5 candidates.
ROWS = [
    ("u1", "a", 5, 1), ("u1", "b", 4, 2), ("u1", "c", 3, 3), ("u1", "d", 5, 4),
    ("u2", "b", 2, 1), ("u2", "c", 5, 2), ("u2", "e", 4, 3), ("u2", "a", 1, 4),
    ("u3", "e", 3, 1), ("u3", "d", 4, 2), ("u3", "a", 5, 3), ("u3", "c", 2, 4),
]  # fmt: skip


@pytest.fixture
def five(tmp_path: Path) -> Path:
    return write_atomic(tmp_path / "five", "five", ROWS)


def args(data_dir: Path, tmp_path: Path) -> list[str]:
    return [
        "data=atomic",
        f"data.path={data_dir}",
        "data.name=five",
        "logger=none",
        f"paths.results={tmp_path / 'res'}",
        f"paths.outputs={tmp_path / 'out'}",
        "trainer.enable_progress_bar=false",
    ]


def refused(capsys, *argv: str) -> str:
    """Run ``llm4rec`` expecting exit 2; return its one stderr line."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("llm4rec: error: ")
    return err[0]


@pytest.mark.parametrize(
    "override,key,reason",
    [
        (["seed=abc"], "seed", "integer >= 0, got 'abc'"),
        (["seed=-1"], "seed", "integer >= 0, got -1"),
        (["seed=1.5"], "seed", "integer >= 0, got 1.5"),
        (["eval.ks=[100000]"], "eval.ks", "100000 exceeds the catalogue of five (5 items)"),
        (["eval.ks=[6]"], "eval.ks", "6 exceeds the catalogue of five (5 items)"),
        (["eval=sampled", "eval.ks=[200]"], "eval.ks", "200 exceeds the 101 candidates"),
        (["eval=sampled", "eval.num_negatives=3", "eval.ks=[5]"], "eval.ks", "5 exceeds the 4 candidates"),
        (["model=bpr", "model.dim=-4"], "model.module.dim", "must be >= 1, got -4"),
        (["model=bpr", "model.dim=0"], "model.module.dim", "must be >= 1, got 0"),
        (["model=bpr", "model.dim=1.5"], "model.module.dim", "expected int, got 1.5"),
        (["model=bpr", "model.reg=abc"], "model.module.reg", "expected float, got 'abc'"),
        (["model=tallrec", "model.shots=abc"], "model.module.shots", "expected int | 'all', got 'abc'"),
        (["model=sasrec", "model.module.max_len=0"], "model.module.max_len", "must be >= 1, got 0"),
        (["model=bpr", "model.train.optimizer.lr=abc"], "model.train.optimizer.lr", "number > 0, got 'abc'"),
        (["model=bpr", "model.train.optimizer.lr=0"], "model.train.optimizer.lr", "number > 0, got 0"),
        (["model=bpr", "+model.train.optimizer.betas=[0.9]"], "model.train.optimizer.betas", "expected tuple"),
        (["model=bpr", "+model.train.optimizer.momentum=0.9"], "model.train.optimizer.momentum", "not an argument of Adam"),
        (["model=bpr", "model.train.max_epochs=0"], "model.train.max_epochs", "integer >= 1, got 0"),
        (["model=bpr", "model.train.batch_size=-8"], "model.train.batch_size", "integer >= 1, got -8"),
        (["model=bpr", "model.train.patience=x"], "model.train.patience", "integer >= 0, got 'x'"),
        (["model=bpr", "+model.train.epochs=3"], "model.train", "unknown key(s) ['epochs']"),
        (["+trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches", "must be >= 1, got 0"),
        (["trainer.deterministic=maybe"], "trainer.deterministic", "got 'maybe'"),
        (["model=bpr", "ckpt_path=/nope"], "ckpt_path", "no such file: /nope"),
        (["model=bpr", "ckpt_path=last"], "ckpt_path=last", "nothing to resume"),
        (["model=pop", "ckpt_path=last"], "ckpt_path", "model pop trains nothing"),
        (["load_weights=/nope/model.pt"], "load_weights", "no such file: /nope/model.pt"),
        (["data.name=../../x"], "data.name", "'../../x' is not a plain name"),
        (["model=sasrec", "model.label=a/b"], "model.label", "'a/b' is not a plain name"),
        (["eval.ks=[5]", "eval.valid_metric=ndcg@50"], "eval.valid_metric", "K=50 exceeds the catalogue"),
        (["eval=sampled", "eval.ks=[5]", "eval.valid_metric=hr@6"], "eval.valid_metric", "K=6 exceeds the catalogue"),
    ],
)
def test_bad_value_is_one_line_exit_2_and_writes_nothing(five, tmp_path, capsys, override, key, reason):
    line = refused(capsys, "run", *args(five, tmp_path), *override)
    assert line.startswith(f"llm4rec: error: {key}: "), line
    assert reason in line, line
    assert not (tmp_path / "res").exists() and not (tmp_path / "out").exists()


def test_a_sweep_stops_before_its_first_job(five, tmp_path, capsys):
    # seed=1 is fine and would run first; seed=abc later in the sweep stops the whole command.
    ok = ["eval.ks=[1,5]", "eval.valid_metric=ndcg@5"]
    line = refused(capsys, "run", "-m", "model=pop", "seed=1,abc", *args(five, tmp_path), *ok)
    assert "seed: expected an integer >= 0, got 'abc'" in line
    assert not (tmp_path / "res").exists() and not (tmp_path / "out").exists()


def test_cutoffs_equal_to_the_candidates_are_accepted(five, tmp_path):
    from benchmark.checks import check_values

    check_values(compose([*args(five, tmp_path), "model=pop", "eval.ks=[1,5]", "eval.valid_metric=hr@5"]))
    sampled = ["eval=sampled", "eval.num_negatives=3", "eval.ks=[4]", "eval.valid_metric=ndcg@5"]
    check_values(compose([*args(five, tmp_path), "model=pop", *sampled]))
    # Labeled rows are scored, not ranked: K plays no part.
    check_values(compose([*args(five, tmp_path), "model=pop", "eval=labeled", "split=random", "eval.ks=[100]"]))


def test_catalogue_counts_items_after_filtering_and_is_read_once(five, tmp_path, monkeypatch):
    import benchmark.checks as checks
    import benchmark.data.loading as loading

    calls = []
    real = loading.load_dataset
    monkeypatch.setattr(loading, "load_dataset", lambda cfg: calls.append(cfg) or real(cfg))
    monkeypatch.setattr(checks, "_CATALOGUES", {})
    cfg = compose(args(five, tmp_path))
    assert catalogue_size(cfg.data) == 5
    assert catalogue_size(compose([*args(five, tmp_path), "seed=3"]).data) == 5  # same data config
    assert len(calls) == 1
    # Ratings per item: a 5,1,5; b 4,2; c 3,5,2; d 5,4; e 4,3. Keeping rating >= 5 leaves a, c, d.
    assert catalogue_size(compose([*args(five, tmp_path), "data.rating_threshold=5"]).data) == 3
    assert len(calls) == 2


def test_last_checkpoint_is_accepted_when_the_run_has_one(five, tmp_path):
    cfg = compose([*args(five, tmp_path), "model=bpr", "ckpt_path=last"])
    with pytest.raises(ConfigError, match="ckpt_path=last: nothing to resume"):
        check_paths(cfg)
    last = last_checkpoint(cfg)
    assert last.parent.name.startswith("five-loo-full-bpr-s0-")
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    check_paths(cfg)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    check_paths(compose([*args(five, tmp_path), "model=bpr", f"load_weights={weights}"]))
    check_paths(compose([*args(five, tmp_path), "model=bpr", f"ckpt_path={weights}"]))


class Toy:
    """A constructor with every kind of annotation the checks interpret."""

    def __init__(
        self,
        n_items: int,
        dim: int = 8,
        icl: int = 0,
        offset: int = -1,
        reg: float = 0.0,
        mode: Literal["a", "b"] = "a",
        shots: int | Literal["all"] = "all",
        sizes: list[int] | None = None,
        pair: tuple[float, float] = (0.9, 0.99),
        opts: dict[str, int] | None = None,
        flag: bool = False,
    ) -> None:
        pass


@pytest.mark.parametrize(
    "node,error",
    [
        ({"dim": 4, "icl": 0, "offset": -5, "reg": 1, "mode": "b", "shots": 16, "sizes": [1, 2]}, None),
        ({"shots": "all", "pair": [0.5, 1], "opts": {"x": 1}, "flag": True, "sizes": None}, None),
        ({"_target_": "x.Toy", "_partial_": True}, None),
        ({"dim": 0}, "Toy.dim: must be >= 1, got 0"),
        ({"icl": -1}, "Toy.icl: must be >= 0, got -1"),
        ({"dim": True}, "Toy.dim: expected int, got True"),
        ({"reg": "x"}, "Toy.reg: expected float, got 'x'"),
        ({"reg": float("nan")}, "Toy.reg: must be a finite number"),
        ({"mode": "c"}, "Toy.mode: expected 'a' | 'b', got 'c'"),
        ({"shots": "some"}, "Toy.shots: expected int | 'all', got 'some'"),
        ({"sizes": [1, "x"]}, "Toy.sizes: expected list[int] | null"),
        ({"pair": [0.5]}, "Toy.pair: expected tuple[float, float]"),
        ({"opts": {"x": "y"}}, "Toy.opts: expected dict[str, int] | null"),
        ({"flag": 1}, "Toy.flag: expected bool, got 1"),
        ({"n_items": 5}, "Toy.n_items: set by the benchmark itself"),
        ({"dims": 5}, "Toy.dims: not an argument of Toy"),
    ],
)
def test_arguments_are_checked_against_the_signature(node, error):
    if error is None:
        check_arguments(node, Toy, "Toy", given=("n_items",))
    else:
        with pytest.raises(ConfigError) as e:
            check_arguments(node, Toy, "Toy", given=("n_items",))
        assert str(e.value).startswith(error), str(e.value)


def test_matches_plain_values():
    assert matches(3, int) and not matches(3.0, int) and not matches(False, int)
    assert matches(3, float) and matches(0.5, float) and not matches("0.5", float)
    assert matches(None, int | None) and not matches(None, int)
    assert matches([1, 2], list[int]) and not matches((1, "a"), list[int])
    assert matches({"_target_": "x"}, Toy) and not matches("x", Toy)  # a class takes a node, not a scalar


def test_train_config_is_typed():
    opt = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01}
    tc = to_object({"max_epochs": 2, "patience": 0, "batch_size": 4, "optimizer": opt}, TrainConfig, key="model.train")
    assert (tc.max_epochs, tc.patience, tc.batch_size, tc.optimizer["lr"]) == (2, 0, 4, 0.01)
    for bad, msg in [
        ({"max_epochs": 2.5}, "model.train.max_epochs: expected an integer >= 1, got 2.5"),
        ({"optimizer": {**opt, "lr": float("inf")}}, "model.train.optimizer.lr: expected a number > 0, got inf"),
        ({"optimizer": {**opt, "weight_decay": -0.1}}, "model.train.optimizer.weight_decay: expected a number >= 0"),
        ({"optimizer": {**opt, "_partial_": False}}, "model.train.optimizer._partial_: must be true"),
        ({"optimizer": {"lr": 0.1}}, "model.train.optimizer: expected a node with a _target_"),
    ]:
        with pytest.raises(ConfigError) as e:
            to_object({"max_epochs": 2, "patience": 0, "batch_size": 4, "optimizer": opt, **bad}, TrainConfig, key="model.train")
        assert str(e.value).startswith(msg), str(e.value)


@pytest.mark.parametrize("model", ["pop", "bpr", "bpr_recbole", "sasrec", "p5", "tallrec", "tallrec_zeroshot"])
def test_shipped_model_configs_pass_the_checks(model):
    from benchmark.checks import check_model

    check_model(compose([f"model={model}"]).model)


def test_an_in_process_hydra_job_leaves_python_logging_as_it_was(tmp_path, monkeypatch):
    import logging

    from benchmark.compose import hydra_main

    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    seen = []
    hydra_main(lambda cfg: seen.append(cfg.model.name), ["model=pop", f"hydra.run.dir={tmp_path}/run"])
    assert seen == ["pop"]
    # Hydra's job logging attached handlers bound to this moment's stderr; they must not outlive
    # the job (a later job in the same process would write to a closed stream).
    assert (list(root.handlers), root.level) == before
