"""SLURM jobs that start right the first time.

- :func:`sweep_jobs`: the task overrides of every job ``llm4rec run -m`` launches, in Hydra's order,
  sweeps defined in experiment configs (``hydra.sweeper.params``) included; ``slurm-scripts`` writes
  exactly these jobs.
- :func:`launcher_overrides`: the SLURM tasks per node, GPUs per node and nodes that the trainer
  needs (``trainer.devices``, ``trainer.num_nodes``, ``trainer.accelerator``), as Hydra overrides for
  the keys the user left alone; a value the user set that contradicts the trainer is a one-line
  error before anything is submitted.
- :func:`slurm_reporting`: while a sweep is submitted and watched, submitit's "Bypassing sacct error"
  warnings (printed three times per status poll when job accounting is off) become one line per
  sweep, job states come from ``squeue``/``scontrol`` when ``sacct`` fails (so a job killed before it
  wrote a result, e.g. out of memory or ``scancel``, ends the wait instead of hanging it), and a
  failed job reaches the user as one line with the path of its log.
- :func:`run_in_job` / :func:`requeued_checkpoint`: inside a SLURM job, a failure is reported with
  the job id and log path; a job that SLURM requeued (preemption, ``scontrol requeue``, submitit's
  signal before the time limit) resumes training from its ``last.ckpt``.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmark.errors import BenchmarkError, ConfigError

RESOURCE_KEYS = ("tasks_per_node", "gpus_per_node", "nodes")


class JobFailed(BenchmarkError):
    """A SLURM job of a sweep failed; the message names the job, the cause and its log."""


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def is_hydra_override(override: str) -> bool:
    """``hydra/launcher=...``, ``hydra.launcher.partition=...``: an override of Hydra's own config."""
    key = _key(override)
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra's overrides, the task's overrides), each in command-line order."""
    return [o for o in overrides if is_hydra_override(o)], [o for o in overrides if not is_hydra_override(o)]


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The task overrides of every job ``llm4rec run -m OVERRIDES`` launches, in launch order.

    Hydra's own code decides: the multirun config is loaded as ``hydra.main`` loads it, and the
    basic sweeper's ``split_arguments`` combines ``hydra.sweeper.params`` (set by an experiment
    config or on the command line) with the command-line sweeps. ``overrides`` are already expanded
    (:func:`benchmark.compose.expand_overrides`).

    Raises:
        ConfigError: the config does not compose, or the sweeper is not Hydra's basic sweeper.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from benchmark.compose import CONFIG_DIR
    from benchmark.config import register_schemas

    register_schemas()
    GlobalHydra.instance().clear()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONFIG_DIR)))
    try:
        cfg = loader.load_configuration(config_name="config", overrides=list(overrides), run_mode=RunMode.MULTIRUN)
        target = str(cfg.hydra.sweeper.get("_target_", ""))
        if not target.endswith("BasicSweeper"):
            raise ConfigError(f"hydra.sweeper: {target} decides its jobs while it runs; only the basic sweeper's are known before")
        params = cfg.hydra.sweeper.get("params") or {}
        arguments = [f"{k}={v}" for k, v in params.items()]
        arguments += OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False)
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
        batches = BasicSweeper.split_arguments(parsed, None)
    except BenchmarkError:
        raise
    except Exception as e:  # composition errors: unknown key, group option, sweep syntax
        raise ConfigError(" ".join(str(e).split())) from None
    return [list(job) for batch in batches for job in batch]


def _is_slurm(launcher: Any) -> bool:
    return "SlurmLauncher" in str(launcher.get("_target_", "")) if launcher is not None else False


def _devices(devices: Any, accelerator: str) -> int | None:
    """Processes per node that Lightning starts for ``trainer.devices`` (None: decided at run time)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices > 0 else None
    if isinstance(devices, str):
        text = devices.strip()
        if text.isdigit():
            return int(text) if int(text) > 0 else None
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        if text == "auto" and accelerator == "cpu":
            return 1
        return None
    try:
        return len(list(devices))  # a list of device indices
    except TypeError:
        return None


