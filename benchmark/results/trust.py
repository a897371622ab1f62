"""What may be trusted in a recorded run's configuration: no code, no path, only what the project's configs define.

A record's ``config`` is data written by someone else. The checks here never instantiate it:
every ``_target_`` in it must be one that the project's configs (``configs/`` plus the directories
the *user* adds with ``hydra.searchpath=[...]``) define (:func:`check_record_config`); path values
from the record must be relative and stay inside the current directory (:func:`check_record_paths`);
cache locations, output paths, the logger and checkpoints are the reproducer's own, never the
record's (:func:`overlay`). :func:`infer_choices` picks the config-group options a record matches.
:func:`benchmark.reproduce.rebuild_config` composes the config from these pieces.

Nothing here composes a config, runs a model or imports one.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from importlib import util as importlib_util
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from benchmark.errors import ConfigError

# Hydra's instantiation keys. Any other _x_ key in a record is refused.
SPECIAL_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")
# Top-level keys the reproducer sets itself (never taken from the record).
OWN_KEYS = ("paths", "logger", "hydra", "reuse_trained", "skip_existing", "ckpt_path", "reproduce", "run_name")
# Leaf keys that name files or folders: a recorded value must be relative and stay inside the cwd.
PATH_KEY = re.compile(r"^(path|raw_dir|first_stage|parent|load_weights|text_encoder|backbone|generator|run|pretrained|image_root|.*_(path|dir|file|root))$")
# Config groups whose option is inferred from the record (others keep the project default).
GROUPS = ("data", "split", "eval", "slices", "model", "adapter", "trainer", "precision", "describe")
MAX_DEPTH = 32
# Leaves that identify a config-group option: an option whose value differs is not the recorded one
# (a dataset's name is not one: data=atomic takes any name).
IDENTITY_KEYS = {"data": ("source",), "split": ("protocol",), "eval": ("protocol",), "model": ("name", "_target_"), "adapter": ("name", "_target_"), "precision": ("name",), "describe": ("name",)}


def _walk(node: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, str, Any]]:
    """(dotted path, key, value) of every dict entry, depth-first."""
    if depth > MAX_DEPTH:
        raise ConfigError(f"record config: nested deeper than {MAX_DEPTH} levels at {path}")
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else str(k)
            yield p, k, v
            yield from _walk(v, p, depth + 1)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]", depth + 1)


def searchpath_dirs(overrides: list[str]) -> list[Path]:
    """Config directories the user adds with ``hydra.searchpath=[file://DIR, pkg://module, ...]``."""
    dirs = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+") != "hydra.searchpath":
            continue
        for entry in value.strip().strip("[]").split(","):
            entry = entry.strip().strip("'\"")
            if entry.startswith("file://"):
                dirs.append(Path(entry[len("file://") :]))
            elif entry.startswith("pkg://"):
                spec = importlib_util.find_spec(entry[len("pkg://") :])
                if spec is not None and spec.submodule_search_locations:
                    dirs.extend(Path(p) for p in spec.submodule_search_locations)
            elif entry:
                dirs.append(Path(entry))
    return dirs


def config_dirs(overrides: list[str], config_dir: Path | None = None) -> list[Path]:
    """The project's config directory (default :data:`benchmark.config.CONFIG_DIR`) and the user's
    search-path directories."""
    if config_dir is None:
        from benchmark.config import CONFIG_DIR

        config_dir = CONFIG_DIR
    return [config_dir, *searchpath_dirs(overrides)]


def _yaml_files(dirs: list[Path]) -> Iterator[tuple[Path, Path]]:
    for d in dirs:
        if d.is_dir():
            for f in sorted(d.rglob("*.yaml")):
                yield d, f


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def defined_targets(dirs: list[Path]) -> set[str]:
    """Every ``_target_`` value that a YAML file under ``dirs`` defines."""
    out: set[str] = set()
    for _, f in _yaml_files(dirs):
        for _, k, v in _walk(_load_yaml(f)):
            if k == "_target_" and isinstance(v, str):
                out.add(v)
    return out


def check_record_config(cfg: Any, allowed: set[str] | None) -> None:
    """Refuse a record config that could run code or inject interpolations (ConfigError, one line).

    Every ``_target_`` must be one the configs define; only Hydra's own special keys are
    accepted; keys are plain names; no string may hold an OmegaConf interpolation (``${...}``).
    With ``allowed=None`` targets are not checked (the config is only hashed, never instantiated).
    """
    if not isinstance(cfg, dict):
        raise ConfigError("record config: not a JSON object")
    for path, k, v in _walk(cfg):
        if not isinstance(k, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_\-@]*$", k):
            raise ConfigError(f"record config: key {str(k)[:60]!r} at {path} is not a plain name")
        if k.startswith("_") and k.endswith("_") and k not in SPECIAL_KEYS:
            raise ConfigError(f"record config: {path} is not a key the project's configs use")
        if k == "_target_" and allowed is not None and v not in allowed:
            raise ConfigError(
                f"record config: {path}={str(v)[:80]!r} is not a _target_ defined by this project's configs "
                "(add its config directory with hydra.searchpath=[file://DIR] to trust it)"
            )
        if k == "_args_":
            raise ConfigError(f"record config: {path}: positional _args_ are not accepted from a record")
        if isinstance(v, str) and "${" in v:
            raise ConfigError(f"record config: {path} holds an interpolation {v[:60]!r}; records are resolved")


def check_record_path(key: str, value: Any, cwd: Path | None = None) -> None:
    """A path taken from a record: relative, no ``..``, resolving (links followed) inside ``cwd``."""
    if value is None or not isinstance(value, str) or value == "":
        return
    cwd = (cwd or Path.cwd()).resolve()
    p = PurePosixPath(value)
    if p.is_absolute() or value.startswith("~") or "\\" in value or "\0" in value or ".." in p.parts or "://" in value:
        raise ConfigError(
            f"{key}={value[:80]!r}: a path from the record must be relative and inside the current directory; "
            f"pass {key}=PATH on the command line to use your own"
        )
    full = cwd / value
    if full.exists() and not full.resolve().is_relative_to(cwd):
        raise ConfigError(f"{key}={value[:80]!r}: resolves outside the current directory (a link)")


def check_record_paths(cfg: dict[str, Any], trusted: set[str], cwd: Path | None = None) -> None:
    """Every path-like leaf of ``cfg`` (see :data:`PATH_KEY`), except keys the user set (``trusted``)."""
    for path, k, v in _walk(cfg):
        if isinstance(k, str) and PATH_KEY.match(k) and path not in trusted and path.split(".")[0] not in OWN_KEYS:
            if k.endswith("cache_dir"):
                continue  # replaced by the reproducer's own cache (see overlay)
            check_record_path(path, v, cwd)


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` for every leaf of nested dicts (an empty dict is a leaf)."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def infer_choices(cfg: dict[str, Any], dirs: list[Path]) -> list[str]:
    """``group=option`` for each config group, the option whose own values agree most with the record.

    An option whose identity leaves (:data:`IDENTITY_KEYS`, e.g. a model's ``name`` and
    ``_target_``, a split's ``protocol``) differ from the record's is out; the others are scored by their literal leaves (interpolations and
    ``defaults`` ignored): +1 per leaf equal to the record's, -2 per leaf that differs or is absent.
    A contradiction outweighs an agreement: a record fills every schema field, so a leaf an option
    sets to the schema's default (``split=cold_user``'s ``truncate_to: 3``) agrees with records of
    other options too, while the option's own values (``truncate_users: 0.2``) contradict them.
    """
    out = []
    for group in GROUPS:
        rec = cfg.get(group)
        if not isinstance(rec, dict):
            continue
        flat_rec = flat(rec)
        best: tuple[int, str] | None = None
        for d in dirs:
            gdir = d / group
            if not gdir.is_dir():
                continue
            for f in sorted(gdir.glob("*.yaml")):
                y = _load_yaml(f)
                if not isinstance(y, dict):
                    continue
                y = {k: v for k, v in y.items() if k != "defaults"}
                score, out_ = 0, False
                for k, v in flat(y).items():
                    if isinstance(v, str) and "${" in v:
                        continue
                    equal = k in flat_rec and flat_rec[k] == v
                    score += 1 if equal else -2
                    out_ = out_ or (not equal and k.split(".")[-1] in IDENTITY_KEYS.get(group, ("_target_",)))
                if not out_ and (best is None or score > best[0]):
                    best = (score, f.stem)
        if best is not None:
            out.append(f"{group}={best[1]}")
    return out


def _drop(node: dict[str, Any], dotted: str) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return
    node.pop(parts[-1], None)


def overlay(cfg: dict[str, Any], trusted: set[str]) -> dict[str, Any]:
    """The recorded values to lay over the composed config: without the reproducer's own keys,
    cache locations, and the keys the user set on the command line."""
    out = copy.deepcopy({k: v for k, v in cfg.items() if k not in OWN_KEYS})
    for path, k, _ in list(_walk(out)):
        if isinstance(k, str) and k.endswith("cache_dir"):
            _drop(out, path)
    for key in trusted:
        _drop(out, key)
    return out


def user_keys(overrides: list[str]) -> set[str]:
    """The config keys the user's overrides set (``+a.b=1`` -> ``a.b``)."""
    return {o.partition("=")[0].lstrip("+~") for o in overrides if "=" in o}


def under(key: str, trusted: set[str]) -> bool:
    """Whether ``key`` is one of ``trusted`` or below one of them."""
    return any(key == t or key.startswith(t + ".") for t in trusted)
