"""Field transforms: raw side-table values -> the single-line text or float an atomic file holds."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

LINE_BREAKS = re.compile(r"[\t\r\n]+")
_YEAR = re.compile(r"(?<!\d)(1[0-9]{3}|20[0-9]{2})(?!\d)")


def is_missing(v: Any) -> bool:
    """None, NaN, or a blank string."""
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _flatten(v: Any) -> Iterable[Any]:
    if isinstance(v, (list, tuple)):
        for x in v:
            yield from _flatten(x)
    elif not is_missing(v):
        yield v


def t_text(v: Any, spec: Mapping[str, Any]) -> str:
    """Single-line text; lists are joined like :func:`t_list`."""
    if isinstance(v, (list, tuple)):
        return t_list(v, spec)
    return "" if is_missing(v) else LINE_BREAKS.sub(" ", str(v)).strip()


def t_list(v: Any, spec: Mapping[str, Any]) -> str:
    """Flatten (nested) lists, or split a string on ``spec['split']`` (default ``,``);
    strip, drop duplicates keeping order, join with ``", "``."""
    if isinstance(v, str):
        parts: Iterable[Any] = v.split(spec.get("split", ","))
    else:
        parts = _flatten(v)
    seen: dict[str, None] = {}
    for p in parts:
        s = t_text(p, spec)
        if s:
            seen.setdefault(s)
    return ", ".join(seen)


def t_float(v: Any, spec: Mapping[str, Any]) -> float:
    """A number; strings like ``$4.99`` are parsed, ``Free...`` is 0.0, anything else NaN."""
    if isinstance(v, bool) or is_missing(v):
        return math.nan
    if isinstance(v, (int, float)):
        return float(v)
    s = str(v).strip().replace("$", "").replace(",", "")
    if s.lower().startswith("free"):
        return 0.0
    try:
        return float(s)
    except ValueError:
        return math.nan


def t_year(v: Any, spec: Mapping[str, Any]) -> float:
    """A year as float: group 1 of ``spec['pattern']`` if given, else the last
    4-digit number in 1000-2099; NaN when none (Book-Crossing writes 0)."""
    if is_missing(v):
        return math.nan
    s = str(v)
    if spec.get("pattern"):
        m = re.search(spec["pattern"], s)
        return float(m.group(1)) if m else math.nan
    found = _YEAR.findall(s)
    return float(found[-1]) if found else math.nan


TRANSFORMS = {"text": t_text, "list": t_list, "float": t_float, "year": t_year}


def transform_for(spec: Mapping[str, Any]) -> Callable[[Any, Mapping[str, Any]], Any]:
    """The transform of a field spec (``transform``, or by ``type``: float -> float, else text)."""
    name = spec.get("transform", "default")
    if name == "default":
        name = "float" if spec["type"] == "float" else "text"
    return TRANSFORMS[name]
