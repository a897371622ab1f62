"""Aggregate run records into leaderboard tables: one row per model config, one table per test set.

A table holds the runs that were scored on the same test rows: same dataset and preprocessing, same
split protocol and options, same evaluation protocol and every evaluation option that selects or
changes test rows (see :func:`setting_of`). Its title names what differs from the project's default
config. Runs that differ only by seed form one row (mean ± sample std over seeds); the same run
(same ``config_hash`` and seed) counts once, wherever it lies under the runs folder.

Run folders are untrusted input: a record that cannot be read (not JSON, not the record schema,
unsafe predictions path, too large) is skipped with a one-line warning naming its file; nothing in
a record is executed and the only path taken from it (the predictions file) must stay inside its
own folder. Non-finite numbers are treated as missing (empty cells).

Each row is compared with the best baseline of its table by a paired Wilcoxon test over per-user
values of the table's headline metric (averaged over seeds), with Holm correction over the rows of
the table; ▲/▼ follow the sign of the mean paired difference. For labeled tables the paired unit
is the per-user AUC, which can disagree in direction with the pooled AUC of the table.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmark.errors import BenchmarkError
from benchmark.eval.metrics import higher_is_better, is_beyond_accuracy
from benchmark.eval.significance import holm, paired_pvalue
from benchmark.results.item_facts import facts_for_record
from benchmark.results.recompute import per_row_values, recompute_metrics
from benchmark.results.record import RECORD
from benchmark.results.schema import schema_errors
from benchmark.results.tables import (
    BEYOND,
    FULL_COLUMNS,
    HEADLINE,
    HELDOUT,
    SIGNIFICANCE_METRIC,
    SLICES,
    VIEW_COLUMNS,
    kind_of,
    table_key,
    table_title,
    tables,
)
from benchmark.untrusted import DEFAULT_LIMITS, prediction_lines, read_regular_file, unique_keys
from benchmark.util import atomic_write_all

BASELINE_FAMILIES = ("classic", "recbole")
ALPHA = 0.05

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
REPO_ROOT = Path(__file__).resolve().parents[2]
# Keys of a config group that cannot change which rows are tested (or how they are labelled).
# Every other key is part of a table's identity, so options added later are picked up unasked.
NON_ROW_KEYS = {
    "data": {"name", "cache_dir", "raw_dir", "path", "item_fields"},  # name is the table's base label
    "split": {"protocol"},  # the base label
    # also_candidates/candidates_negatives: a full run's extra candidates view, not its test rows.
    "eval": {"protocol", "chunk_users", "valid_metric", "list_length", "ks", "also_candidates", "candidates_negatives"},
    "slices": set(),
}
# Options that only the sampled and candidates protocols read (full and labeled evaluation ignore them).
SAMPLED_ONLY = {"num_negatives", "negatives_seed"}
NEGATIVE_PROTOCOLS = ("sampled", "candidates")
HOLDOUT_PRESET = "strict_cold_item"  # configs/split/<preset>.yaml: the reference for "+holdout" splits
MAX_RECORD_BYTES = 16 * 2**20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

Warn = Callable[[str], None]


def natural_key(label: str) -> tuple[Any, ...]:
    """Sort key that orders digit runs by value: ``x-16shot < x-64shot < x-256shot < x-allshot``."""
    parts = re.split(r"(\d+)", label)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def _stderr_warning(msg: str) -> None:
    print(f"llm4rec leaderboard: warning: {msg}", file=sys.stderr)


def _clean_text(value: Any, limit: int = 120) -> str:
    """A record string made safe for one line of any output (no control characters, bounded length)."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", str(value)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _finite(x: Any) -> float | None:
    """``x`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------- reading run folders


def _record_files(runs_dir: Path) -> list[Path]:
    """Every ``record.json`` under ``runs_dir`` (any depth), hidden/temporary folders and links skipped."""
    found = []
    for root, dirs, files in os.walk(runs_dir, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if RECORD in files:
            found.append(Path(root) / RECORD)
    return sorted(found)


def _predictions_path(folder: Path, name: Any) -> Path:
    """The predictions file a record names, if it is a plain file inside the record's folder."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError("predictions.file: not a file name")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"predictions.file: '{_clean_text(name)}' points outside the run folder")
    path = folder / rel
    if path.is_symlink() or not path.is_file():
        raise ValueError(f"predictions.file: '{_clean_text(name)}' is not a regular file in the run folder")
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"predictions.file: '{_clean_text(name)}' points outside the run folder")
    return path


