"""The ``llm4rec`` command: parses arguments, calls pure functions, prints; errors are one line, exit 2.

Composing and checking configs is :mod:`benchmark.compose`; a ``BenchmarkError`` raised anywhere below
becomes ``llm4rec: error: <message>`` and exit status 2.

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
llm4rec audit [OVERRIDE ...] | --files DIR [--out FILE]  leakage and index quality of a split
llm4rec explain [OVERRIDE ...] | --check RUN_DIR        explanations of recommendations, checked and scored
llm4rec converse [OVERRIDE ...] | --check RUN_DIR       conversational recommendation with a user simulator
llm4rec tune [search=NAME] [search.trials=N] [OVERRIDE ...]  search on valid, then best config x seeds
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from benchmark.errors import BenchmarkError

# Heavy modules (Hydra, torch, benchmark.compose) are imported by the commands that need them:
# ``validate`` loads only the standard library until an archive has passed its size limits.


def _fail(msg: str) -> None:
    print(f"llm4rec: error: {msg}", file=sys.stderr)
    sys.exit(2)


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
    """Hand a command line to Hydra, which runs :func:`_task` for each job."""
    from benchmark.compose import hydra_main

    hydra_main(_task, argv)


def cmd_run(argv: list[str]) -> None:
    flags, raw = run_flags(argv)
    if flags["hydra_help"]:
        _hydra_main(["--hydra-help"])
        return
    from benchmark.compose import check_config, compose_expanded, expand_overrides, expand_sweeps
    from benchmark.launch import JobFailed, launch_multirun, split_overrides, sweep_jobs

    overrides = expand_overrides(raw)
    # The jobs as Hydra will launch them (with -m, experiment sweeps included).
    combos = sweep_jobs(overrides) if flags["multirun"] else expand_sweeps(overrides)
    if flags["cfg"]:
        show_jobs(combos, flags["cfg"], split_overrides(overrides)[0])
        return
    if flags["info"]:
        for combo in combos:
            check_config(compose_expanded(combo), read_data=False)
        _hydra_main(["--info", flags["info"], *overrides])
        return
    if flags["multirun"]:  # every job checked before any starts; SLURM resources follow the trainer
        try:
            launch_multirun(overrides, lambda o, h: compose_expanded(o, hydra=h), check_config, _hydra_main)
        except JobFailed as e:  # the job's own error, already one line: exit 1, not a usage error
            print(f"llm4rec: error: {e}", file=sys.stderr)
            sys.exit(1)
        return
    for combo in combos:  # validate the job before it runs
        check_config(compose_expanded(combo))
    _hydra_main(overrides)


def job_facts(cfg) -> list[str]:
    """Run id, and whether the run's record, reusable trained weights or last checkpoint exist."""
    from benchmark.results.identity import config_hashes, run_id_for, training_key

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

    from benchmark.compose import check_config, compose_expanded

    for n, combo in enumerate(combos):
        cfg = compose_expanded(combo)
        check_config(cfg, read_data=False)
        if len(combos) > 1:
            print(f"# job {n} of {len(combos)}: {' '.join(combo)}")
        if what in ("job", "all"):
            print(OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)), end="")
        if what in ("hydra", "all"):  # unresolved: the run directory is known only when a job starts
            hydra_node = compose_expanded([*(hydra_overrides or []), *combo], hydra=True).hydra
            print(OmegaConf.to_yaml({"hydra": OmegaConf.to_container(hydra_node, resolve=False)}), end="")
        for line in job_facts(cfg):
            print(f"# {line}")
        if n + 1 < len(combos):
            print()


def _pop_out(argv: list[str]) -> tuple[list[str], str | None]:
    out = [a.split("=", 1)[1] for a in argv if a.startswith("out=")]
    return [a for a in argv if not a.startswith("out=")], (out[-1] if out else None)


