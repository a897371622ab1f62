"""Hyper-parameter search of one model on the validation metric, then the chosen config on seeds.

``llm4rec tune [OVERRIDE ...]`` composes each job as ``llm4rec run -m`` would (sweeps of an
experiment config included, e.g. ``model: itemknn,ease``) and, per job:

1. adds the model's search space (``configs/search/<name>.yaml``, ``search=<name>``, default the
   model's name) and checks the search (:func:`search_settings`): a non-empty space of Optuna
   distributions over keys the config has, a trial budget ``search.trials`` >= 1, and an
   objective that is the run's validation metric (``valid/<eval.valid_metric>``);
2. hands the trials to Hydra's Optuna sweeper (``hydra/sweeper=optuna``, a seeded sampler, one
   trial at a time). A trial (:func:`trial_task`) trains on the train part with early stopping
   on the valid part, or fits a model that trains nothing, and returns the validation value:
   no test row is built, scored or read. Each trial's params, value and config hash go to
   ``<paths.outputs>/tune/<study>/trials.jsonl`` and to the committed trial archive
   ``<paths.results>/tune/<study>/trials.jsonl`` (with its ``settings.json``);
3. re-runs the best trial's config with every seed of ``search.seeds`` through
   :func:`benchmark.run.run`; each run's config carries a ``tuning`` node naming the search
   (space, sampler and its seed, budget, trials run, objective, best validation value and
   params, the trial seed and config hash), so its record and the leaderboard say "tuned (N trials)".

A search already done with the same settings (``search.json`` in its folder) is not run again.
A search that stopped part-way (killed, machine lost) resumes: its folder keeps ``settings.json``
and the trials already logged; a rerun with the same settings replays them from the log (the same
seeded sampler proposes the same configs, checked by config hash) and trains only the rest, so the
trials and the choice equal those of an uninterrupted search. The trials logged in the archive
under ``paths.results`` are replayed the same way, so a search survives the loss of its outputs
folder (a fresh checkout, another machine) when its archive is kept with the results. A replayed
trial's value is taken from the log as written (its config hash must match the trial the seeded
sampler proposes); an archive over :data:`ARCHIVE_MAX_BYTES` is refused with one line.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from benchmark.errors import BenchmarkError, ConfigError

SEARCH_KEYS = ("space", "trials", "sampler", "sampler_seed", "seeds", "objective", "max_epochs", "patience")
SAMPLERS = ("tpe", "random")
SAMPLER_NAMES = {"tpe": "TPESampler", "random": "RandomSampler"}
# Keys a search may not vary: they change which rows are scored, or the run's identity.
FIXED_KEYS = ("seed", "data", "split", "eval", "slices", "paths", "search", "tuning", "hydra")


class TrialFailed(BenchmarkError):
    """A trial of a search failed; the message is the trial's own one-line error."""


