"""``llm4rec tune``: the search selects on the validation metric only, the final runs are the best
trial's config on every seed and record their search; bad searches are one-line errors (exit 2).

A planted model makes the test-only signal: its knob puts the valid target on top (knob 0.9) or
the test target on top (knob 0.1), so the trial that is best on test is the worst on valid.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from benchmark.results.identity import config_hashes
from tests.conftest import random_rows, write_atomic
from tests.smoke.test_cli import llm4rec, runs, tiny_args

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


class PlantedModel(nn.Module):
    """Scores: noise in [0, 0.5) for every item, + knob on the user's valid item, + (1 - knob) on
    the user's test item. High knob: good on valid, bad on test; low knob: the reverse."""

    def __init__(self, split, data, knob: float = 0.5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        table = torch.rand(split.n_users, split.n_items, generator=g) * 0.5
        for part, weight in (("valid", knob), ("test", 1.0 - knob)):
            df = split.parts[part]
            table[torch.as_tensor(df["user"].to_numpy().copy()), torch.as_tensor(df["item"].to_numpy().copy())] += weight
        self.register_buffer("table", table)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return self.table[users]

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.table[users.unsqueeze(1), items]


@pytest.fixture
def planted(tmp_path):
    """(common args, searchpath override): a tiny dataset, the planted model and its search config."""
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "search").mkdir()
    (conf / "model" / "planted.yaml").write_text(
        "name: planted\nlabel: planted\nfamily: classic\ninputs: split\n"
        "module:\n  _target_: tests.unit.test_tune.PlantedModel\n  knob: 0.5\ntrain: null\n"
    )
    (conf / "search" / "planted.yaml").write_text('space:\n  model.module.knob: "choice(0.1, 0.9)"\n')
    d = write_atomic(tmp_path / "tiny", "tiny", random_rows())
    return [*tiny_args(d, tmp_path), f"hydra.searchpath=[file://{conf}]", "model=planted"]


# Seed 4 of the random sampler tries knob 0.1 four times before 0.9 (optuna 2.10).
SEARCH = ["search.trials=6", "search.sampler=random", "search.sampler_seed=4", "search.seeds=[1,2]"]


def _trials(tmp_path: Path) -> list[dict]:
    (study,) = (tmp_path / "out" / "tune").iterdir()
    return [json.loads(line) for line in (study / "trials.jsonl").read_text().splitlines()]


def test_search_ignores_a_test_only_signal(planted, tmp_path, monkeypatch):
    import benchmark.data.views as views
    import benchmark.run as run_mod
    from benchmark import tune
    from benchmark.compose import expand_overrides

    parts = []
    for name in ("ranking_rows", "labeled_rows"):
        real = getattr(views, name)
        monkeypatch.setattr(views, name, lambda split, part, *a, _real=real, **k: parts.append(part) or _real(split, part, *a, **k))

    def no_test(*a, **k):
        raise AssertionError("a trial built test rows")

    monkeypatch.setattr(run_mod, "eval_rows", no_test)
    tune.run_search(tune.plan(expand_overrides(planted), SEARCH))
    assert set(parts) == {"valid"}  # the trials read the valid part, never the test part
    monkeypatch.undo()

    trials = _trials(tmp_path)
    knobs = {t["params"]["model.module.knob"] for t in trials}
    assert knobs == {0.1, 0.9} and len(trials) == 6  # both arms were tried
    by_knob = {t["params"]["model.module.knob"]: t["value"] for t in trials}
    assert by_knob[0.9] > by_knob[0.1]

    llm4rec("tune", *planted, *SEARCH)  # reuses the search above, then the final runs
    final_dirs = runs(tmp_path)
    finals = [json.loads((d / "record.json").read_text()) for d in final_dirs]
    assert sorted(r["seed"] for r in finals) == [1, 2]
    assert all(r["config"]["model"]["module"]["knob"] == 0.9 for r in finals)

    # The planted test signal is real: the knob the search rejected is better on test.
    llm4rec("run", *planted, "model.module.knob=0.1", "seed=1")
    (rejected_dir,) = set(runs(tmp_path)) - set(final_dirs)
    rejected = json.loads((rejected_dir / "record.json").read_text())
    assert rejected["metrics"]["test/ndcg@10"] > finals[0]["metrics"]["test/ndcg@10"]


