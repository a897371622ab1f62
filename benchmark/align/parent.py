"""The parent of an alignment run: a trained SFT run, read as untrusted data and checked.

A parent is a run folder (``results/runs/<id>`` or an outputs folder) holding ``record.json``.
It is read through :mod:`benchmark.untrusted` (bounded, strict JSON, no links) and must be a
model the aligner can train (``p5``, or ``tallrec`` with ``align=dpo``), on the same split
(split fingerprint) and the same dataset (dataset fingerprint) as the alignment run, with the
same model config. Its weights are those its training key saved under
``<outputs>/models/<key>/model.pt`` (:func:`benchmark.results.identity.training_key` of the
parent's recorded config), and the folder's ``training.json`` must name the parent as their trainer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from benchmark.errors import ConfigError
from benchmark.untrusted import RECORD, Rejected, parse_record, read_regular_file

ALIGNABLE = ("p5", "tallrec")


@dataclass(frozen=True)
class Parent:
    """A checked parent run: its id, record and weights file (None until located)."""

    run_id: str
    record: dict[str, Any]
    weights: Path | None = None

    def facts(self) -> dict[str, Any]:
        """What the aligned run's record says about its parent."""
        rec = self.record
        return {
            "run_id": self.run_id,
            "config_hash": rec.get("config_hash"),
            "split_fingerprint": (rec.get("split") or {}).get("fingerprint"),
            "model": (rec.get("config") or {}).get("model", {}).get("name"),
            "test_metrics": (rec.get("metrics") or {}).get("overall"),
        }


def read_parent(path: str | Path) -> Parent:
    """The record of the run folder ``path`` (bounded read).

    Raises:
        ConfigError: no such folder, no readable record, or a record without run id and config.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"align.parent: no run folder at {folder}")
    try:
        rec = parse_record(read_regular_file(folder / RECORD, folder, 16 << 20, RECORD))
    except Rejected as e:
        raise ConfigError(f"align.parent: {folder}: {e}") from None
    if not isinstance(rec.get("run_id"), str) or not isinstance(rec.get("config"), dict):
        raise ConfigError(f"align.parent: {folder}: the record has no run_id or config")
    return Parent(rec["run_id"], rec)


def _get(rec: Mapping[str, Any], *keys: str) -> Any:
    node: Any = rec
    for k in keys:
        node = node.get(k) if isinstance(node, Mapping) else None
    return node


def check_parent(
    parent: Parent, split_fingerprint: str, data_fingerprint: str, model_config: Mapping[str, Any]
) -> None:
    """Refuse a parent of another split, dataset or model (one-line ConfigError).

    Args:
        parent: from :func:`read_parent`.
        split_fingerprint: the alignment run's split fingerprint.
        data_fingerprint: the alignment run's dataset fingerprint.
        model_config: the alignment run's resolved ``model`` config (a plain mapping).
    """
    rid = parent.run_id
    name = _get(parent.record, "config", "model", "name")
    if name not in ALIGNABLE:
        raise ConfigError(
            f"align.parent: {rid} is a {name!r} run; alignment starts from {', '.join(ALIGNABLE)}"
        )
    if _get(parent.record, "split", "fingerprint") != split_fingerprint:
        raise ConfigError(
            f"align.parent: {rid} was trained on another split "
            f"(fingerprint {str(_get(parent.record, 'split', 'fingerprint'))[:12]}, this run {split_fingerprint[:12]})"
        )
    if _get(parent.record, "dataset", "fingerprint") != data_fingerprint:
        raise ConfigError(f"align.parent: {rid} was trained on other data (dataset fingerprint differs)")
    theirs = _get(parent.record, "config", "model")
    if json.dumps(theirs, sort_keys=True, default=str) != json.dumps(
        dict(model_config), sort_keys=True, default=str
    ):
        diff = sorted(
            k for k in set(theirs or {}) | set(model_config) if (theirs or {}).get(k) != model_config.get(k)
        )
        raise ConfigError(f"align.parent: {rid} has another model config (differs in: {', '.join(diff[:5])})")


def locate_weights(parent: Parent, outputs: str | Path) -> Parent:
    """The parent with its weights file: ``<outputs>/models/<training key>/model.pt``.

    Raises:
        ConfigError: no weights there, or weights another run trained.
    """
    from benchmark.results.identity import training_key

    key = training_key(OmegaConf.create(parent.record["config"]))[:16]
    folder = Path(outputs) / "models" / key
    weights, facts_file = folder / "model.pt", folder / "training.json"
    if not weights.is_file() or not facts_file.is_file():
        raise ConfigError(
            f"align.parent: no trained weights of {parent.run_id} under {folder} (run the parent with the same outputs)"
        )
    try:
        by = json.loads(read_regular_file(facts_file, folder, 1 << 20, "training.json")).get("trained_by")
    except (Rejected, ValueError, AttributeError) as e:
        raise ConfigError(f"align.parent: {facts_file}: unreadable ({e})") from None
    if by not in (None, parent.run_id):
        raise ConfigError(f"align.parent: the weights in {folder} were trained by {by}, not {parent.run_id}")
    return Parent(parent.run_id, parent.record, weights)
