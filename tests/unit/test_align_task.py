"""The alignment loop on a tiny P5 (random ``t5-tiny-scratch`` and a tiny causal LM): log-probs
equal the SFT loss, each method runs, traces and records its facts, stays reproducible by seed;
the parent-run checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.align.config import AlignConfig
from benchmark.align.logps import item_token_logps, sequence_logps
from benchmark.align.parent import Parent, check_parent, locate_weights, read_parent
from benchmark.align.rewards import ObjectiveJudge
from benchmark.align.task import Aligner
from benchmark.align.trace import TRACE_KEYS
from benchmark.errors import ConfigError
from tests.unit.test_align_parts import StubLM
from tests.unit.test_p5 import FILMS, p5, prompts, tiny  # noqa: F401 (tiny is a fixture)
from tests.unit.test_tallrec import tiny_data, tiny_lm, tiny_split  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"steps": 3, "batch_size": 4, "valid_every": 2, "valid_users": 6, "lr": 1e-3}
METHODS = {
    "dpo": {"method": "dpo"},
    "sdpo": {"method": "sdpo", "k": 3, "negatives": "hard"},
    "grpo": {"method": "grpo", "group": 3, "reward": "ndcg"},
    "pgrm": {
        "method": "pgrm",
        "group": 2,
        "list_length": 2,
        "judge": {"objective": "comedies", "hit_weight": 0.5},
    },
}


def aligner(tiny, node, seed=0):  # noqa: F811
    torch.manual_seed(0)
    model = p5(tiny)
    cfg = AlignConfig.from_config({**TINY, **node})
    judge = ObjectiveJudge(FILMS, cfg.judge.objective, lm=StubLM()) if cfg.method == "pgrm" else None
    return model, Aligner(model, cfg, seed=seed, judge=judge)


def windows(model, users, ends):
    """(prompts with the first seen template, target items) of train windows, as ``collate`` builds them."""
    name = model.prompts.seen[0].name
    prompts_, items = [], []
    for u, e in zip(users, ends, strict=True):
        seq = model.train_seq[u]
        prompts_.append(model._render(name, seq[max(0, e - model.history) : e], int(u)))
        items.append(int(seq[e]))
    return prompts_, items


def test_item_log_probs_are_the_sft_loss(tiny):  # noqa: F811
    model = p5(tiny).eval()
    users, ends = np.array([0, 3, 5]), np.array([2, 1, 4])
    batch = model.collate(users, ends, np.zeros(3, dtype=np.int64))
    prompts_, items = windows(model, users, ends)
    with torch.no_grad():
        logps, mask = item_token_logps(model, prompts_, items)
        loss = model.loss(batch)
    assert mask.sum().item() == (batch["labels"] >= 0).sum().item()
    assert abs(-(logps.sum() / mask.sum()).item() - loss.item()) < 1e-5
    seq = sequence_logps(model, prompts_[:2], np.array([[items[0], items[1]], [items[1], items[0]]]))
    assert seq.shape == (2, 2) and abs(seq[0, 0].item() - logps[0].sum().item()) < 1e-5


def test_item_log_probs_are_a_public_capability_of_p5(tiny):  # noqa: F811
    from benchmark.errors import ConfigError
    from benchmark.models.contract import ItemLogProbs

    model = p5(tiny).eval()
    assert isinstance(model, ItemLogProbs)
    with torch.no_grad():
        direct, _ = model.item_logps(["a prompt"], [1])
        via, _ = item_token_logps(model, ["a prompt"], [1])
    assert torch.equal(direct, via)
    with pytest.raises(ConfigError, match="has no item_logps"):
        item_token_logps(torch.nn.Linear(2, 2), ["a prompt"], [1])


def test_item_log_probs_on_a_causal_lm_are_the_sft_loss(tiny, tmp_path):  # noqa: F811
    from tests.unit.test_tallrec import make_tiny_lm

    lm = make_tiny_lm(tmp_path / "lm", [*prompts().corpus(), *FILMS])
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    model = p5(tiny, backbone=str(lm), lora=lora, prompts=prompts(suffix=" Answer: ")).eval()
    users, ends = np.array([0, 3]), np.array([2, 1])
    batch = model.collate(users, ends, np.zeros(2, dtype=np.int64))
    prompts_, items = windows(model, users, ends)
    with torch.no_grad():
        logps, mask = item_token_logps(model, prompts_, items)
        loss = model.loss(batch)
    assert abs(-(logps.sum() / mask.sum()).item() - loss.item()) < 1e-5


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_runs_traces_and_moves_only_the_policy(tiny, method):  # noqa: F811
    model, a = aligner(tiny, METHODS[method])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref_before = {n: p.detach().clone() for n, p in a.ref.named_parameters()}
    result = a.run()
    assert [r["step"] for r in result.trace] == [0, 1, 2, 3]
    assert all(set(r) == set(TRACE_KEYS) for r in result.trace)
    assert result.trace[0]["valid_metric"] is not None and result.trace[2]["valid_metric"] is not None
    assert result.trace[1]["valid_metric"] is None and result.trace[3]["valid_metric"] is not None
    assert all(result.trace[s]["loss"] is not None and result.trace[s]["kl"] is not None for s in (1, 2, 3))
    generative = method in ("grpo", "pgrm")
    assert all((r["validity"] is not None) == generative for r in result.trace[1:])
    assert set(result.hacking) == {"flag", "reward_change", "valid_change", "max_valid_drop"}
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(torch.equal(ref_before[n], p) for n, p in a.ref.named_parameters())
    assert result.facts["method"] == method and len(result.step_seconds) == 3
    if method == "pgrm":
        assert (
            result.facts["reward"]["objective"] == "comedies" and result.facts["reward"]["hit_weight"] == 0.5
        )


def test_first_dpo_step_starts_at_the_reference(tiny):  # noqa: F811
    _, a = aligner(tiny, METHODS["dpo"])
    out = a.preference_step(a.batch())
    assert abs(out["loss"] - math.log(2)) < 1e-5 and abs(out["kl"]) < 1e-5 and abs(out["reward"]) < 1e-6


def test_alignment_is_reproducible_by_seed(tiny):  # noqa: F811
    runs = [aligner(tiny, METHODS["sdpo"], seed=s)[1].run().trace for s in (3, 3, 4)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_pgrm_without_item_text_is_one_line(tiny):  # noqa: F811
    model = p5(tiny)
    with pytest.raises(ConfigError, match="needs item titles"):
        Aligner(model, AlignConfig.from_config({**TINY, "method": "pgrm"}), seed=0, titles=None)


# ----------------------------------------------------------------------------- the parent run


def parent_folder(tmp_path: Path, **over) -> Path:
    rec = {
        "run_id": "tiny-loo-full-p5-s1-abc",
        "config": {"model": {"name": "p5", "num_beams": 6}, "seed": 1},
        "split": {"fingerprint": "f" * 64},
        "dataset": {"fingerprint": "d" * 64},
        "metrics": {"overall": {"ndcg@10": 0.1}},
        "config_hash": "h" * 64,
    }
    for k, v in over.items():
        rec[k] = v
    folder = tmp_path / "parent"
    folder.mkdir(exist_ok=True)
    (folder / "record.json").write_text(json.dumps(rec))
    return folder


def test_parent_is_checked_against_split_data_and_model(tmp_path):
    parent = read_parent(parent_folder(tmp_path))
    model = {"name": "p5", "num_beams": 6}
    check_parent(parent, "f" * 64, "d" * 64, model)  # the same: accepted
    assert parent.facts()["run_id"] == "tiny-loo-full-p5-s1-abc" and parent.facts()["model"] == "p5"
    cases = [
        (("e" * 64, "d" * 64, model), "trained on another split"),
        (("f" * 64, "x" * 64, model), "other data"),
        (("f" * 64, "d" * 64, {"name": "p5", "num_beams": 20}), "another model config .*num_beams"),
    ]
    for args, message in cases:
        with pytest.raises(ConfigError, match=message) as e:
            check_parent(parent, *args)
        assert "\n" not in str(e.value)
    bpr = read_parent(parent_folder(tmp_path, config={"model": {"name": "bpr"}}))
    with pytest.raises(ConfigError, match="a 'bpr' run; alignment starts from p5"):
        check_parent(bpr, "f" * 64, "d" * 64, {"name": "bpr"})


def test_unreadable_parents_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no run folder"):
        read_parent(tmp_path / "nope")
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "record.json").write_text("{not json")
    with pytest.raises(ConfigError, match="align.parent: .*not valid JSON"):
        read_parent(folder)
    (folder / "record.json").write_text("[]")
    with pytest.raises(ConfigError, match="JSON list"):
        read_parent(folder)


def test_parent_weights_are_those_its_training_key_saved(tmp_path):
    from omegaconf import OmegaConf

    from benchmark.results.identity import training_key

    parent = read_parent(parent_folder(tmp_path))
    with pytest.raises(ConfigError, match="no trained weights"):
        locate_weights(parent, tmp_path / "outputs")
    key = training_key(OmegaConf.create(parent.record["config"]))[:16]
    folder = tmp_path / "outputs" / "models" / key
    folder.mkdir(parents=True)
    torch.save({}, folder / "model.pt")
    (folder / "training.json").write_text(json.dumps({"trained_by": "someone-else"}))
    with pytest.raises(ConfigError, match="trained by someone-else"):
        locate_weights(parent, tmp_path / "outputs")
    (folder / "training.json").write_text(json.dumps({"trained_by": parent.run_id}))
    assert isinstance(locate_weights(parent, tmp_path / "outputs"), Parent)
    assert locate_weights(parent, tmp_path / "outputs").weights == folder / "model.pt"


# ----------------------------------------------------------------------------- TALLRec-style (yes/no) DPO


def test_yes_no_dpo_prefers_the_true_answer_and_only_dpo_applies(tiny_split, tiny_data, tiny_lm):  # noqa: F811
    from benchmark.align.yesno import YesNoAligner, answer_logps
    from tests.unit.test_tallrec import tallrec

    torch.manual_seed(0)
    model = tallrec(tiny_split, tiny_data, tiny_lm)
    cfg = AlignConfig.from_config(
        {**TINY, "method": "dpo", "steps": 4, "batch_size": 8, "lr": 5e-3, "beta": 0.5}
    )
    a = YesNoAligner(model, cfg, tiny_split, seed=0)
    batch = next(iter(model.train_dataset(tiny_split, 8, 0)))
    with torch.no_grad():
        lp = answer_logps(model.eval(), batch)
        loss = model.loss(batch)
    yes = batch["answer"] == model.answer_ids[0]
    chosen = torch.where(yes, lp[:, 0], lp[:, 1])
    assert abs(-chosen.mean().item() - loss.item()) < 1e-5  # the chosen answer's log-prob is the SFT loss
    first = a.step(batch)
    assert abs(first["loss"] - math.log(2)) < 1e-5  # policy == reference at the first step
    result = a.run()
    assert [r["step"] for r in result.trace] == [0, 1, 2, 3, 4] and result.facts["valid_metric"] == "auc"
    assert result.trace[0]["valid_metric"] is not None and result.trace[1]["valid_metric"] is None
    with torch.no_grad():
        after = answer_logps(model, batch)
    margin = lambda x: torch.where(yes, x[:, 0] - x[:, 1], x[:, 1] - x[:, 0]).mean().item()  # noqa: E731
    assert margin(after) > margin(lp)  # the true answer gained on the other
    for method in ("sdpo", "grpo", "pgrm"):
        with pytest.raises(ConfigError, match="use align=dpo"):
            YesNoAligner(model, AlignConfig.from_config({**TINY, "method": method}), tiny_split, seed=0)


def test_sampled_generations_are_seeded_items_outside_the_exclusions(tiny):  # noqa: F811
    from benchmark.align.sampling import sample_items

    model = p5(tiny).eval()
    prompts_ = [model._eval_prompt(0, "valid"), model._eval_prompt(1, "valid")]
    excluded = [np.array([0, 1, 2]), np.array([5])]
    a = sample_items(model, prompts_, excluded, 6, 0, "cpu")
    state = torch.random.get_rng_state()
    assert np.array_equal(a, sample_items(model, prompts_, excluded, 6, 0, "cpu"))
    assert torch.equal(state, torch.random.get_rng_state())  # the run's random state is untouched
    assert a.shape == (2, 6) and (a >= 0).all()
    assert not set(a[0].tolist()) & {0, 1, 2} and 5 not in a[1].tolist()
    draws = {tuple(sample_items(model, prompts_, excluded, 6, s, "cpu").ravel().tolist()) for s in range(4)}
    assert len(draws) > 1  # different seeds, different draws


def test_grpo_with_sampled_generations_runs_and_records_how(tiny):  # noqa: F811
    _, a = aligner(tiny, {**METHODS["grpo"], "generation": "sample"})
    result = a.run()
    assert result.facts["generation"].startswith("trie-constrained sampling")
    assert all(r["validity"] == 1.0 for r in result.trace[1:])