def _record_problem(rec: Any) -> str | None:
    """Why ``rec`` cannot be put on the leaderboard (None when it can)."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    errs = schema_errors(rec)
    if errs:
        return f"not a run record (schema): {_clean_text(errs[0], 200)}"
    cfg = rec["config"]
    for group in ("data", "split", "eval"):
        if not isinstance(cfg.get(group), dict):
            return f"config.{group}: not an object"
    if not isinstance(cfg.get("slices", {}), dict):
        return "config.slices: not an object"
    for field, value in (
        ("dataset.name", rec["dataset"].get("name")),
        ("model.label", rec["model"].get("label")),
        ("model.family", rec["model"].get("family")),
    ):
        if not isinstance(value, str) or not value.strip():
            return f"{field}: not a non-empty string"
    if not isinstance(rec["model"].get("notes") or {}, dict):
        return "model.notes: not an object"
    if not isinstance(rec["split"].get("stats"), dict):
        return "split.stats: not an object"
    return None


def load_runs(runs_dir: Path, warn: Warn | None = None) -> list[tuple[dict[str, Any], Path]]:
    """Readable run records under ``runs_dir`` with their folders, each run once.

    A record that cannot be read is skipped with a warning naming its file. Copies of a run (same
    ``config_hash`` and seed) count once: the copy in a folder named after its run id wins, then
    the least nested, then the first in path order; the others are skipped with a warning.

    Args:
        runs_dir: Folder searched recursively for ``record.json`` files.
        warn: Receives one line per skipped file (default: printed to stderr).

    Returns:
        ``(record, run folder)`` pairs in path order.
    """
    warn = warn or _stderr_warning
    loaded: list[tuple[dict[str, Any], Path]] = []
    for path in _record_files(Path(runs_dir)):
        try:
            if path.is_symlink() or not path.is_file():
                raise ValueError("not a regular file")
            if path.stat().st_size > MAX_RECORD_BYTES:
                raise ValueError(f"larger than {MAX_RECORD_BYTES // 2**20} MiB")
            # repeated keys are refused (two readers would see two values); a non-finite number is
            # tolerated here and shown as missing below
            rec = json.loads(path.read_bytes(), object_pairs_hook=unique_keys)
            problem = _record_problem(rec)
            if problem:
                raise ValueError(problem)
            _predictions_path(path.parent, rec["predictions"].get("file"))
        except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            warn(f"skipped {path}: {_clean_text(e, 240) or type(e).__name__}")
            continue
        for name, value in list(rec["metrics"].items()):
            if value is not None and _finite(value) is None:
                warn(f"{path}: metric {_clean_text(name)} is {value!r}; shown as missing")
                rec["metrics"][name] = None
        loaded.append((rec, path.parent))

    by_run: dict[tuple[str, int], list[tuple[dict[str, Any], Path]]] = defaultdict(list)
    for rec, d in loaded:
        by_run[(rec["config_hash"], rec["seed"])].append((rec, d))
    keep = set()
    for members in by_run.values():
        members.sort(key=lambda m: (m[1].name != m[0]["run_id"], len(m[1].parts), str(m[1])))
        keep.add(id(members[0][0]))
        for rec, d in members[1:]:
            warn(
                f"skipped {d / RECORD}: same run (config_hash {rec['config_hash'][:12]}, seed {rec['seed']}) "
                f"as {members[0][1] / RECORD}; a copied run is not another seed"
            )
    return [(rec, d) for rec, d in loaded if id(rec) in keep]


def read_predictions_bounded(path: Path) -> list[dict[str, Any]]:
    """Lines of a gzip JSON-lines predictions file, read within ``validate``'s limits
    (:data:`benchmark.untrusted.DEFAULT_LIMITS`: file size, bytes after decompression, line length).

    Raises:
        Rejected: The file is a link, too large, not gzip, or a line is not strict JSON.
        ValueError: A line is not a JSON object.
    """
    data = read_regular_file(path, path.parent, DEFAULT_LIMITS.member_bytes, "predictions file")
    lines = prediction_lines(data)
    for i, obj in enumerate(lines, 1):
        if not isinstance(obj, dict):
            raise ValueError(f"line {i} is not a JSON object")
    return lines


def run_predictions(folder: Path, rec: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`read_predictions_bounded` of the file ``rec`` names, checked to be a plain file inside
    the run ``folder`` (:func:`_predictions_path`). Raises ValueError or Rejected as those do."""
    return read_predictions_bounded(_predictions_path(folder, rec["predictions"]["file"]))


# --------------------------------------------------------------------------- what a table is


def _norm(v: Any) -> Any:
    """Comparable form of a config value: 4 and 4.0 are the same threshold."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, list | tuple):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _norm(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    return v


def _show(v: Any) -> str:
    """A config value as a short, single-line, markup-neutral token."""
    text = v if isinstance(v, str) else json.dumps(_norm(v), separators=(",", ":"), sort_keys=True, allow_nan=True)
    text = re.sub(r"[^\w.+\-@:/,\[\]=]", "_", text)
    if len(text) > 40:
        text = text[:24] + "…" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return text


def _yaml_values(group: str, name: str) -> dict[str, Any]:
    """Plain values of the project's own ``configs/<group>/<name>.yaml`` (empty when there is none)."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        return {}
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        return {}
    values = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in values.items() if k != "defaults" and v != "???"}