@dataclass
class Search:
    """A checked search: what is varied, how many trials, how they are sampled and judged.

    Attributes:
        name: the search config (``configs/search/<name>.yaml``).
        space: config key -> Optuna sweeper distribution (``interval(a, b)``, ``tag(log, ...)``,
            ``range(a, b)``, ``choice(...)``).
        trials: the trial budget.
        sampler: ``tpe`` or ``random``; sampler_seed: its seed.
        seeds: the seeds the chosen config is re-run with.
        objective: ``valid/<metric>``, maximized.
        max_epochs, patience: the epoch cap and early-stopping patience of every trial and final
            run of a model trained by gradient (``model.train``; models that train nothing have
            none); None keeps the model config's.
    """

    name: str
    space: dict[str, str]
    trials: int
    sampler: str = "tpe"
    sampler_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    objective: str = ""
    max_epochs: int | None = None
    patience: int | None = None


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def search_settings(cfg: DictConfig, name: str) -> Search:
    """The ``search`` node of a composed tune config, checked.

    Raises:
        ConfigError: one line naming the key: an unknown key, an empty space, a space entry that
            is no distribution or names a key the config lacks (or one a search may not vary), a
            budget below 1, an unknown sampler, no seeds, or an objective that is not the run's
            validation metric (a test metric is refused).
    """
    node = OmegaConf.to_container(cfg.get("search") or {}, resolve=True)
    unknown = sorted(set(node) - set(SEARCH_KEYS))
    if unknown:
        raise ConfigError(f"search.{unknown[0]}: unknown key (one of {', '.join(SEARCH_KEYS)})")
    space = node.get("space") or {}
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"search.space: empty search space (search {name}: no key to search)")
    trials = node.get("trials")
    if not _is_count(trials) or trials < 1:
        raise ConfigError(f"search.trials: a trial budget of at least 1 is needed, got {trials!r}")
    sampler = node.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise ConfigError(f"search.sampler: one of {', '.join(SAMPLERS)}, got {sampler!r}")
    sampler_seed = node.get("sampler_seed", 0)
    if not _is_count(sampler_seed) or sampler_seed < 0:
        raise ConfigError(f"search.sampler_seed: an integer >= 0, got {sampler_seed!r}")
    seeds = node.get("seeds", [1, 2, 3])
    if not isinstance(seeds, list) or not seeds or not all(_is_count(s) and s >= 0 for s in seeds):
        raise ConfigError(f"search.seeds: a non-empty list of integers >= 0, got {seeds!r}")
    valid = f"valid/{cfg.eval.valid_metric}"
    objective = node.get("objective") or valid
    if not str(objective).startswith("valid/"):
        raise ConfigError(
            f"search.objective={objective}: a search selects on the validation metric only ({valid}); "
            "test metrics are never read by it"
        )
    if objective != valid:
        raise ConfigError(
            f"search.objective={objective}: trials validate on {valid} (set eval.valid_metric to change it)"
        )
    for key, expr in space.items():
        _check_space_entry(cfg, str(key), expr)
    caps = {}
    for key, low in (("max_epochs", 1), ("patience", 0)):
        v = node.get(key)
        if v is not None and (not _is_count(v) or v < low):
            raise ConfigError(f"search.{key}: an integer >= {low}, got {v!r}")
        caps[key] = v
    return Search(name, {str(k): str(v) for k, v in space.items()}, trials, sampler, sampler_seed, seeds, objective, **caps)


def _check_space_entry(cfg: DictConfig, key: str, expr: Any) -> None:
    """One ``search.space`` entry: a distribution over a key the run config has."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if key.split(".")[0] in FIXED_KEYS:
        raise ConfigError(f"search.space.{key}: a search may not vary {key.split('.')[0]}")
    if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
        raise ConfigError(f"search.space.{key}: the run config has no key {key}")
    try:
        (parsed,) = OverridesParser.create().parse_overrides([f"{key}={expr}"])
    except Exception as e:
        raise ConfigError(f"search.space.{key}: not an Optuna sweeper distribution ({' '.join(str(e).split())})") from None
    if not parsed.is_sweep_override():
        raise ConfigError(f"search.space.{key}={expr}: a fixed value, not a distribution (interval, range, choice)")
    current = OmegaConf.select(cfg, key)
    if parsed.is_interval_sweep() and _is_count(current) and not _is_count(parsed.value().start):
        # Hydra's interval() is a float interval: a float trial value would reach an integer parameter
        raise ConfigError(
            f"search.space.{key}={expr}: {key} is an integer ({current}); write int(interval(...)) for an integer range"
        )


# ---------------------------------------------------------------------------------------- planning


@dataclass
class Plan:
    """One model's search: its job overrides, the checked search, and its folder."""

    job: list[str]  # the job's task overrides and the ``search.*`` values, without ``search=NAME``
    search: Search
    study: str
    folder: Path
    group: list[str] = field(default_factory=list)  # ``+search=NAME`` when the space comes from a search config
    archive: Path | None = None  # ``<paths.results>/tune/<study>``: the trials kept with the results


def _is_search(override: str) -> bool:
    key = override.partition("=")[0].lstrip("+~")
    return key == "search" or key.startswith("search.")


