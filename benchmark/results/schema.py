"""The run-record schema (JSON Schema), versioned; used by the writer, the validator and the leaderboard."""

from __future__ import annotations

from typing import Any

from benchmark.errors import BenchmarkError

SCHEMA_VERSION = 1

_num_or_null = {"type": ["number", "null"]}
_hash = {"type": "string", "pattern": "^[0-9a-f]{64}$"}

RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "llm4rec-bench run record",
    "type": "object",
    "required": [
        "schema_version", "run_id", "created_at", "config", "config_hash", "group_key", "seed", "dataset",
        "split", "eval", "model", "labels", "training", "metrics", "efficiency", "environment", "predictions",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        # A plain name: it names the run folder and the archive members.
        "run_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._+@=,-]{0,199}$"},
        "created_at": {"type": "string"},
        "config": {
            "type": "object",
            "required": ["data", "split", "eval", "model", "seed"],
            "properties": {
                "data": {"type": "object"},
                "split": {"type": "object"},
                "eval": {"type": "object"},
                "model": {"type": "object"},
                "slices": {"type": "object"},
                "seed": {"type": "integer"},
            },
        },
        "config_hash": _hash,
        "group_key": _hash,
        "seed": {"type": "integer"},
        "dataset": {
            "type": "object",
            "required": ["name", "fingerprint", "files", "stats"],
            "properties": {
                "name": {"type": "string"},
                "fingerprint": _hash,
                "files": {"type": "object", "additionalProperties": _hash},
            },
        },
        "split": {
            "type": "object",
            "required": ["protocol", "fingerprint", "stats"],
            "properties": {"protocol": {"type": "string"}, "fingerprint": _hash},
        },
        "eval": {
            "type": "object",
            "required": ["protocol", "ks", "list_length", "rows", "n_items", "slice_rows"],
            "properties": {
                "protocol": {"enum": ["full", "sampled", "labeled", "candidates"]},
                "ks": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
                "list_length": {"type": "integer", "minimum": 1},
                "rows": {"type": "integer", "minimum": 0},
                "n_items": {"type": "integer", "minimum": 1},
                "slice_rows": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                "probabilities": {"type": "boolean"},
                "negatives_fingerprint": _hash,
            },
        },
        "model": {
            "type": "object",
            "required": ["name", "label", "family", "params_total", "params_trainable"],
            "properties": {"name": {"type": "string"}, "label": {"type": "string"}, "family": {"type": "string"}},
        },
        "labels": {"type": "object", "required": ["device"]},
        "training": {"type": "object", "required": ["seconds"]},
        "metrics": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": "^test/([a-z_]+/)?[a-z][a-z_]*(@[0-9]+)?$"},
            "additionalProperties": _num_or_null,
        },
        # Optional (eval=full with eval.also_candidates): the candidates view of the same predictions.
        "metrics_candidates": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": "^test/([a-z_]+/)?[a-z][a-z_]*(@[0-9]+)?$"},
            "additionalProperties": _num_or_null,
        },
        "efficiency": {
            "type": "object",
            "required": ["train_seconds", "eval_seconds", "peak_rss_mb"],
        },
        "environment": {"type": "object", "required": ["git_sha", "packages", "python", "platform"]},
        # Optional (records made before it have none): the audit summary of the split and index.
        "audit": {"type": "object", "required": ["version", "split"]},
        "predictions": {
            "type": "object",
            "required": ["file", "sha256"],
            "properties": {"file": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._+@=,-]{0,199}$"}, "sha256": _hash},
        },
    },
}


def schema_errors(record: Any) -> list[str]:
    """Human-readable schema violations (empty when the record is valid); metrics must be finite."""
    import math

    import jsonschema

    validator = jsonschema.Draft202012Validator(RECORD_SCHEMA)
    errs = [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<record>'}: {e.message}"
        for e in sorted(validator.iter_errors(record), key=lambda e: [str(p) for p in e.absolute_path])
    ]
    for block in ("metrics", "metrics_candidates"):
        metrics = record.get(block) if isinstance(record, dict) else None
        if isinstance(metrics, dict):
            errs += [f"{block}/{k}: {v} is not a finite number" for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    return errs


def check_record(record: dict[str, Any]) -> None:
    """Raise a one-line error when ``record`` does not follow the schema."""
    errs = schema_errors(record)
    if errs:
        raise BenchmarkError(f"run record does not follow schema v{SCHEMA_VERSION}: {errs[0]}")
