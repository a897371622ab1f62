"""Help texts of the ``llm4rec`` command, generated from what exists: the config groups and their
options in ``configs/`` (each described by the leading comment of its YAML file), the root
config's keys (described by the comment above them) and the package version.

Nothing here is typed twice: a new config file shows up in ``llm4rec run --help`` with the first
sentence of its leading comment.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import yaml

WIDTH = 110  # descriptions are cut (at a word, with an ellipsis) to fit one line

# Commands: usage line and what they do (the first sentence is the summary in `llm4rec --help`).
COMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "llm4rec run [-m] [--cfg job|hydra|all] [--info [WHAT]] [OVERRIDE ...]",
        "Train and evaluate one experiment (a sweep with -m) and write its run record. Every job of a "
        "sweep is composed and checked before the first one starts.",
    ),
    "export-split": (
        "llm4rec export-split [OVERRIDE ...] out=DIR",
        "Write a split's exact rows (raw ids) to DIR. Train, valid and test parts, the fixed negatives "
        "of a sampled protocol and the slice membership, one file each.",
    ),
    "leaderboard": (
        "llm4rec leaderboard [--runs DIR] [--out DIR] [--wandb]",
        "Aggregate the run records under --runs into leaderboard.{md,csv,tex,html}.",
    ),
    "data": (
        "llm4rec data {prepare,stats} data=NAME [OVERRIDE ...]",
        "Prepare a standard dataset from its raw files, or print its size and density. With prepare: atomic "
        "files from the recipe in datasets/<name>; with stats: users, items, interactions, density.",
    ),
    "submit": (
        "llm4rec submit RUN_DIR [--out ARCHIVE]",
        "Pack a run folder (record and predictions) into a submission archive.",
    ),
    "validate": (
        "llm4rec validate ARCHIVE_OR_RUN_DIR",
        "Check a submission archive or run folder against the canonical split. Every metric is "
        "recomputed from its predictions; prints ACCEPTED, or REJECTED with the failed check.",
    ),
    "reproduce": (
        "llm4rec reproduce RUN_DIR [reproduce.tolerance_cpu=X] [reproduce.tolerance_gpu=X]",
        "Re-run a recorded run from its configuration and compare every metric with the record.",
    ),
    "slurm-scripts": (
        "llm4rec slurm-scripts [OVERRIDE ...] out=DIR",
        "Write one sbatch script per job of a sweep to DIR without submitting them (a dry run).",
    ),
    "crosscheck": (
        "llm4rec crosscheck model=deepfm|sasrec [OVERRIDE ...] [out=FILE]",
        "Train a RecBole model with our Lightning task and with RecBole's own trainer; print both.",
    ),
    "audit": (
        "llm4rec audit [OVERRIDE ...] [--index FILE] [--out FILE] | --files DIR [--layout export|p5|tallrec]",
        "Audit a split and its item indexes for leakage and index quality, or external files with --files. "
        "Timeline leakage, overlap and duplicates, fixed negatives, label balance, identifier leakage and "
        "semantic-id quality, each finding info, warning or error; exit 1 when a finding exceeds its "
        "audit.fail threshold (configs/audit/default.yaml).",
    ),
    "explain": (
        "llm4rec explain [generator=NAME] [judge=NAME] [OVERRIDE ...] | llm4rec explain --check RUN_DIR",
        "Explain recommended (user, item) pairs in one sentence (template, causal LM zero-shot or tuned, "
        "P5-style T5), check every cited title and stated genre/year, score with an LLM judge and, with "
        "references, BLEU/ROUGE/BERTScore; --check recomputes a stored run's metrics (configs/explain).",
    ),
    "converse": (
        "llm4rec converse [recommender=ranker|llm|hybrid] [simulator=rule|llm] [OVERRIDE ...] | llm4rec converse --check RUN_DIR",
        "Conversational recommendation: one session per test row, a recommender that asks or recommends for at most "
        "T turns and a user simulator that knows the target. Writes success@t, recall per turn, hallucination and "
        "prompt-token metrics with every dialogue (configs/conversation); --check recomputes them from the dialogues.",
    ),
    "tune": (
        "llm4rec tune [search=NAME] [search.trials=N] [search.sampler_seed=S] [search.seeds=[1,2,3]] [OVERRIDE ...]",
        "Tune a model on the validation metric with Hydra's Optuna sweeper (the space of configs/search/NAME.yaml, "
        "NAME defaulting to the model's name; search.trials trials, a seeded sampler; test metrics are never read), "
        "then run the best trial's config once per seed; each run's record names its search (config key tuning).",
    ),
}

_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\bal)(?<!\bvs)(?<!\bcf)\.(?=\s+[A-Z(`]|\s*$)")


def one_line(text: str, width: int = WIDTH) -> str:
    """The first sentence of ``text`` on one line, cut at a word to ``width`` characters."""
    text = " ".join(text.split())
    m = _SENTENCE_END.search(text)
    if m:
        text = text[: m.end()]
    if len(text) > width:
        text = text[: width - 1].rsplit(" ", 1)[0].rstrip(" ,;:(") + "…"
    return text


def _ends_sentence(line: str) -> bool:
    return bool(_SENTENCE_END.search(line)) or line.rstrip().endswith((".", ":")) and not line.rstrip().endswith(
        ("e.g.", "i.e.", "al.", "vs.", "cf.")
    )


def leading_comment(path: Path) -> str:
    """The comment block at the top of a YAML file up to the end of its first sentence, on one
    line, without Hydra directives (``# @package``)."""
    lines: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        s = raw.strip()
        if not s.startswith("#"):
            if s or lines:  # blank lines before the comment are skipped; after it, they end it
                break
            continue
        body = s.lstrip("#").strip()
        if body.startswith("@"):
            continue
        lines.append(body)
        if _ends_sentence(body):
            break
    return " ".join(lines).strip()


def describe(path: Path) -> str:
    """One-line description of a config option: the first sentence of its leading comment."""
    return one_line(leading_comment(path))


@dataclass(frozen=True)
class Group:
    """A config group (a folder of ``configs/``) and its options (name -> description)."""

    name: str
    options: dict[str, str]
    default: str | None


def root_defaults(config_dir: Path) -> dict[str, str | None]:
    """Group -> option chosen by the root config's defaults list (``data: ml-100k`` ...)."""
    root = config_dir / "config.yaml"
    if not root.is_file():
        return {}
    doc = yaml.safe_load(root.read_text(encoding="utf-8")) or {}
    out: dict[str, str | None] = {}
    for entry in doc.get("defaults", []) or []:
        if isinstance(entry, dict):
            for k, v in entry.items():
                out[str(k).split("@")[0].removeprefix("override ").strip("/")] = None if v is None else str(v)
    return out


def config_groups(config_dir: Path) -> list[Group]:
    """Every folder of ``config_dir`` holding YAML files, with its options, sorted by name."""
    defaults = root_defaults(config_dir)
    groups = []
    for d in sorted(p for p in config_dir.rglob("*") if p.is_dir()):
        files = sorted(d.glob("*.yaml"))
        if not files:
            continue
        name = d.relative_to(config_dir).as_posix()
        options = {f.stem: describe(f) for f in files}
        groups.append(Group(name, options, defaults.get(name)))
    return groups


def root_keys(config_dir: Path) -> dict[str, str]:
    """Top-level keys of the root config (but ``defaults`` and ``hydra``) -> the comment above them."""
    root = config_dir / "config.yaml"
    if not root.is_file():
        return {}
    keys: dict[str, str] = {}
    comment: list[str] = []
    for raw in root.read_text(encoding="utf-8").splitlines():
        if raw.startswith("#"):
            comment.append(raw.lstrip("#").strip())
            continue
        m = re.match(r"^([A-Za-z_][\w]*):", raw)
        if m and m.group(1) not in ("defaults", "hydra"):
            after = raw.split("#", 1)[1].strip() if "#" in raw else ""
            keys[m.group(1)] = one_line(" ".join(comment) or after)
        if raw.strip() == "" or not raw.startswith(" "):
            comment = []
    return keys


def version() -> str:
    """``llm4rec-bench X.Y.Z`` from the installed distribution's metadata."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return f"llm4rec-bench {dist_version('llm4rec-bench')}"
    except PackageNotFoundError:
        return "llm4rec-bench (not installed: version unknown)"


def main_help() -> str:
    """``llm4rec --help``: the commands, one line each."""
    width = max(len(c) for c in COMMANDS)
    lines = [
        "usage: llm4rec COMMAND [ARGS ...]",
        "",
        "A reproducible benchmark for LLM recommenders and classic baselines: composed experiments,",
        "fingerprinted splits, one evaluator, run records anyone can validate, reproduce and rank.",
        "",
        "commands:",
    ]
    lines += [f"  {c:<{width}}  {one_line(desc, WIDTH - width - 4)}" for c, (_, desc) in COMMANDS.items()]
    lines += [
        "",
        "options:",
        "  -h, --help     this text; `llm4rec COMMAND --help` describes one command",
        "  --version      the installed version",
        "",
        "`llm4rec run --help` lists every config group, option and top-level key.",
    ]
    return "\n".join(lines)


def command_help(name: str) -> str:
    """``llm4rec NAME --help`` for a command other than ``run``."""
    usage, desc = COMMANDS[name]
    return f"usage: {usage}\n\n{textwrap.fill(desc, WIDTH - 10)}"


RUN_FLAGS = [
    ("-m, --multirun", "a sweep: every combination of comma-separated values (model=pop,bpr seed=1,2)"),
    ("--cfg job|hydra|all", "print each job's resolved config, run id, and whether its record or trained"),
    ("", "weights exist; trains nothing, writes nothing (-c is short for --cfg)"),
    ("--info [WHAT]", "Hydra's information (all, config, defaults, defaults-tree, plugins, searchpath)"),
    ("--hydra-help", "Hydra's own help (hydra/help is the same)"),
    ("-h, --help", "this text"),
]


def run_help(config_dir: Path) -> str:
    """``llm4rec run --help``: flags, then every config group with its options, then the root keys."""
    usage, desc = COMMANDS["run"]
    lines = [f"usage: {usage}", "", textwrap.fill(desc, WIDTH - 10), "", "options:"]
    lines += [f"  {flag:<22}{text}" for flag, text in RUN_FLAGS]
    lines += ["", "config groups (GROUP=OPTION; * = default; nested groups also as a.b=OPTION):"]
    groups = config_groups(config_dir)
    width = max((len(o) for g in groups for o in g.options), default=0)
    for g in groups:
        lines.append(f"  {g.name}")
        for opt, text in g.options.items():
            mark = "*" if opt == g.default else " "
            lines.append(f"   {mark} {opt:<{width}}  {one_line(text, WIDTH - width - 7)}")
    keys = root_keys(config_dir)
    if keys:
        kw = max(len(k) for k in keys)
        lines += ["", "top-level keys (KEY=VALUE):"]
        lines += [f"  {k:<{kw}}  {one_line(text, WIDTH - kw - 4)}" for k, text in keys.items()]
    lines += [
        "",
        "Any key of a group is set with GROUP.KEY=VALUE (model.train.max_epochs=5, eval.ks=[5,10]);",
        "model.KEY=VALUE is short for model.module.KEY=VALUE. See a job's keys with --cfg job.",
    ]
    return "\n".join(line.rstrip() for line in lines)
