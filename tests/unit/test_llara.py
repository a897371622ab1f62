"""LLaRA-style candidate answering and its collaborative feature source.

- The item embeddings a run saves (``save_item_embeddings``) come back in the split's item order,
  and a run folder that lies (sha256, split, shape, links, pickles) is refused with one line.
- Training prompts list the target and negatives from outside the user's train sequence, drawn
  by (seed, epoch, batch); the curriculum's hybrid share follows its schedule.
- Answers are candidates of the row; validation candidates never read the test part; the
  contract refuses eval=full.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.data.views import ranking_rows, sample_negatives
from benchmark.errors import ConfigError
from benchmark.models.components.cf_features import (
    EMBEDDINGS,
    FACTS,
    CFEncoder,
    embedding_files,
    read_item_embeddings,
)
from benchmark.models.components.seq_prompts import SeqPromptSet
from benchmark.models.contract import missing
from benchmark.models.llara import LLaRA
from benchmark.results.record import write_run
from tests.conftest import random_rows
from tests.unit.test_indexing import make

REPO = Path(__file__).resolve().parents[2]
FILMS = [f"Film {w}" for w in "Alpha Bravo Charlie Delta Echo Foxtrot Golf Hotel India Juliet Kilo Lima Mike Nova".split()]
LORA = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prompts() -> SeqPromptSet:
    from omegaconf import OmegaConf

    return SeqPromptSet.from_config(OmegaConf.to_container(OmegaConf.load(REPO / "configs/p5_prompt/llara.yaml")))


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    """16 users x 14 films, 6 interactions each (so every user has free items for 4 negatives)."""
    rows = random_rows(n_users=16, n_items=len(FILMS), per_user=6, seed=5)
    return make(tmp_path_factory.mktemp("films"), rows, {f"i{i}": t for i, t in enumerate(FILMS)})


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from tests.unit.test_tallrec import make_tiny_lm

    return make_tiny_lm(tmp_path_factory.mktemp("lm"), [*prompts().corpus(), *FILMS, "Answer"])


def first_stage(tmp_path: Path, split, emb: np.ndarray | None = None, run_id: str = "d-loo-full-bpr-s0-00000000") -> Path:
    """A run folder with a record and saved item embeddings, as ``save_item_embeddings`` writes it."""
    emb = np.arange(split.n_items * 3, dtype=np.float32).reshape(split.n_items, 3) if emb is None else emb
    record = _minimal_record(run_id, split)
    files = embedding_files(emb, run_id, "bpr", split.fingerprint)
    return _write_folder(tmp_path / "runs" / run_id, record, files)


def _minimal_record(run_id: str, split) -> dict:
    return {
        "run_id": run_id,
        "split": {"fingerprint": split.fingerprint, "protocol": split.protocol},
        "model": {"name": "bpr", "label": "bpr"},
        "eval": {"protocol": "full"},
        "metrics": {},
        "predictions": {"file": "predictions.jsonl.gz", "sha256": ""},
    }


def _write_folder(folder: Path, record: dict, files: dict[str, bytes]) -> Path:
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    pred = gzip.compress(b"")
    record = {**record, "predictions": {"file": "predictions.jsonl.gz", "sha256": hashlib.sha256(pred).hexdigest()}}
    (folder / "predictions.jsonl.gz").write_bytes(pred)
    (folder / "record.json").write_text(json.dumps(record))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def llara(films, lm, **kw) -> LLaRA:
    data, split = films
    kw.setdefault("mode", "text")
    return LLaRA(
        split,
        data,
        backbone=str(lm),
        indexing={"scheme": "title"},
        prompts=prompts(),
        history=3,
        lora=kw.pop("lora", LORA),
        num_beams=kw.pop("num_beams", 5),
        negatives=kw.pop("negatives", 4),
        seed=0,
        **kw,
    )


# ----------------------------------------------------------------------------- collaborative features


def test_saved_embeddings_come_back_in_item_order_and_are_checked(films, tmp_path):
    _, split = films
    emb = np.random.default_rng(0).normal(size=(split.n_items, 5)).astype(np.float32)
    folder = first_stage(tmp_path, split, emb)
    got, facts = read_item_embeddings(folder, split.n_items, split.fingerprint)
    assert np.array_equal(got, emb) and facts["dim"] == 5 and facts["run_id"] == folder.name
    # a pattern naming exactly one folder works, as for a rerank's first stage
    assert np.array_equal(read_item_embeddings(str(folder.parent / "d-loo-full-bpr-s0-*"), split.n_items, split.fingerprint)[0], emb)
    with pytest.raises(ConfigError, match="this run's split is"):
        read_item_embeddings(folder, split.n_items, "0" * 64)
    with pytest.raises(ConfigError, match=r"expected float32 \[99"):
        read_item_embeddings(folder, 99, split.fingerprint)


def test_a_lying_first_stage_folder_is_refused_with_one_line(films, tmp_path):
    _, split = films
    folder = first_stage(tmp_path, split)
    good = (folder / EMBEDDINGS).read_bytes()
    # bytes changed after the facts were written
    (folder / EMBEDDINGS).write_bytes(good[:-4] + b"\x00\x00\x80\x7f")
    with pytest.raises(ConfigError, match="sha256 differs"):
        read_item_embeddings(folder, split.n_items, split.fingerprint)
    # a pickled object array with a matching sha256 is still not loaded
    import io

    evil = io.BytesIO()
    np.save(evil, np.array([{"x": 1}] * split.n_items, dtype=object), allow_pickle=True)
    facts = json.loads((folder / FACTS).read_text())
    facts["sha256"] = hashlib.sha256(evil.getvalue()).hexdigest()
    (folder / EMBEDDINGS).write_bytes(evil.getvalue())
    (folder / FACTS).write_text(json.dumps(facts))
    with pytest.raises(ConfigError, match="not a .npy array"):
        read_item_embeddings(folder, split.n_items, split.fingerprint)
    # a link instead of the file
    (folder / EMBEDDINGS).unlink()
    outside = tmp_path / "outside.npy"
    outside.write_bytes(good)
    os.symlink(outside, folder / EMBEDDINGS)
    with pytest.raises(ConfigError, match="a link or not a regular file"):
        read_item_embeddings(folder, split.n_items, split.fingerprint)
    # facts written by another run
    (folder / EMBEDDINGS).unlink()
    (folder / EMBEDDINGS).write_bytes(good)
    facts["sha256"] = hashlib.sha256(good).hexdigest()
    facts["run_id"] = "someone-else"
    (folder / FACTS).write_text(json.dumps(facts))
    with pytest.raises(ConfigError, match="not by this folder's run"):
        read_item_embeddings(folder, split.n_items, split.fingerprint)
    # no embeddings at all
    (folder / EMBEDDINGS).unlink()
    with pytest.raises(ConfigError, match="save_item_embeddings=true"):
        read_item_embeddings(folder, split.n_items, split.fingerprint)


def test_non_finite_embeddings_are_refused(films, tmp_path):
    _, split = films
    emb = np.zeros((split.n_items, 2), dtype=np.float32)
    emb[3, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        embedding_files(emb, "r", "m", split.fingerprint)


def test_cf_encoder_marks_items_absent_from_train_as_missing(films, tmp_path):
    _, split = films
    folder = first_stage(tmp_path, split)
    features, missing_, facts = CFEncoder(run=str(folder)).table(split)
    in_train = np.zeros(split.n_items, dtype=bool)
    in_train[split.train["item"].to_numpy()] = True
    assert np.array_equal(missing_, ~in_train) and facts["missing"] == int((~in_train).sum())
    assert features.shape == (split.n_items, 3)
    with pytest.raises(ConfigError, match="adapter.encoder.run: name the first-stage run"):
        CFEncoder(run=None)


def test_recbole_item_embeddings_follow_our_item_order(films):
    """RecBole numbers items by first appearance: the saved table is put back in our order, so that
    BPR's score of (user, item i) is the dot product with row i."""
    from baselines.recbole_model import RecBoleModel

    data, split = films
    model = RecBoleModel(split, data, "BPR", params={"embedding_size": 4})
    emb = model.item_embeddings()
    users = torch.arange(3)
    scores = model.score(users).detach()
    user_emb = model.recbole.user_embedding.weight.detach()[model._user_rb[users]]
    assert torch.allclose(scores, user_emb @ torch.as_tensor(emb).T, atol=1e-5)
    assert emb.shape == (split.n_items, 4)


