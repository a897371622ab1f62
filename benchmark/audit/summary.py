"""The audit summary a run record carries: the cheap figures of its split and item index.

:func:`record_summary` is computed by a run from the split it trained on (and the model's item
index, when it has one); ``llm4rec validate`` recomputes the split figures from the canonical
split, and the index figures when the index is cheap to rebuild (``random``, ``sequential``),
and compares them (:func:`summary_differences`). A record made before summaries existed has
none, and nothing is compared.

Only figures that take a few numpy passes over the split are here: no refit, no text encoder.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmark.audit.findings import default_thresholds
from benchmark.audit.identifiers import AuditIndex, index_checks
from benchmark.audit.overlap import duplicates, overlap
from benchmark.audit.table import AuditData, from_split
from benchmark.audit.timeline import timeline

SUMMARY_VERSION = 1
REBUILT_SCHEMES = ("random", "sequential")  # index figures validate recomputes (no data, no encoder)
TOLERANCE = 1e-9


def split_figures(data: AuditData) -> dict[str, Any]:
    """The split's cheap figures (shares, rounded as in the audit report)."""
    limits = default_thresholds()
    tl, _ = timeline(data, limits)
    ov, _ = overlap(data, limits)
    du, _ = duplicates(data, limits)
    return {
        "train_after_test": tl["test"]["mean_over_rows"] if tl.get("applicable") and tl.get("test") else None,
        "future_test_items": tl["future_test_items"]["share"] if tl.get("applicable") else None,
        "test_pairs_in_train": ov["test_pairs_in_train"],
        "test_targets_in_history": ov["test_targets_in_history"],
        "holdout_items_in_train": ov["holdout_items_in_train"],
        "duplicate_rows": du["duplicate_rows"],
        "test_rows_in_train": du["test_rows_in_train"],
    }


def index_figures(data: AuditData, scheme: str, texts: list[str]) -> dict[str, Any]:
    """An index's cheap figures: the ids' order against the test targets (no refit)."""
    figures, _ = index_checks(data, AuditIndex(scheme, list(texts), scheme=scheme), default_thresholds())
    return {
        "scheme": scheme,
        "consecutive_test_ids": figures["consecutive_test_ids"],
        "next_after_user_max": figures["next_after_user_max"],
    }


def record_summary(split: Any, index: Any | None = None) -> dict[str, Any]:
    """The ``audit`` node of a run record.

    Args:
        split: the run's :class:`~benchmark.data.splits.Split`.
        index: the model's :class:`~benchmark.models.components.indexing.ItemIndex`, or None.
    """
    from benchmark.models.components.indexing import ItemIndex

    data = from_split(split)
    out: dict[str, Any] = {"version": SUMMARY_VERSION, "split": split_figures(data)}
    if isinstance(index, ItemIndex):
        out["index"] = index_figures(data, index.scheme, index.texts)
    return out


def rebuilt_index(config: dict[str, Any], split: Any) -> list[str] | None:
    """The ids of a recorded run's item index, rebuilt from the canonical split when its scheme is
    cheap to rebuild (:data:`REBUILT_SCHEMES`); None otherwise.

    Args:
        config: the record's resolved config (untrusted: only ``model.module.indexing`` and
            ``seed`` are read, through the typed :class:`IndexConfig`).
        split: the canonical split.

    Raises:
        ConfigError: an indexing node that is not a valid :class:`IndexConfig`.
    """
    from benchmark.config import to_object
    from benchmark.models.components.indexing import IndexConfig, build_index

    model = config.get("model") if isinstance(config, dict) else None
    module = model.get("module") if isinstance(model, dict) else None
    node = module.get("indexing") if isinstance(module, dict) else None
    if not isinstance(node, dict) or node.get("scheme") not in REBUILT_SCHEMES:
        return None
    seed = config.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        return None
    index_cfg = to_object(node, IndexConfig, "model.module.indexing")
    return list(build_index(index_cfg, split, None, seed).texts)


def summary_differences(recorded: dict[str, Any], split: Any, index_texts: list[str] | None) -> list[str]:
    """What differs between a record's ``audit`` node and the figures recomputed from the split.

    Args:
        recorded: the record's ``audit`` node.
        split: the canonical split.
        index_texts: the rebuilt index's ids (None: the index figures are not compared).

    Returns:
        ``key: recorded X, recomputed Y`` per difference (empty: the summary holds).
    """
    if not isinstance(recorded, dict) or recorded.get("version") != SUMMARY_VERSION:
        return [
            f"version: {recorded.get('version') if isinstance(recorded, dict) else recorded!r} is not {SUMMARY_VERSION}"
        ]
    data = from_split(split)
    again: dict[str, Any] = {"split": split_figures(data)}
    rec_index = recorded.get("index")
    if isinstance(rec_index, dict) and index_texts is not None:
        again["index"] = index_figures(data, str(rec_index.get("scheme")), index_texts)
    diffs = []
    for part, figures in again.items():
        rec = recorded.get(part)
        if not isinstance(rec, dict):
            diffs.append(f"{part}: missing")
            continue
        for key, value in figures.items():
            if not _same(rec.get(key), value):
                diffs.append(f"{part}.{key}: recorded {rec.get(key)!r}, recomputed {value!r}")
    return diffs


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return bool(np.isclose(float(a), float(b), rtol=0.0, atol=TOLERANCE))
    return a == b