def plan(job: list[str], search_args: list[str]) -> Plan:
    """Compose and check one job's search before anything runs.

    Args:
        job: the job's task overrides (one combination of the command line's and experiment's sweeps).
        search_args: the command line's ``search=NAME`` (default: the model's name) and ``search.*=``.
    """
    from benchmark.compose import check_config, compose_expanded
    from benchmark.results.identity import training_key

    name, values = str(compose_expanded(job).model.name), []
    named = given_space = False
    for o in search_args:
        key, _, value = o.partition("=")
        if key.lstrip("+") == "search":
            name, named = value, True
        else:
            values.append("++" + o.lstrip("+"))  # set or add: the search config holds only the space
            given_space = given_space or key.lstrip("+") == "search.space"
    # A space on the command line needs no search config (unless one is named with search=NAME).
    group = [f"+search={name}"] if named or not given_space else []
    cfg = _compose_search([*job, *group], values)
    search = search_settings(cfg, name)
    caps = [f"model.train.{k}={getattr(search, k)}" for k in ("max_epochs", "patience") if getattr(search, k) is not None]
    if caps and cfg.model.get("train") is not None:  # the table's epoch budget, for models trained by gradient
        job = [*job, *caps]
        cfg = _compose_search([*job, *group], values)
    base = without_search(cfg)
    check_config(base)
    # Trials validate the same way whatever the test protocol (full or sampled): one study per
    # training key (which leaves the eval protocol out), so loo full and loo sampled share it.
    study = f"{base.model.name}-{training_key(base)[:10]}"
    folder = Path(cfg.paths.outputs) / "tune" / study
    return Plan([*job, *values], search, study, folder, group, archive_folder(cfg, study))


def _compose_search(overrides: list[str], values: list[str]) -> DictConfig:
    """The tune config: ``overrides`` and the ``++search.*`` values; a ``search.space`` given on the
    command line replaces the search config's (a merge would keep its entries)."""
    from benchmark.compose import compose_expanded

    cfg = compose_expanded([*overrides, *values])
    for o in values:
        if o.partition("=")[0] == "++search.space":
            with open_dict(cfg):
                OmegaConf.update(cfg, "search.space", _override_value(o), merge=False)
    return cfg


def _override_value(override: str) -> Any:
    """The value of a command-line override, as Hydra parses it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        (parsed,) = OverridesParser.create().parse_overrides([override])
    except Exception as e:
        raise ConfigError(f"{override.lstrip('+')}: {' '.join(str(e).split())}") from None
    return parsed.value()


def without_search(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` without its ``search`` node (the run config a trial trains)."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(out):
        out.pop("search", None)
        out.pop("hydra", None)
    return out


# ------------------------------------------------------------------------------------------ trials


def trial_value(cfg: DictConfig, ckpt_dir: Path) -> dict[str, Any]:
    """Train (or fit) the configured model and return its validation value; no test row is touched.

    Returns:
        ``value`` (the validation metric of the best epoch, or of the fitted model), ``epochs``,
        ``seconds``.
    """
    import pytorch_lightning as pl

    from benchmark.config import DataConfig, EvalConfig, SplitConfig, to_object
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split
    from benchmark.data.views import labeled_rows, ranking_rows
    from benchmark.models.contract import has_own_train_data, reads_train
    from benchmark.run import build_model, trainer_arguments
    from benchmark.training import PairwiseStream, fit

    ev = to_object(cfg.eval, EvalConfig)
    split_cfg = to_object(cfg.split, SplitConfig)
    data = load_dataset(to_object(cfg.data, DataConfig))
    split = build_split(data, split_cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    labeled = ev.protocol == "labeled"
    valid = labeled_rows(split, "valid", split_cfg.label_threshold) if labeled else ranking_rows(split, "valid")
    if len(valid) == 0:
        raise ConfigError(f"split {split.protocol}: the valid part is empty; a search selects on it")
    t0 = time.perf_counter()
    model = build_model(cfg.model, split, data, cfg.get("adapter"))
    if reads_train(model):
        model.init_from_train(split.train["user"].to_numpy(), split.train["item"].to_numpy())
    kwargs = {**trainer_arguments(cfg), "logger": False, "enable_progress_bar": False}
    trains = any(p.requires_grad for p in model.parameters()) and cfg.model.get("train") is not None
    if not trains:
        value = validate_only(model, valid, ev.valid_metric, ev.chunk_users, kwargs)
        return {"value": value, "epochs": 0, "seconds": time.perf_counter() - t0}
    batch_size, seed = int(cfg.model.train.batch_size), int(cfg.seed)
    if has_own_train_data(model):
        stream = model.train_dataset(split, batch_size, seed)
    else:
        tr = split.train
        stream = PairwiseStream(tr["user"].to_numpy(), tr["item"].to_numpy(), split.n_items, batch_size, seed)
    facts = fit(model, stream, valid, cfg.model.train, kwargs, seed, str(ckpt_dir), ev.valid_metric, ev.chunk_users)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return {"value": facts["best_valid"], "epochs": facts["epochs"], "seconds": time.perf_counter() - t0}


def validate_only(model: Any, valid: Any, metric: str, chunk_users: int, trainer_kwargs: dict[str, Any]) -> float:
    """The validation metric of a model that trains nothing, by the training task's own validation."""
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    from benchmark.distributed import quiet_lightning
    from benchmark.training import RecTask

    task = RecTask(model, valid, lambda params: None, metric, chunk_users)
    loader = DataLoader(torch.arange(len(valid)), batch_size=chunk_users, shuffle=False)
    with quiet_lightning():
        trainer = pl.Trainer(**{**trainer_kwargs, "enable_model_summary": False})
        (out,) = trainer.validate(task, loader, verbose=False)
    return float(out[f"valid/{metric}"])