def _dataclass_defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def reference_config(group: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The project's default for config group ``group``, given a run's values of that group.

    data: ``configs/data/<name>.yaml`` (``atomic.yaml`` for names without one); split:
    ``configs/split/<protocol>.yaml`` (``strict_cold_item.yaml`` when items are held out);
    eval: ``configs/eval/<protocol>.yaml``; slices: ``configs/slices/default.yaml``; each over
    the defaults of its schema dataclass.
    """
    from benchmark.config import DataConfig, EvalConfig, SliceConfig, SplitConfig

    if group == "data":
        return {**_dataclass_defaults(DataConfig), **(_yaml_values("data", cfg.get("name")) or _yaml_values("data", "atomic"))}
    if group == "split":
        ref = {**_dataclass_defaults(SplitConfig), **_yaml_values("split", cfg.get("protocol"))}
        if (_finite(cfg.get("holdout_items")) or 0.0) > 0:
            ref["holdout_items"] = _yaml_values("split", HOLDOUT_PRESET).get("holdout_items")
        return ref
    if group == "eval":
        return {**_dataclass_defaults(EvalConfig), **_yaml_values("eval", cfg.get("protocol"))}
    return {**_dataclass_defaults(SliceConfig), **_yaml_values("slices", "default")}


def _differences(group: str, cfg: dict[str, Any]) -> list[str]:
    """``key=value`` for every row-changing key of a run's config group that is not the default."""
    ref = reference_config(group, cfg)
    skip = set(NON_ROW_KEYS[group])
    if group == "eval" and cfg.get("protocol") not in NEGATIVE_PROTOCOLS:
        skip |= SAMPLED_ONLY
    out = []
    for k in sorted(set(cfg) | set(ref), key=str):
        if k in skip:
            continue
        if k not in cfg:  # records older than an option were made with its default
            continue
        if k in ref and _norm(cfg[k]) == _norm(ref[k]):
            continue
        out.append(f"{_show(k)}={_show(cfg[k])}")
    return out


def setting_of(rec: dict[str, Any]) -> tuple[tuple[str, str, str], list[str]]:
    """The table a run belongs to: ``(dataset, split, eval)`` labels, and what differs from the default.

    The labels are the plain names (``ml-100k``, ``loo`` or ``loo+holdout``, ``full``) for the
    project's default settings and gain ``[key=value,...]`` for every row-changing option that
    differs, so the default tables keep their names and any other setting gets a table of its own.
    """
    cfg = rec["config"]
    data = _differences("data", cfg["data"])
    split = _differences("split", cfg["split"])
    ev = _differences("eval", cfg["eval"]) + [f"slices.{d}" for d in _differences("slices", cfg.get("slices") or {})]

    def label(base: str, diffs: list[str]) -> str:
        return base + (f"[{','.join(diffs)}]" if diffs else "")

    holdout = (_finite(cfg["split"].get("holdout_items")) or 0.0) > 0
    split_base = _show(str(rec["split"]["protocol"])) + ("+holdout" if holdout else "")
    key = (
        label(_show(rec["dataset"]["name"]), data),
        label(split_base, split),
        label(_show(rec["eval"]["protocol"]), ev),
    )
    notes = [f"data.{d}" for d in data] + [f"split.{d}" for d in split] + [d if d.startswith("slices.") else f"eval.{d}" for d in ev]
    return key, notes


def _test_rows_id(rec: dict[str, Any]) -> str:
    """What the test rows actually were: split fingerprint, sampled negatives, chosen test users, row count."""
    ev = rec["eval"]
    text = f"{rec['split']['fingerprint']}|{ev.get('negatives_fingerprint')}|{ev.get('test_users_fingerprint')}|{ev.get('rows')}"
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def assign_tables(runs: list[tuple[dict[str, Any], Path]]) -> list[tuple[dict[str, Any], Path, tuple[str, str, str], list[str]]]:
    """Each run with its table key and setting notes.

    Runs with the same configured setting but different test rows (another dataset file behind the
    same name, a changed splitter) are kept apart: the most common test rows keep the plain label,
    the others gain ``rows=<id>`` in the eval label.
    """
    out = [(rec, d, *setting_of(rec)) for rec, d in runs]
    by_key: dict[tuple, Counter] = defaultdict(Counter)
    for rec, _, key, _ in out:
        by_key[key][_test_rows_id(rec)] += 1
    result = []
    for rec, d, key, notes in out:
        counts = by_key[key]
        main = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        rows_id = _test_rows_id(rec)
        if rows_id != main:
            ev = key[2]
            ev = ev[:-1] + f",rows={rows_id}]" if ev.endswith("]") else ev + f"[rows={rows_id}]"
            key = (key[0], key[1], ev)
            notes = [*notes, f"other test rows (split fingerprint {rec['split']['fingerprint'][:8]}, id {rows_id})"]
        result.append((rec, d, key, notes))
    return result


# --------------------------------------------------------------------------- aggregation


def _per_user(rec: dict[str, Any], folder: Path, metric: str, warn: Warn) -> np.ndarray | None:
    """Per-user values of ``metric`` recomputed from the run's predictions (None if unavailable)."""
    if not any(m.split("/")[-1] == metric for m in rec["metrics"]):
        return None  # e.g. eval.ks without 10: no ndcg@10 to test on
    path = folder / rec["predictions"]["file"]
    try:
        values = per_row_values(rec, run_predictions(folder, rec))
        arr = np.asarray(values[metric], dtype=float)
    except Exception as e:  # noqa: BLE001 - predictions come from strangers; any failure means "no test"
        warn(f"{path}: no per-user values for the significance test ({_clean_text(e) or type(e).__name__})")
        return None
    if arr.ndim != 1 or not np.all(np.isfinite(arr)):
        warn(f"{path}: per-user {metric} values are not finite; no significance test for this run")
        return None
    return arr


def _mean(values: list[Any]) -> float | None:
    xs = [v for v in (_finite(x) for x in values) if v is not None and v >= 0]
    return float(np.mean(xs)) if xs else None


def _training_cost(efficiency: dict[str, Any]) -> float | None:
    """Seconds of training behind a run's weights: its own, plus the original run's when it reused them."""
    own = _finite(efficiency.get("train_seconds"))
    if own is None or own < 0:
        return None
    original = _finite(efficiency.get("original_train_seconds"))
    return own + (original if original is not None and original >= 0 else 0.0)


def add_beyond_metrics(rec: dict[str, Any], folder: Path, warn: Warn) -> int:
    """Recompute a ranking run's beyond-accuracy metrics from its predictions when its record has none.

    The facts come from the run's train part, rebuilt here (:func:`~benchmark.results.item_facts.
    facts_for_record`: bundled or atomic datasets only, and only when the rebuilt split has the
    record's fingerprints); a run whose split cannot be rebuilt keeps its cells empty. The values
    are added to ``rec["metrics"]`` (in memory; the record file is not touched).

    Returns:
        the number of metrics added.
    """
    if kind_of(str(rec["eval"].get("protocol"))) != "ranking" or any(map(is_beyond_accuracy, rec["metrics"])):
        return 0
    facts = facts_for_record(rec)
    if facts is None:
        return 0
    path = folder / str(rec["predictions"]["file"])
    try:
        lines = run_predictions(folder, rec)
        again = recompute_metrics(rec, lines, facts)
    except Exception as e:  # noqa: BLE001 - predictions come from strangers; any failure means "no values"
        warn(f"{path}: no beyond-accuracy metrics ({_clean_text(e) or type(e).__name__})")
        return 0
    added = {k: v for k, v in again.items() if is_beyond_accuracy(k) and _finite(v) is not None}
    rec["metrics"].update(added)
    return len(added)


def _view_stats(recs: list[dict[str, Any]]) -> dict[str, tuple[float, float | None]]:
    """Mean/std over seeds of the candidates view of full runs (``metrics_candidates``); empty
    when no seed has one. Kept apart from the row's own metrics: another protocol's numbers."""
    out = {}
    blocks = [r.get("metrics_candidates") for r in recs]
    blocks = [b for b in blocks if isinstance(b, dict)]
    for m in sorted({m for b in blocks for m in b}):
        vals = [v for v in (_finite(b.get(m)) for b in blocks) if v is not None]
        if vals:
            out[m] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None)
    return out


