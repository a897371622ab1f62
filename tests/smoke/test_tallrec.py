"""End-to-end ``llm4rec run`` of the LLM models (in-process) with a tiny random causal LM by local path."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmark.results.record import load_record, read_predictions
from tests.smoke.test_cli import assert_metrics_recompute, llm4rec, runs, tiny_args
from tests.unit.test_tallrec import make_tiny_lm, template_words


def split_inputs_supported() -> bool:
    """Whether ``run.build_model`` hands the Split (a dataclass of DataFrames) to an ``inputs: split``
    model without Hydra merging it into the config (which fails)."""
    from omegaconf import OmegaConf

    from benchmark.data.splits import Split
    from benchmark.run import build_model

    frame = pd.DataFrame({"user": [0], "item": [0]})
    split = Split("loo", np.array(["u"]), np.array(["i"]), {"train": frame, "valid": frame, "test": frame})
    try:
        built = build_model(
            OmegaConf.create({"inputs": "split", "module": {"_target_": "builtins.dict"}}), split, None
        )
    except Exception:
        return False
    return built["split"] is split


pytestmark = pytest.mark.skipif(
    not split_inputs_supported(), reason="run.build_model cannot pass a Split to `inputs: split` models yet"
)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    titles = [f"Title {i}" for i in range(60)]
    return make_tiny_lm(tmp_path_factory.mktemp("lm"), template_words("tallrec", "rerank_listwise") + titles)


def test_tallrec_run_through_the_cli(tiny_dir, tmp_path, lm_dir):
    args = [
        "model=tallrec",
        f"model.module.backbone={lm_dir}",
        "model.module.shots=16",
        "model.train.max_epochs=2",
        "+trainer.accumulate_grad_batches=2",
        "split=random",
        "eval=labeled",
        *tiny_args(tiny_dir, tmp_path),
    ]
    llm4rec("run", *args)
    (run_dir,) = runs(tmp_path)
    rec = assert_metrics_recompute(run_dir)
    assert rec["eval"]["probabilities"] is True and "test/logloss" in rec["metrics"]
    assert 0 < rec["model"]["params_trainable"] < rec["model"]["params_total"]
    assert rec["model"]["family"] == "llm" and rec["model"]["label"] == "tallrec-16shot"
    notes = rec["model"]["notes"]
    assert notes["shots"] == 16 and notes["prompt"] == "tallrec" and "r=8" in notes["lora"]
    assert rec["training"]["epochs"] >= 1 and rec["training"]["valid_metric"] == "auc"
    assert rec["config"]["model"]["prompt"]["layout"].endswith("### Response:\n")
    llm = rec["model"]["llm"]
    assert llm["shots"] == 16 and llm["seed"] == 0 and llm["lora"]["r"] == 8 and llm["dequantized"] is False
    assert llm["prompt"]["name"] == "tallrec" and llm["prompt"]["example"].endswith("### Response:\n")


def test_tallrec_trains_and_answers_candidate_lists(tiny_dir, tmp_path, lm_dir):
    """Under eval=candidates a pair scorer validates on each valid target among negatives drawn
    outside the user's train and valid items (never the catalogue, never the test part), and
    ranks each test row's 1 + N candidates by P("Yes"), the history computed once per user."""
    args = [
        "model=tallrec",
        f"model.module.backbone={lm_dir}",
        "model.module.shots=16",
        "model.train.max_epochs=1",
        "split=loo",
        "eval=candidates",
        "eval.num_negatives=9",
        *tiny_args(tiny_dir, tmp_path),
    ]
    llm4rec("run", *args)
    (run_dir,) = runs(tmp_path)
    rec = assert_metrics_recompute(run_dir)
    assert rec["eval"]["protocol"] == "candidates" and rec["training"]["valid_metric"] == "ndcg@10"
    assert rec["training"]["epochs"] == 1 and np.isfinite(rec["training"]["best_valid"])
    assert rec["metrics"]["test/valid_ratio"] == 1.0
    for line in read_predictions(run_dir / rec["predictions"]["file"]):
        listed = [i for i in line["ranked"] if i is not None]
        assert len(listed) == len(set(listed)) == 10 and line["targets"][0] in listed


