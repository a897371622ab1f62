"""Multi-process (DDP, gloo on CPU) correctness: every test row exactly once, the same metrics as
one process for the same checkpoint, and resume-after-kill giving the same record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.results.record import load_record
from tests.smoke.test_cli import runs, tiny_args

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, wait: bool = True, timeout: int = 600) -> subprocess.Popen | subprocess.CompletedProcess:
    """The real command line (Lightning's DDP launcher re-executes it for each process)."""
    cmd = [sys.executable, "-m", "benchmark", *args]
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


DDP = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def test_two_processes_give_the_metrics_of_one_for_the_same_weights(tiny_dir, tmp_path):
    base = tiny_args(tiny_dir, tmp_path)
    main(["run", "model=bpr", "model.train.max_epochs=2", *base])
    (single,) = runs(tmp_path)
    weights = next((tmp_path / "out" / "models").glob("*/model.pt"))
    protocols = [["eval=full"], ["eval=sampled", "eval.num_negatives=20"], ["split=random", "eval=labeled"]]
    for proto in protocols:
        one = tmp_path / "one"
        main(["run", "model=bpr", f"load_weights={weights}", *proto, *base, f"paths.results={one}"])
        two = tmp_path / "two"
        # Odd chunk size: shards and batches of uneven size, padded by the distributed sampler.
        r = cli("run", "model=bpr", f"load_weights={weights}", *proto, *DDP, "eval.chunk_users=7", *base,
                f"paths.results={two}")
        assert r.returncode == 0, r.stderr[-3000:]
        (a,) = [load_record(d) for d in (one / "runs").iterdir() if not d.name.startswith(".")]
        (b,) = [load_record(d) for d in (two / "runs").iterdir() if not d.name.startswith(".")]
        assert b["labels"]["processes"] == 2
        assert b["eval"]["rows"] == a["eval"]["rows"]
        assert set(a["metrics"]) == set(b["metrics"])
        for k, v in a["metrics"].items():
            assert (v is None and b["metrics"][k] is None) or abs(v - b["metrics"][k]) <= 1e-6, (proto, k)
        assert a["predictions"]["sha256"] == b["predictions"]["sha256"]
        for d in (one, two):
            import shutil

            shutil.rmtree(d)
    assert load_record(single)["metrics"] == load_record(next((tmp_path / "res" / "runs").iterdir()))["metrics"]


def test_ddp_training_runs_and_records_its_world_size(tiny_dir, tmp_path):
    r = cli("run", "model=bpr", "model.train.max_epochs=2", *DDP, *tiny_args(tiny_dir, tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    (d,) = runs(tmp_path)
    rec = load_record(d)
    assert rec["training"]["world_size"] == 2 and rec["eval"]["rows"] == 40


def test_resume_after_kill_gives_the_uninterrupted_record(tiny_dir, tmp_path):
    args = ["model=bpr", "model.train.max_epochs=8", "model.train.patience=100", "reuse_trained=false",
            *tiny_args(tiny_dir, tmp_path)]
    main(["run", *args, f"paths.results={tmp_path / 'full'}", f"paths.outputs={tmp_path / 'full_out'}"])
    (ref,) = [load_record(d) for d in (tmp_path / "full" / "runs").iterdir()]

    proc = cli("run", *args, wait=False)
    ckpt_dir = tmp_path / "out" / "checkpoints" / ref["run_id"]
    deadline = time.time() + 300
    import torch

    while time.time() < deadline:  # kill once a checkpoint after epoch >= 2 exists
        last = ckpt_dir / "last.ckpt"
        if last.exists():
            try:
                if torch.load(last, map_location="cpu", weights_only=False)["epoch"] >= 2:
                    break
            except Exception:  # being written
                pass
        if proc.poll() is not None:
            pytest.fail("run finished before it could be killed: " + proc.stderr.read().decode()[-2000:])
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert runs(tmp_path) == []  # a killed run leaves no record

    r = cli("run", *args, "ckpt_path=last")
    assert r.returncode == 0, r.stderr[-3000:]
    (d,) = runs(tmp_path)
    resumed = load_record(d)
    assert resumed["training"]["resumed_from"] == "last"
    assert resumed["run_id"] == ref["run_id"]
    assert resumed["metrics"] == ref["metrics"]
    assert resumed["predictions"]["sha256"] == ref["predictions"]["sha256"]


def test_two_processes_score_an_llm_like_one(tiny_dir, tmp_path):
    """TALLRec-style LoRA tuning on 2 processes (bf16 autocast, gradient accumulation), then yes/no
    scoring sharded over 2 processes: every labeled test row scored once, the same probabilities
    and metrics as one process for the same adapters."""
    from tests.unit.test_tallrec import make_tiny_lm, template_words

    lm = make_tiny_lm(tmp_path / "lm", template_words("tallrec") + [f"Title {i}" for i in range(60)])
    base = ["model=tallrec", f"model.module.backbone={lm}", "model.module.shots=16", "split=random",
            "eval=labeled", "model.module.score_batch_size=3", *tiny_args(tiny_dir, tmp_path)]
    # Trained on 2 processes with bf16 autocast and gradient accumulation.
    r = cli("run", *base, "model.train.max_epochs=1", *DDP, "trainer.precision=bf16-mixed",
            "trainer.accumulate_grad_batches=2")
    assert r.returncode == 0, r.stderr[-3000:]
    (trained,) = [load_record(d) for d in runs(tmp_path)]
    assert trained["training"]["world_size"] == 2 and trained["config"]["trainer"]["precision"] == "bf16-mixed"
    weights = next((tmp_path / "out" / "models").glob("*/model.pt"))
    one, two = tmp_path / "one", tmp_path / "two"
    main(["run", *base, f"load_weights={weights}", f"paths.results={one}"])
    r = cli("run", *base, f"load_weights={weights}", *DDP, "eval.chunk_users=7", f"paths.results={two}")
    assert r.returncode == 0, r.stderr[-3000:]
    (a,) = [load_record(d) for d in (one / "runs").iterdir() if not d.name.startswith(".")]
    (b,) = [load_record(d) for d in (two / "runs").iterdir() if not d.name.startswith(".")]
    assert b["labels"]["processes"] == 2 and a["labels"]["processes"] == 1
    assert b["eval"]["rows"] == a["eval"]["rows"] > 7 and b["eval"]["probabilities"] is True
    assert set(a["metrics"]) == set(b["metrics"]) and "test/auc" in a["metrics"]
    for k, v in a["metrics"].items():
        assert (v is None and b["metrics"][k] is None) or abs(v - b["metrics"][k]) <= 1e-6, k
    # The prompt counts of the record cover the rows of both processes.
    assert b["model"]["llm"]["prompt_tokens"] == a["model"]["llm"]["prompt_tokens"]
    # Shards pad their prompt batches to other lengths than one process does: the probabilities
    # agree to float rounding (masked pad positions change the summation order), row for row.
    from benchmark.results.record import PREDICTIONS, read_predictions

    pa, pb = (read_predictions(d / "runs" / r["run_id"] / PREDICTIONS) for d, r in ((one, a), (two, b)))
    assert [p["row"] for p in pa] == [p["row"] for p in pb]
    assert max(abs(x["score"] - y["score"]) for x, y in zip(pa, pb, strict=True)) <= 1e-6


def test_two_processes_rerank_with_a_prompt_pool_like_one(tiny_dir, tmp_path):
    """The reranker's prompt pool sharded over 2 processes: the same lists, metrics, per-user
    choices and scores, policy comparison, prompt counts and position bias as one process."""
    from tests.unit.test_tallrec import make_tiny_lm, template_words

    words = template_words("rerank_listwise", "rerank_role", "rerank_json", "rerank_terse")
    lm = make_tiny_lm(tmp_path / "lm", words + [f"Title {i}" for i in range(60)] + ["{", "}", "[", "]", ":", '"'])
    main(["run", "model=pop", *tiny_args(tiny_dir, tmp_path / "first")])
    (first,) = runs(tmp_path / "first")
    base = ["model=llm_rerank_pool", f"model.module.first_stage={first}", f"model.module.backbone={lm}",
            "model.module.feedback_users=6", "model.module.n_groups=2", "model.module.top_n=5",
            "model.module.order=random", "eval.test_users=9", *tiny_args(tiny_dir, tmp_path)]
    one, two = tmp_path / "one", tmp_path / "two"
    main(["run", *base, f"paths.results={one}"])
    r = cli("run", *base, *DDP, "eval.chunk_users=2", f"paths.results={two}")
    assert r.returncode == 0, r.stderr[-3000:]
    (a,) = [load_record(d) for d in (one / "runs").iterdir() if not d.name.startswith(".")]
    (b,) = [load_record(d) for d in (two / "runs").iterdir() if not d.name.startswith(".")]
    assert b["labels"]["processes"] == 2 and a["labels"]["processes"] == 1
    for k, v in a["metrics"].items():
        assert (v is None and b["metrics"][k] is None) or abs(v - b["metrics"][k]) <= 1e-6, k
    pa, pb = a["model"]["prompt_pool"], b["model"]["prompt_pool"]
    assert pb["test_choices"] == pa["test_choices"] and sum(pa["test_choices"].values()) == 9
    assert [t["prompt_tokens"] for t in pb["templates"]] == [t["prompt_tokens"] for t in pa["templates"]]
    assert b["model"]["llm"]["prompt_tokens"] == a["model"]["llm"]["prompt_tokens"]
    assert b["model"]["rerank"]["users_scored"] == a["model"]["rerank"]["users_scored"] == 9
    bias_a, bias_b = a["model"]["rerank"]["position_bias"], b["model"]["rerank"]["position_bias"]
    assert bias_b["top1_share_by_prompt_position"] == bias_a["top1_share_by_prompt_position"]
    ca, cb = a["eval"]["prompt_pool"], b["eval"]["prompt_pool"]
    assert cb["rows"] == ca["rows"] == 9 and cb["single"].keys() == ca["single"].keys()
    for key in ("bandit", "random"):
        assert abs(cb[key] - ca[key]) <= 1e-6, key
    from benchmark.results.record import PREDICTIONS, read_predictions

    la, lb = (read_predictions(d / "runs" / rec["run_id"] / PREDICTIONS) for d, rec in ((one, a), (two, b)))
    assert [(x["user"], x["prompt"]["template"], x["prompt"]["candidates"]) for x in la] == [
        (x["user"], x["prompt"]["template"], x["prompt"]["candidates"]) for x in lb
    ]


def test_two_nodes_train_and_score_like_one_process(tiny_dir, tmp_path):
    """``trainer.num_nodes=2``: two node processes (one device each, gloo, on this host, started
    the way a cluster scheduler starts them) train together, then score every test row once; the
    saved weights evaluated by one process give the same metrics."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = ["model=bpr", "model.train.max_epochs=2", *tiny_args(tiny_dir, tmp_path)]
    nodes = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2", "eval.chunk_users=7"]
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "benchmark", "run", *base, *nodes], cwd=ROOT,
                         env={**env, "NODE_RANK": str(rank)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for rank in (0, 1)
    ]
    errs = [p.communicate(timeout=600)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    (d,) = runs(tmp_path)  # written once, by global rank 0
    two = load_record(d)
    assert two["training"]["world_size"] == 2 and two["labels"]["processes"] == 2 and two["eval"]["rows"] == 40
    weights = next((tmp_path / "out" / "models").glob("*/model.pt"))
    main(["run", *base, f"load_weights={weights}", f"paths.results={tmp_path / 'one'}"])
    (one,) = [load_record(p) for p in (tmp_path / "one" / "runs").iterdir() if not p.name.startswith(".")]
    assert one["labels"]["processes"] == 1
    for k, v in one["metrics"].items():
        assert (v is None and two["metrics"][k] is None) or abs(v - two["metrics"][k]) <= 1e-6, k
    assert one["predictions"]["sha256"] == two["predictions"]["sha256"]
