"""Collaborative item embeddings of a first-stage run, as an adapter feature source (LLaRA-style).

A run of a model with an item embedding table (``model.item_embeddings()``: RecBole SASRec,
GRU4Rec, BPR, LightGCN, ..., our BPR) started with ``save_item_embeddings=true`` writes two files
beside its record:

- ``item_embeddings.npy``: float32 [n_items, d] in the split's item index order (row i = the i-th
  item id of the split whose fingerprint the record names; RecBole's own id order is undone);
- ``item_embeddings.json``: run id, model label, split fingerprint, shape and the sha256 of the
  ``.npy`` bytes.

``adapter/encoder=cf`` (:class:`CFEncoder`) reads them back as the ``cf`` modality of an item
adapter: every item mention gets soft tokens projected from its collaborative embedding, next to
its title (LLaRA, Liao et al., SIGIR 2024). A run folder may come from anyone, so the reading is
bounded and checked like ``validate`` reads a run (no links, sizes capped, no pickles, the sha256,
the split fingerprint, the shape and finite values): any failure is one line naming the file.

Items that never occur in the train part keep the embedding their model was initialised with
(never trained): they are marked missing, so the adapter gives them its learned missing-modality
embedding instead. Only the train part decides that.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import ConfigError

EMBEDDINGS = "item_embeddings.npy"
FACTS = "item_embeddings.json"
MAX_BYTES = 256 * 1024 * 1024  # an embeddings file larger than this is refused
MAX_DIM = 8192
MAX_FACTS_BYTES = 64 * 1024


def embedding_files(
    embeddings: np.ndarray, run_id: str, model: str, split_fingerprint: str
) -> dict[str, bytes]:
    """The two files a run writes beside its record (name -> bytes).

    Args:
        embeddings: [n_items, d] item embeddings in the split's item index order.
        run_id: the run writing them.
        model: its model label.
        split_fingerprint: the split's fingerprint.
    """
    arr = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise ValueError(f"item embeddings must be a finite [n_items, d] array, got shape {arr.shape}")
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    facts = {
        "run_id": run_id,
        "model": model,
        "split_fingerprint": split_fingerprint,
        "items": int(arr.shape[0]),
        "dim": int(arr.shape[1]),
        "dtype": "float32",
        "sha256": hashlib.sha256(data).hexdigest(),
        "order": "the split's item index order",
    }
    return {EMBEDDINGS: data, FACTS: (json.dumps(facts, indent=1, sort_keys=True) + "\n").encode()}


def run_dir_of(spec: str | Path, key: str) -> Path:
    """A run directory: a path, or a pattern (``*``, ``?``) in its last part that must match exactly
    one directory (so a seeded sweep can name ``...-sasrec-recbole-s${seed}-*``)."""
    path = Path(spec)
    if not any(c in path.name for c in "*?"):
        return path
    found = sorted(p for p in path.parent.glob(path.name) if p.is_dir()) if path.parent.is_dir() else []
    if len(found) != 1:
        names = ", ".join(p.name for p in found[:3]) + (" ..." if len(found) > 3 else "")
        raise ConfigError(
            f"{key}: {len(found)} run directories match {spec}"
            + (f" ({names}); name one" if found else "; run the first stage first")
        )
    return found[0]


def check_run_files(spec: str | Path | None, key: str = "adapter.encoder.run") -> Path:
    """Before anything is loaded: the run folder exists and holds the saved embeddings (regular
    files, no links); the full check is :func:`read_item_embeddings`. Returns the folder."""
    if not spec:
        raise ConfigError(
            f"{key}: name the first-stage run whose item embeddings to use "
            "(a run folder written with save_item_embeddings=true)"
        )
    run_dir = run_dir_of(spec, key)
    if not run_dir.is_dir():
        raise ConfigError(f"{key}: {run_dir} is not a run folder")
    for name in (FACTS, EMBEDDINGS):
        path = run_dir / name
        if path.is_symlink() or not path.is_file():
            raise ConfigError(
                f"{key}: {run_dir}: {name} is missing, a link or not a regular file; "
                "rerun that run with save_item_embeddings=true"
            )
    return run_dir


def read_item_embeddings(
    spec: str | Path, n_items: int, split_fingerprint: str, key: str = "adapter.encoder.run"
) -> tuple[np.ndarray, dict[str, Any]]:
    """The item embeddings a run saved, checked against this run's split.

    Args:
        spec: the run directory (or a pattern matching exactly one).
        n_items: items of this run's split.
        split_fingerprint: this run's split fingerprint (the run's must equal it).
        key: the config key named in error messages.

    Returns:
        ([n_items, d] float32 array, facts: run id, model, fingerprint, dim, sha256).

    Raises:
        ConfigError: one line naming the run folder or file and what is wrong.
    """
    from benchmark.untrusted import Rejected, read_regular_file, read_run_dir

    run_dir = run_dir_of(spec, key)
    try:
        record = read_run_dir(run_dir).record
        raw_facts = read_regular_file(run_dir / FACTS, run_dir, MAX_FACTS_BYTES, "embeddings facts")
        data = read_regular_file(run_dir / EMBEDDINGS, run_dir, MAX_BYTES, "embeddings file")
    except Rejected as e:
        hint = (
            "; rerun that run with save_item_embeddings=true"
            if "is missing" in e.reason and "embeddings" in e.reason
            else ""
        )
        raise ConfigError(f"{key}: {run_dir}: {e}{hint}") from None
    where = f"{key}: {run_dir / FACTS}"
    try:
        facts = json.loads(raw_facts.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{where}: not JSON ({str(e)[:80]})") from None
    if not isinstance(facts, dict):
        raise ConfigError(f"{where}: not a JSON object")
    split = record.get("split") if isinstance(record.get("split"), dict) else {}
    run_id = record.get("run_id")
    if facts.get("run_id") != run_id or not isinstance(run_id, str):
        raise ConfigError(f"{where}: written by run {str(facts.get('run_id'))[:80]!r}, not by this folder's run {str(run_id)[:80]!r}")
    theirs = split.get("fingerprint")
    if theirs != split_fingerprint or facts.get("split_fingerprint") != theirs:
        raise ConfigError(
            f"{key}: run {run_id} was made on split {str(theirs)[:12]}, this run's split is "
            f"{split_fingerprint[:12]}; collaborative embeddings need the same split"
        )
    if hashlib.sha256(data).hexdigest() != facts.get("sha256"):
        raise ConfigError(f"{key}: {run_dir / EMBEDDINGS}: sha256 differs from {FACTS}")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ConfigError(f"{key}: {run_dir / EMBEDDINGS}: not a .npy array ({str(e)[:80]})") from None
    if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[0] != n_items or not 1 <= arr.shape[1] <= MAX_DIM:
        raise ConfigError(
            f"{key}: {run_dir / EMBEDDINGS}: expected float32 [{n_items}, 1..{MAX_DIM}], "
            f"got {arr.dtype} {list(arr.shape)}"
        )
    if not np.isfinite(arr).all():
        raise ConfigError(f"{key}: {run_dir / EMBEDDINGS}: non-finite values")
    model = record.get("model") if isinstance(record.get("model"), dict) else {}
    out = {
        "run_id": run_id,
        "model": str(model.get("label") or model.get("name") or "")[:200],
        "split_fingerprint": theirs,
        "dim": int(arr.shape[1]),
        "sha256": facts["sha256"],
    }
    return arr, out


class CFEncoder:
    """The ``cf`` feature source of an item adapter: a first-stage run's item embeddings
    (``configs/adapter/encoder/cf.yaml``).

    Args:
        run: the first-stage run directory (or a pattern matching exactly one), written with
            ``save_item_embeddings=true``.
        normalize: scale every row to unit L2 norm (the projector then sees directions only).
        label: the first stage's name in the model label (``+cf_proj-cf-sasrec``).
    """

    kind = "cf"
    modalities = ("cf",)

    def __init__(self, run: str | None = None, normalize: bool = False, label: str = "cf") -> None:
        check_run_files(run)
        self.run, self.normalize, self.label = str(run), bool(normalize), str(label)
        self._facts: dict[str, Any] | None = None

    def table(self, split: Any) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """([n_items, d] features, [n_items] missing (items absent from the train part), facts)."""
        arr, facts = read_item_embeddings(self.run, split.n_items, split.fingerprint)
        if self.normalize:
            arr = arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
        missing = np.ones(split.n_items, dtype=bool)
        missing[np.unique(split.train["item"].to_numpy())] = False
        self._facts = facts
        return arr.astype(np.float32), missing, {
            **facts,
            "normalize": self.normalize,
            "items": int(split.n_items),
            "missing": int(missing.sum()),
            "missing_share": round(float(missing.mean()), 6),
            "missing_rule": "items absent from the train part (their embeddings never trained)",
            "cache": "run",
        }

    def identity(self) -> dict[str, Any]:
        """What the features are: the first-stage run and its embeddings' sha256 (after ``table``)."""
        facts = self._facts or {}
        return {
            "kind": self.kind,
            "model": facts.get("model"),
            "run_id": facts.get("run_id"),
            "weights_sha256": facts.get("sha256"),
            "normalize": self.normalize,
            "random_init": False,
        }