def trainer_needs(trainer: Any) -> dict[str, int | None]:
    """The SLURM resources a job with this trainer config needs.

    One SLURM task per Lightning process: ``tasks_per_node = trainer.devices``,
    ``nodes = trainer.num_nodes``; GPUs per node equal the devices unless the accelerator is the
    CPU (then None: no GPU is requested).

    Raises:
        ConfigError: ``trainer.devices`` is left to run time (``auto``, ``-1``) on a GPU accelerator.
    """
    accelerator = str(trainer.get("accelerator", "auto"))
    devices = trainer.get("devices", 1)
    n = _devices(devices, accelerator)
    if n is None:
        raise ConfigError(
            f"trainer.devices={devices}: a SLURM job needs a number of devices per node (it sets the "
            "tasks and GPUs per node), e.g. trainer.devices=8"
        )
    nodes = int(trainer.get("num_nodes", 1) or 1)
    return {"tasks_per_node": n, "gpus_per_node": None if accelerator == "cpu" else n, "nodes": nodes}


def _user_set(hydra_overrides: list[str]) -> dict[str, str]:
    """Launcher keys set on the command line, with their raw values."""
    out = {}
    for o in hydra_overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key.startswith("hydra.launcher."):
            out[key[len("hydra.launcher.") :]] = value
    return out


def _as_int(value: Any) -> int | None:
    if value is None or str(value).strip().lower() in ("null", "none", ""):
        return None
    try:
        return int(str(value))
    except ValueError:
        return None


def launcher_overrides(
    overrides: list[str], jobs: list[list[str]], compose_fn: Callable[[list[str], bool], Any]
) -> list[str]:
    """Hydra overrides that make the SLURM launcher's resources follow the trainer of the jobs.

    ``hydra.launcher.tasks_per_node``, ``gpus_per_node`` and ``nodes`` the user did not set are
    set from the trainer (:func:`trainer_needs`); values the user set are checked against it.
    ``gpus_per_node`` is left alone when the user asks for GPUs another way (``gres``,
    ``gpus_per_task``). None for other launchers.

    Args:
        overrides: the command line's overrides (Hydra's and the task's).
        jobs: the task overrides of every job (:func:`sweep_jobs`).
        compose_fn: ``compose(overrides, hydra)`` returning the config with its ``hydra`` node.

    Raises:
        ConfigError: a set value contradicts the trainer, or the jobs of one sweep (one SLURM
            array, one set of resources) need different resources.
    """
    hydra_ovs, _ = split_overrides(overrides)
    cfgs = [compose_fn(hydra_ovs + job, True) for job in jobs]
    if not cfgs or not _is_slurm(cfgs[0].hydra.get("launcher")):
        return None
    needs = [trainer_needs(c.trainer) for c in cfgs]
    for job, need in zip(jobs, needs, strict=True):
        if need != needs[0]:
            diff = ", ".join(f"{k} {needs[0][k]} vs {need[k]}" for k in RESOURCE_KEYS if need[k] != needs[0][k])
            raise ConfigError(
                f"the jobs of one SLURM sweep share their resources, but '{' '.join(jobs[0])}' and "
                f"'{' '.join(job)}' need different ones ({diff}); run one sweep per trainer setting"
            )
    need, trainer = needs[0], cfgs[0].trainer
    user = _user_set(hydra_ovs)
    launcher = cfgs[0].hydra.launcher
    gpus_elsewhere = any(launcher.get(k) for k in ("gres", "gpus_per_task"))
    what = {
        "tasks_per_node": f"trainer.devices={trainer.get('devices')}: Lightning runs one SLURM task per device",
        "nodes": f"trainer.num_nodes={trainer.get('num_nodes', 1)}",
        "gpus_per_node": (
            f"trainer.accelerator={trainer.get('accelerator')} uses no GPU"
            if need["gpus_per_node"] is None
            else f"trainer.devices={trainer.get('devices')} on trainer.accelerator={trainer.get('accelerator')}"
        ),
    }
    out = []
    for k in RESOURCE_KEYS:
        if k == "gpus_per_node" and gpus_elsewhere:
            continue
        if k in user:
            have = _as_int(user[k])
            if (have or None) != need[k]:
                want = "null" if need[k] is None else need[k]
                raise ConfigError(
                    f"hydra.launcher.{k}={user[k]} contradicts {what[k]}; set it to {want} or leave it out "
                    "(it follows the trainer)"
                )
            continue
        out.append(f"hydra.launcher.{k}={'null' if need[k] is None else need[k]}")
    return out


