"""Findings of an audit: a figure, its severity against the thresholds, and a one-line explanation.

A figure above its ``fail`` threshold is an ``error`` (the audit exits 1), above its ``warn``
threshold a ``warning``, otherwise ``info``; a figure that cannot be computed for the audited
input (no timestamps, no labels) is ``info`` with value None. Thresholds come from
``configs/audit/default.yaml`` (``audit.warn.CHECK`` / ``audit.fail.CHECK`` on the command line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError

SEVERITIES = ("info", "warning", "error")
DEFAULTS = Path(__file__).resolve().parents[2] / "configs" / "audit" / "default.yaml"


@dataclass(frozen=True)
class Finding:
    """One checked figure.

    Attributes:
        check: the check's name (a key of the thresholds), e.g. ``train_after_test``.
        scope: what it was computed on: ``split`` or ``index:<name>``.
        severity: ``info``, ``warning`` or ``error``.
        value: the figure (None: not applicable to this input).
        message: one line saying what the figure means.
        fail: the threshold above which it is an error (None: never).
    """

    check: str
    scope: str
    severity: str
    value: float | None
    message: str
    fail: float | None = None

    def line(self) -> str:
        """``ERROR   split  train_after_test=0.12  <message>``."""
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        limit = "" if self.fail is None or self.severity != "error" else f" > {self.fail:g}"
        return f"{self.severity.upper():<8}{self.scope:<22} {self.check}={value}{limit}  {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "scope": self.scope,
            "severity": self.severity,
            "value": self.value,
            "fail": self.fail,
            "message": self.message,
        }


@dataclass(frozen=True)
class Thresholds:
    """Warn and fail levels per check (None: never)."""

    warn: dict[str, float | None] = field(default_factory=dict)
    fail: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, node: Any, key: str = "audit") -> Thresholds:
        """Validated thresholds from a mapping ``{warn: {CHECK: X}, fail: {CHECK: X}}``.

        Raises:
            ConfigError: an unknown key or check, or a level that is not a number >= 0 or null.
        """
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: expected a mapping with warn and fail, got {type(node).__name__}")
        extra = set(node) - {"warn", "fail"}
        if extra:
            raise ConfigError(f"{key}: unknown key(s) {sorted(extra)} (warn, fail)")
        known = set(node.get("warn") or {}) | set(node.get("fail") or {})
        levels: dict[str, dict[str, float | None]] = {}
        for kind in ("warn", "fail"):
            levels[kind] = {}
            for check, value in (node.get(kind) or {}).items():
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0
                ):
                    raise ConfigError(f"{key}.{kind}.{check}: a number >= 0 or null, got {value!r}")
                levels[kind][str(check)] = None if value is None else float(value)
        if known - set(levels["warn"]) or known - set(levels["fail"]):
            missing = sorted((known - set(levels["warn"])) | (known - set(levels["fail"])))
            raise ConfigError(f"{key}: checks without both a warn and a fail level: {missing}")
        return cls(levels["warn"], levels["fail"])

    def judge(self, check: str, scope: str, value: float | None, message: str) -> Finding:
        """The finding of ``check`` at ``value``.

        Raises:
            KeyError: ``check`` has no thresholds (a bug: every check is in the defaults).
        """
        if check not in self.fail:
            raise KeyError(f"audit check '{check}' has no thresholds in {DEFAULTS.name}")
        fail, warn = self.fail[check], self.warn[check]
        if value is not None and isinstance(value, float) and math.isnan(value):
            value = None
        if value is None:
            severity = "info"
        elif fail is not None and value > fail:
            severity = "error"
        elif warn is not None and value > warn:
            severity = "warning"
        else:
            severity = "info"
        return Finding(check, scope, severity, None if value is None else _round(value), message, fail)


def default_thresholds(path: Path = DEFAULTS) -> Thresholds:
    """The thresholds of ``configs/audit/default.yaml`` (its ``warn`` and ``fail`` levels)."""
    import yaml

    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return Thresholds.from_mapping({k: doc.get(k) for k in ("warn", "fail")})


def _round(x: float) -> float:
    return float(f"{float(x):.6g}")


def share(part: float, whole: float) -> float | None:
    """``part / whole`` rounded for reports; None when ``whole`` is 0."""
    return None if not whole else _round(part / whole)


def pct(x: float | None) -> str:
    """``0.1234`` -> ``12.3%`` (``n/a`` for None)."""
    return "n/a" if x is None else f"{100 * x:.3g}%"
