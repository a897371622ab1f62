"""sbatch scripts for a sweep, from the submitit launcher config: a dry run of a SLURM submission.

``llm4rec slurm-scripts`` writes one script per job that ``llm4rec run -m`` would submit, in the
same order (:func:`benchmark.launch.sweep_jobs`), with the resources the launcher would request
(the trainer-derived ones included, :func:`benchmark.launch.launcher_overrides`).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError

# The launcher keys that are not sbatch parameters (hydra-submitit-launcher passes them elsewhere).
_NOT_SBATCH = ("_target_", "submitit_folder", "max_num_timeout")


def sbatch_params(launcher: Any, job_name: str) -> dict[str, Any]:
    """The parameters submitit's SLURM executor gets from ``launcher`` (the ``hydra.launcher`` node).

    The launcher's generic keys are renamed as submitit's AutoExecutor renames them
    (``timeout_min`` -> ``time``, ``tasks_per_node`` -> ``ntasks_per_node``, ``mem_gb`` -> ``mem``);
    unset (null) keys are left out, as submitit leaves them out of the script.
    """
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import SlurmExecutor, _convert_mem

    raw = OmegaConf.to_container(launcher, resolve=False)
    rename = SlurmExecutor._equivalence_dict()
    params: dict[str, Any] = {}
    for k, v in raw.items():
        if k in _NOT_SBATCH or k == "name" or v is None or v == {}:
            continue
        key = rename.get(k, k)
        params[key] = _convert_mem(float(v)) if k == "mem_gb" else v
    params["job_name"] = job_name
    return params


def sbatch_text(command: str, folder: Path, launcher: Any, job_name: str) -> str:
    """The sbatch script submitit would submit for ``command`` with ``launcher`` parameters."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = sbatch_params(launcher, job_name)
    params.pop("array_parallelism", None)  # one script per job here, not one array
    return _make_sbatch_string(command=command, folder=folder, **params)


def write_scripts(jobs: list[list[str]], cfgs: list[Any], out: Path) -> list[Path]:
    """One ``job_<n>.sh`` per job (its task overrides), replacing the ``job_*.sh`` of an earlier dry run.

    Raises:
        ConfigError: the launcher is not ``hydra/launcher=submitit_slurm``.
    """
    for cfg in cfgs:
        if "SlurmLauncher" not in str(cfg.hydra.launcher.get("_target_", "")):
            raise ConfigError("slurm-scripts: add hydra/launcher=submitit_slurm to the overrides")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("job_*.sh"):
        stale.unlink()
    paths = []
    for n, (job, cfg) in enumerate(zip(jobs, cfgs, strict=True)):
        command = " ".join(shlex.quote(x) for x in [sys.executable, "-m", "benchmark", "run", *job])
        p = out / f"job_{n}.sh"
        p.write_text(sbatch_text(command, out / "logs", cfg.hydra.launcher, f"llm4rec_{n}"))
        paths.append(p)
    return paths


def script_jobs(out: Path) -> list[list[str]]:
    """The task overrides of each ``job_<n>.sh`` in ``out``, in job order (read back from the scripts)."""
    scripts = sorted(out.glob("job_*.sh"), key=lambda p: int(p.stem.split("_")[1]))
    jobs = []
    for p in scripts:
        line = next(s for s in p.read_text().splitlines() if " -m benchmark run" in s)
        words = shlex.split(line)
        jobs.append(words[words.index("run", words.index("benchmark")) + 1 :])
    return jobs