def test_llm_rerank_reorders_a_first_stage_run(tiny_dir, tmp_path, lm_dir, capsys):
    llm4rec("run", "model=pop", *tiny_args(tiny_dir, tmp_path))
    (first,) = runs(tmp_path)
    llm4rec(
        "run",
        "model=llm_rerank",
        f"model.module.first_stage={first}",
        f"model.module.backbone={lm_dir}",
        "model.module.order=random",
        *tiny_args(tiny_dir, tmp_path),
    )
    (rerank,) = [d for d in runs(tmp_path) if d != first]
    rec = assert_metrics_recompute(rerank)
    pop = load_record(first)
    # The same 20 candidates, reordered: HR@20 cannot change.
    assert rec["metrics"]["test/hr@20"] == pop["metrics"]["test/hr@20"]
    assert rec["model"]["params_trainable"] == 0
    # A first stage made on another split is refused with a one-line error.
    other = tmp_path / "other"
    llm4rec("run", "model=pop", "split=strict_cold_item", *tiny_args(tiny_dir, other))
    (cold,) = runs(other)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        llm4rec(
            "run",
            "model=llm_rerank",
            f"model.module.first_stage={cold}",
            f"model.module.backbone={lm_dir}",
            *tiny_args(tiny_dir, tmp_path),
        )
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "same split" in err
    bias = rec["model"]["rerank"]["position_bias"]
    assert rec["model"]["rerank"]["order"] == "random" and len(bias["mean_llm_rank_by_prompt_position"]) == 20
    assert rec["model"]["rerank"]["first_stage"]["run_id"] == pop["run_id"]


def test_llm_rerank_refuses_users_its_first_stage_did_not_rank(tiny_dir, tmp_path, lm_dir, capsys):
    """A first stage scored on a subset of test users cannot be reranked on all of them."""
    sub = tmp_path / "sub"
    llm4rec("run", "model=pop", "eval.test_users=10", *tiny_args(tiny_dir, sub))
    (first,) = runs(sub)
    assert len(read_predictions(first / load_record(first)["predictions"]["file"])) == 10
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        llm4rec(
            "run",
            "model=llm_rerank",
            f"model.module.first_stage={first}",
            f"model.module.backbone={lm_dir}",
            *tiny_args(tiny_dir, tmp_path),
        )
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the backbone's loading bar
    assert last.startswith("llm4rec: error: model.module.first_stage: ") and "no ranked list for 30 of the users" in last
    assert runs(tmp_path) == []  # no record


@pytest.mark.parametrize("name", ["../../outside.jsonl.gz", "/etc/hostname", "sub/predictions.jsonl.gz"])
def test_llm_rerank_never_follows_a_path_from_its_first_stage_record(tiny_dir, tmp_path, lm_dir, capsys, name):
    """The first stage's record names its predictions file: only a plain file in its own folder is read."""
    import json

    sub = tmp_path / "sub"
    llm4rec("run", "model=pop", *tiny_args(tiny_dir, sub))
    (first,) = runs(sub)
    rec = json.loads((first / "record.json").read_text())
    rec["predictions"]["file"] = name
    (first / "record.json").write_text(json.dumps(rec))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        llm4rec(
            "run", "model=llm_rerank", f"model.module.first_stage={first}", f"model.module.backbone={lm_dir}",
            *tiny_args(tiny_dir, tmp_path),
        )
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("llm4rec: error: model.module.first_stage: ") and "not a plain file name" in last, last
    assert runs(tmp_path) == []