# Config paths naming a run of the same seed (read by the run as an input); see :func:`seed_group`.
PER_SEED_INPUTS = ("adapter.encoder.run",)


def seed_group(rec: dict[str, Any]) -> str:
    """The seed group of a record under today's hashing rule (:func:`~benchmark.results.identity.config_hashes`
    of its recorded config), so that seeds of one config recorded under an earlier rule (e.g. with
    ``data.cache_dir`` in the hash) and seeds recorded today form one row, and the seeds of one
    aligned setting, each of which names its own seed's parent (``align.parent``), too; the
    record's own ``group_key`` when its config cannot be hashed. Likewise the seeds of an item
    adapter that reads its own seed's first stage (``adapter.encoder.run`` naming ``...-s<seed>-...``,
    the documented convention of LLaRA's SASRec soft tokens) form one row; another first stage
    (another model or folder) stays another row. (Seeds that all read one fixed ``-s1-`` run would
    put seed 1 in a row of its own; a reranker's ``model.module.first_stage`` is left as it is,
    since its committed runs name one fixed first stage.)"""
    from omegaconf import DictConfig, OmegaConf

    from benchmark.results.identity import config_hashes

    try:
        cfg = OmegaConf.create(rec["config"])
        if isinstance(cfg.get("align"), DictConfig) and "parent" in cfg.align:
            cfg.align.parent = None  # each seed aligns its own seed's parent: one row per aligned setting
        seed = cfg.get("seed")
        for key in PER_SEED_INPUTS:
            value = OmegaConf.select(cfg, key, default=None)
            if isinstance(value, str) and isinstance(seed, int) and not isinstance(seed, bool):
                OmegaConf.update(cfg, key, value.replace(f"-s{seed}-", "-s<seed>-"))
        return config_hashes(cfg)[1]
    except Exception:  # noqa: BLE001 - a stranger's config (e.g. a broken interpolation): keep its own key
        return str(rec["group_key"])


def aggregate(runs: list[tuple[dict[str, Any], Path]], warn: Warn | None = None) -> list[dict[str, Any]]:
    """Group runs by table and seed group: mean/std of every metric, per-user headline values, significance.

    Ranking runs recorded before the beyond-accuracy metrics get them recomputed first
    (:func:`add_beyond_metrics`).
    """
    warn = warn or _stderr_warning
    for rec, d in runs:
        add_beyond_metrics(rec, d, warn)
    groups: dict[tuple, list] = defaultdict(list)
    for rec, d, key, notes in assign_tables(runs):
        groups[(key, seed_group(rec))].append((rec, d, notes))
    rows = []
    for (tkey, _gkey), members in groups.items():
        members.sort(key=lambda m: (m[0]["seed"], str(m[1])))
        recs = [m[0] for m in members]
        first = recs[0]
        stats = {}
        for m in sorted({m for r in recs for m in r["metrics"]}):
            vals = [v for v in (_finite(r["metrics"].get(m)) for r in recs) if v is not None]
            if vals:
                stats[m] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None)
        view = _view_stats(recs)
        sig_metric = SIGNIFICANCE_METRIC[kind_of(tkey[2])]
        per_user = [_per_user(r, d, sig_metric, warn) for r, d, _ in members]
        same_len = all(p is not None for p in per_user) and len({len(p) for p in per_user}) == 1
        split = first["split"]
        backbone = (first["model"].get("notes") or {}).get("backbone") or ""
        train = _mean([r["efficiency"].get("train_seconds") for r in recs])
        evals = _mean([r["efficiency"].get("eval_seconds") for r in recs])
        trained = _mean([_training_cost(r["efficiency"]) for r in recs])
        params = first["model"].get("params_total")
        prompt = _prompt_facts(first, recs)
        rows.append(
            {
                "dataset": tkey[0],
                "split": tkey[1],
                "eval": tkey[2],
                "setting": members[0][2],
                "model": _clean_text(first["model"]["label"])
                + (f" ({tuning_label(first)})" if tuning_label(first) != "default" else "")
                + (" [possible reward hacking]" if any(map(_reward_hacked, recs)) else ""),
                "tuning": tuning_label(first),
                "family": _clean_text(first["model"].get("family", "")),
                "backbone": _clean_text(backbone),
                "seeds": len(recs),
                "seed_list": [r["seed"] for r in recs],
                "device": _clean_text(first.get("labels", {}).get("device", "")),
                "split_fingerprint": str(split["fingerprint"])[:12],
                "group_key": str(first["group_key"])[:12],  # as recorded (what a reader finds in the records)
                "train_seconds": train,
                "eval_seconds": evals,
                "cost_seconds": None if trained is None or evals is None else trained + evals,
                "params": params if isinstance(params, int) and not isinstance(params, bool) else None,
                **prompt,
                "metrics": stats,
                "candidates_view": view,
                "run_dirs": [d for _, d, _ in members],
                "_per_user": np.mean(per_user, axis=0) if same_len else None,
                "_per_user_runs": {r["run_id"]: p for r, p in zip(recs, per_user, strict=True) if p is not None},
                "_parents": sorted({p for p in map(_parent_id, recs) if p}),
                "vs_parent": "",
                "p_parent": None,
                "sig_vs": "",
                "p_holm": None,
                "sig": "",
            }
        )
    _disambiguate(rows)
    rows.sort(key=lambda r: (r["dataset"], r["split"], r["eval"], natural_key(r["model"])))
    _significance(rows)
    _versus_parents(rows)
    _link_full_rows(rows)
    return rows


