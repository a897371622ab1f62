"""Scale-out configs compose without a cluster, and the SLURM dry run writes the job scripts."""

from __future__ import annotations

import pytest
import torch

from benchmark.cli import compose, main


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
        "model=pop,bpr", "seed=1,2", "trainer=ddp", "trainer.devices=8", f"out={tmp_path}",
    ])
    scripts = sorted(tmp_path.glob("job_*.sh"))
    assert len(scripts) == 4
    text = scripts[3].read_text()
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
