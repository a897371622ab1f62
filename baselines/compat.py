"""Every compatibility shim RecBole 1.2.1 needs on this stack, in one place.

Nothing here runs at import time. Each shim is scoped: it applies only inside
:func:`recbole_session` (or to the RecBole objects built by the helpers below) and
undoes itself afterwards, so importing :mod:`benchmark` or :mod:`baselines` never
changes NumPy, pandas, torch, ``sys.argv`` or the environment.

Why each exists, and when it can go:

- **NumPy aliases** (``np.float``, ``np.long``, ``np.bool``, ...; removed in NumPy
  1.20-1.24). RecBole's ``Config`` sets them process-wide on construction, and
  RecBole code uses them while building models (``ContextRecommender``,
  ``ContextSeqEmbLayer``), while building ``Interaction`` objects from arrays and in
  its evaluator. :func:`recbole_session` sets them for the RecBole calls it wraps and
  restores NumPy's namespace on exit (RecBole's own models need none of them to train
  or score once built). Go: when RecBole releases a version without them (RecBole > 1.2.1).
- **Command line**: ``Config`` parses ``--key=value`` arguments of ``sys.argv`` as
  RecBole settings (and warns about every other argument). The session hides
  ``sys.argv`` from it. Go: never needed if RecBole stops reading ``sys.argv``.
- **CUDA_VISIBLE_DEVICES**: ``Config`` overwrites it with ``gpu_id``. The session
  restores it, and :func:`gpu_id` picks a value that never hides GPUs from Lightning.
  Go: when RecBole stops writing the environment.
- **pandas 3** (copy-on-write; ``Series.agg(len)`` now aggregates the whole column):
  RecBole's token remapping, NaN filling and sequential benchmark presets silently
  break (``Length of values (1) does not match``). :func:`dataset_class` returns
  subclasses of RecBole's ``Dataset``/``SequentialDataset`` that override exactly those
  three methods with pandas-3-safe equivalents (same results as on pandas 2). Go: when
  RecBole supports pandas 3, or if the project pins ``pandas<3``.
- **scipy.sparse.dok_matrix._update**: graph models (LightGCN, NGCF, SpectralCF, GCMC,
  NCL) build their adjacency matrix with this private method, which SciPy no longer
  has (1.17 here). :func:`recbole_session` adds an equivalent (a bulk update of the
  stored entries) for its duration when it is missing. Go: when RecBole stops using it.
- **torch.load weights_only**: torch >= 2.6 loads with ``weights_only=True``, which
  refuses RecBole's checkpoints (they pickle a ``Config``), so ``Trainer.evaluate
  (load_best_model=True)`` fails. :func:`load_checkpoint` loads them explicitly; the
  cross-check calls it instead. Go: when RecBole saves plain state dicts.
- **./log_tensorboard**: RecBole's ``Trainer`` creates a TensorBoard folder in the
  current directory and writes to it by relative path. :func:`native_trainer` builds
  it with the working directory set to a scratch folder and reopens the writer there
  by absolute path. Go: when RecBole makes it optional.

``ray`` (imported by ``recbole.quick_start``, and needing ``pkg_resources``) is never
imported: the bridge uses ``recbole.config``, ``recbole.data`` and ``recbole.trainer``
directly.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

# RecBole's Config.compatibility_settings(): alias -> NumPy name it stands for.
_NUMPY_ALIASES = {
    "bool": "bool_",
    "int": "int_",
    "float": "float64",
    "complex": "complex128",
    "object": "object_",
    "str": "str_",
    "long": "int_",
    "unicode": "str_",
}
_MISSING = object()


@contextmanager
def recbole_session() -> Iterator[None]:
    """Run RecBole code with its process-wide side effects undone on exit.

    Restores NumPy's namespace (RecBole's aliases), ``sys.argv`` (hidden from
    RecBole's ``Config`` inside) and ``CUDA_VISIBLE_DEVICES``.
    """
    saved_np = {name: np.__dict__.get(name, _MISSING) for name in _NUMPY_ALIASES}
    saved_argv = sys.argv
    saved_cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
    sys.argv = sys.argv[:1]
    for alias, target in _NUMPY_ALIASES.items():
        setattr(np, alias, getattr(np, target))
    dok = _dok_class()
    added_update = dok is not None and not hasattr(dok, "_update")
    if added_update:
        dok._update = _dok_update
    try:
        with warnings.catch_warnings():
            # RecBole 1.2.1 under pandas 3: a chained in-place fillna that is a no-op for
            # the files the bridge writes (no empty sequences), and read-only arrays it
            # turns into tensors without writing to them.
            warnings.filterwarnings("ignore", message=".*chained assignment.*")
            warnings.filterwarnings("ignore", message=".*NumPy array is not writable.*")
            warnings.filterwarnings("ignore", message=".*In the future `np.*")
            warnings.filterwarnings("ignore", message=".*sparse.SparseTensor.*is deprecated.*")
            warnings.filterwarnings("ignore", message=".*torch.cuda.amp.GradScaler.*is deprecated.*")
            yield
    finally:
        if added_update:
            del dok._update
        sys.argv = saved_argv
        if saved_cuda is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved_cuda
        for name, value in saved_np.items():
            if value is _MISSING:
                np.__dict__.pop(name, None)
            else:
                setattr(np, name, value)


def _dok_class() -> type | None:
    try:
        from scipy.sparse import dok_matrix
    except ImportError:  # pragma: no cover
        return None
    return dok_matrix


def _dok_update(self: Any, data: dict) -> None:
    """SciPy's removed private ``dok_matrix._update``: store ``{(row, col): value}`` unchecked."""
    store = getattr(self, "_dict", None)
    if store is not None:
        store.update(data)
    else:  # older SciPy: the matrix is the dict
        dict.update(self, data)


def gpu_id(native: bool) -> str:
    """The ``gpu_id`` RecBole's ``Config`` gets.

    For the Lightning wrapper the model is built on the CPU and moved by Lightning, so
    RecBole must not touch CUDA (an empty id makes ``Config`` pick the CPU without
    initialising CUDA under a rewritten ``CUDA_VISIBLE_DEVICES``). RecBole's native
    trainer gets the GPUs this process already sees.
    """
    if not native:
        return ""
    import torch

    if not torch.cuda.is_available():
        return ""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "0")


