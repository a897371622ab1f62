"""The item-side facts of the beyond-accuracy metrics, built from a split's train part and its dataset.

:class:`~benchmark.eval.beyond.ItemFacts` holds, in the split's index space:

- ``popularity``: distinct train users per item, and the head (items covering 20 % of train
  interactions), from the train part only;
- ``genres``: the genre matrix from the item side table's ``genres`` role (or a ``genres``
  column), and each user's train-history genre distribution (calibration). A genre value is a
  list: split on commas when any value of the column holds one (the recipes join lists with
  ``", "``), else on whitespace (RecBole's ``token_seq``, e.g. ml-100k's ``Action Adventure``).
  No genre column, or no genre at all: ``None``, so genre metrics are absent, not zero;
- ``embeddings``: all-MiniLM-L6-v2 embeddings of ``Title (Year); Genres`` (the adapters' text,
  :func:`~benchmark.models.components.text_encoder.item_descriptions`) from the adapters' feature
  store (encoded once, then read from ``<cache>/features``). No title column: ``None`` (an item
  described by its raw id only says nothing about its content), so text ILD is absent.

This builder lives in the results layer because it reads the feature store (models layer); the
metrics themselves (:mod:`benchmark.eval.beyond`) see arrays only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.data.interactions import Interactions
from benchmark.data.splits import Split
from benchmark.eval.beyond import ItemFacts, head_mask, history_genres
from benchmark.models.components.item_text import text_embeddings
from benchmark.models.components.text_encoder import column_values, side_column


def genre_matrix(
    items: Any, item_fields: Mapping[str, str], item_ids: Sequence[str]
) -> tuple[np.ndarray, list[str]] | None:
    """Binary genre membership of every item (see the module docstring for how values are split).

    Args:
        items: ``Interactions.items`` (indexed by raw item id).
        item_fields: role -> column.
        item_ids: [n_items] raw ids in index order.

    Returns:
        ([n_items, G] bool, the G genre names sorted), or None without a genre column or genre.
    """
    column = side_column(items, item_fields, "genres")
    if column is None:
        return None
    values = column_values(items, column, item_ids)
    sep = "," if any("," in v for v in values) else None
    lists = [[g.strip() for g in v.split(sep) if g.strip()] for v in values]
    names = sorted({g for gs in lists for g in gs})
    if not names:
        return None
    pos = {g: j for j, g in enumerate(names)}
    out = np.zeros((len(item_ids), len(names)), dtype=bool)
    for i, gs in enumerate(lists):
        out[i, [pos[g] for g in gs]] = True
    return out, names


def build_item_facts(
    split: Split, data: Interactions, text: bool = True, store_dir: str | Path | None = None
) -> ItemFacts:
    """The facts of the beyond-accuracy metrics for one split (train part only).

    Args:
        split: the split; its item/user index spaces are the facts' ones.
        data: the dataset the split was built from (side tables).
        text: whether to read (or encode once) the text embeddings (text ILD).
        store_dir: the feature store folder (default ``<cache>/features``).
    """
    tr = split.train
    item_ids = np.asarray([str(x) for x in split.item_ids])
    user_ids = np.asarray([str(x) for x in split.user_ids])
    pairs = np.unique(
        np.stack([tr["user"].to_numpy(np.int64), tr["item"].to_numpy(np.int64)], axis=1), axis=0
    )
    users, items = pairs[:, 0], pairs[:, 1]  # distinct train (user, item) pairs
    popularity = np.bincount(items, minlength=split.n_items).astype(np.int64)
    notes: dict[str, Any] = {"popularity": "distinct train users per item"}
    genres = user_genres = None
    found = genre_matrix(data.items, data.item_fields, item_ids)
    if found is not None:
        genres, names = found
        user_genres = history_genres(users, items, genres, split.n_users)
        notes["genres"] = len(names)
    embeddings = None
    if text:
        emb = text_embeddings(data, item_ids, store_dir)
        if emb is not None:
            embeddings, notes["text"] = emb
    return ItemFacts(
        item_ids=item_ids,
        user_ids=user_ids,
        popularity=popularity,
        n_train_users=len(np.unique(users)),
        head=head_mask(popularity),
        genres=genres,
        user_genres=user_genres,
        embeddings=embeddings,
        notes=notes,
        holdout=_holdout_mask(split),
    )


def _holdout_mask(split: Split) -> np.ndarray | None:
    """[n_items] bool of the items the split holds out of train, or None when it holds none."""
    held = np.asarray(split.holdout_items, dtype=np.int64)
    if not len(held):
        return None
    mask = np.zeros(split.n_items, dtype=bool)
    mask[held] = True
    return mask


@lru_cache(maxsize=4)
def _facts_for(data_json: str, split_json: str, text: bool) -> tuple[str, str, ItemFacts]:
    from benchmark.config import DataConfig, SplitConfig, to_object
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split

    data = load_dataset(to_object(json.loads(data_json), DataConfig))
    split = build_split(data, to_object(json.loads(split_json), SplitConfig))
    return data.fingerprint, split.fingerprint, build_item_facts(split, data, text)


def facts_for_config(
    data_cfg: Mapping[str, Any], split_cfg: Mapping[str, Any], text: bool = True
) -> tuple[str, str, ItemFacts]:
    """(dataset fingerprint, split fingerprint, facts) of a run's data and split config values.

    Cached for the process: every run of one table shares its split. The caller compares the
    fingerprints with the record's before trusting the facts, and checks the data config's
    locations first (a record's paths are untrusted).
    """
    return _facts_for(
        json.dumps(dict(data_cfg), sort_keys=True), json.dumps(dict(split_cfg), sort_keys=True), text
    )


# Data sources the leaderboard rebuilds a committed run's split from: read in place, never fetched
# (a recipe dataset would download and prepare its raw files).
REBUILT_SOURCES = ("bundled", "atomic")


def facts_for_record(record: Mapping[str, Any]) -> ItemFacts | None:
    """The item facts of a run record's split, or None when they cannot be had safely here.

    A record is untrusted: its split is rebuilt only from a bundled dataset or an atomic folder
    whose path passes the record path checks (relative, inside the current directory), with this
    machine's own cache, and the facts are used only when the rebuilt dataset and split have the
    record's fingerprints. Any failure gives None (the run simply gets no recomputed values).
    """
    from benchmark.results.trust import check_record_path
    from benchmark.untrusted import SAFE_NAME

    try:
        cfg = record["config"]
        data, split = dict(cfg["data"]), dict(cfg["split"])
        if data.get("source") not in REBUILT_SOURCES or not SAFE_NAME.match(str(data.get("name"))):
            return None
        check_record_path("data.path", data.get("path"))
        if data.get("raw_dir") is not None:
            return None
        data["cache_dir"] = str(default_cache_root())
        data_fp, split_fp, facts = facts_for_config(data, split)
        same = data_fp == record["dataset"]["fingerprint"] and split_fp == record["split"]["fingerprint"]
    except Exception:  # noqa: BLE001 - a record is untrusted; whatever fails, there are no facts
        return None
    return facts if same else None


def default_cache_root() -> Path:
    """``$LLM4REC_CACHE`` or ``.cache/llm4rec`` (the rule of ``data.cache_dir``)."""
    import os

    return Path(os.environ.get("LLM4REC_CACHE") or ".cache/llm4rec")