def multirun_plan(
    overrides: list[str],
    compose_fn: Callable[[list[str], bool], Any],
    check_fn: Callable[[Any], None],
) -> tuple[list[list[str]], list[str] | None]:
    """The jobs of ``llm4rec run -m OVERRIDES`` (each validated) and the launcher overrides they need.

    Returns:
        (task overrides per job in launch order, Hydra overrides to append: the SLURM resources
        that follow the trainer; None for other launchers).
    """
    jobs = sweep_jobs(overrides)
    for job in jobs:  # every job, experiment sweeps included, is checked before any is launched
        check_fn(compose_fn(job, False))
    return jobs, launcher_overrides(overrides, jobs, compose_fn)


def launch_multirun(
    overrides: list[str],
    compose_fn: Callable[[list[str], bool], Any],
    check_fn: Callable[[Any], None],
    hydra_main: Callable[[list[str]], None],
) -> None:
    """``llm4rec run -m``: plan and check the jobs, then hand the sweep to Hydra.

    With the SLURM launcher, its resources follow the trainer (:func:`launcher_overrides`) and the
    sweep runs under :func:`slurm_reporting`.

    Raises:
        ConfigError: a job's config, or the launcher's resources, before anything is launched.
        JobFailed: a SLURM job of the sweep failed (the CLI prints it and exits 1).
    """
    _, extra = multirun_plan(overrides, compose_fn, check_fn)
    if extra is None:
        hydra_main(["--multirun", *overrides])
        return
    with slurm_reporting():
        hydra_main(["--multirun", *overrides, *extra])


class _SacctOnce(logging.Filter):
    """Drops submitit's "Bypassing sacct error" records; says once what they mean."""

    def __init__(self) -> None:
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if not self.said:
            self.said = True
            print(
                "submitit: sacct failed (job accounting is off?); job states are read from squeue and "
                "scontrol instead (SUBMITIT_LOG_LEVEL=ERROR silences submitit's warnings)",
                file=sys.stderr,
                flush=True,
            )
        return False


# Job states from squeue (queued and running jobs) and scontrol (jobs that ended within the
# controller's MinJobAge). A job neither knows ended long ago: it gets this state.
GONE = "NOT_IN_QUEUE"


def _run_quiet(cmd: list[str]) -> str | None:
    """stdout of a SLURM client command, None when it fails or is absent."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def queue_states(
    job_ids: list[str], run_cmd: Callable[[list[str]], str | None] | None = None
) -> dict[str, dict[str, str]]:
    """``{job_id: {"State": ...}}`` for submitit's job ids (``12`` or ``12_3`` for an array task).

    Jobs in ``squeue`` get its state (``PENDING``, ``RUNNING``, ...); the others get the
    ``JobState`` of ``scontrol show job`` (``COMPLETED``, ``FAILED``, ``OUT_OF_MEMORY``,
    ``CANCELLED``, ...), or :data:`GONE` when the controller no longer knows them. Nothing is
    returned when ``squeue`` itself fails (the controller is unreachable): the states stay unknown.

    Args:
        job_ids: the ids to look up.
        run_cmd: runs a command, returns its stdout or None on failure (default: :func:`_run_quiet`).
    """
    run_cmd = run_cmd or _run_quiet
    queued = run_cmd(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"])
    if queued is None:
        return {}
    states: dict[str, dict[str, str]] = {}
    for line in queued.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id in job_ids:
            states[job_id] = {"State": state.strip()}
    for main_id in sorted({j.split("_")[0] for j in job_ids if j not in states}):
        for line in (run_cmd(["scontrol", "-o", "show", "job", main_id]) or "").splitlines():
            fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
            task = fields.get("ArrayTaskId")
            job_id = f"{fields.get('ArrayJobId')}_{task}" if task and task.isdigit() else fields.get("JobId", "")
            if job_id in job_ids and job_id not in states and fields.get("JobState"):
                states[job_id] = {"State": fields["JobState"]}
    for job_id in job_ids:
        states.setdefault(job_id, {"State": GONE})
    return states


def _watcher_update(self: Any) -> None:
    """``SlurmInfoWatcher.update`` that falls back to :func:`queue_states` when ``sacct`` fails.

    submitit itself then keeps such jobs ``UNKNOWN`` forever: a job that died without a result
    (out of memory, ``scancel``, node failure) makes the submitting command wait without end.
    """
    command = self._make_command()
    if command is None:
        return
    self._num_calls += 1
    pending = sorted(self._registered - self._finished)
    try:
        self._output = subprocess.check_output(command, shell=False, stderr=subprocess.PIPE)
        info = self.read_info(self._output)
    except Exception as e:  # sacct absent, accounting disabled, slurmdbd down
        err = e.stderr.decode(errors="replace").strip() if isinstance(e, subprocess.CalledProcessError) and e.stderr else ""
        logging.getLogger("submitit").warning(
            f"Call #{self.num_calls} - Bypassing sacct error {e} {err}, status may be inaccurate."
        )
        info = queue_states(pending)
    self._info_dict.update(info)
    self._last_status_check = time.time()
    for job_id in pending:
        if self.is_done(job_id, mode="cache"):
            self._finished.add(job_id)


class _DropLines:
    """A text stream that forwards everything except writes starting with one of ``prefixes``."""

    def __init__(self, stream: Any, prefixes: tuple[str, ...]) -> None:
        self._stream = stream
        self._prefixes = prefixes

    def write(self, text: str) -> int:
        if text.startswith(self._prefixes):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _uncompleted_line(exc: BaseException) -> str:
    """One line from submitit's error for a job that died without a result (killed, out of memory)."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    head = " ".join(lines[:2])  # "Job 12_3 (task: 0) with path .../12_3_0_result.pkl has not produced any output (state: X)"
    words = head.split()
    job = words[1] if len(words) > 1 else "?"
    log = next((w for w in words if w.endswith("_result.pkl")), None)
    log_path = log[: -len("_result.pkl")] + "_log.err" if log else "?"
    state = head.rpartition("(state: ")[2].rstrip(")") if "(state: " in head else "?"
    tail = [s for s in lines[2:] if not set(s) <= {"-"} and s != "Error stream produced:"]
    cause = tail[-1] if tail else "no output"
    return f"SLURM job {job} failed: ended without a result (state {state}): {cause}; log: {log_path}"