def _prompt_facts(first: dict[str, Any], recs: list[dict[str, Any]]) -> dict[str, Any]:
    """How an LLM row prompted (from ``model.llm`` of its records): the template name, the
    in-context selection (``similar:4``), the history rule under a budget (``summary@256``) and the
    mean prompt length in tokens over seeds; empty for rows without a prompt."""
    llm = first["model"].get("llm") if isinstance(first["model"].get("llm"), dict) else {}
    prompt = llm.get("prompt") if isinstance(llm.get("prompt"), dict) else {}
    shots = llm.get("icl_shots") if isinstance(llm.get("icl_shots"), int) else 0
    fit = llm.get("history_fit") if isinstance(llm.get("history_fit"), dict) else {}
    pool = first["model"].get("prompt_pool") if isinstance(first["model"].get("prompt_pool"), dict) else None
    template = "pool" if pool else _clean_text(str(prompt.get("name") or ""), 60)
    tokens = []
    for r in recs:
        pt = ((r["model"].get("llm") or {}).get("prompt_tokens") or {}) if isinstance(r["model"].get("llm"), dict) else {}
        tokens.append(_finite(pt.get("mean")) if isinstance(pt, dict) else None)
    return {
        "prompt": template,
        "icl": f"{_clean_text(str(llm.get('icl_select') or 'random'), 20)}:{shots}" if shots else "",
        "history": f"{_clean_text(str(fit.get('select')), 20)}@{fit.get('budget_tokens')}" if fit else "",
        "prompt_tokens": _mean(tokens),
    }


def _link_full_rows(rows: list[dict[str, Any]]) -> None:
    """A candidates row gets the full-ranking metrics (``full_ranking``) of the one ``eval=full`` row
    with the same dataset, split fingerprint and model label: the same model under the other
    protocol, shown beside it (empty when there is none, or more than one)."""
    full: dict[tuple, list] = defaultdict(list)
    for r in rows:
        if r["eval"] == "full":
            full[(r["dataset"], r["split_fingerprint"], r["model"])].append(r)
    for r in rows:
        if kind_of(r["eval"]) != "candidates":
            continue
        match = full.get((r["dataset"], r["split_fingerprint"], r["model"]), [])
        metrics = match[0]["metrics"] if len(match) == 1 else {}
        r["full_ranking"] = {f"test/{m}": metrics[f"test/{m}"] for m in FULL_COLUMNS if f"test/{m}" in metrics}


def _parent_id(rec: dict[str, Any]) -> str | None:
    """The run id of an aligned run's SFT parent (``training.align.parent.run_id``), else None."""
    node: Any = rec.get("training")
    for key in ("align", "parent", "run_id"):
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, str) and node else None


def _versus_parents(rows: list[dict[str, Any]]) -> None:
    """Test each aligned row against its own SFT parents (Holm over the aligned rows of a table).

    The parents are the runs its records name, found in the same table; both sides are per-user
    means over exactly those runs (an aligned row of seeds 1-3 against the parents of seeds 1-3,
    a one-seed row against its one parent). ``vs_parent`` is ▲/▼ (p < 0.05 after Holm) or n.s.
    """
    by_table: dict[tuple, list] = defaultdict(list)
    for r in rows:
        by_table[table_key(r)].append(r)
    for trs in by_table.values():
        owner = {rid: r for r in trs for rid in r["_per_user_runs"]}
        tests = []
        for r in trs:
            if not r["_parents"] or r["_per_user"] is None or len(r["_per_user_runs"]) != r["seeds"]:
                continue
            found = [owner[p]["_per_user_runs"][p] for p in r["_parents"] if p in owner]
            if len(found) != len(r["_parents"]) or len({len(a) for a in found}) != 1:
                continue
            base = np.mean(found, axis=0)
            if len(base) == len(r["_per_user"]):
                tests.append((r, base))
        pvals = holm([paired_pvalue(r["_per_user"], base) for r, base in tests]) if tests else []
        for (r, base), p in zip(tests, pvals, strict=True):
            if not math.isfinite(p):
                continue
            r["p_parent"] = float(p)
            up = float(np.mean(r["_per_user"] - base)) > 0
            r["vs_parent"] = ("▲" if up else "▼") if p < ALPHA else "n.s."


