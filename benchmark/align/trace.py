"""The per-step trace of an alignment run and the reward-hacking flag.

Every ``every`` steps a row is kept: ``step``, ``loss``, ``reward`` (mean reward of the
generations for GRPO/PGRM; the mean implicit reward margin ``beta * (log-ratio chosen -
log-ratio rejected)`` for DPO/S-DPO), ``margin`` (chosen minus rejected log-prob), ``kl`` (to the
reference), ``validity`` (share of generated slots that are items; None when nothing was
generated) and ``valid_metric`` (the validation metric, at validation steps; None elsewhere).

A run is flagged as possible reward hacking when its reward rose (last minus first traced
value > 0) while its validation metric fell by more than ``max_valid_drop`` (first minus last
measured value, in the metric's units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

TRACE_KEYS = ("step", "loss", "reward", "margin", "kl", "validity", "valid_metric")


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return round(x, 8) if math.isfinite(x) else None


@dataclass
class Trace:
    """Rows of the trace (see the module docstring); ``every``: keep one row per that many steps."""

    every: int = 1
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, step: int, force: bool = False, **values: Any) -> None:
        """Keep a row at ``step`` when it falls on the period (or ``force``); unknown keys are an error."""
        unknown = set(values) - set(TRACE_KEYS)
        if unknown:
            raise ValueError(f"trace: unknown keys {sorted(unknown)}")
        if force or step % max(1, self.every) == 0:
            self.rows.append({"step": int(step), **{k: _num(values.get(k)) for k in TRACE_KEYS[1:]}})


def hacking_flag(rows: list[dict[str, Any]], max_valid_drop: float) -> dict[str, Any]:
    """Whether the reward rose while the validation metric fell by more than ``max_valid_drop``.

    Args:
        rows: trace rows (``reward`` and ``valid_metric`` may be None on some rows).
        max_valid_drop: the largest tolerated fall of the validation metric (>= 0).

    Returns:
        ``{"flag", "reward_change", "valid_change", "max_valid_drop"}`` (changes are last minus
        first over the rows that have a value; None when fewer than two such rows).
    """

    def change(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return round(vals[-1] - vals[0], 8) if len(vals) >= 2 else None

    reward, valid = change("reward"), change("valid_metric")
    flag = reward is not None and valid is not None and reward > 0 and -valid > float(max_valid_drop)
    return {
        "flag": bool(flag),
        "reward_change": reward,
        "valid_change": valid,
        "max_valid_drop": float(max_valid_drop),
    }