def cmd_export_split(argv: list[str]) -> None:
    from benchmark.compose import check_config, compose
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
    from benchmark.compose import check_config, compose
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
    from benchmark.reproduce import environment_differences, reproduce, tolerance

    if not argv or "=" in argv[0]:
        _fail("usage: llm4rec reproduce RUN_DIR [reproduce.tolerance_cpu=X] [hydra.searchpath=[file://DIR]] [KEY=PATH ...]")
    tol = tolerance(argv[1:])  # the user's own overrides (trusted): tolerance, search path, local paths
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
    from benchmark.compose import check_config, compose_expanded, expand_overrides
    from benchmark.launch import multirun_plan, split_overrides
    from benchmark.slurm import write_scripts

    overrides, out = _pop_out([a for a in argv if a not in ("-m", "--multirun")])
    if not out:
        _fail("slurm-scripts needs out=DIR")
    overrides = expand_overrides(overrides)
    jobs, extra = multirun_plan(overrides, lambda o, h: compose_expanded(o, hydra=h), check_config)
    hydra_overrides = split_overrides(overrides)[0] + (extra or [])
    paths = write_scripts(jobs, [compose_expanded(hydra_overrides + j, hydra=True) for j in jobs], Path(out))
    print(f"{len(paths)} sbatch scripts written to {out}")


def cmd_crosscheck(argv: list[str]) -> None:
    from baselines.crosscheck import main as crosscheck_main

    crosscheck_main(argv)


def cmd_explain(argv: list[str]) -> None:
    """``explain [OVERRIDE ...]``: one explanation run; ``explain --check RUN_DIR [data=.. split=..]``:
    its metrics recomputed from the stored explanations (exit 1 when one differs)."""
    if argv[:1] == ["--check"]:
        from benchmark.explain.record import check_run

        if len(argv) < 2:
            _fail("usage: llm4rec explain --check RUN_DIR [data=NAME split=NAME ...]")
        _print_checks(check_run(Path(argv[1]), argv[2:] or None))
        return
    from benchmark.explain.runner import compose_explain, explain

    _print_metrics(*explain(compose_explain(argv)), "explanations")


def cmd_audit(argv: list[str]) -> None:
    """``audit [OVERRIDE ...]`` / ``audit --files DIR``: print the report (and write ``--out``);
    exit 1 when a finding exceeds its ``audit.fail`` threshold."""
    from benchmark.audit.command import parse_args, run_command
    from benchmark.audit.report import render
    from benchmark.compose import check_config, compose

    args = parse_args(argv)
    cfg = compose(args.compose_overrides())
    if args.files is None:
        check_config(cfg)
    report, status = run_command(cfg, args)
    print(render(report))
    if args.out is not None:
        print(f"report written to {args.out}")
    sys.exit(status)


def cmd_converse(argv: list[str]) -> None:
    """``converse [OVERRIDE ...]``: one conversation run; ``converse --check RUN_DIR``: its metrics
    recomputed from the stored dialogues and its sessions checked against the split (exit 1 when one differs)."""
    from benchmark.conversation.runner import check_run, compose_conversation, conversation_run

    if argv[:1] == ["--check"]:
        if len(argv) != 2:
            _fail("usage: llm4rec converse --check RUN_DIR")
        _print_checks(check_run(Path(argv[1])))
        return
    _print_metrics(*conversation_run(compose_conversation(argv)), "dialogues")


def cmd_tune(argv: list[str]) -> None:
    """``tune [OVERRIDE ...]``: a search on the validation metric per job, then its best config on seeds."""
    from benchmark.tune import tune_command

    tune_command(argv)


def _print_checks(rows: list[tuple[str, Any, Any, bool]]) -> None:
    """One line per recomputed value, then PASS/FAIL; exit 1 when one differs."""
    for k, a, b, ok in rows:
        print(f"{k}  recorded={a}  recomputed={b}  {'ok' if ok else 'FAIL'}")
    bad = sum(1 for *_, ok in rows if not ok)
    print(f"{'FAIL' if bad else 'PASS'}: {len(rows)} checks, {bad} differ")
    if bad:
        sys.exit(1)


def _print_metrics(record: dict[str, Any], path: Path, what: str) -> None:
    for k, v in record["metrics"].items():
        print(f"{k}\t{'null' if v is None else round(v, 4)}")
    print(f"{what} written to {path}")


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
    "audit": cmd_audit,
    "explain": cmd_explain,
    "converse": cmd_converse,
    "tune": cmd_tune,
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
        from benchmark.compose import CONFIG_DIR

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