def tuning_label(rec: dict[str, Any]) -> str:
    """``tuned N trials`` for a run whose config names its search (``llm4rec tune``), else ``default``.

    Tuned rows carry it after their model label; rows without it ran their config's values.
    """
    node = (rec.get("config") or {}).get("tuning")
    trials = node.get("trials") if isinstance(node, dict) else None
    if isinstance(trials, int) and not isinstance(trials, bool) and trials >= 1:
        return f"tuned {trials} trials"
    return "default"


def _reward_hacked(rec: dict[str, Any]) -> bool:
    """Whether an aligned run's record flags possible reward hacking (``training.align.hacking.flag``)."""
    node: Any = rec.get("training")
    for key in ("align", "hacking", "flag"):
        node = node.get(key) if isinstance(node, dict) else None
    return node is True


PROMPT_FACETS = ("prompt", "icl", "history")
# The template each prompted model's config uses unless a run overrides it (configs/model/<name>.yaml)
DEFAULT_TEMPLATE = {
    "tallrec_zeroshot": "tallrec",
    "tallrec_pool": "tallrec",
    "llm_rerank": "rerank_listwise",
    "llm_rerank_pool": "rerank_listwise",
}


def _prompt_reference(same: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The plainest of same-labelled prompted rows: the whole history, then the model's default
    template, then no in-context examples (else random ones), then the most seeds; None unless
    exactly one row is plainest."""
    defaults = set(DEFAULT_TEMPLATE.values())

    def plainness(r: dict[str, Any]) -> tuple[int, int, int, int]:
        icl = r.get("icl") or ""
        return (
            bool(r.get("history")),
            0 if r.get("prompt") in defaults else 1,
            0 if not icl else 1 if icl.startswith("random:") else 2,
            -int(r.get("seeds") or 0),
        )

    ranked = sorted(same, key=plainness)
    if len(ranked) > 1 and plainness(ranked[0]) == plainness(ranked[1]):
        return None
    return ranked[0]


def _disambiguate(rows: list[dict[str, Any]]) -> None:
    """Configs with the same label in one table get told apart: prompted LLM rows that differ in
    template, in-context selection or history rule keep the label for the plainest of them and
    name what differs from it for the others (``tallrec-icl0 [history=relevant@176]``); any other
    clash gets the group key appended (``[1a2b3c4d]``)."""
    seen: dict[tuple, list] = defaultdict(list)
    for r in rows:
        seen[(*table_key(r), r["model"])].append(r)
    for same in seen.values():
        if len(same) < 2:
            continue
        ref = _prompt_reference(same) if all(any(r.get(f) for f in PROMPT_FACETS) for r in same) else None
        named = {}
        if ref is not None:
            for r in same:
                diff = [f"{f}={r.get(f) or 'none'}" for f in PROMPT_FACETS if (r.get(f) or "") != (ref.get(f) or "")]
                named[id(r)] = r["model"] + (f" [{', '.join(diff)}]" if diff else "")
        if ref is None or len(set(named.values())) < len(same):
            named = {id(r): f"{r['model']} [{r['group_key'][:8]}]" for r in same}
        for r in same:
            r["model"] = named[id(r)]


def _significance(rows: list[dict[str, Any]]) -> None:
    """Mark each row against the best baseline of its table (Holm over the table's rows)."""
    by_table: dict[tuple, list] = defaultdict(list)
    for r in rows:
        by_table[table_key(r)].append(r)
    for trs in by_table.values():
        metric = "test/" + SIGNIFICANCE_METRIC[kind_of(trs[0]["eval"])]
        base = [r for r in trs if r["family"] in BASELINE_FAMILIES and metric in r["metrics"]]
        if not base:
            continue
        best = max(base, key=lambda r: r["metrics"][metric][0])
        best["sig_vs"] = "(best baseline)"
        if best["_per_user"] is None:
            continue
        others = [r for r in trs if r is not best and r["_per_user"] is not None]
        others = [r for r in others if len(r["_per_user"]) == len(best["_per_user"])]
        pvals = [paired_pvalue(r["_per_user"], best["_per_user"]) for r in others]
        for r, p in zip(others, holm(pvals) if pvals else [], strict=True):
            if not math.isfinite(p):
                continue
            r["sig_vs"], r["p_holm"] = best["model"], float(p)
            if p < ALPHA:  # direction from the tested unit: for labeled tables, per-user AUC, not pooled AUC
                r["sig"] = "▲" if float(np.mean(r["_per_user"] - best["_per_user"])) > 0 else "▼"


# --------------------------------------------------------------------------- outputs


def fmt(stat: tuple[float, float | None] | None) -> str:
    if stat is None:
        return ""
    mean, std = stat
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def table_columns(trs: list[dict[str, Any]]) -> list[str]:
    kind = kind_of(trs[0]["eval"])
    cols = [f"test/{m}" for m in HEADLINE[kind]]
    head = SIGNIFICANCE_METRIC[kind]
    cols += [f"test/{s}/{head}" for s in SLICES if any(f"test/{s}/{head}" in r["metrics"] for r in trs)]
    if kind == "ranking":  # strict cold start: how often a held-out item is in the list at all
        cols += [f"test/{m}" for m in HELDOUT if any(f"test/{m}" in r["metrics"] for r in trs)]
    return cols


def view_columns(trs: list[dict[str, Any]]) -> tuple[str, list[str], str]:
    """The other protocol's columns of a table where some row has them: (row key, columns, header
    prefix). A full-ranking table shows its rows' candidates view (``eval.also_candidates``), a
    candidates table the same models' full-ranking rows."""
    kind = kind_of(trs[0]["eval"])
    if kind == "ranking":
        key, names, prefix = "candidates_view", VIEW_COLUMNS, "candidates view: "
    elif kind == "candidates":
        key, names, prefix = "full_ranking", FULL_COLUMNS, "full ranking: "
    else:
        return "", [], ""
    return key, [f"test/{m}" for m in names if any(f"test/{m}" in (r.get(key) or {}) for r in trs)], prefix


def beyond_columns(trs: list[dict[str, Any]]) -> list[str]:
    """The beyond-accuracy columns of a ranking table that some row has (none for labeled tables)."""
    if kind_of(trs[0]["eval"]) != "ranking":
        return []
    return [f"test/{m}" for m in BEYOND if any(f"test/{m}" in r["metrics"] for r in trs)]


def best_values(trs: list[dict[str, Any]], cols: list[str]) -> dict[str, float]:
    best = {}
    for c in cols:
        vals = [r["metrics"][c][0] for r in trs if c in r["metrics"]]
        if vals:
            best[c] = max(vals) if higher_is_better(c) else min(vals)
    return best


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _seconds(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """One Markdown table per table key; best mean per column in bold; missing values are empty."""
    out = []
    for key, trs in tables(rows).items():
        cols = table_columns(trs)
        best = best_values(trs, cols)
        vkey, view, prefix = view_columns(trs)
        out.append(f"### {_md_cell(table_title(key, trs[0]['setting']))}\n")
        if view and vkey == "candidates_view":
            out.append(
                "Columns `candidates view: …` rank each row's target among fixed negatives with the same "
                "scores (eval.also_candidates): a candidate list, not comparable with the full-ranking columns.\n"
            )
        elif view:
            out.append(
                "Columns `full ranking: …` are the same model's eval=full row (same split, same label): "
                "the whole catalogue ranked, not comparable with the candidate-list columns.\n"
            )
        heads = [c.removeprefix("test/") for c in cols] + [f"{prefix}{c.removeprefix('test/')}" for c in view]
        out.append("| model | seeds | device | " + " | ".join(heads) + " | sig. | train s |")
        out.append("|---|---|---|" + "---|" * len(heads) + "---|---|")
        for r in trs:
            cells = []
            for c in cols:
                s = fmt(r["metrics"].get(c))
                if c in r["metrics"] and len(trs) > 1 and math.isclose(r["metrics"][c][0], best[c]):
                    s = f"**{s}**"
                cells.append(s)
            cells += [fmt((r.get(vkey) or {}).get(c)) for c in view]
            sig = "base" if r["sig_vs"] == "(best baseline)" else (r["sig"] or ("n.s." if r["sig_vs"] else ""))
            if r.get("vs_parent"):
                sig += f"; vs SFT {r['vs_parent']}"
            out.append(
                f"| {_md_cell(r['model'])} | {r['seeds']} | {_md_cell(r['device'])} | "
                + " | ".join(cells)
                + f" | {sig} | {_seconds(r['train_seconds'])} |"
            )
        out.append("")
        out += _md_beyond(trs)
    return "\n".join(out)


def _md_beyond(trs: list[dict[str, Any]]) -> list[str]:
    """The beyond-accuracy table under a ranking table (no lines when no row has those metrics)."""
    cols = beyond_columns(trs)
    if not cols:
        return []
    best = best_values(trs, cols)
    out = [
        "Beyond accuracy (top 10): text and genre intra-list diversity, novelty (bits), average "
        "recommendation popularity, long-tail share, Gini of exposure (lower: more even), "
        "miscalibration (KL, lower: closer to the user's genre history); best in bold.\n",
        "| model | " + " | ".join(c.removeprefix("test/") for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for r in trs:
        cells = []
        for c in cols:
            s = fmt(r["metrics"].get(c))
            if c in r["metrics"] and len(trs) > 1 and math.isclose(r["metrics"][c][0], best[c]):
                s = f"**{s}**"
            cells.append(s)
        out.append(f"| {_md_cell(r['model'])} | " + " | ".join(cells) + " |")
    return [*out, ""]


CSV_HEAD = [
    "dataset", "split", "eval", "model", "family", "backbone", "seeds", "device", "split_fingerprint",
    "group_key", "params", "train_seconds", "sig_vs", "p_holm", "sig", "vs_parent", "p_parent",
    "prompt", "icl", "history", "prompt_tokens",
]


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Every metric as ``<metric>`` (mean) and ``<metric>_std`` columns, full precision; missing values empty."""
    metrics = sorted({m for r in rows for m in r["metrics"]})
    # A full run's candidates view (eval.also_candidates): its own columns, ``candidates_view:<metric>``.
    views = sorted({m for r in rows for m in r.get("candidates_view") or {}})
    # A candidates row's own model under eval=full: ``full_ranking:<metric>``.
    fulls = sorted({m for r in rows for m in r.get("full_ranking") or {}})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = metrics + [f"candidates_view:{m}" for m in views] + [f"full_ranking:{m}" for m in fulls]
    w.writerow(CSV_HEAD + [c for m in names for c in (m, f"{m}_std")])
    for r in rows:
        vals = []
        cells = [r["metrics"].get(m, (None, None)) for m in metrics]
        cells += [(r.get("candidates_view") or {}).get(m, (None, None)) for m in views]
        cells += [(r.get("full_ranking") or {}).get(m, (None, None)) for m in fulls]
        for mean, std in cells:
            # Full precision (shortest round-trip repr): a reader rounding to 4 decimals rounds once.
            vals += ["" if mean is None else repr(float(mean)), "" if std is None else repr(float(std))]
        head = []
        for h in CSV_HEAD:
            v = r[h]
            head.append("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v))
        w.writerow(head + vals)
    return buf.getvalue()


def _tex_escape(s: str) -> str:
    out = []
    for ch in s:
        out.append(
            {
                "\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            }.get(ch, ch)
        )  # fmt: skip
    return "".join(out)


def latex(rows: list[dict[str, Any]], source: str = "results/runs") -> str:
    """booktabs tables, one per table key; best mean per column in bold."""
    out = [f"% Generated by `llm4rec leaderboard` from {_clean_text(source, 200)}; do not edit."]
    for key, trs in tables(rows).items():
        cols = table_columns(trs)
        best = best_values(trs, cols)
        out.append(r"\begin{table}[t]\centering\small")
        out.append(r"\caption{" + _tex_escape(table_title(key, trs[0]["setting"]).replace("·", ",")) + r". Mean $\pm$ std over seeds.}")
        out.append(r"\begin{tabular}{l r " + "r " * len(cols) + "}")
        out.append(r"\toprule")
        out.append("Model & Seeds & " + " & ".join(_tex_escape(c.removeprefix("test/")) for c in cols) + r" \\")
        out.append(r"\midrule")
        for r in trs:
            cells = []
            for c in cols:
                st = r["metrics"].get(c)
                if st is None:
                    cells.append("--")
                    continue
                s = f"{st[0]:.4f}" + (f" $\\pm$ {st[1]:.4f}" if st[1] is not None else "")
                if len(trs) > 1 and math.isclose(st[0], best[c]):
                    s = r"\textbf{" + s + "}"
                cells.append(s)
            mark = {"▲": r"$^{\blacktriangle}$", "▼": r"$^{\blacktriangledown}$"}.get(r["sig"], "")
            out.append(_tex_escape(r["model"]) + mark + f" & {r['seeds']} & " + " & ".join(cells) + r" \\")
        out.append(r"\bottomrule")
        out.append(r"\end{tabular}")
        out.append(r"\end{table}")
        out.append("")
    return "\n".join(out)


def provenance() -> dict[str, Any]:
    """Commit (and whether code differs from it) and UTC time this leaderboard is generated at.

    ``SOURCE_DATE_EPOCH`` (reproducible builds) fixes the time.
    """

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    when = (
        dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch.isdigit() else dt.datetime.now(dt.UTC)
    ).strftime("%Y-%m-%d %H:%M UTC")
    status = git("status", "--porcelain", "--", ".", ":!results", ":!paper", ":!outputs")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status), "generated": when}


def write_leaderboard(runs_dir: Path, out_dir: Path, warn: Warn | None = None) -> str:
    """Write ``leaderboard.{md,csv,tex,html}`` into ``out_dir``; return the Markdown.

    Args:
        runs_dir: Folder of run folders (searched recursively for ``record.json``).
        out_dir: Where the four files are written (all or none).
        warn: Receives one line per skipped or repaired record (default: stderr).

    Raises:
        BenchmarkError: ``runs_dir`` is missing, holds no run record, or none can be read; nothing is written.
    """
    from benchmark.results.html import render_html

    runs_dir = Path(runs_dir)
    warnings: list[str] = []

    def note(msg: str) -> None:
        warnings.append(msg)
        (warn or _stderr_warning)(msg)

    if not runs_dir.is_dir():
        raise BenchmarkError(f"--runs {runs_dir}: no such directory")
    found = _record_files(runs_dir)
    if not found:
        raise BenchmarkError(f"--runs {runs_dir}: no run records ({RECORD}) in this folder")
    runs = load_runs(runs_dir, note)
    if not runs:
        raise BenchmarkError(f"--runs {runs_dir}: none of the {len(found)} run records could be read (warnings above)")
    rows = aggregate(runs, note)
    source = _clean_text(runs_dir, 200)
    skipped = len(found) - len(runs)
    md = (
        f"# Leaderboard\n\nGenerated by `llm4rec leaderboard` from the {len(runs)} run records in `{source}`"
        + (f" ({skipped} skipped: unreadable or copies, see the warnings of the command)" if skipped else "")
        + ": mean ± std over seeds. `sig.`: paired Wilcoxon test on per-user values of the headline metric "
        "(NDCG@10 or AUC) against the best baseline of the table, Holm-corrected; "
        "▲/▼ significantly better/worse (p < 0.05) on those per-user values, n.s. not significant. "
        "In labeled tables the paired unit is the per-user AUC (see GAUC), not the pooled AUC. "
        "An aligned row (`+dpo`, `+sdpo`, `+grpo`, `+pgrm`) is also tested against its own SFT parent runs "
        "(`vs SFT`, same test, Holm over the aligned rows of the table). "
        "Beyond-accuracy metrics come from each ranking run's predictions and train part (recomputed "
        "here for runs recorded before them).\n\n" + markdown(rows)
    )
    meta = {**provenance(), "source": source, "records": len(runs), "skipped": skipped}
    atomic_write_all(
        {
            out_dir / "leaderboard.md": md,
            out_dir / "leaderboard.csv": to_csv(rows),
            out_dir / "leaderboard.tex": latex(rows, source),
            out_dir / "leaderboard.html": render_html(rows, meta, out_dir),
        }
    )
    return md