def test_final_runs_are_the_best_trial_and_record_the_search(planted, tmp_path):
    llm4rec("tune", *planted, *SEARCH)
    trials = _trials(tmp_path)
    best = max(trials, key=lambda t: t["value"])
    for d in runs(tmp_path):
        rec = json.loads((d / "record.json").read_text())
        t = rec["config"]["tuning"]
        assert t["budget"] == 6 and t["trials"] == len(trials) == 6
        assert t["sampler"] == "RandomSampler" and t["sampler_seed"] == 4
        assert t["best_valid"] == best["value"] and t["objective"] == "valid/ndcg@10"
        assert t["best_params"] == [f"model.module.knob={best['params']['model.module.knob']}"]
        assert t["space"] == ["model.module.knob=choice(0.1, 0.9)"] and t["search"] == "planted"
        # The run's config is the best trial's, but for the seed and the tuning node.
        cfg = dict(rec["config"])
        cfg.pop("tuning")
        assert config_hashes(OmegaConf.create(cfg))[1] == best["config_hash"] == t["trial_config_hash"]
        assert rec["config_hash"] == config_hashes(OmegaConf.create(rec["config"]))[0]
    # The leaderboard says the row was tuned, and with how many trials.
    from benchmark.results.leaderboard import aggregate, load_runs, tuning_label

    (row,) = aggregate(load_runs(tmp_path / "res" / "runs"))
    assert row["model"] == "planted (tuned 6 trials)" and row["tuning"] == "tuned 6 trials" and row["seeds"] == 2
    assert tuning_label({"config": {"model": {}}}) == "default"
    assert tuning_label({"config": {"tuning": {"trials": "6; rm -rf"}}}) == "default"  # records are untrusted


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["search.space={}"], "search.space: empty search space"),
        (["search.trials=0"], "search.trials: a trial budget of at least 1"),
        (["search.objective=test/ndcg@10"], "validation metric only"),
        (["search.objective=valid/hr@10"], "trials validate on valid/ndcg@10"),
        (["search.space={seed: 'range(1, 5)'}"], "may not vary seed"),
        (["search.space={model: 'choice(pop, bpr)'}", "search=none"], "search/none"),
        (["search.bogus=1"], "search.bogus: unknown key"),
        (["hydra/sweeper=basic"], "sets Hydra's sweeper"),
    ],
)
def test_bad_search_is_one_line_error(planted, tmp_path, capsys, extra, needle):
    args = [a for a in planted if a != "search.trials=6"]
    with pytest.raises(SystemExit) as e:
        llm4rec("tune", *args, "search.trials=3", *extra)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists() and runs(tmp_path) == []


def test_space_entries_are_checked(planted):
    from benchmark.compose import compose
    from benchmark.errors import ConfigError
    from benchmark.tune import search_settings

    cfg = compose([*planted, "+search=planted", "++search.trials=2"])
    assert search_settings(cfg, "planted").space == {"model.module.knob": "choice(0.1, 0.9)"}
    for space, needle in [
        ({"model.module.knob": "0.3"}, "a fixed value"),
        ({"model.module.nothere": "choice(1, 2)"}, "has no key model.module.nothere"),
    ]:
        cfg.search.space = space
        with pytest.raises(ConfigError, match=needle):
            search_settings(cfg, "planted")


