"""Item texts as vectors: all-MiniLM-L6-v2 embeddings of ``Title (Year); Genres`` from the feature store.

Shared by the beyond-accuracy facts (text ILD), in-context example selection, relevant-history
selection and the ID-free text tower.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.models.components.encoders import HFTextEncoder
from benchmark.models.components.feature_store import encode_features
from benchmark.models.components.text_encoder import column_values, item_descriptions, side_column


def text_embeddings(
    data: Any, item_ids: Sequence[str], store_dir: str | Path | None = None
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """L2-normalised all-MiniLM-L6-v2 embeddings of the items' texts from the feature store.

    Args:
        data: the dataset (item side table and its roles).
        item_ids: [n_items] raw ids in index order.
        store_dir: the feature store (default ``<cache>/features``, shared with the adapters).

    Returns:
        ([n_items, d] float32, facts of the feature table), or None when no item has a title.
    """
    column = side_column(data.items, data.item_fields, "title")
    if column is None or not any(column_values(data.items, column, item_ids)):
        return None
    texts = item_descriptions(data.items, data.item_fields, item_ids)
    with torch.random.fork_rng(devices=[]):  # loading the encoder never moves the run's random stream
        table = encode_features("text", HFTextEncoder(), list(item_ids), texts=texts, store_dir=store_dir)
    emb = np.asarray(table.features, dtype=np.float32)  # [n_items, d], L2-normalised by the encoder
    return emb, {"encoder": "sentence-transformers/all-MiniLM-L6-v2", "key": table.facts["key"][:20]}


def title_vectors(data: Any, item_ids: Sequence[Any], why: str) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`text_embeddings` of the items, or a one-line ConfigError naming ``model.module.<why>``
    when no item has a title to embed."""
    from benchmark.errors import ConfigError

    found = text_embeddings(data, [str(i) for i in item_ids])
    if found is None:
        raise ConfigError(f"model.module.{why}: items have no titles to embed")
    return found