def test_write_run_refuses_extra_file_names_that_are_paths(tmp_path):
    with pytest.raises(ValueError, match="plain new file name"):
        write_run(tmp_path, "r1", {}, b"", {"../x.npy": b""})
    assert not (tmp_path / "r1").exists()


# ----------------------------------------------------------------------------- the model


def test_training_prompts_list_the_target_and_negatives_outside_the_train_sequence(films, lm):
    model = llara(films, lm)
    users, ends = model._windows()
    pick = np.arange(min(6, len(users)))
    a = model.collate(users[pick], ends[pick], np.zeros(len(pick), int), epoch=0, batch=0, progress=0.0)
    b = model.collate(users[pick], ends[pick], np.zeros(len(pick), int), epoch=0, batch=0, progress=0.0)
    assert torch.equal(a["input_ids"], b["input_ids"])  # a function of (seed, epoch, batch)
    c = model.collate(users[pick], ends[pick], np.zeros(len(pick), int), epoch=1, batch=0, progress=1.0)
    assert not torch.equal(a["input_ids"], c["input_ids"]) or a["input_ids"].shape != c["input_ids"].shape
    # decode each prompt: its candidates are the target and 4 titles outside the user's train sequence
    for row, (u, e) in enumerate(zip(users[pick], ends[pick], strict=True)):
        text = model.tokenizer.decode(a["input_ids"][row][a["attention_mask"][row] > 0])
        listed = text.split("Candidates")[1].split("Answer")[0]
        named = {i for i, t in enumerate(model.index.texts) if t in listed}
        target = int(model.train_seq[u][e])
        assert target in named and len(named) == 5
        assert not (named - {target}) & set(model.train_seq[u].tolist())