def test_integer_key_needs_an_integer_distribution():
    """interval() is a float interval in Hydra: a float trial value must not reach an integer parameter."""
    from benchmark.compose import compose
    from benchmark.errors import ConfigError
    from benchmark.tune import search_settings

    cfg = compose(["model=itemknn", "+search=itemknn", "++search.trials=1"])
    assert search_settings(cfg, "itemknn").space["model.module.params.k"] == "tag(log, int(interval(5, 1000)))"
    cfg.search.space = {"model.module.params.k": "tag(log, interval(5, 1000))"}
    with pytest.raises(ConfigError, match="model.module.params.k is an integer"):
        search_settings(cfg, "itemknn")
    cfg.search.space = {"model.module.params.shrink": "interval(0.0, 100.0)"}  # a float key takes a float interval
    assert search_settings(cfg, "itemknn").space


@pytest.mark.slow  # ~2 min: Lightning fits in every trial and the final run
def test_trained_model_trials_early_stop_on_valid(planted, tmp_path):
    """A model trained by gradient: each trial trains with early stopping; its value is the best epoch's."""
    conf = Path(planted[-2].split("file://")[1].rstrip("]"))
    (conf / "search" / "bpr_lr.yaml").write_text('space:\n  model.train.optimizer.lr: "tag(log, interval(0.001, 0.1))"\n')
    args = [a for a in planted if a != "model=planted"]
    llm4rec("tune", *args, "model=bpr", "search=bpr_lr", "model.train.max_epochs=2", "search.trials=2", "search.seeds=[1]")
    trials = _trials(tmp_path)
    assert len(trials) == 2 and all(1 <= t["epochs"] <= 2 and 0.0 <= t["value"] <= 1.0 for t in trials)
    (d,) = runs(tmp_path)
    rec = json.loads((d / "record.json").read_text())
    best = max(trials, key=lambda t: t["value"])
    assert rec["config"]["model"]["train"]["optimizer"]["lr"] == best["params"]["model.train.optimizer.lr"]
    assert rec["config"]["tuning"]["search"] == "bpr_lr" and rec["training"]["epochs"] >= 1


CTR_MODELS = ("lr", "fm", "widedeep", "deepfm", "xdeepfm", "din")


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).parents[2] / "configs" / "search").glob("*.yaml")))
def test_every_search_config_fits_its_model(name):
    """Each configs/search/<model>.yaml is a non-empty space of distributions over its model's keys."""
    from benchmark.compose import compose
    from benchmark.tune import search_settings

    ev = ["eval=labeled", "split=temporal"] if name in CTR_MODELS else []
    cfg = compose([f"model={name}", *ev, f"+search={name}", "++search.trials=1"])
    search = search_settings(cfg, name)
    assert search.space and search.objective == f"valid/{cfg.eval.valid_metric}"


def test_a_stopped_search_resumes_without_training_its_logged_trials(planted, tmp_path, monkeypatch):
    """Kill a search after 3 of 6 trials (the 4th cut mid-line): the rerun replays 3, trains 3,
    and its trials and choice equal an uninterrupted search's."""
    from benchmark import tune
    from benchmark.compose import expand_overrides

    plan = tune.plan(expand_overrides(planted), SEARCH)
    whole = tune.run_search(plan)
    uninterrupted = _trials(tmp_path)
    log = plan.folder / "trials.jsonl"
    (plan.folder / "search.json").unlink()  # as if the search had stopped in trial 3
    log.write_text("".join(f"{line}\n" for line in log.read_text().splitlines()[:3]) + '{"trial": 3, "val')
    archive = plan.archive / "trials.jsonl"  # appended with the log: it stopped at the same trial
    archive.write_text("".join(f"{line}\n" for line in archive.read_text().splitlines()[:3]))
    trained = []
    real = tune.trial_value
    monkeypatch.setattr(tune, "trial_value", lambda cfg, d: trained.append(1) or real(cfg, d))
    resumed = tune.run_search(plan)
    assert len(trained) == 3  # trials 3, 4, 5 trained; 0, 1, 2 replayed from the log
    again = _trials(tmp_path)
    assert [t.get("replayed", False) for t in again] == [True] * 3 + [False] * 3
    strip = lambda ts: [{k: v for k, v in t.items() if k not in ("replayed", "seconds")} for t in ts]  # noqa: E731
    assert strip(again) == strip(uninterrupted)
    assert resumed["best"]["params"] == whole["best"]["params"] and resumed["trials_run"] == 6
    assert not (plan.folder / tune.REPLAY).exists()

    other = tune.plan(expand_overrides(planted), [*SEARCH[:2], "search.sampler_seed=5", *SEARCH[3:]])
    assert other.folder == plan.folder  # same study, other settings: a fresh search, nothing replayed
    (plan.folder / "search.json").unlink()
    trained.clear()
    tune.run_search(other)
    assert len(trained) == 6 and not any(t.get("replayed") for t in _trials(tmp_path))


