"""The ``llm4rec`` command: parses arguments, composes the config, calls pure functions.

llm4rec run [-m] [OVERRIDE ...]            train + evaluate (Hydra multirun with -m)
llm4rec run --cfg job [-m] [OVERRIDE ...]  each job's resolved config, run id, existing record/weights
llm4rec export-split [OVERRIDE ...] out=DIR
llm4rec leaderboard [--runs DIR] [--out DIR]
llm4rec data prepare data=NAME [OVERRIDE ...]
llm4rec data stats data=NAME [OVERRIDE ...]
llm4rec submit RUN_DIR [--out ARCHIVE]
llm4rec validate ARCHIVE_OR_RUN_DIR
llm4rec reproduce RUN_DIR [reproduce.tolerance_cpu=X]
llm4rec slurm-scripts [OVERRIDE ...] out=DIR            sbatch scripts of a sweep, not submitted
llm4rec crosscheck model=deepfm|sasrec [OVERRIDE ...]   ours vs RecBole's own trainer
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from benchmark.errors import BenchmarkError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _fail(msg: str) -> None:
    print(f"llm4rec: error: {msg}", file=sys.stderr)
    sys.exit(2)


def _one_line(exc: BaseException) -> str:
    text = " ".join(s.strip() for s in str(exc).splitlines() if s.strip())
    cause = exc.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        text += ": " + " ".join(s.strip() for s in str(cause).splitlines() if s.strip())
    return text or type(exc).__name__


_OPTION_NAMES = re.compile(r"^[\w.\-]+(,[\w.\-]+)*$")


def nested_group_overrides(overrides: list[str]) -> list[str]:
    """``adapter.encoder=open_clip`` -> ``adapter/encoder=open_clip`` for nested config groups.

    Hydra selects an option of a nested group only with a slash (``adapter/encoder=NAME``); with a
    dot it would replace the whole node by the string NAME. An override ``a.b=NAME`` (or a sweep
    ``a.b=N1,N2``) whose ``configs/a/b/`` is a config group is rewritten, so both spellings work.
    """
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        group = key.replace(".", "/")
        if (
            sep
            and "." in key
            and not key.startswith(("+", "~"))
            and "@" not in key
            and _OPTION_NAMES.match(value)
            and (CONFIG_DIR / group).is_dir()
        ):
            o = f"{group}={value}"
        out.append(o)
    return out


def _override_key(override: str) -> str:
    return override.partition("=")[0]


def _is_group_choice(override: str) -> bool:
    """``model=tallrec``, ``experiment=...``: an override that picks a config group's option."""
    key = _override_key(override)
    return "=" in override and "." not in key and "@" not in key and (CONFIG_DIR / key.lstrip("+~")).is_dir()


def module_shorthand(overrides: list[str]) -> list[str]:
    """``model.shots=64`` -> ``model.module.shots=64`` where the chosen model keeps that key in its module.

    A model's own parameters (the constructor's arguments: ``shots``, ``lora``, ``backbone`` ...)
    live under ``model.module``, so one sweep key reaches every model that has it. An override
    ``model.KEY...=V`` whose KEY the chosen model config lacks at its top level but has under
    ``module`` is rewritten there, for every model a sweep of group choices picks (``model=a,b``,
    ``experiment=...``); anything else is left for Hydra to accept or reject. Both spellings give
    the same resolved config, hence the same run id.
    """
    short = [
        i
        for i, o in enumerate(overrides)
        if "=" in o
        and _override_key(o).startswith("model.")
        and not _override_key(o).startswith("model.module.")
        and "@" not in _override_key(o)
    ]
    if not short:
        return overrides
    models = [
        _compose(nested_group_overrides(combo)).model
        for combo in _expand_sweeps([o for o in overrides if _is_group_choice(o)])
    ]
    out = list(overrides)
    for i in short:
        key = _override_key(overrides[i])[len("model.") :].split(".")[0]
        if all(key not in m and key in (m.get("module") or {}) for m in models):
            out[i] = "model.module." + overrides[i][len("model.") :]
    return out


