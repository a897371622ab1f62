"""sbatch scripts for a sweep, from the submitit launcher config: a dry run of a SLURM submission."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError


def sbatch_text(command: str, folder: Path, launcher: Any, job_name: str) -> str:
    """The sbatch script submitit would submit for ``command`` with ``launcher`` parameters."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = {
        "partition": launcher.get("partition"),
        "time": int(launcher.get("timeout_min", 60)),
        "nodes": int(launcher.get("nodes", 1)),
        "ntasks_per_node": launcher.get("tasks_per_node"),
        "cpus_per_task": launcher.get("cpus_per_task"),
        "gpus_per_node": launcher.get("gpus_per_node"),
        "mem": f"{launcher.mem_gb}GB" if launcher.get("mem_gb") else None,
        "signal_delay_s": int(launcher.get("signal_delay_s", 90)),
        "qos": launcher.get("qos"),
        "account": launcher.get("account"),
        "constraint": launcher.get("constraint"),
        "exclude": launcher.get("exclude"),
        "comment": launcher.get("comment"),
        "gres": launcher.get("gres"),
        "additional_parameters": dict(launcher.get("additional_parameters") or {}),
    }
    return _make_sbatch_string(command=command, folder=folder, job_name=job_name, **{k: v for k, v in params.items() if v is not None})


def write_scripts(combos: list[list[str]], cfgs: list[Any], out: Path) -> list[Path]:
    """One ``job_<n>.sh`` per sweep job; the launcher must be ``hydra/launcher=submitit_slurm``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, (combo, cfg) in enumerate(zip(combos, cfgs, strict=True)):
        launcher = cfg.hydra.launcher
        if "SlurmLauncher" not in str(launcher.get("_target_", "")):
            raise ConfigError("slurm-scripts: add hydra/launcher=submitit_slurm to the overrides")
        run_args = [a for a in combo if not a.startswith("hydra/launcher=") and not a.startswith("hydra.launcher.")]
        command = " ".join(shlex.quote(x) for x in [sys.executable, "-m", "benchmark", "run", *run_args])
        p = out / f"job_{n}.sh"
        p.write_text(sbatch_text(command, out / "logs", launcher, f"llm4rec_{n}"))
        paths.append(p)
    return paths
