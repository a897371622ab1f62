"""Data config -> canonical interactions (read, then filtered), wherever the files live."""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path

from benchmark.config import DataConfig
from benchmark.data.atomic import read_atomic
from benchmark.data.interactions import Interactions, filter_interactions
from benchmark.errors import DataError


def bundled_dir(name: str) -> Path:
    """A dataset shipped inside the installed recbole package, read in place (never copied)."""
    try:
        root = Path(str(resources.files("recbole") / "dataset_example"))
    except ModuleNotFoundError:
        raise DataError("data.source=bundled needs the recbole package installed") from None
    path = root / name
    if not path.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise DataError(f"data.name: no bundled dataset '{name}' in {root} (available: {have})")
    return path


def dataset_dir(cfg: DataConfig) -> Path:
    """Directory holding ``<name>.inter`` (and .item/.user) for a data config."""
    if cfg.source == "bundled":
        return bundled_dir(cfg.name)
    if cfg.source == "atomic":
        return Path(cfg.path)
    from benchmark.data.recipes import prepare  # recipes read raw formats; imported on demand

    return Path(prepare(cfg.name, cfg.raw_dir, cfg.cache_dir, cfg.preprocess))


def load_dataset(cfg: DataConfig) -> Interactions:
    """Read a dataset and apply the configured rating threshold and k-core filter."""
    data = read_atomic(
        dataset_dir(cfg),
        cfg.name,
        user_field=cfg.user_field,
        item_field=cfg.item_field,
        rating_field=cfg.rating_field,
        timestamp_field=cfg.timestamp_field,
        item_fields=dict(cfg.item_fields),
        duplicates=cfg.duplicates,
    )
    inter = filter_interactions(data.inter, cfg.rating_threshold, cfg.kcore)
    if len(inter) == 0:
        raise DataError(
            f"{cfg.name}: no interactions left after data.rating_threshold={cfg.rating_threshold}, data.kcore={cfg.kcore}"
        )
    return replace(data, inter=inter)
