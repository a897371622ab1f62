"""Quality of structured item ids (semantic codes, collaborative clusters, external token ids).

Per index: the collision rate (items whose code, without the extra code that resolves
collisions, another item shares), items per code, and per level the codes used, the codebook
usage, the perplexity (exp of the entropy of the code distribution: how many codes are
effectively used) and the dead codes (codebook entries no item uses). For a built index,
``quantizer_saw_non_train`` is 1 when refitting the codes on the train part alone changes them.

The audit builds a semantic index twice (on the split and on its train part alone) inside
:func:`benchmark.models.components.text_encoder.memoized`, so the item texts are encoded once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmark.audit.findings import Finding, Thresholds, share
from benchmark.audit.identifiers import AuditIndex


def levels_and_codebook(index: AuditIndex, width: int) -> tuple[int, int | None]:
    """(levels of the code proper, codebook size or None) of an index's structured ids."""
    options = index.facts.get("options") or {}
    if index.scheme == "semantic" and "levels" in options:
        return min(int(options["levels"]), width), int(options["codebook"])
    if index.scheme == "collaborative" and "n_clusters" in options:
        return width, None  # leaf positions are not drawn from a codebook
    return width, None


def code_quality(
    index: AuditIndex, codes: np.ndarray, limits: Thresholds
) -> tuple[dict[str, Any], list[Finding]]:
    """Collisions, items per code, codebook usage, perplexity and dead codes of structured ids.

    Args:
        index: the index (scheme and options tell the levels and the codebook size).
        codes: [n_items, L] integer codes per item, -1 padded (items without an id: all -1).
        limits: thresholds.
    """
    scope = f"index:{index.name}"
    levels, codebook = levels_and_codebook(index, codes.shape[1])
    have = codes[:, 0] >= 0
    code = codes[have][:, :levels]  # [n, levels]
    _, inverse, counts = np.unique(code, axis=0, return_inverse=True, return_counts=True)
    inverse = np.asarray(inverse).ravel()
    collided = int((counts[inverse] > 1).sum())
    per_level = []
    for lvl in range(levels):
        col = code[:, lvl]
        col = col[col >= 0]
        values, n = np.unique(col, return_counts=True)
        p = n / max(n.sum(), 1)
        size = codebook if codebook is not None else (int(values.max()) + 1 if len(values) else 0)
        per_level.append(
            {
                "level": lvl,
                "used": len(values),
                "codebook": size,
                "usage": share(len(values), size),
                "perplexity": share(float(np.exp(-(p * np.log(p)).sum())), 1) if len(p) else None,
                "dead": size - len(values),
                "dead_share": share(size - len(values), size),
            }
        )
    out = {
        "levels": levels,
        "codebook": codebook,
        "codes": len(counts),
        "collision_rate": share(collided, len(code)),
        "items_per_code": {
            "mean": share(len(code), len(counts)),
            "max": int(counts.max()) if len(counts) else 0,
        },
        "per_level": per_level,
        "dead_codes": max((lv["dead_share"] or 0.0 for lv in per_level), default=None),
    }
    if index.refit is not None:
        out["quantizer_saw_non_train"] = int(any(a != b for a, b in zip(index.ids, index.refit, strict=True)))
    else:
        out["quantizer_saw_non_train"] = None
    usage = ", ".join(
        f"L{lv['level']} {lv['used']}/{lv['codebook']} ppl {lv['perplexity']}" for lv in per_level
    )
    findings = [
        limits.judge(
            "collision_rate",
            scope,
            out["collision_rate"],
            f"{collided} of {len(code)} items share their {levels}-level code with another item "
            f"({len(counts)} codes, at most {out['items_per_code']['max']} items on one)",
        ),
        limits.judge("dead_codes", scope, out["dead_codes"], f"codes used per level: {usage}"),
        limits.judge(
            "quantizer_saw_non_train",
            scope,
            None if out["quantizer_saw_non_train"] is None else float(out["quantizer_saw_non_train"]),
            "codes change when refit on train items alone"
            if out["quantizer_saw_non_train"]
            else "codes are the same when refit on train items alone"
            if out["quantizer_saw_non_train"] == 0
            else "an external index cannot be refit",
        ),
    ]
    return out, findings