def expand_overrides(overrides: list[str]) -> list[str]:
    """The command line's overrides as Hydra takes them: nested group choices with a slash and
    model shorthands under ``model.module`` (see :func:`nested_group_overrides`, :func:`module_shorthand`)."""
    return module_shorthand(nested_group_overrides(overrides))


def compose(overrides: list[str], hydra: bool = False):
    """Compose the root config with command-line overrides (no run directory, no chdir).

    With ``hydra=True`` the ``hydra`` node (launcher, sweeper) is included.
    """
    return _compose(expand_overrides(overrides), hydra)


def _compose(overrides: list[str], hydra: bool = False):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from benchmark.config import register_schemas

    if not CONFIG_DIR.is_dir():
        _fail(f"config directory not found: {CONFIG_DIR}")
    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hcompose(
                config_name="config", overrides=overrides, return_hydra_config=hydra
            )
    except BenchmarkError:
        raise
    except Exception as e:  # Hydra/OmegaConf composition errors: unknown key, group option, type
        _fail(_one_line(e))
    finally:
        GlobalHydra.instance().clear()


def _expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """Every combination of the sweep overrides (``a=1,2``), each as a plain override list."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        _fail(_one_line(e))
    choices = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(c) for c in itertools.product(*choices)]


def check_config(cfg, read_data: bool = True) -> None:
    """Validate a composed config before anything runs (one-line error ``<key>: <reason>``, exit 2).

    The typed groups (data, split, eval, slices), the item adapter, then every other value
    (:func:`benchmark.checks.check_values`: seed, model and trainer arguments, cut-offs against
    the catalogue, paths). ``read_data=False`` never prepares a dataset from raw files.
    """
    from benchmark.config import DataConfig, EvalConfig, SliceConfig, SplitConfig, to_object

    for key, cls in (
        ("data", DataConfig),
        ("split", SplitConfig),
        ("eval", EvalConfig),
        ("slices", SliceConfig),
    ):
        try:
            to_object(cfg[key], cls)
        except BenchmarkError as e:
            _fail(str(e))
        except Exception as e:
            _fail(f"{key}: {_one_line(e)}")
    from benchmark.run import check_adapter

    try:
        check_adapter(cfg.model, cfg.get("adapter"))
    except BenchmarkError as e:
        _fail(str(e))
    from benchmark.checks import check_values

    try:
        check_values(cfg, read_data=read_data)
    except BenchmarkError as e:
        _fail(str(e))


def _task(cfg) -> None:
    from benchmark.launch import in_slurm_job, run_in_job
    from benchmark.run import run

    if in_slurm_job():  # raised, not exited: submitit hands the error to the submitting command
        run_in_job(lambda: run(cfg))
        return
    try:
        run(cfg)
    except BenchmarkError as e:
        _fail(str(e))


CFG_CHOICES = ("job", "hydra", "all")
INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def run_flags(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``llm4rec run``'s arguments into its flags and the overrides.

    Flags: ``-m/--multirun``, ``--cfg/-c job|hydra|all``, ``--resolve`` (the job config is always
    printed resolved), ``--info [WHAT]``, ``--hydra-help``. Any other argument starting with ``-``
    is an error (one line, exit 2) instead of an override Hydra cannot parse.
    """
    flags: dict[str, Any] = {"multirun": False, "cfg": None, "info": None, "hydra_help": False}
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        name, eq, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        if a in ("-m", "--multirun"):
            flags["multirun"] = True
        elif name in ("--cfg", "-c"):
            value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 0 if eq else 1
            if value not in CFG_CHOICES:
                _fail(f"run: --cfg takes one of {', '.join(CFG_CHOICES)}, got '{value}'")
            flags["cfg"] = value
        elif name == "--info":
            value = inline if eq else ("all" if i + 1 >= len(argv) or argv[i + 1] not in INFO_CHOICES else argv[i + 1])
            i += 1 if not eq and i + 1 < len(argv) and argv[i + 1] == value else 0
            if value not in INFO_CHOICES:
                _fail(f"run: --info takes one of {', '.join(INFO_CHOICES)}, got '{value}'")
            flags["info"] = value
        elif a == "--resolve":
            pass
        elif a in ("--hydra-help", "hydra/help"):
            flags["hydra_help"] = True
        elif a.startswith("-") and "=" not in a:
            _fail(f"run: unknown option {a} (see llm4rec run --help)")
        else:
            overrides.append(a)
        i += 1
    return flags, overrides