def test_tallrec_movie_run_through_the_cli(tmp_path, tmp_path_factory):
    from benchmark.config import DataConfig
    from benchmark.data.loading import load_dataset

    data = load_dataset(DataConfig(name="ml-100k", source="bundled"))
    titles = data.items["movie_title"].tolist() + data.items["release_year"].tolist()
    lm = make_tiny_lm(tmp_path_factory.mktemp("movie_lm"), template_words("tallrec") + titles)
    llm4rec(
        "run",
        "model=tallrec",  # the module's keys in their short spelling: model.shots = model.module.shots
        f"model.backbone={lm}",
        "model.shots=16",
        "seed=0",
        "model.train.max_epochs=1",
        "split=tallrec_movie",
        "eval=labeled",
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"paths.results={tmp_path / 'res'}",
        f"paths.outputs={tmp_path / 'out'}",
    )
    (run_dir,) = runs(tmp_path)
    rec = assert_metrics_recompute(run_dir)
    assert rec["eval"]["rows"] == 1000 and rec["split"]["stats"]["train_rows"] == 8000
    lines = read_predictions(run_dir / rec["predictions"]["file"])
    assert sum(ln["label"] for ln in lines) == 528  # label = rating > 3
    assert rec["model"]["llm"]["history"]["source"] == "row"
    assert rec["model"]["llm"]["shots"] == 16 and rec["config"]["model"]["module"]["backbone"] == str(lm)


def test_tallrec_movie_export_has_histories_and_labels(tmp_path):
    from benchmark.config import SPLIT_PROTOCOLS

    if "tallrec_movie" not in SPLIT_PROTOCOLS:
        pytest.skip("split protocol tallrec_movie is not registered in benchmark.config yet")
    out = tmp_path / "export"
    llm4rec("export-split", "split=tallrec_movie", "eval=labeled", f"out={out}")
    test = (out / "test.tsv").read_text().splitlines()
    assert test[0] == "user\titem\trating\ttimestamp\tlabel\thistory\thistory_likes" and len(test) == 1001
    first = test[1].split("\t")
    assert first[4] == "0" and len(first[5].split()) == 10 and first[6].split() == list("1111111011")
    assert sum(int(line.split("\t")[4]) for line in test[1:]) == 528
    assert len((out / "train.tsv").read_text().splitlines()) == 8001


@pytest.mark.slow  # ~1-2 min: two LoRA trials and one final run of a tiny LM
def test_tallrec_tunes_lora_rank_and_lr_on_valid_auc(tiny_dir, tmp_path, lm_dir):
    """configs/search/tallrec.yaml: an LLM model's knobs go through the same search as the baselines."""
    args = [
        "model=tallrec", f"model.module.backbone={lm_dir}", "model.module.shots=16", "split=random",
        "eval=labeled", "search.trials=2", "search.seeds=[1]", "search.max_epochs=1", "search.sampler=random",
        *tiny_args(tiny_dir, tmp_path),
    ]  # fmt: skip
    llm4rec("tune", *args)
    (study,) = (tmp_path / "out" / "tune").iterdir()
    trials = [json.loads(line) for line in (study / "trials.jsonl").read_text().splitlines()]
    assert len(trials) == 2 and all(0.0 <= t["value"] <= 1.0 for t in trials)
    (run_dir,) = runs(tmp_path)
    rec = json.loads((run_dir / "record.json").read_text())
    best = max(trials, key=lambda t: t["value"])
    assert rec["config"]["model"]["module"]["lora"]["r"] == best["params"]["model.module.lora.r"]
    assert rec["config"]["tuning"]["search"] == "tallrec" and rec["model"]["llm"]["lora"]["r"] == best["params"]["model.module.lora.r"]


