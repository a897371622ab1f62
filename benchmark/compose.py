"""The one place configs are composed, expanded and checked (the composition root's config half).

- :func:`compose`: the root config with command-line overrides, as Hydra composes it (no run
  directory, no chdir); :func:`expand_overrides` first rewrites the command line's shorthands
  (:func:`nested_group_overrides`, :func:`module_shorthand`).
- :func:`expand_sweeps`: every combination of the sweep overrides (``a=1,2``).
- :func:`check_config`: a composed config validated before anything runs (typed groups, item
  adapter, every value: :func:`benchmark.checks.check_values`).
- :func:`hydra_main`: a command line handed to Hydra, which composes and runs each job.

Every problem is a one-line :class:`~benchmark.errors.ConfigError` (Hydra's and OmegaConf's
composition errors included); nothing here prints or exits: the CLI prints the line and exits 2.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from benchmark.config import CONFIG_DIR
from benchmark.errors import BenchmarkError, ConfigError

__all__ = [
    "CONFIG_DIR",
    "check_adapter",
    "check_config",
    "compose",
    "compose_expanded",
    "expand_overrides",
    "expand_sweeps",
    "hydra_main",
    "module_shorthand",
    "nested_group_overrides",
    "one_line",
]


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, with its cause's when that adds something."""
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
    # The user's config directories too: a plugin's model YAML is found only through them.
    search = [o for o in overrides if _override_key(o).lstrip("+") == "hydra.searchpath"]
    models = [
        compose_expanded(nested_group_overrides(combo) + search).model
        for combo in expand_sweeps([o for o in overrides if _is_group_choice(o)])
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


def compose(overrides: list[str], hydra: bool = False) -> Any:
    """Compose the root config with command-line overrides (no run directory, no chdir).

    Args:
        overrides: the command line's overrides, shorthands allowed (:func:`expand_overrides`).
        hydra: include the ``hydra`` node (launcher, sweeper).

    Returns:
        The composed ``DictConfig``.

    Raises:
        ConfigError: one line: an unknown key, group option or value type.
    """
    return compose_expanded(expand_overrides(overrides), hydra)


def compose_expanded(overrides: list[str], hydra: bool = False) -> Any:
    """:func:`compose` of overrides already expanded (a job of :func:`expand_sweeps` or a sweep)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from benchmark.config import register_schemas

    if not CONFIG_DIR.is_dir():
        raise ConfigError(f"config directory not found: {CONFIG_DIR}")
    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hcompose(config_name="config", overrides=overrides, return_hydra_config=hydra)
    except BenchmarkError:
        raise
    except Exception as e:  # Hydra/OmegaConf composition errors: unknown key, group option, type
        raise ConfigError(one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()


def expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """Every combination of the sweep overrides (``a=1,2``), each as a plain override list.

    Raises:
        ConfigError: an override Hydra cannot parse (one line).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise ConfigError(one_line(e)) from None
    choices = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(c) for c in itertools.product(*choices)]


def hydra_main(task: Callable[[Any], None], argv: list[str]) -> None:
    """Run ``task(cfg)`` for the job(s) of a Hydra command line (``--multirun``, ``--info`` ...).

    Hydra composes each job's config itself here (its run directory, launcher and sweeper
    included). ``sys.argv`` becomes ``[program, *argv]``: the real program stays argv[0], since
    Lightning's DDP launcher re-executes it for every extra process.
    """
    import sys

    import hydra

    from benchmark.config import register_schemas

    register_schemas()
    sys.argv = [sys.argv[0], *argv]
    with _logging_restored():
        hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(task)()


@contextmanager
def _logging_restored() -> Iterator[None]:
    """Leave Python logging as it was before a Hydra job configured it.

    Hydra's job logging attaches handlers bound to the ``sys.stderr`` of that moment; called in
    process (a notebook, a test, a tool that runs a job and goes on), those handlers outlive the
    job and write to a stream that may since have been replaced or closed.
    """
    import logging

    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger))]  # fmt: skip
    saved = {id(lg): (lg, list(lg.handlers), lg.level, lg.propagate, lg.disabled) for lg in loggers}
    try:
        yield
    finally:
        for lg, handlers, level, propagate, disabled in saved.values():  # loggers made since keep theirs
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled


def check_adapter(model_cfg: Any, adapter: Any) -> bool:
    """Whether an item adapter is on (validated); ConfigError when the model takes none."""
    import inspect

    from hydra.utils import get_class

    from benchmark.models.components.adapter import adapter_config, is_active_node

    if not is_active_node(adapter):
        return False
    adapter_config(adapter)  # unknown keys, modalities, k, encoder/projector nodes
    encoder = adapter.get("encoder") or {}
    if str(encoder.get("_target_", "")).endswith("cf_features.CFEncoder"):  # before any model loads
        from benchmark.models.components.cf_features import check_run_files

        check_run_files(encoder.get("run"))
    target = get_class(model_cfg.module._target_)
    if model_cfg.get("inputs", "ids") != "split" or "adapter" not in inspect.signature(target).parameters:
        raise ConfigError(
            f"adapter={adapter.name}: model {model_cfg.name} takes no item adapter (p5, llara and tallrec do)"
        )
    return True


def check_config(cfg: Any, read_data: bool = True) -> None:
    """Validate a composed config before anything runs.

    The typed groups (data, split, eval, slices), the item adapter, then every other value
    (:func:`benchmark.checks.check_values`: seed, model and trainer arguments, cut-offs against
    the catalogue, paths).

    Args:
        cfg: the composed config of one job.
        read_data: allow reading (and preparing) the dataset for the catalogue bound.

    Raises:
        ConfigError: one line ``<key>: <reason>``. Reading the dataset may raise its own
            one-line :class:`~benchmark.errors.BenchmarkError` (a ``DataError``).
    """
    from benchmark.checks import check_values
    from benchmark.config import DataConfig, EvalConfig, SliceConfig, SplitConfig, to_object

    for key, cls in (
        ("data", DataConfig),
        ("split", SplitConfig),
        ("eval", EvalConfig),
        ("slices", SliceConfig),
    ):
        try:
            to_object(cfg[key], cls)
        except BenchmarkError:
            raise
        except Exception as e:
            raise ConfigError(f"{key}: {one_line(e)}") from None
    check_adapter(cfg.model, cfg.get("adapter"))
    if cfg.get("precision") is not None:  # GPU-only or absent runtimes stop here, before data is read
        from benchmark.models.components.precision import check_precision

        check_precision(cfg.precision, cfg.model, cfg.get("adapter"))
    if cfg.get("align") is not None:
        from benchmark.align.stage import check_align

        check_align(cfg)
    if cfg.get("describe") is not None:  # generated item descriptions: fields of the prompt, sizes
        from benchmark.models.components.describe import DescribeConfig

        to_object(cfg.describe, DescribeConfig, "describe")
    check_values(cfg, read_data=read_data)