def test_curriculum_moves_from_text_to_hybrid_prompts(films, lm, tmp_path):
    _, split = films
    folder = first_stage(tmp_path, split)
    adapter = _cf_adapter(folder)
    model = llara(films, lm, mode="curriculum", curriculum_epochs=2, adapter=adapter)
    assert [model.hybrid_share(p) for p in (0.0, 0.5, 1.0, 2.0, 3.0)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    users, ends = model._windows()
    pick = np.arange(min(8, len(users)))
    start = model.collate(users[pick], ends[pick], np.zeros(len(pick), int), epoch=0, batch=0, progress=0.0)
    done = model.collate(users[pick], ends[pick], np.zeros(len(pick), int), epoch=2, batch=0, progress=2.0)
    n_soft = lambda b: int((b["soft_slots"] >= 0).sum()) if "soft_slots" in b else 0  # noqa: E731
    assert n_soft(start) == 0
    # every history and candidate mention has its soft token at the end of the curriculum
    per_prompt = [min(3, int(e)) + 5 for e in ends[pick]]
    assert n_soft(done) == sum(per_prompt)
    loss = model.loss(done)
    loss.backward()
    grads = [p.grad for p in model.adapter.projector.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    hybrid = llara(films, lm, mode="hybrid", adapter=adapter)
    assert hybrid.hybrid_share(0.0) == 1.0
    with pytest.raises(ConfigError, match="adapter=none"):
        llara(films, lm, mode="text", adapter=adapter)
    with pytest.raises(ConfigError, match="adapter=cf_proj"):
        llara(films, lm, mode="hybrid")


def _cf_adapter(folder: Path) -> dict:
    return {
        "name": "cf_proj",
        "modalities": ["cf"],
        "k": 1,
        "mention": "alongside",
        "train_llm": True,
        "encoder": {"_target_": "benchmark.models.components.cf_features.CFEncoder", "run": str(folder)},
        "projector": {"_target_": "benchmark.models.components.projector.MLPProjector", "_partial_": True, "hidden": None},
    }


def test_answers_are_candidates_of_the_row_and_validation_never_reads_test(films, lm):
    data, split = films
    model = llara(films, lm).eval()
    rows = ranking_rows(split, "test")
    rows.negatives = sample_negatives(split, rows, 4, 0)
    ids = np.arange(len(rows))
    ranked = model.answer_candidates(rows, ids, 5, "cpu")
    for r in ids:
        allowed = set(rows.targets_of(r).tolist()) | set(rows.negatives[r].tolist())
        got = [i for i in ranked[r].tolist() if i >= 0]
        assert got and set(got) <= allowed and len(set(got)) == len(got)
    # valid candidates: target first, negatives outside the user's train and valid items
    valid = ranking_rows(split, "valid")
    for r in range(len(valid)):
        u = int(valid.users[r])
        cands = model._valid_candidates[r]
        assert cands[0] == valid.targets_of(r)[0]
        seen = set(model.train_seq[u].tolist()) | set(model.valid_seq[u].tolist())
        assert not set(cands[1:].tolist()) & seen
    # the valid candidates do not depend on the test part: other test items draw the same
    import dataclasses

    test = split.test.copy()
    test["item"] = (test["item"] + 1) % split.n_items
    other = dataclasses.replace(split, parts={**split.parts, "test": test})
    assert np.array_equal(llara((data, other), lm)._valid_candidates, model._valid_candidates)
    scores = model.score(torch.as_tensor(valid.users[:3]))
    assert torch.isfinite(scores).sum(dim=1).gt(0).all()
    assert missing(model, "full") and not missing(model, "candidates")
    with pytest.raises(ConfigError, match="eval=candidates"):
        model.rank_rows(rows, ids[:1], 5, "cpu")


def test_bad_settings_are_one_line_errors(films, lm):
    with pytest.raises(ConfigError, match="negatives"):
        llara(films, lm, negatives=0)
    with pytest.raises(ConfigError, match="mode"):
        llara(films, lm, mode="both")
    with pytest.raises(ConfigError, match="curriculum_epochs"):
        llara(films, lm, curriculum_epochs=0)
    data, split = films
    with pytest.raises(ConfigError, match="title"):
        LLaRA(split, data, mode="text", backbone=str(lm), indexing={"scheme": "sequential"}, prompts=prompts(), lora=LORA)


def test_candidate_stream_passes_the_epoch_progress_and_keeps_p5s_order():
    from benchmark.models.components.windows import WindowStream
    from benchmark.models.llara import CandidateWindowStream

    users, ends = np.arange(10), np.ones(10, int)
    seen, plain = [], []
    stream = CandidateWindowStream(users, ends, 2, lambda u, e, t, ep, b, p: seen.append((u.tolist(), ep, b, p)), 4, 7)
    base = WindowStream(users, ends, 2, lambda u, e, t: plain.append(u.tolist()), 4, 7)
    stream.epoch = base.epoch = 1
    list(stream), list(base)
    assert [s[0] for s in seen] == plain  # the same windows in the same order
    assert [(ep, b, p) for _, ep, b, p in seen] == [(1, 0, 1.0), (1, 1, 1 + 1 / 3), (1, 2, 1 + 2 / 3)]


@pytest.mark.parametrize("hybrid", [False, True])
def test_scoring_every_candidate_ranks_them_as_beam_search_over_them(films, lm, tmp_path, hybrid):
    data, split = films
    kw = {"mode": "hybrid", "adapter": _cf_adapter(first_stage(tmp_path, split))} if hybrid else {}
    model = llara(films, lm, num_beams=8, **kw).eval()
    rows = ranking_rows(split, "test")
    rows.negatives = sample_negatives(split, rows, 4, 0)
    ids = np.arange(6)
    cands = [np.r_[rows.targets_of(r), rows.negatives[r]] for r in ids]
    ordered = [model._order(c, [6_011, 1, int(u)]) for c, u in zip(cands, rows.users[ids], strict=True)]
    prompts = [model._candidate_prompt(int(u), "test", c) for u, c in zip(rows.users[ids], ordered, strict=True)]
    fast = model._score_candidates(rows, ids, prompts, ordered, 5, "cpu")
    every = np.arange(split.n_items)
    beams = model._rank(rows, ids, [np.setdiff1d(every, c) for c in ordered], 5, "cpu", prompts)
    assert np.array_equal(fast, beams)
    assert np.array_equal(model.answer_candidates(rows, ids, 5, "cpu"), fast)  # the constrained answer path


def test_non_finite_saved_embeddings_are_refused_when_read(films, tmp_path):
    import io

    _, split = films
    folder = first_stage(tmp_path, split)
    bad = np.zeros((split.n_items, 3), dtype=np.float32)
    bad[2, 0] = np.nan
    buf = io.BytesIO()
    np.save(buf, bad, allow_pickle=False)
    facts = json.loads((folder / FACTS).read_text())
    facts["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()  # a careful forger updates the hash
    (folder / EMBEDDINGS).write_bytes(buf.getvalue())
    (folder / FACTS).write_text(json.dumps(facts))
    with pytest.raises(ConfigError, match="non-finite values"):
        read_item_embeddings(folder, split.n_items, split.fingerprint)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients_and_saves_less(films, lm, tmp_path):
    """``gradient_checkpointing=true`` recomputes activations in backward: the loss and every
    trainable gradient (LoRA with dropout, the soft-token projector) equal those of a plain
    backward, while the forward pass keeps fewer bytes for backward. Eval mode is unaffected."""
    _, split = films
    adapter = _cf_adapter(first_stage(tmp_path, split))
    out = []
    for on in (False, True):
        torch.manual_seed(3)  # LoRA and projector initialisation
        model = llara(films, lm, mode="hybrid", adapter=adapter, lora={**LORA, "dropout": 0.3}, gradient_checkpointing=on)
        model.train()
        users, ends = model._windows()
        pick = np.arange(min(6, len(users)))
        batch = model.collate(users[pick], ends[pick], np.zeros(len(pick), int), epoch=0, batch=0, progress=1.0)
        saved = [0]

        def pack(t, saved=saved):
            saved[0] += t.numel() * t.element_size()
            return t

        torch.manual_seed(11)  # dropout masks
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model.loss(batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        out.append((loss.detach(), grads, saved[0]))
        model.eval()
        with torch.no_grad():
            out[-1] += (model.loss(batch),)
    (loss0, g0, s0, e0), (loss1, g1, s1, e1) = out
    assert torch.equal(loss0, loss1) and torch.equal(e0, e1)
    assert g0.keys() == g1.keys() and any("lora" in n for n in g0) and any("adapter" in n or "proj" in n for n in g0)
    for n in g0:
        assert torch.equal(g0[n], g1[n]), n
    assert s1 < s0


def test_gradient_checkpointing_must_be_a_bool(films, lm):
    with pytest.raises(ConfigError, match="model.module.gradient_checkpointing: true or false"):
        llara(films, lm, gradient_checkpointing="yes")


def test_checkpointing_bench_ratios_by_hand():
    from benchmark.bench.checkpointing import summarize

    off = {"cpu_s_per_step": [40.0, 60.0], "peak_rss_mb": 10000}
    on = {"cpu_s_per_step": [60.0, 70.0], "peak_rss_mb": 4000}
    out = summarize(off, on)
    assert out["cpu_time_ratio"] == 1.3 and out["peak_rss_ratio"] == 0.4 and out["off"] is off
