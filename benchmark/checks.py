"""Every value of a composed config checked before the first job of a sweep starts.

Each failed check raises one :class:`ConfigError` that starts with the key it is about
(``seed: ...``, ``model.module.dim: ...``); the CLI prints it as one line and exits 2 before
anything is trained or written. The checks are general, not a list of known mistakes:

- arguments of every ``_target_`` the config builds (the model's module, its optimizer, the
  Lightning ``Trainer``) are checked against the annotations of that class's signature, and an
  integer argument whose default is a positive number (a size: ``dim``, ``num_beams``,
  ``accumulate_grad_batches``) must be >= 1, one whose default is 0 must be >= 0;
- the trainer of a model (``model.train``) is the typed :class:`benchmark.config.TrainConfig`;
- ``seed`` is an integer >= 0;
- the metric cut-offs fit the candidates a test row has: the catalogue under full ranking
  (the dataset is read once per distinct data config), ``1 + num_negatives`` when sampled or
  candidates;
- paths the run will read exist (``load_weights``, ``ckpt_path``, ``data.path``, ``data.raw_dir``);
- the parts of the run id (``data.name``, the model's label) are plain names, so the run id names
  one folder inside ``results/runs`` and passes ``validate``'s run-id rule.
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from benchmark.errors import ConfigError

_EMPTY = inspect.Parameter.empty


def _plain(node: Any) -> Any:
    """A config node as plain Python containers (resolved)."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def type_name(ann: Any) -> str:
    """A readable name of an annotation (``int``, ``int | None``, ``'a' | 'b'``)."""
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(ann))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(ann))
    if ann is type(None):
        return "null"
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(ann))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(ann, "__name__", str(ann))