def dataset_class(model_type: Any) -> type:
    """RecBole's dataset class for a model type, with the pandas-3 fixes applied.

    Args:
        model_type: a ``recbole.utils.ModelType``.

    Returns:
        a subclass of ``recbole.data.dataset.Dataset`` (``SequentialDataset`` for
        sequential models) that differs from RecBole's only in :class:`_Pandas3Fixes`.
    """
    from recbole.utils import ModelType

    plain, sequential = _dataset_classes()
    return sequential if model_type == ModelType.SEQUENTIAL else plain


def load_checkpoint(path: str | Path, device: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by RecBole's ``Trainer`` (it pickles a ``Config``)."""
    import torch

    return torch.load(path, map_location=device, weights_only=False)


@contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def native_trainer(config: Any, model: Any, workdir: Path) -> Any:
    """RecBole's own ``Trainer`` for ``model``, its TensorBoard folder kept in ``workdir``."""
    from recbole.utils import get_trainer
    from torch.utils.tensorboard import SummaryWriter

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with _cwd(workdir):
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.tensorboard.close()  # it writes by relative path: reopen it by absolute path
    trainer.tensorboard = SummaryWriter(str(workdir / "log_tensorboard"))
    return trainer


# ----------------------------------------------------------------------------- pandas 3


def _lengths(series: Any) -> np.ndarray:
    """Per-row lengths of a column of arrays (pandas 2's ``series.agg(len)``)."""
    return np.fromiter((len(v) for v in series.to_numpy()), dtype=np.int64, count=len(series))


class _Pandas3Fixes:
    """Pandas-3-safe versions of the RecBole ``Dataset`` methods that pandas 3 breaks.

    Each method is RecBole 1.2.1's own, with ``feat[f].agg(len)`` replaced by explicit
    per-row lengths and chained in-place ``fillna`` by assignment.
    """

    def _remap(self, remap_list: list) -> None:
        import pandas as pd
        from recbole.utils import FeatureType

        if len(remap_list) == 0:
            return
        tokens = []
        for feat, field, ftype in remap_list:
            if ftype == FeatureType.TOKEN:
                tokens.append(np.asarray(feat[field].to_numpy(), dtype=object))
            elif ftype == FeatureType.TOKEN_SEQ:
                values = feat[field].to_numpy()
                tokens.append(
                    np.concatenate([np.asarray(v, dtype=object) for v in values])
                    if len(values)
                    else np.zeros(0, dtype=object)
                )
        split_point = np.cumsum(list(map(len, tokens)))[:-1]
        tokens = np.concatenate(tokens)
        new_ids_list, mp = pd.factorize(tokens)
        new_ids_list = np.split(new_ids_list + 1, split_point)
        mp = np.array(["[PAD]"] + list(mp))
        token_id = {t: i for i, t in enumerate(mp)}
        for (feat, field, ftype), new_ids in zip(remap_list, new_ids_list, strict=True):
            if field not in self.field2id_token:
                self.field2id_token[field] = mp
                self.field2token_id[field] = token_id
            if ftype == FeatureType.TOKEN:
                feat[field] = new_ids
            elif ftype == FeatureType.TOKEN_SEQ:
                seq_split = np.cumsum(_lengths(feat[field]))[:-1]
                feat[field] = pd.Series(np.split(new_ids, seq_split), index=feat.index, dtype=object)

    def _fill_nan(self) -> None:
        import pandas as pd
        from recbole.utils import FeatureType

        for feat_name in self.feat_name_list:
            feat = getattr(self, feat_name)
            for field in list(feat):
                ftype = self.field2type[field]
                if ftype == FeatureType.TOKEN:
                    feat[field] = feat[field].fillna(value=0).astype(np.int64)
                elif ftype == FeatureType.FLOAT:
                    feat[field] = feat[field].fillna(value=feat[field].mean())
                else:
                    dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                    feat[field] = pd.Series(
                        [np.array([], dtype=dtype) if isinstance(x, float) else x for x in feat[field]],
                        index=feat.index,
                        dtype=object,
                    )

    def _benchmark_presets(self) -> None:
        from recbole.utils import FeatureSource, FeatureType

        list_suffix = self.config["LIST_SUFFIX"]
        for field in self.inter_feat:
            if field + list_suffix in self.inter_feat:
                setattr(self, f"{field}_list_field", field + list_suffix)
        self.set_field_property(self.item_list_length_field, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)
        self.inter_feat[self.item_list_length_field] = _lengths(self.inter_feat[self.item_id_list_field])


@functools.cache
def _dataset_classes() -> tuple[type, type]:
    """(Dataset, SequentialDataset) with :class:`_Pandas3Fixes`; created on first use."""
    from recbole.data.dataset import Dataset, SequentialDataset

    class BenchDataset(_Pandas3Fixes, Dataset):
        """RecBole's ``Dataset`` with the pandas-3 fixes."""

    class BenchSequentialDataset(_Pandas3Fixes, SequentialDataset):
        """RecBole's ``SequentialDataset`` with the pandas-3 fixes."""

    for cls in (BenchDataset, BenchSequentialDataset):  # picklable as baselines.compat.<name>
        cls.__qualname__ = cls.__name__
        cls.__module__ = __name__
    return BenchDataset, BenchSequentialDataset


def __getattr__(name: str) -> Any:
    """Module attributes ``BenchDataset``/``BenchSequentialDataset`` (so pickle finds them)."""
    if name in ("BenchDataset", "BenchSequentialDataset"):
        plain, sequential = _dataset_classes()
        return plain if name == "BenchDataset" else sequential
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
