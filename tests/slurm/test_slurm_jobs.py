"""Jobs on a real one-node SLURM cluster, submitted as a user submits them (``llm4rec run -m
hydra/launcher=submitit_slurm ...``): a 2-task DDP job, a sweep as one array, a requeued job that
resumes from its checkpoint, and a failing job reported in one line."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.results.record import load_record
from benchmark.slurm import script_jobs
from tests.slurm.cluster import Cluster
from tests.smoke.test_cli import tiny_args

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[2]
# A CPU job on the test node: one CPU per task, a little memory, a short time limit.
LAUNCHER = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10"]


def submit(cluster: Cluster, *args: str, wait: bool = True, timeout: int = 400):
    """``llm4rec run -m ARGS`` as a user runs it, against ``cluster``."""
    cmd = [sys.executable, "-m", "benchmark", "run", "-m", *args]
    env = {**cluster.env, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def records(results: Path) -> list[dict]:
    runs = results / "runs"
    return [load_record(d) for d in sorted(runs.iterdir()) if not d.name.startswith(".")] if runs.exists() else []


def job_folders(outputs: Path) -> list[Path]:
    """submitit's folder of each SLURM job (``ID`` for one job, ``ARRAYID_N`` for an array's tasks)."""
    return sorted(p for p in outputs.glob("hydra/multirun/*/.submitit/*") if p.is_dir() and not p.name.startswith("."))


def test_two_task_ddp_job_writes_the_record_of_one_local_process(slurm_cluster, tiny_dir, tmp_path):
    base = ["model=bpr", "model.train.max_epochs=2", *tiny_args(tiny_dir, tmp_path)]
    main(["run", *base, f"paths.results={tmp_path / 'local'}", f"paths.outputs={tmp_path / 'local_out'}"])
    (local,) = records(tmp_path / "local")
    # No hydra.launcher.tasks_per_node: the launcher asks SLURM for one task per trainer device.
    r = submit(slurm_cluster, *LAUNCHER, *base, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert r.returncode == 0, r.stderr[-3000:]
    (rec,) = records(tmp_path / "res")
    assert rec["training"]["world_size"] == 2 and rec["labels"]["processes"] == 2
    assert rec["predictions"]["sha256"] == local["predictions"]["sha256"]
    assert rec["metrics"] == local["metrics"]
    (folder,) = job_folders(tmp_path / "out")
    assert sorted(p.name.split("_")[1] for p in folder.glob("*_log.out")) == ["0", "1"]  # two SLURM tasks


def test_a_four_job_sweep_runs_as_one_array_of_the_dry_run_jobs(slurm_cluster, tiny_dir, tmp_path):
    sweep = [*LAUNCHER, "model=pop", "seed=1,2,3,4", *tiny_args(tiny_dir, tmp_path)]
    main(["slurm-scripts", *sweep, f"out={tmp_path / 'dry'}"])
    t0 = time.time()
    r = submit(slurm_cluster, *sweep)
    seconds = time.time() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(rec["seed"] for rec in records(tmp_path / "res")) == [1, 2, 3, 4]
    folders = [p for p in job_folders(tmp_path / "out") if re.fullmatch(r"\d+_\d+", p.name)]  # array tasks
    array_ids = {p.name.split("_")[0] for p in folders}
    assert len(folders) == 4 and len(array_ids) == 1, [p.name for p in folders]  # one array, 4 tasks
    assert sorted(int(p.name.split("_")[1]) for p in folders) == [0, 1, 2, 3]
    # The jobs the array ran, in order, are the jobs the dry run wrote.
    import yaml

    sweep_dir = folders[0].parents[1]
    ran = [yaml.safe_load((sweep_dir / str(n) / ".hydra" / "overrides.yaml").read_text()) for n in range(4)]
    assert ran == script_jobs(tmp_path / "dry")
    # Job accounting is off on this cluster: submitit's sacct warnings are one line for the sweep.
    sacct = [line for line in (r.stdout + r.stderr).splitlines() if "sacct" in line]
    assert len(sacct) == 1, sacct
    print(f"4-job sweep: {seconds:.1f}s")


def test_a_requeued_job_resumes_from_its_checkpoint_to_the_uninterrupted_record(slurm_cluster, tmp_path):
    import torch

    args = ["model=bpr", "model.train.max_epochs=4", "model.train.patience=100", "reuse_trained=false",
            "logger=none", "trainer.enable_progress_bar=false", f"paths.results={tmp_path / 'res'}"]
    main(["run", *args, f"paths.results={tmp_path / 'ref'}", f"paths.outputs={tmp_path / 'ref_out'}"])
    (ref,) = records(tmp_path / "ref")
    proc = submit(slurm_cluster, *LAUNCHER, *args, f"paths.outputs={tmp_path / 'out'}", wait=False)
    last = tmp_path / "out" / "checkpoints" / ref["run_id"] / "last.ckpt"
    deadline = time.time() + 300
    while True:  # preempt once the checkpoint of epoch 1 exists, mid-training
        if last.exists():
            try:
                if torch.load(last, map_location="cpu", weights_only=False)["epoch"] >= 1:
                    break
            except Exception:  # being written
                pass
        assert proc.poll() is None, "the job ended before it could be requeued: " + proc.stderr.read()[-2000:]
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    (job,) = slurm_cluster.run("squeue", "-h", "-o", "%i").split()
    slurm_cluster.run("scontrol", "requeue", job)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    (rec,) = records(tmp_path / "res")
    assert rec["training"]["resumed_from"] == "last"  # trained on from last.ckpt, not from scratch
    assert rec["run_id"] == ref["run_id"]
    assert rec["metrics"] == ref["metrics"]
    assert rec["predictions"]["sha256"] == ref["predictions"]["sha256"]
    (folder,) = job_folders(tmp_path / "out")
    log = next(folder.glob("*_0_log.out")).read_text()
    assert log.count("Starting with JobEnvironment") == 2  # started, requeued, started again


def test_a_failing_job_is_one_line_with_the_path_of_its_log(slurm_cluster, tiny_dir, tmp_path):
    import torch

    # The file exists (checked before submission) but holds other weights: the job itself fails.
    weights = tmp_path / "other_weights.pt"
    torch.save({"not_a_bpr_weight": torch.zeros(1)}, weights)
    r = submit(slurm_cluster, *LAUNCHER, "model=bpr", f"load_weights={weights}", *tiny_args(tiny_dir, tmp_path))
    assert r.returncode == 1, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower() and "sacct" not in line]
    assert len(errors) == 1, r.stderr[-3000:]
    m = re.search(r"log: (\S+_log\.err)$", errors[0])
    assert m and "Error(s) in loading state_dict" in errors[0], errors[0]
    log = Path(m.group(1))
    assert log.is_file() and "Traceback" in log.read_text()  # the full story is in the log
    assert "Traceback" not in r.stderr
    assert records(tmp_path / "res") == []


def test_a_job_killed_without_a_result_ends_the_wait_in_one_line(slurm_cluster, tiny_dir, tmp_path):
    # Job accounting is off here: the job's end is read from squeue/scontrol, not waited for forever.
    args = ["model=bpr", "model.train.max_epochs=100000", "model.train.patience=100000", *tiny_args(tiny_dir, tmp_path)]
    proc = submit(slurm_cluster, *LAUNCHER, *args, wait=False)
    deadline = time.time() + 300
    while not list((tmp_path / "out").glob("hydra/multirun/*/.submitit/*/*_log.err")):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, "the job did not start within 300 s"
        time.sleep(0.5)
    (job,) = slurm_cluster.run("squeue", "-h", "-o", "%i").split()
    slurm_cluster.run("scancel", job)
    t0 = time.time()
    out, err = proc.communicate(timeout=240)
    print(f"scancel to exit: {time.time() - t0:.1f}s")
    assert proc.returncode == 1, err[-3000:]
    errors = [line for line in err.splitlines() if "error" in line.lower() and "sacct" not in line]
    assert len(errors) == 1, err[-3000:]
    m = re.fullmatch(rf"llm4rec: error: SLURM job {job} failed: .*CANCELLED.*; log: (\S+_log\.err)", errors[0])
    assert m and Path(m.group(1)).is_file(), errors[0]
    assert records(tmp_path / "res") == []