def trial_task(cfg: DictConfig) -> float:
    """One trial, run by Hydra's Optuna sweeper: its validation value (appended to trials.jsonl)."""
    from hydra.core.hydra_config import HydraConfig

    from benchmark.results.identity import config_hashes

    hc = HydraConfig.get()
    folder = Path(hc.sweep.dir)
    num = int(hc.job.num)
    space = json.loads((folder / "space.json").read_text())
    base = without_search(cfg)
    config_hash = config_hashes(base)[1]  # without the seed
    done = _logged_trial(folder / REPLAY, num, config_hash)
    if done is not None:  # a resumed search: this trial ran before it stopped
        with open(folder / "trials.jsonl", "a") as f:
            f.write(json.dumps({**done, "replayed": True}, sort_keys=True) + "\n")
        return float(done["value"])
    try:
        out = trial_value(base, folder / "checkpoints" / str(num))
    except BenchmarkError as e:
        (folder / "error.txt").write_text(str(e))
        raise
    line = {
        "trial": num,
        "params": {k: OmegaConf.select(base, k) for k in space},
        "value": out["value"],
        "epochs": out["epochs"],
        "seconds": round(out["seconds"], 3),
        "seed": int(base.seed),
        "config_hash": config_hash,
    }
    with open(folder / "trials.jsonl", "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
    # The archive kept with the results (so the search resumes from a fresh checkout): its place
    # follows from the config and the study, never from a file's content; run_search wrote it.
    archive = archive_folder(base, str(hc.sweeper.study_name)) / "trials.jsonl"
    if archive.is_file() and not archive.is_symlink():
        with open(archive, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
    return float(out["value"])


def archive_folder(cfg: DictConfig, study: str) -> Path:
    """``<paths.results>/tune/<study>``: a search's trials kept with the results."""
    return Path(cfg.paths.results) / "tune" / study


REPLAY = "trials.replay.jsonl"  # the trials a resumed search found logged
ARCHIVE_MAX_BYTES = 4 * 2**20  # a trial log line is ~300 bytes: thousands of trials


def _archived_lines(p: Plan, settings: dict[str, Any]) -> list[str]:
    """The trial lines of the plan's archive when it was written for these settings, else []."""
    if p.archive is None:
        return []
    files = {name: p.archive / name for name in ("settings.json", "trials.jsonl")}
    for path in files.values():
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ConfigError(f"{path}: not a plain file; a trial archive holds plain files only")
        if path.is_file() and path.stat().st_size > ARCHIVE_MAX_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes, over {ARCHIVE_MAX_BYTES}; not a trial log")
    try:
        same = json.loads(files["settings.json"].read_text()) == settings
        text = files["trials.jsonl"].read_text() if same else ""
    except (OSError, ValueError, UnicodeDecodeError):  # absent, cut short or not text: nothing to replay
        return []
    return text.splitlines()


def _write_archive(p: Plan, settings: dict[str, Any], kept: str) -> None:
    """The archive of a starting search: its settings and the trials it replays (each new trial is
    appended by :func:`trial_task`)."""
    if p.archive is None:
        return
    from benchmark.util import atomic_write

    p.archive.mkdir(parents=True, exist_ok=True)
    atomic_write(p.archive / "settings.json", json.dumps(settings, indent=1, sort_keys=True) + "\n")
    atomic_write(p.archive / "trials.jsonl", kept)


def _logged_trial(path: Path, num: int, config_hash: str) -> dict[str, Any] | None:
    """The logged trial ``num`` of a stopped search when it ran this same config, else None."""
    if not path.is_file():
        return None
    for text in path.read_text().splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:  # a line cut short when the search stopped
            continue
        if isinstance(line, dict) and line.get("trial") == num:
            value = line.get("value")
            if line.get("config_hash") != config_hash or not isinstance(value, (int, float)) or not math.isfinite(value):
                return None  # another config under this number, or no usable value: train it
            return {k: v for k, v in line.items() if k != "replayed"}
    return None


def _resume_or_reset(p: Plan, settings: dict[str, Any]) -> int:
    """Prepare a search folder: keep a stopped search's logged trials (its own log and its archive
    under ``paths.results``) for replay, else start clean; write the archive either way.

    Returns:
        the number of logged trials kept for replay.
    """
    settings_file = p.folder / "settings.json"
    log = p.folder / "trials.jsonl"
    try:
        same = settings_file.is_file() and json.loads(settings_file.read_text()) == settings
    except (OSError, ValueError):  # a settings file cut short: start the search again
        same = False
    local = same and log.is_file()
    archived = _archived_lines(p, settings)
    replay = p.folder / REPLAY
    by_trial: dict[Any, str] = {}  # a search stopped again while replaying: keep every log
    sources = [archived, *([replay, log] if local else [])]
    for source in sources:
        lines = source if isinstance(source, list) else source.read_text().splitlines() if source.is_file() else []
        unreadable = 0
        for text in lines:
            try:
                line = json.loads(text)
            except json.JSONDecodeError:  # a line cut short when the search stopped, or not a log line
                unreadable += bool(text.strip())
                continue
            if isinstance(line, dict) and isinstance(line.get("trial"), int) and not isinstance(line["trial"], bool):
                by_trial[line["trial"]] = json.dumps({k: v for k, v in line.items() if k != "replayed"}, sort_keys=True)
            else:
                unreadable += 1
        if unreadable:
            where = p.archive / "trials.jsonl" if isinstance(source, list) and p.archive is not None else source
            print(f"[tune {p.study}] {where}: {unreadable} line(s) are not trial log lines; ignored (those trials run again)", file=sys.stderr)
    kept = "".join(f"{by_trial[k]}\n" for k in sorted(by_trial))
    if local:
        for leftover in (p.folder / "error.txt", p.folder / "optimization_results.yaml"):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(p.folder / "checkpoints", ignore_errors=True)
    else:
        shutil.rmtree(p.folder, ignore_errors=True)
        p.folder.mkdir(parents=True)
        settings_file.write_text(json.dumps(settings, indent=1, sort_keys=True))
    replay.write_text(kept)
    log.write_text("")
    _write_archive(p, settings, kept)
    return len(by_trial)


# ------------------------------------------------------------------------------------------ search


def sweeper_overrides(p: Plan) -> list[str]:
    """The Hydra command line of a plan's trials: the job, its space, the seeded Optuna sweeper."""
    s = p.search
    return [
        "--multirun",
        *p.job,
        *p.group,
        "hydra/sweeper=optuna",
        f"hydra/sweeper/sampler={s.sampler}",
        f"hydra.sweeper.sampler.seed={s.sampler_seed}",
        "hydra.sweeper.direction=maximize",
        f"hydra.sweeper.n_trials={s.trials}",
        "hydra.sweeper.n_jobs=1",
        f"hydra.sweeper.study_name={p.study}",
        "hydra.sweeper.params=null",  # an experiment's job sweeps (model: a,b) are the driver's, not trials
        "hydra/launcher=basic",
        f"hydra.sweep.dir={p.folder}",
        "hydra.sweep.subdir=trial-${hydra.job.num}",
        *[f"{k}={v}" for k, v in s.space.items()],
    ]


def run_search(p: Plan) -> dict[str, Any]:
    """The plan's trials (or the summary of an earlier search with the same settings).

    Returns:
        the search summary (``search.json``): settings, trials run, best trial (params, value,
        config hash), the trial log's path.
    """
    import logging

    from benchmark.compose import hydra_main

    logging.getLogger("alembic").setLevel(logging.WARNING)  # optuna's storage plugins announce themselves
    summary_file = p.folder / "search.json"
    settings = {**asdict(p.search), "study": p.study}
    if summary_file.is_file():
        done = json.loads(summary_file.read_text())
        if done.get("settings") == settings:
            return done
    replayed = _resume_or_reset(p, settings)
    if replayed:
        print(f"[tune {p.study}] resuming: {replayed} logged trial(s) are replayed, not trained again")
    (p.folder / "space.json").write_text(json.dumps(p.search.space, indent=1))
    try:
        hydra_main(trial_task, sweeper_overrides(p))
    except SystemExit as e:  # Hydra printed the trial's traceback and exited
        error = p.folder / "error.txt"
        why = error.read_text() if error.is_file() else f"Hydra exited with status {e.code}"
        raise TrialFailed(f"search {p.study}: a trial failed: {why}") from None
    trials = [json.loads(line) for line in (p.folder / "trials.jsonl").read_text().splitlines()]
    (p.folder / REPLAY).unlink(missing_ok=True)
    result = OmegaConf.to_container(OmegaConf.load(p.folder / "optimization_results.yaml"))
    best = max(trials, key=lambda t: t["value"])  # the first of equal values, as Optuna keeps it
    if abs(best["value"] - float(result["best_value"])) > 1e-12:
        raise TrialFailed(f"search {p.study}: the sweeper's best value {result['best_value']} is no trial's best")
    summary = {"settings": settings, "trials_run": len(trials), "best": best, "trials_file": str(p.folder / "trials.jsonl")}
    tmp = summary_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1, sort_keys=True))
    tmp.replace(summary_file)
    return summary