def _hydra_main(argv: list[str]) -> None:
    """Hand a command line to Hydra (the real program stays argv[0]: Lightning's DDP launcher
    re-executes it for every extra process)."""
    import hydra

    from benchmark.config import register_schemas

    register_schemas()
    sys.argv = [sys.argv[0], *argv]
    hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(_task)()


def cmd_run(argv: list[str]) -> None:
    flags, raw = run_flags(argv)
    if flags["hydra_help"]:
        _hydra_main(["--hydra-help"])
        return
    from benchmark.launch import launch_multirun, split_overrides, sweep_jobs

    overrides = expand_overrides(raw)
    # The jobs as Hydra will launch them (with -m, experiment sweeps included).
    combos = sweep_jobs(overrides) if flags["multirun"] else _expand_sweeps(overrides)
    if flags["cfg"]:
        show_jobs(combos, flags["cfg"], split_overrides(overrides)[0])
        return
    if flags["info"]:
        for combo in combos:
            check_config(_compose(combo), read_data=False)
        _hydra_main(["--info", flags["info"], *overrides])
        return
    if flags["multirun"]:  # every job checked before any starts; SLURM resources follow the trainer
        launch_multirun(overrides, lambda o, h: _compose(o, hydra=h), check_config, _hydra_main)
        return
    for combo in combos:  # validate the job before it runs
        check_config(_compose(combo))
    _hydra_main(overrides)


def job_facts(cfg) -> list[str]:
    """Run id, and whether the run's record, reusable trained weights or last checkpoint exist."""
    from benchmark.run import config_hashes, run_id_for, training_key

    run_id = run_id_for(cfg, config_hashes(cfg)[0])
    record = Path(cfg.paths.results) / "runs" / run_id / "record.json"
    lines = [f"run id: {run_id}"]
    if record.is_file():
        then = "skipped (skip_existing=true)" if cfg.get("skip_existing") else "rewritten by this run"
        lines.append(f"record: {record} exists; {then}")
    else:
        lines.append(f"record: none yet ({record})")
    if not cfg.model.get("train"):
        lines.append(f"trained weights: none needed (model {cfg.model.name} trains nothing)")
    else:
        weights = Path(cfg.paths.outputs) / "models" / training_key(cfg)[:16]
        if cfg.get("load_weights"):
            lines.append(f"trained weights: load_weights={cfg.load_weights} (nothing is trained)")
        elif (weights / "training.json").is_file():
            use = "reused (no training)" if cfg.get("reuse_trained", True) else "ignored (reuse_trained=false)"
            lines.append(f"trained weights: {weights} exist; {use}")
        else:
            lines.append(f"trained weights: none yet ({weights}); this run trains")
        last = Path(cfg.paths.outputs) / "checkpoints" / run_id / "last.ckpt"
        if last.is_file():
            lines.append(f"last checkpoint: {last} (resume with ckpt_path=last)")
    return lines


def show_jobs(combos: list[list[str]], what: str, hydra_overrides: list[str] | None = None) -> None:
    """``run --cfg job|hydra|all``: print every job's config and facts; run and write nothing.

    ``hydra_overrides`` (``hydra/launcher=...``, ``hydra.*``) apply to the printed ``hydra`` node.
    """
    from omegaconf import OmegaConf

    for n, combo in enumerate(combos):
        cfg = _compose(combo)
        check_config(cfg, read_data=False)
        if len(combos) > 1:
            print(f"# job {n} of {len(combos)}: {' '.join(combo)}")
        if what in ("job", "all"):
            print(OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)), end="")
        if what in ("hydra", "all"):  # unresolved: the run directory is known only when a job starts
            hydra_node = _compose([*(hydra_overrides or []), *combo], hydra=True).hydra
            print(OmegaConf.to_yaml({"hydra": OmegaConf.to_container(hydra_node, resolve=False)}), end="")
        for line in job_facts(cfg):
            print(f"# {line}")
        if n + 1 < len(combos):
            print()