def test_a_search_resumes_from_its_archive_with_the_results_when_its_outputs_are_gone(planted, tmp_path, monkeypatch, capsys):
    """The trials are also logged under paths.results/tune/<study>: after a fresh checkout (no
    outputs folder) a rerun replays the archived trials and trains only the others."""
    import shutil

    from benchmark import tune
    from benchmark.compose import expand_overrides
    from benchmark.errors import ConfigError

    plan = tune.plan(expand_overrides(planted), SEARCH)
    assert plan.archive == tmp_path / "res" / "tune" / plan.study
    whole = tune.run_search(plan)
    archived = (plan.archive / "trials.jsonl").read_text().splitlines()
    assert [json.loads(t)["trial"] for t in archived] == list(range(6))
    assert [json.loads(t)["value"] for t in archived] == [t["value"] for t in _trials(tmp_path)]
    # stopped after trial 2: the archive keeps trials 0-2 (the 4th line cut short), outputs are lost
    (plan.archive / "trials.jsonl").write_text("".join(f"{t}\n" for t in archived[:3]) + '{"trial": 3, "va')
    shutil.rmtree(tmp_path / "out")
    trained = []
    real = tune.trial_value
    monkeypatch.setattr(tune, "trial_value", lambda cfg, d: trained.append(1) or real(cfg, d))
    capsys.readouterr()
    resumed = tune.run_search(plan)
    assert len(trained) == 3 and resumed["best"]["params"] == whole["best"]["params"]
    # the cut line is named, not replayed: one notice, with the archive's path and the count
    assert f"{plan.archive / 'trials.jsonl'}: 1 line(s) are not trial log lines" in capsys.readouterr().err
    assert [t.get("replayed", False) for t in _trials(tmp_path)] == [True] * 3 + [False] * 3
    assert [json.loads(t)["trial"] for t in (plan.archive / "trials.jsonl").read_text().splitlines()] == list(range(6))
    # a forged archive line (NaN value, a link) is not replayed or read
    lines = (plan.archive / "trials.jsonl").read_text().splitlines()
    forged = json.loads(lines[0]) | {"value": float("nan")}
    (plan.archive / "trials.jsonl").write_text("\n".join([json.dumps(forged), *lines[1:]]) + "\n")
    shutil.rmtree(tmp_path / "out")
    trained.clear()
    tune.run_search(plan)
    assert len(trained) == 1  # trial 0 retrained, the other 5 replayed
    # an archive written for other settings is not replayed; an oversized one is refused with one line
    other = tune.plan(expand_overrides(planted), [*SEARCH[:2], "search.sampler_seed=5", *SEARCH[3:]])
    shutil.rmtree(tmp_path / "out")
    trained.clear()
    tune.run_search(other)
    assert len(trained) == 6
    shutil.rmtree(tmp_path / "out")
    with open(plan.archive / "trials.jsonl", "a") as f:
        f.write(" " * (tune.ARCHIVE_MAX_BYTES + 1))
    with pytest.raises(ConfigError, match="trials.jsonl: .* bytes, over"):
        tune.run_search(other)


