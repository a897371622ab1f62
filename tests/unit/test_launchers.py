"""Scale-out configs compose without a cluster, and the SLURM dry run writes the job scripts."""

from __future__ import annotations

import pytest
import torch

from benchmark.cli import main
from benchmark.compose import compose


def test_submitit_launcher_composes_with_resources():
    cfg = compose(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=a100", "hydra.launcher.gpus_per_node=8"], hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min, launcher.mem_gb) == ("a100", 8, 240, 64)


def test_joblib_launcher_and_trainer_configs_compose():
    assert compose(["hydra/launcher=joblib"], hydra=True).hydra.launcher.n_jobs == 2
    ddp = compose(["trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2", "trainer.precision=bf16-mixed"]).trainer
    assert (ddp.strategy, ddp.devices, ddp.num_nodes, ddp.precision) == ("ddp", 8, 2, "bf16-mixed")
    fsdp = compose(["trainer=fsdp"]).trainer
    assert fsdp.strategy._target_.endswith("FSDPStrategy") and fsdp.strategy.use_orig_params is True
    assert compose(["trainer=deepspeed_stage2"]).trainer.strategy == "deepspeed_stage_2"


def test_fsdp_wrap_policy_resolves_transformer_blocks():
    from benchmark.distributed import transformer_block_policy

    names = {c.__name__ for c in transformer_block_policy(["LlamaDecoderLayer", "T5Block"])}
    assert names == {"LlamaDecoderLayer", "T5Block"}


def test_slurm_dry_run_writes_one_script_per_job(tmp_path, capsys):
    main([
        "slurm-scripts", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=a100",
        "hydra.launcher.tasks_per_node=8", "hydra.launcher.gpus_per_node=8",
        "model=pop,bpr", "seed=2", "trainer=ddp", "trainer.devices=8", f"out={tmp_path}",
    ])
    scripts = sorted(tmp_path.glob("job_*.sh"))
    assert len(scripts) == 2
    text = scripts[1].read_text()
    for line in ("#SBATCH --partition=a100", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8", "#SBATCH --time=240"):
        assert line in text
    assert "-m benchmark run model=bpr seed=2 trainer=ddp trainer.devices=8" in text


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2"], "trainer.strategy=FSDPStrategy"),
        (["trainer=ddp", "trainer.strategy=deepspeed_stage_2", "trainer.accelerator=cpu"], "trainer.strategy=deepspeed"),
    ],
)
def test_sharded_strategies_on_cpu_are_one_line_errors(tiny_dir, tmp_path, capsys, overrides, needle):
    from tests.smoke.test_cli import runs, tiny_args

    with pytest.raises(SystemExit) as e:
        main(["run", "model=pop", *overrides, *tiny_args(tiny_dir, tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "GPUs only" in err
    assert runs(tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_gpu_accelerator_without_cuda_is_a_one_line_error(tiny_dir, tmp_path, capsys):
    from tests.smoke.test_cli import runs, tiny_args

    with pytest.raises(SystemExit) as e:
        main(["run", "model=pop", "trainer=gpu", *tiny_args(tiny_dir, tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trainer.accelerator=gpu" in err and "no CUDA device" in err
    assert runs(tmp_path) == []


def test_deepspeed_without_the_package_is_named(monkeypatch):
    import importlib.util

    from benchmark.distributed import check_trainer
    from benchmark.errors import ConfigError

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # past the GPU checks
    with pytest.raises(ConfigError, match="needs the deepspeed package"):
        check_trainer({"accelerator": "gpu", "strategy": "deepspeed_stage_2"})
    check_trainer({"accelerator": "gpu", "strategy": "ddp"})  # no error


def _captured_launches(monkeypatch) -> list[tuple[list[list[str]], dict]]:
    """Replace the SLURM launcher's submission: record the jobs and parameters it gets, submit nothing.

    Hydra's sweeper also composes every job's config once more to check it before launching; that
    check is skipped here (``run -m`` has already composed and checked each job): it is most of the
    time of a 12-job ``run -m`` and does not change which jobs are launched.
    """
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.plugins.sweeper import Sweeper

    # Hydra's first plugin scan re-executes the plugin modules (a new SlurmLauncher class): scan first.
    Plugins.instance()
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    monkeypatch.setattr(Sweeper, "validate_batch_is_legal", lambda self, batch: None)

    launches: list = []

    def launch(self, job_overrides, initial_job_idx):
        launches.append(([list(o) for o in job_overrides], dict(self.params)))
        out = []
        for o in job_overrides:
            r = JobReturn(overrides=list(o), status=JobStatus.COMPLETED)
            r._return_value = None
            out.append(r)
        return out

    monkeypatch.setattr(SlurmLauncher, "launch", launch)
    return launches


@pytest.mark.parametrize(
    "sweep,n_jobs",
    [
        # 2 models x 2 evals x 3 seeds from hydra.sweeper.params (slow: 12 jobs composed 4 times each;
        # the 2-job cases and test_the_command_line_launcher_wins... cover experiment sweeps in make test)
        pytest.param(["experiment=leaderboard_ml100k"], 12, marks=pytest.mark.slow),
        (["experiment=leaderboard_ml100k", "seed=7", "model=bpr"], 2),  # the command line narrows it
        (["model=pop,bpr", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"], 2),
    ],
)
def test_slurm_scripts_are_the_jobs_run_m_submits(sweep, n_jobs, tmp_path, monkeypatch):
    from benchmark.slurm import script_jobs

    launches = _captured_launches(monkeypatch)
    args = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=a100", *sweep, f"paths.outputs={tmp_path / 'o'}"]
    main(["run", "-m", *args])
    ((submitted, params),) = launches
    main(["slurm-scripts", *args, f"out={tmp_path / 'dry'}"])
    assert script_jobs(tmp_path / "dry") == submitted
    assert len(submitted) == n_jobs
    text = (tmp_path / "dry" / "job_0.sh").read_text()
    assert f"#SBATCH --ntasks-per-node={params['tasks_per_node']}" in text
    assert f"#SBATCH --nodes={params['nodes']}" in text
    assert ("--gpus-per-node" in text) == (params["gpus_per_node"] is not None)


def test_launcher_resources_follow_the_trainer(tmp_path, monkeypatch):
    launches = _captured_launches(monkeypatch)
    base = ["hydra/launcher=submitit_slurm", "model=pop", f"paths.outputs={tmp_path}"]
    main(["run", "-m", *base, "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"])
    main(["run", "-m", *base, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"])
    main(["run", "-m", *base])  # trainer=cpu: one task, no GPU
    main(["run", "-m", *base, "trainer=ddp", "trainer.devices=4", "hydra.launcher.gpus_per_node=4"])  # agrees
    got = [(p["tasks_per_node"], p["gpus_per_node"], p["nodes"]) for _, p in launches]
    assert got == [(8, 8, 2), (2, None, 1), (1, None, 1), (4, 4, 1)]


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["trainer=ddp", "trainer.devices=8", "hydra.launcher.tasks_per_node=1"], "hydra.launcher.tasks_per_node=1 contradicts trainer.devices=8"),
        (["trainer=ddp", "trainer.devices=2", "trainer.num_nodes=2", "hydra.launcher.nodes=1"], "hydra.launcher.nodes=1 contradicts trainer.num_nodes=2"),
        (["trainer=ddp", "trainer.devices=8", "hydra.launcher.gpus_per_node=4"], "hydra.launcher.gpus_per_node=4 contradicts trainer.devices=8"),
        (["trainer=cpu", "hydra.launcher.gpus_per_node=1"], "trainer.accelerator=cpu uses no GPU"),
        (["trainer=ddp", "trainer.devices=1,2"], "need different ones"),
        (["trainer=ddp", "trainer.devices=auto"], "trainer.devices=auto"),
    ],
)
def test_launcher_mismatch_is_one_line_before_submission(overrides, needle, tmp_path, monkeypatch, capsys):
    launches = _captured_launches(monkeypatch)
    for cmd in (["run", "-m"], ["slurm-scripts", f"out={tmp_path / 'dry'}"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "hydra/launcher=submitit_slurm", "model=pop", *overrides, f"paths.outputs={tmp_path}"])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    assert launches == [] and not (tmp_path / "dry").exists()


def test_sacct_warnings_are_one_line_per_sweep(capsys):
    import logging

    from benchmark.launch import slurm_reporting

    log = logging.getLogger("submitit")
    with slurm_reporting():
        for n in range(1, 4):
            log.warning(f"Call #{n} - Bypassing sacct error Command 'sacct' returned 1, status may be inaccurate.")
    out = capsys.readouterr()
    lines = [s for s in (out.out + out.err).splitlines() if "sacct" in s]
    assert len(lines) == 1 and "SUBMITIT_LOG_LEVEL=ERROR" in lines[0]
    assert log.filters == []  # the filter is gone after the sweep


def test_a_dead_job_is_one_line_with_its_log():
    from submitit.core.utils import UncompletedJobError

    from benchmark.launch import JobFailed, slurm_reporting

    msg = ("Job 12_3 (task: 0) with path /x/.submitit/12_3/12_3_0_result.pkl\nhas not produced any output "
           "(state: OUT_OF_MEMORY)\nError stream produced:\n----------------------------------------\n"
           "Traceback...\nslurmstepd: error: Detected 1 oom_kill event in StepId=12.0")
    with pytest.raises(JobFailed) as e:
        with slurm_reporting():
            raise UncompletedJobError(msg)
    assert str(e.value) == (
        "SLURM job 12_3 failed: ended without a result (state OUT_OF_MEMORY): "
        "slurmstepd: error: Detected 1 oom_kill event in StepId=12.0; "
        "log: /x/.submitit/12_3/12_3_0_log.err"
    )


def test_only_a_requeued_slurm_job_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    from benchmark.launch import requeued_checkpoint

    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    (tmp_path / "last.ckpt").write_bytes(b"x")
    assert requeued_checkpoint(None, tmp_path) is None  # first start: a fresh run
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert requeued_checkpoint(None, tmp_path) == "last"
    assert requeued_checkpoint("/my.ckpt", tmp_path) == "/my.ckpt"  # the user's choice wins
    assert requeued_checkpoint(None, tmp_path / "none") is None  # requeued before any checkpoint


def test_job_states_come_from_squeue_and_scontrol_without_accounting():
    from benchmark.launch import GONE, queue_states

    calls = []

    def run_cmd(cmd):
        calls.append(cmd[0])
        if cmd[0] == "squeue":
            return "7_0|RUNNING\n7_1|PENDING\n8|RUNNING\n99|RUNNING\n"
        if cmd[-1] == "7":  # the array's tasks that left the queue
            return ("JobId=10 ArrayJobId=7 ArrayTaskId=2 JobState=OUT_OF_MEMORY Reason=OutOfMemory\n"
                    "JobId=11 ArrayJobId=7 ArrayTaskId=3 JobState=COMPLETED Reason=None\n")
        if cmd[-1] == "9":
            return "JobId=9 JobName=x JobState=CANCELLED Reason=None\n"
        return None  # scontrol: invalid job id (purged)

    ids = ["7_0", "7_1", "7_2", "7_3", "8", "9", "5"]
    states = {k: v["State"] for k, v in queue_states(ids, run_cmd).items()}
    assert states == {"7_0": "RUNNING", "7_1": "PENDING", "7_2": "OUT_OF_MEMORY", "7_3": "COMPLETED",
                      "8": "RUNNING", "9": "CANCELLED", "5": GONE}
    assert calls == ["squeue", "scontrol", "scontrol", "scontrol"]  # one per array/job not queued: 5, 7, 9
    assert queue_states(ids, lambda cmd: None) == {}  # controller unreachable: states stay unknown


def test_a_job_that_died_without_result_ends_the_wait_when_sacct_fails(tmp_path, monkeypatch):
    import submitit.core.core as core
    from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

    import benchmark.launch as launch

    watcher = SlurmInfoWatcher(delay_s=600)
    monkeypatch.setattr(SlurmJob, "watcher", watcher)
    monkeypatch.setattr(SlurmJob, "_results_timeout_s", 0)
    monkeypatch.setattr(SlurmInfoWatcher, "_make_command", lambda self: ["false"])  # sacct fails
    monkeypatch.setattr(launch, "_run_quiet", lambda cmd: "" if cmd[0] == "squeue" else
                        "JobId=41 JobState=OUT_OF_MEMORY Reason=OutOfMemory\n")
    polls = []

    def sleep(seconds):
        polls.append(seconds)
        assert len(polls) < 100, "the job's end was never noticed"

    monkeypatch.setattr(core._time, "sleep", sleep)
    job = SlurmJob(folder=tmp_path, job_id="41")
    (tmp_path / "41_0_log.err").write_text("slurmstepd: error: Detected 1 oom_kill event in StepId=41.batch\n")
    with pytest.raises(launch.JobFailed) as e:
        with launch.slurm_reporting():
            job.results()
    assert str(e.value) == (
        "SLURM job 41 failed: ended without a result (state OUT_OF_MEMORY): "
        f"slurmstepd: error: Detected 1 oom_kill event in StepId=41.batch; log: {tmp_path / '41_0_log.err'}"
    )
    assert SlurmInfoWatcher.update is not launch._watcher_update  # submitit's own again after the sweep


def test_the_command_line_launcher_wins_over_an_experiment_default(tmp_path, monkeypatch):
    # An experiment that picks the joblib launcher in its defaults (as a quickstart may):
    # hydra/launcher=submitit_slurm on the command line submits its sweep to SLURM instead.
    import shutil

    import benchmark.compose as composition
    from benchmark.slurm import script_jobs

    configs = tmp_path / "configs"
    shutil.copytree(composition.CONFIG_DIR, configs)
    (configs / "experiment" / "local_sweep.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/launcher: joblib\n\n"
        "hydra:\n  sweeper:\n    params:\n      model: pop,bpr\n"
    )
    monkeypatch.setattr(composition, "CONFIG_DIR", configs)
    assert composition.compose(["experiment=local_sweep"], hydra=True).hydra.launcher._target_.endswith("JoblibLauncher")
    launches = _captured_launches(monkeypatch)
    args = ["experiment=local_sweep", "hydra/launcher=submitit_slurm", f"paths.outputs={tmp_path / 'o'}"]
    main(["run", "-m", *args])
    ((submitted, params),) = launches  # the SLURM launcher got the sweep
    assert [j[0] for j in submitted] == ["model=pop", "model=bpr"] and params["tasks_per_node"] == 1
    main(["slurm-scripts", *args, f"out={tmp_path / 'dry'}"])
    assert script_jobs(tmp_path / "dry") == submitted