@contextlib.contextmanager
def slurm_reporting() -> Iterator[None]:
    """Around the submission and watching of a SLURM sweep: quiet sacct warnings, one-line failures.

    Raises:
        JobFailed: a job failed (its own error, or it died without a result).
    """
    from submitit.core.utils import UncompletedJobError
    from submitit.slurm.slurm import SlurmInfoWatcher

    sacct = _SacctOnce()
    log = logging.getLogger("submitit")
    log.addFilter(sacct)
    update = SlurmInfoWatcher.update
    SlurmInfoWatcher.update = _watcher_update
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing a traceback
    try:
        # The job's one-line error (JobFailed) already names its overrides.
        with contextlib.redirect_stderr(_DropLines(sys.stderr, ("Error executing job with overrides",))):
            yield
    except UncompletedJobError as e:
        raise JobFailed(_uncompleted_line(e)) from None
    finally:
        SlurmInfoWatcher.update = update
        log.removeFilter(sacct)
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


def in_slurm_job() -> bool:
    """True inside a job that submitit started on SLURM."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SUBMITIT_FOLDER" in os.environ


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, BenchmarkError) else text


def run_in_job(task: Callable[[], Any]) -> Any:
    """Run ``task`` inside a SLURM job; a failure becomes :class:`JobFailed` naming the job and its log.

    The full traceback goes to the job's stderr log first. The error is raised, never turned into an
    exit: submitit then records it, and the submitting command reports it.
    """
    try:
        return task()
    except Exception as e:
        import submitit
        from hydra.core.hydra_config import HydraConfig

        env = submitit.JobEnvironment()
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        traceback.print_exc()
        sys.stderr.flush()
        raise JobFailed(
            f"SLURM job {env.job_id} ({' '.join(overrides)}) failed: {_one_line(e)}; log: {env.paths.stderr}"
        ) from None


def requeued_checkpoint(ckpt_path: str | None, ckpt_dir: Path) -> str | None:
    """``ckpt_path`` for training: ``"last"`` in a SLURM job that was requeued and left a ``last.ckpt``.

    SLURM counts a job's restarts in ``SLURM_RESTART_COUNT``; the first start deletes the run's
    checkpoint folder, so a ``last.ckpt`` found after a restart is this job's own.
    """
    if ckpt_path is not None:
        return ckpt_path
    try:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        restarts = 0
    if restarts > 0 and (ckpt_dir / "last.ckpt").is_file():
        return "last"
    return None