def _pop_out(argv: list[str]) -> tuple[list[str], str | None]:
    out = [a.split("=", 1)[1] for a in argv if a.startswith("out=")]
    return [a for a in argv if not a.startswith("out=")], (out[-1] if out else None)


def cmd_export_split(argv: list[str]) -> None:
    from benchmark.data.export import export_split

    overrides, out = _pop_out(argv)
    if not out:
        _fail("export-split needs out=DIR")
    cfg = compose(overrides)
    check_config(cfg)
    path = export_split(cfg, Path(out))
    print(f"split written to {path}")


def cmd_leaderboard(argv: list[str]) -> None:
    from benchmark.results.leaderboard import write_leaderboard

    p = argparse.ArgumentParser(
        prog="llm4rec leaderboard",
        description="Aggregate the run records under --runs into leaderboard tables (one per test set). "
        "A record that cannot be read, or a copy of a run already counted, is skipped with a warning naming its file.",
    )
    p.add_argument("--runs", default="results/runs", help="directory of run folders, searched recursively")
    p.add_argument("--out", default="results", help="where leaderboard.{md,csv,tex,html} are written")
    p.add_argument("--wandb", action="store_true", help="also log the table to wandb (offline unless a key is set)")
    a = p.parse_args(argv)
    table = write_leaderboard(Path(a.runs), Path(a.out))
    print(table)
    if a.wandb:
        from benchmark.loggers import log_leaderboard_table
        from benchmark.results.leaderboard import aggregate, load_runs

        def quiet(_: str) -> None:  # the warnings were printed by write_leaderboard already
            return None

        where = log_leaderboard_table(aggregate(load_runs(Path(a.runs), quiet), quiet), "outputs/wandb")
        print(f"wandb: leaderboard table logged in {where} (upload with `wandb sync {where}` when offline)")


def cmd_data(argv: list[str]) -> None:
    if not argv or argv[0] not in ("prepare", "stats"):
        _fail("usage: llm4rec data {prepare,stats} data=NAME [OVERRIDE ...]")
    from benchmark.config import DataConfig, to_object
    from benchmark.data.loading import dataset_dir, load_dataset

    cfg = compose(argv[1:])
    check_config(cfg, read_data=False)  # the command itself prepares and reads the data
    dcfg = to_object(cfg.data, DataConfig)
    if argv[0] == "prepare":
        print(f"{dcfg.name}: atomic files in {dataset_dir(dcfg)}")
    else:
        for k, v in load_dataset(dcfg).stats().items():
            print(f"{k}\t{v}")


def cmd_submit(argv: list[str]) -> None:
    from benchmark.results.submission import submit

    p = argparse.ArgumentParser(prog="llm4rec submit")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="archive path (default submissions/<run_id>.tar.gz)")
    a = p.parse_args(argv)
    print(submit(Path(a.run_dir), Path(a.out) if a.out else None))


def cmd_validate(argv: list[str]) -> None:
    """Print every check and, last, the verdict: ``ACCEPTED <source>`` (exit 0) or
    ``REJECTED <check>: <reason>`` (exit 1). Only standard-library modules are loaded until the
    archive has passed its size limits."""
    from benchmark.results.submission import validate

    p = argparse.ArgumentParser(prog="llm4rec validate")
    p.add_argument("source", help="run folder or submission archive (.tar.gz)")
    p.add_argument("--data", default=None, help="your copy of the atomic dataset of a data.source=atomic run")
    a = p.parse_args(argv)
    report = validate(Path(a.source), data_path=Path(a.data) if a.data else None)
    print(report.summary())
    if not report.ok:
        sys.exit(1)