def matches(value: Any, ann: Any) -> bool:
    """Whether a config value (plain Python: None, bool, int, float, str, list, dict) fits an annotation.

    Classes the config cannot spell (a ``Tensor``, a ``Strategy``, a prompt template) accept a
    mapping (a node Hydra or the class itself builds) and nothing else.
    """
    if ann is _EMPTY or ann is Any or ann is object:
        return True
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Annotated:
        return matches(value, args[0])
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if ann is type(None) or ann is None:
        return value is None
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return _is_int(value)
    if ann is float:
        return _is_number(value)
    if ann in (str, Path) or (isinstance(ann, type) and issubclass(ann, Path)):
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable, set, frozenset):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(matches(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        if not isinstance(value, dict):
            return False
        return len(args) != 2 or all(matches(v, args[1]) for v in value.values())
    if ann in (list, tuple):
        return isinstance(value, (list, tuple))
    if ann is dict:
        return isinstance(value, dict)
    if isinstance(ann, type):
        return isinstance(value, dict) or isinstance(value, ann)
    return True  # an annotation we cannot interpret (a TypeVar, a string left unresolved)


def _signature(target: Any) -> tuple[inspect.Signature, dict[str, Any]]:
    sig = inspect.signature(target)
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # an annotation that names something not importable here: use what inspect has
        hints = {n: p.annotation for n, p in sig.parameters.items() if not isinstance(p.annotation, str)}
    return sig, hints


def check_arguments(node: Any, target: Any, key: str, given: tuple[str, ...] = ()) -> None:
    """Check a node's keys and values against the signature of ``target`` (a class or function).

    Args:
        node: the config node of the call (``_target_``-style keys such as ``_partial_`` are skipped).
        target: what the node is passed to.
        key: the node's config path, for messages (``model.module``).
        given: parameters the code passes itself (``n_users``, ``split``): not allowed in the node.

    Raises:
        ConfigError: ``<key>.<name>: <reason>`` for an unknown key, a value of the wrong type, or
            a negative (size: non-positive) integer.
    """
    values = _plain(node) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{key}: expected a mapping of arguments, got {values!r}")
    sig, hints = _signature(target)
    params = sig.parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    where = getattr(target, "__qualname__", str(target))
    for name, value in values.items():
        if name.startswith("_") and name.endswith("_"):
            continue
        full = f"{key}.{name}"
        if name in given:
            raise ConfigError(f"{full}: set by the benchmark itself, not by the config")
        if name not in params:
            if var_kw:
                continue
            raise ConfigError(f"{full}: not an argument of {where} (it takes {sorted(set(params) - set(given))})")
        p = params[name]
        ann = hints.get(name, p.annotation)
        if not matches(value, ann):
            raise ConfigError(f"{full}: expected {type_name(ann)}, got {value!r}")
        if _is_int(value) and _is_int(p.default) and not isinstance(p.default, bool):
            low = 1 if p.default > 0 else 0 if p.default == 0 else None
            if low is not None and value < low:
                raise ConfigError(f"{full}: must be >= {low}, got {value}")
        if isinstance(value, float) and not math.isfinite(value) and p.default is not _EMPTY:
            if isinstance(p.default, (int, float)) and math.isfinite(p.default):
                raise ConfigError(f"{full}: must be a finite number, got {value}")


def check_seed(seed: Any) -> int:
    """``seed`` as an int >= 0 (``1.5``, ``-1``, ``abc`` and ``true`` are refused)."""
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"seed: expected an integer >= 0, got {seed!r}")
    return seed


def import_target(target: str, key: str) -> Any:
    """The class a ``_target_`` names; a ConfigError of one line when it cannot be imported.

    Hydra's ``get_class`` logs the failure and raises a message of several lines (a plugin's
    module not on PYTHONPATH, a typo): both are folded into one line naming ``key``.
    """
    import logging

    from hydra.utils import get_class

    hydra_log = logging.getLogger("hydra.utils")
    was_disabled, hydra_log.disabled = hydra_log.disabled, True
    try:
        return get_class(target)
    except Exception as e:
        raise ConfigError(f"{key}: cannot import {target}: {' '.join(str(e).split())}") from None
    finally:
        hydra_log.disabled = was_disabled


def check_model(model: Any) -> None:
    """``model.module`` against its class, ``model.train`` as a TrainConfig, its optimizer's arguments."""
    from benchmark.config import TrainConfig, to_object

    module = model.get("module")
    if module is not None and module.get("_target_"):
        cls = import_target(str(module._target_), "model.module._target_")
        given = ("split", "data", "adapter") if model.get("inputs", "ids") == "split" else ("n_users", "n_items")
        check_arguments(module, cls, "model.module", given)
    train = model.get("train")
    if train is None:
        return
    tc = to_object(train, TrainConfig, key="model.train")
    opt = tc.optimizer
    opt_cls = import_target(str(opt["_target_"]), "model.train.optimizer._target_")
    check_arguments(opt, opt_cls, "model.train.optimizer", given=("params",))


def check_protocol_support(cfg: Any) -> None:
    """A model class that answers only some eval protocols (``eval_protocols``) refuses the others
    before anything is built (e.g. ``model=llara`` answers candidate lists only)."""
    module = cfg.model.get("module")
    ev = cfg.get("eval")
    if module is None or not module.get("_target_") or ev is None:
        return
    cls = import_target(str(module._target_), "model.module._target_")
    allowed = getattr(cls, "eval_protocols", None)
    protocol = ev.get("protocol")
    if allowed and protocol not in allowed:
        raise ConfigError(
            f"model {cfg.model.get('name')}: missing support for eval={protocol} "
            f"(it answers eval={' or eval='.join(allowed)} only)"
        )


def check_trainer(trainer: Any) -> None:
    """The Lightning Trainer's keyword arguments against ``pytorch_lightning.Trainer``."""
    import pytorch_lightning as pl

    check_arguments(trainer, pl.Trainer, "trainer", given=("max_epochs", "callbacks", "logger"))


_CATALOGUES: dict[str, int] = {}


def catalogue_size(data_node: Any) -> int:
    """Items of the (filtered) dataset: read once per distinct data config in this process."""
    from benchmark.config import DataConfig, to_object
    from benchmark.data.loading import load_dataset

    dcfg = to_object(data_node, DataConfig)
    key = json.dumps(_plain(data_node), sort_keys=True, default=str)
    if key not in _CATALOGUES:
        _CATALOGUES[key] = int(load_dataset(dcfg).inter["item"].nunique())
    return _CATALOGUES[key]


def check_cutoffs(cfg: Any, catalogue: bool = True) -> None:
    """Every K of ``eval.ks`` (and of ``eval.valid_metric``) fits the candidates of a test row.

    Args:
        cfg: the composed config.
        catalogue: read the dataset for the full-ranking bound (a recipe dataset that is not
            prepared yet is skipped when False).
    """
    from benchmark.config import EvalConfig, to_object

    ev = to_object(cfg.eval, EvalConfig)
    if ev.protocol == "labeled":
        return
    metric, _, k = str(ev.valid_metric).partition("@")
    if not k.isdigit() or int(k) < 1:
        raise ConfigError(f"eval.valid_metric: expected <metric>@K with K >= 1, got {ev.valid_metric}")
    if ev.protocol in ("sampled", "candidates"):
        n = 1 + ev.num_negatives
        big = [c for c in ev.ks if c > n]
        if big:
            raise ConfigError(f"eval.ks: {big[0]} exceeds the {n} candidates of a row under eval={ev.protocol} (1 + eval.num_negatives)")
    if not catalogue:
        return
    n = catalogue_size(cfg.data)
    where = f"the catalogue of {cfg.data.name} ({n} items)"
    big = [c for c in ev.ks if c > n]
    if big and ev.protocol == "full":
        raise ConfigError(f"eval.ks: {big[0]} exceeds {where} under eval=full")
    if int(k) > n:  # validation ranks the whole catalogue under either ranking protocol
        raise ConfigError(f"eval.valid_metric: K={k} exceeds {where} (validation ranks the catalogue)")
    for key, neg, on in (
        ("num_negatives", ev.num_negatives, ev.protocol in ("sampled", "candidates")),
        ("candidates_negatives", ev.candidates_negatives, ev.also_candidates),
    ):
        if on and neg > n - 1:  # each user's own items lower the bound further: checked when drawn
            raise ConfigError(f"eval.{key}={neg}: exceeds {where} minus the row's target")


def last_checkpoint(cfg: Any) -> Path:
    """Where the run of ``cfg`` keeps its last Lightning checkpoint (``ckpt_path=last``)."""
    from benchmark.results.identity import config_hashes, run_id_for

    return Path(cfg.paths.outputs) / "checkpoints" / run_id_for(cfg, config_hashes(cfg)[0]) / "last.ckpt"


def resume_checkpoint(cfg: Any, ckpt_dir: Path) -> str | None:
    """``ckpt_path`` checked: None, ``"last"`` (this run's ``last.ckpt`` exists) or an existing file.

    A checkpoint to resume is honoured before weights of an earlier run (``reuse_trained``); with
    ``load_weights``, with a model that trains nothing, or when the file is missing, it is refused
    with a one-line ConfigError (Lightning would otherwise start from scratch without a word).
    """
    ckpt = cfg.get("ckpt_path")
    if ckpt is None:
        return None
    if not isinstance(ckpt, str) or not ckpt.strip():
        raise ConfigError(f"ckpt_path: expected a checkpoint file or 'last', got {ckpt!r}")
    if cfg.get("load_weights"):
        raise ConfigError("ckpt_path: cannot resume training and evaluate load_weights at once; drop one of them")
    if not cfg.model.get("train"):
        raise ConfigError(f"ckpt_path: model {cfg.model.name} trains nothing; there is no checkpoint to resume")
    if ckpt == "last":
        if not (ckpt_dir / "last.ckpt").is_file():
            raise ConfigError(
                f"ckpt_path=last: nothing to resume, {ckpt_dir / 'last.ckpt'} does not exist "
                "(it is written while this run id trains)"
            )
        return ckpt
    if not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path: no such file: {ckpt}")
    return ckpt


def check_paths(cfg: Any) -> None:
    """Files and folders the run will read exist."""
    data = cfg.data
    if data.get("source") == "atomic" and data.get("path") and not Path(str(data.path)).is_dir():
        raise ConfigError(f"data.path: no such directory: {data.path}")
    if data.get("raw_dir") and not Path(str(data.raw_dir)).is_dir():
        raise ConfigError(f"data.raw_dir: no such directory: {data.raw_dir}")
    weights = cfg.get("load_weights")
    if weights is not None:
        if not isinstance(weights, str) or not Path(weights).is_file():
            raise ConfigError(f"load_weights: no such file: {weights}")
    resume_checkpoint(cfg, last_checkpoint(cfg).parent)


# A run id part: no path separator, no leading dot; the characters the record schema allows.
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@=,-]{0,99}$")


def check_run_id_parts(cfg: Any) -> None:
    """``data.name`` and the model's label name the run folder: they must be plain names."""
    model = cfg.model
    for key, value in (("data.name", cfg.data.get("name")), ("model.label", model.get("label") or model.get("name"))):
        if not isinstance(value, str) or not _NAME_PART.match(value):
            raise ConfigError(
                f"{key}: {value!r} is not a plain name (letters, digits and . _ + @ = , -; "
                "no path separator, no leading dot): it is part of the run id and the run folder's name"
            )


def check_values(cfg: Any, read_data: bool = True) -> None:
    """All the checks above on one composed config; raises the first ConfigError.

    Args:
        cfg: the composed config of one job.
        read_data: allow reading the dataset for the catalogue bound; when False, a dataset
            that would have to be prepared from raw files first is not read.
    """
    check_seed(cfg.get("seed"))
    check_run_id_parts(cfg)
    check_paths(cfg)
    check_model(cfg.model)
    check_protocol_support(cfg)
    if cfg.get("trainer") is not None:
        check_trainer(cfg.trainer)
    check_cutoffs(cfg, catalogue=read_data or cfg.data.get("source") != "recipe")