def test_prompt_pool_run_validates_and_its_comparison_cannot_be_forged(tiny_dir, tmp_path, lm_dir):
    from benchmark.results.submission import validate
    from tests.smoke.test_submission import _copy, _rewrite_predictions

    args = [
        "model=tallrec_pool",
        f"model.module.backbone={lm_dir}",
        "model.module.feedback_rows=16",
        "model.module.n_groups=2",
        "split=random",
        "eval=labeled",
        *tiny_args(tiny_dir, tmp_path),
    ]
    llm4rec("run", *args)
    (run_dir,) = runs(tmp_path)
    rec = assert_metrics_recompute(run_dir)
    assert rec["model"]["label"] == "tallrec-pool-thompson-activity2"
    pool, comparison = rec["model"]["prompt_pool"], rec["eval"]["prompt_pool"]
    assert [t["id"] for t in pool["templates"]] == ["tallrec", "role", "json", "terse"]
    assert pool["feedback"]["part"] == "valid" and pool["feedback"]["rows"] == 16
    assert sum(pool["test_choices"].values()) == rec["eval"]["rows"] == comparison["rows"]
    assert set(comparison["single"]) == {"tallrec", "role", "json", "terse"}
    assert validate(run_dir, data_path=tiny_dir).ok
    # a line whose score is not its chosen template's, and a forged comparison, are verdicts
    forged = _copy(run_dir, tmp_path / "forged")
    _rewrite_predictions(forged, lambda lines: [{**ln, "prompt": {**ln["prompt"], "template": "role" if ln["prompt"]["template"] != "role" else "json"}} if i == 0 else ln for i, ln in enumerate(lines)])
    report = validate(forged, data_path=tiny_dir)
    assert not report.ok and report.checks[-1].name == "prompt_pool", report.summary()
    from tests.smoke.test_submission import _edit_record

    lied = _copy(run_dir, tmp_path / "lied")
    _edit_record(lied, lambda r: r["eval"]["prompt_pool"].update(bandit=1.0))
    report = validate(lied, data_path=tiny_dir)
    assert not report.ok and report.checks[-1].name == "prompt_pool", report.summary()


def test_rerank_pool_run_validates_and_its_order_and_comparison_cannot_be_forged(tiny_dir, tmp_path, lm_dir):
    from benchmark.results.submission import validate
    from tests.smoke.test_submission import _copy, _edit_record, _rewrite_predictions

    llm4rec("run", "model=pop", *tiny_args(tiny_dir, tmp_path))
    (first,) = runs(tmp_path)
    args = [
        "model=llm_rerank_pool",
        f"model.module.first_stage={first}",
        f"model.module.backbone={lm_dir}",
        "model.module.feedback_users=8",
        "model.module.n_groups=2",
        "model.module.top_n=5",
        "eval.test_users=12",
        *tiny_args(tiny_dir, tmp_path),
    ]
    llm4rec("run", *args)
    (run_dir,) = [d for d in runs(tmp_path) if d != first]
    rec = assert_metrics_recompute(run_dir)
    assert rec["model"]["label"] == "llm_rerank-pool-thompson-activity2-top5-first_stage"
    pool, comparison = rec["model"]["prompt_pool"], rec["eval"]["prompt_pool"]
    assert [t["id"] for t in pool["templates"]] == ["listwise", "role", "json", "terse"]
    assert pool["feedback"]["part"] == "train" and pool["feedback"]["rows"] == 8
    assert sum(pool["test_choices"].values()) == rec["eval"]["rows"] == comparison["rows"] == 12
    # the bandit's value in the comparison is the run's own NDCG@10 (the same lists)
    assert comparison["bandit"] == pytest.approx(rec["metrics"]["test/ndcg@10"], abs=1e-6)
    assert validate(run_dir, data_path=tiny_dir).ok
    # a line ranked in another template's order, and a forged comparison, are verdicts
    def swap(lines):
        out = []
        for i, ln in enumerate(lines):
            if i == 0:
                facts = ln["prompt"]
                others = [t for t in ("listwise", "role", "json", "terse") if t != facts["template"]]
                order = {tid: sorted(facts["candidates"], key=lambda c, a=a: -facts["scores"][a][facts["candidates"].index(c)]) for a, tid in enumerate(("listwise", "role", "json", "terse"))}
                other = next((t for t in others if order[t] != order[facts["template"]]), None)
                assert other is not None, "every template ordered the first user's candidates alike"
                ln = {**ln, "ranked": order[other] + ln["ranked"][len(order[other]) :]}
            out.append(ln)
        return out

    forged = _copy(run_dir, tmp_path / "forged")
    _rewrite_predictions(forged, swap)
    report = validate(forged, data_path=tiny_dir)
    assert not report.ok and report.checks[-1].name == "prompt_pool", report.summary()
    assert "not the chosen template's order" in report.summary()
    lied = _copy(run_dir, tmp_path / "lied")
    _edit_record(lied, lambda r: r["eval"]["prompt_pool"].update(bandit=1.0))
    report = validate(lied, data_path=tiny_dir)
    assert not report.ok and report.checks[-1].name == "prompt_pool", report.summary()