def cmd_reproduce(argv: list[str]) -> None:
    import torch

    from benchmark.results.submission import environment_differences, reproduce

    if not argv or "=" in argv[0]:
        _fail("usage: llm4rec reproduce RUN_DIR [reproduce.tolerance_cpu=X] [hydra.searchpath=[file://DIR]] [KEY=PATH ...]")
    cfg = compose(argv[1:])  # the user's own overrides (trusted): tolerance, search path, local paths
    tol = float(cfg.reproduce.tolerance_gpu if torch.cuda.is_available() else cfg.reproduce.tolerance_cpu)
    passed, rows, old, new = reproduce(Path(argv[0]), tol, argv[1:])
    for diff in environment_differences(old, new):
        print(f"note: version differs: {diff}")
    width = max(len(k) for k, *_ in rows)
    for k, a, b, d in rows:
        flag = "ok" if d <= tol else "FAIL"
        print(f"{k:<{width}}  recorded={a}  reproduced={b}  |diff|={d:.3g}  {flag}")
    print(f"{'PASS' if passed else 'FAIL'}: {len(rows)} metrics, tolerance {tol:g}")
    if not passed:
        sys.exit(1)


def cmd_slurm_scripts(argv: list[str]) -> None:
    """Dry run of a SLURM sweep: one sbatch script per job ``run -m`` would submit, none submitted."""
    from benchmark.launch import multirun_plan, split_overrides
    from benchmark.slurm import write_scripts

    overrides, out = _pop_out([a for a in argv if a not in ("-m", "--multirun")])
    if not out:
        _fail("slurm-scripts needs out=DIR")
    overrides = expand_overrides(overrides)
    jobs, extra = multirun_plan(overrides, lambda o, h: _compose(o, hydra=h), check_config)
    hydra_overrides = split_overrides(overrides)[0] + (extra or [])
    paths = write_scripts(jobs, [_compose(hydra_overrides + j, hydra=True) for j in jobs], Path(out))
    print(f"{len(paths)} sbatch scripts written to {out}")


def cmd_crosscheck(argv: list[str]) -> None:
    from baselines.crosscheck import main as crosscheck_main

    crosscheck_main(argv)


COMMANDS = {
    "run": cmd_run,
    "export-split": cmd_export_split,
    "leaderboard": cmd_leaderboard,
    "data": cmd_data,
    "submit": cmd_submit,
    "validate": cmd_validate,
    "reproduce": cmd_reproduce,
    "slurm-scripts": cmd_slurm_scripts,
    "crosscheck": cmd_crosscheck,
}


def _print(text: str) -> None:
    """Print a help text; a reader that stops early (``| head``) is not an error."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit


# Commands that parse their options with argparse, which answers -h/--help itself.
ARGPARSE_COMMANDS = ("leaderboard", "submit")


def main(argv: list[str] | None = None) -> None:
    # Our launcher YAMLs complete the plugins' configs of the same name; Hydra warns about that match.
    warnings.filterwarnings("ignore", message="(?s).*is validated against ConfigStore schema")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and "LOCAL_RANK" in os.environ:
        # A DDP process started by Lightning: it re-runs our command line without the subcommand.
        argv = ["run", *argv]
    from benchmark import help as texts

    if not argv:
        print(texts.main_help(), file=sys.stderr)
        sys.exit(2)
    if argv[0] in ("-h", "--help"):
        _print(texts.main_help())
        sys.exit(0)
    if argv[0] == "--version":
        _print(texts.version())
        sys.exit(0)
    if argv[0] not in COMMANDS:
        _fail(f"unknown command '{argv[0]}' (one of: {', '.join(COMMANDS)}; see llm4rec --help)")
    if argv[0] == "run" and any(a in ("-h", "--help") for a in argv[1:]):
        _print(texts.run_help(CONFIG_DIR))
        sys.exit(0)
    if argv[0] not in ARGPARSE_COMMANDS and any(a in ("-h", "--help") for a in argv[1:]):
        _print(texts.command_help(argv[0]))
        sys.exit(0)
    try:
        COMMANDS[argv[0]](argv[1:])
    except BenchmarkError as e:
        _fail(str(e))


if __name__ == "__main__":
    main()