def tuning_node(p: Plan, summary: dict[str, Any]) -> dict[str, Any]:
    """What a final run's config says about its search (recorded, and hashed with the run)."""
    s, best = p.search, summary["best"]
    return {
        "search": s.name,
        "study": p.study,
        # As override strings: record configs name keys plainly (no dots inside a key).
        "space": [f"{k}={v}" for k, v in s.space.items()],
        "sampler": SAMPLER_NAMES[s.sampler],
        "sampler_seed": s.sampler_seed,
        "budget": s.trials,
        "trials": summary["trials_run"],
        "objective": s.objective,
        "best_valid": best["value"],
        "best_params": [f"{k}={v}" for k, v in best["params"].items()],
        "trial_seed": best["seed"],
        "trial_config_hash": best["config_hash"],
    }


def final_config(p: Plan, summary: dict[str, Any], seed: int) -> DictConfig:
    """The best trial's config with ``seed`` and the ``tuning`` node (no ``search`` node)."""
    from benchmark.compose import check_config, compose_expanded

    best = summary["best"]["params"]
    chosen = [f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in best.items()]
    job = [o for o in p.job if not _is_search(o)]
    cfg = without_search(compose_expanded([*job, *chosen, f"seed={seed}"]))
    with open_dict(cfg):
        cfg.tuning = tuning_node(p, summary)
    check_config(cfg)
    return cfg