def test_chain_of_thought_run_keeps_each_rows_reasoning_and_validates(tiny_dir, tmp_path, lm_dir):
    from benchmark.results.submission import validate
    from tests.smoke.test_submission import _lines

    args = [
        "model=tallrec_zeroshot",
        f"model.module.backbone={lm_dir}",
        "prompt@model.prompt=tallrec_cot",
        "model.prompt.reasoning_tokens=8",
        "split=random",
        "eval=labeled",
        *tiny_args(tiny_dir, tmp_path),
    ]
    llm4rec("run", *args)
    (run_dir,) = runs(tmp_path)
    rec = assert_metrics_recompute(run_dir)
    assert rec["model"]["llm"]["prompt"]["chain_of_thought"] == {"answer_cue": "\nAnswer:", "reasoning_tokens": 8}
    lines = _lines(run_dir)
    assert all(isinstance(ln["prompt"]["reasoning"], str) for ln in lines)
    assert any(ln["prompt"]["reasoning"] for ln in lines)
    assert validate(run_dir, data_path=tiny_dir).ok


def test_tallrec_search_tunes_lora_rank_and_learning_rate(tiny_dir, tmp_path, lm_dir):
    """``llm4rec tune model=tallrec``: configs/search/tallrec.yaml's trials train LoRA adapters with
    the proposed rank and learning rate, validated by AUC; the final run is the best trial's config
    (its LoRA rank and learning rate in the record) and names its search."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    args = [
        "model=tallrec",
        f"model.module.backbone={lm_dir}",
        "model.module.shots=16",
        "model.train.max_epochs=1",
        "split=random",
        "eval=labeled",
        *tiny_args(tiny_dir, tmp_path),
    ]
    llm4rec("tune", *args, "search.trials=3", "search.sampler=random", "search.sampler_seed=1", "search.seeds=[2]")
    (study,) = (tmp_path / "out" / "tune").iterdir()
    trials = [json.loads(line) for line in (study / "trials.jsonl").read_text().splitlines()]
    assert len(trials) == 3 and all(set(t["params"]) == {"model.module.lora.r", "model.train.optimizer.lr"} for t in trials)
    assert all(t["params"]["model.module.lora.r"] in (4, 8, 16) and 3e-5 <= t["params"]["model.train.optimizer.lr"] <= 1e-3 for t in trials)
    assert len({t["config_hash"] for t in trials}) == 3 and all(np.isfinite(t["value"]) for t in trials)
    best = max(trials, key=lambda t: t["value"])
    (run_dir,) = runs(tmp_path)
    rec = assert_metrics_recompute(run_dir)
    assert rec["config"]["seed"] == 2 and rec["model"]["llm"]["lora"]["r"] == best["params"]["model.module.lora.r"]
    assert rec["config"]["model"]["train"]["optimizer"]["lr"] == pytest.approx(best["params"]["model.train.optimizer.lr"])
    tuning = rec["config"]["tuning"]
    assert (tuning["search"], tuning["budget"], tuning["trials"], tuning["objective"]) == ("tallrec", 3, 3, "valid/auc")
    assert tuning["best_valid"] == best["value"] and tuning["trial_config_hash"] == best["config_hash"]