def test_a_search_config_can_set_its_models_epoch_budget():
    """A model that trains in seconds per epoch keeps its own cap (configs/search/<model>.yaml)
    over the table's 5-epoch cap, and the cap is in the trials' and final runs' configs."""
    from benchmark import tune
    from benchmark.compose import compose_expanded, expand_overrides
    from benchmark.launch import sweep_jobs

    caps = {}
    for model in ("lightgcn", "gru4rec"):
        (job,) = [j for j in sweep_jobs(expand_overrides(["experiment=tune_rank_ml100k", f"model={model}", "eval=full"]))]
        p = tune.plan(job, [])
        cfg = compose_expanded(p.job)
        caps[model] = (p.search.max_epochs, cfg.model.train.max_epochs, p.search.patience, cfg.model.train.patience)
    assert caps == {"lightgcn": (100, 100, 5, 5), "gru4rec": (5, 5, 2, 2)}


def test_the_p5_search_runs_the_committed_cpu_setting_with_the_tables_budget():
    """experiment=tune_p5_ml100k: one job (full ranking), P5's space (learning rate, weight decay),
    the budget of tune_rank_ml100k (10 seeded random trials, 5 epochs, patience 2, seeds 1-3) and
    the model of p5_tiny_ml100k with collaborative ids."""
    from benchmark import tune
    from benchmark.compose import compose_expanded, expand_overrides
    from benchmark.launch import sweep_jobs

    (job,) = list(sweep_jobs(expand_overrides(["experiment=tune_p5_ml100k"])))
    p = tune.plan(job, [])
    (rank,) = [j for j in sweep_jobs(expand_overrides(["experiment=tune_rank_ml100k", "model=sasrec_ce", "eval=full"]))]
    r = tune.plan(rank, [])
    assert p.search.name == "p5" and sorted(p.search.space) == ["model.train.optimizer.lr", "model.train.optimizer.weight_decay"]
    same = ("trials", "sampler", "sampler_seed", "seeds", "max_epochs", "patience")
    assert {k: getattr(p.search, k) for k in same} == {k: getattr(r.search, k) for k in same}
    cfg = compose_expanded(p.job)
    assert (cfg.model.name, cfg.model.backbone, cfg.model.indexing, cfg.eval.protocol) == ("p5", "t5-tiny-scratch", "collaborative", "full")
    assert (cfg.model.module.sample_windows, cfg.model.train.batch_size, cfg.model.train.max_epochs) == (19200, 64, 5)


def test_the_tallrec_movie_search_tunes_the_default_rows_with_the_tables_budget():
    """experiment=tune_tallrec_movie_baselines: one search per model and shot count of the default
    rows (tallrec_movie_baselines), whose configs it starts from unchanged (same rows, features,
    shots and epoch budget), with the budget of the other tables (10 seeded random trials, seeds 1-3)."""
    from benchmark import tune
    from benchmark.compose import compose_expanded, expand_overrides
    from benchmark.launch import sweep_jobs

    jobs = list(sweep_jobs(expand_overrides(["experiment=tune_tallrec_movie_baselines"])))
    defaults = {
        (c.model.name, str(c.model.module.shots)): c
        for c in (compose_expanded(j) for j in sweep_jobs(expand_overrides(["experiment=tallrec_movie_baselines", "seed=1"])))
    }
    (ctr,) = [j for j in sweep_jobs(expand_overrides(["experiment=tune_ctr_ml100k", "model=deepfm"]))]
    budget = ("trials", "sampler", "sampler_seed", "seeds")
    ref = tune.plan(ctr, []).search
    seen = set()
    for job in jobs:
        p = tune.plan(job, [])
        cfg = tune.without_search(compose_expanded(p.job))
        key = (cfg.model.name, str(cfg.model.module.shots))
        seen.add(key)
        assert p.search.name == cfg.model.name and p.search.space
        assert {k: getattr(p.search, k) for k in budget} == {k: getattr(ref, k) for k in budget}
        assert (p.search.max_epochs, p.search.patience) == (None, None)  # the default rows' own budget
        base = OmegaConf.to_container(defaults[key], resolve=True)
        mine = OmegaConf.to_container(cfg, resolve=True)
        base["seed"] = mine["seed"]
        assert mine.pop("skip_existing") is True and base.pop("skip_existing") is False
        assert mine == base, key
    assert seen == set(defaults) and len(seen) == 12