def tune(p: Plan) -> list[dict[str, Any]]:
    """Search, then run the chosen config with every seed; the final run records."""
    from benchmark.run import run

    summary = run_search(p)
    best = summary["best"]
    print(
        f"[tune {p.study}] {summary['trials_run']}/{p.search.trials} trials; best {p.search.objective}="
        f"{best['value']:.6g} at {best['params']}; running seeds {p.search.seeds}"
    )
    return [run(final_config(p, summary, seed)) for seed in p.search.seeds]


def tune_command(argv: list[str]) -> list[dict[str, Any]]:
    """``llm4rec tune [OVERRIDE ...]``: every job's search checked first, then each run in turn."""
    from benchmark.compose import expand_overrides
    from benchmark.launch import split_overrides, sweep_jobs

    search_args = [o for o in argv if _is_search(o)]
    overrides = expand_overrides([o for o in argv if not _is_search(o)])
    hydra_own = split_overrides(overrides)[0]
    searchpath = [o for o in hydra_own if o.partition("=")[0].lstrip("+") == "hydra.searchpath"]
    if len(searchpath) < len(hydra_own):
        bad = next(o for o in hydra_own if o not in searchpath)
        raise ConfigError(f"{bad}: llm4rec tune sets Hydra's sweeper and launcher itself (hydra.searchpath is allowed)")
    plans = [plan([*searchpath, *job], search_args) for job in sweep_jobs(overrides)]
    records = []
    for p in plans:
        records += tune(p)
    return records
