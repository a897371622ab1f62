"""Reference explanations: review texts of a dataset, read from its raw review file.

The Amazon and Yelp recipes (``datasets/``) read their interactions from review files whose lines
also hold the review text; so can any JSON lines (or CSV/TSV) file with a user, an item and a
text column, e.g. one a test writes. ``references`` in the explain config names the file, its
format (a recipe ``format`` mapping, :func:`benchmark.data.raw_readers.read_chunks`) and the three
fields::

    references:
      file: raw/amazon-beauty/reviews_Beauty_5.json.gz
      format: {type: jsonl}
      user: reviewerID
      item: asin
      text: reviewText      # Yelp: user_id, business_id, text
      sentence: first       # first: the review's first sentence (P5's explanations are one sentence); all

A pair's reference is the text of its first line in the file; pairs without a line have none
(their reference-based metrics are absent, never zero).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmark.data.splits import Split
from benchmark.errors import ConfigError
from benchmark.util import sha256_file

KEYS = ("file", "format", "user", "item", "text", "sentence")


def check_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The ``references`` node validated (unknown keys, required fields, an existing file)."""
    spec = dict(spec)
    unknown = set(spec) - set(KEYS)
    if unknown:
        raise ConfigError(f"references: unknown key(s) {sorted(unknown)} ({', '.join(KEYS)})")
    missing = [k for k in ("file", "user", "item", "text") if not spec.get(k)]
    if missing:
        raise ConfigError(f"references: set {', '.join(missing)}")
    spec.setdefault("format", {"type": "jsonl"})
    spec.setdefault("sentence", "first")
    if spec["sentence"] not in ("first", "all"):
        raise ConfigError(f"references.sentence: first or all, got {spec['sentence']!r}")
    if not Path(spec["file"]).is_file():
        raise ConfigError(f"references.file: not found: {spec['file']}")
    return spec


def clean(text: Any, sentence: str = "first") -> str | None:
    """A review text as a reference: whitespace collapsed, its first sentence when asked; None if empty."""
    if text is None:
        return None
    text = " ".join(str(text).split())
    if sentence == "first":
        m = re.search(r"[.!?](?=\s|$)", text)
        text = text[: m.end()] if m else text
    return text or None


def read_references(
    spec: Mapping[str, Any], split: Split
) -> tuple[dict[tuple[int, int], str], dict[str, Any]]:
    """Every (user index, item index) pair of the split's catalogue that has a review text.

    Returns:
        ({(user, item): reference}, facts: file name and sha256, fields, sentence rule, pairs).
    """
    from benchmark.data.raw_readers import read_chunks

    spec = check_spec(spec)
    user_of = {u: i for i, u in enumerate(split.user_ids.tolist())}
    item_of = {x: i for i, x in enumerate(split.item_ids.tolist())}
    fields = [spec["user"], spec["item"], spec["text"]]
    out: dict[tuple[int, int], str] = {}
    for chunk in read_chunks(spec["file"], dict(spec["format"]), fields):
        for u, i, t in zip(*(chunk[f].tolist() for f in fields), strict=True):
            key = (user_of.get(str(u), -1), item_of.get(str(i), -1))
            if key[0] < 0 or key[1] < 0 or key in out:
                continue
            ref = clean(t, spec["sentence"])
            if ref is not None:
                out[key] = ref
    facts = {
        "file": Path(spec["file"]).name,
        "file_sha256": sha256_file(spec["file"]),
        "fields": {"user": spec["user"], "item": spec["item"], "text": spec["text"]},
        "sentence": spec["sentence"],
        "pairs_with_text": len(out),
    }
    return out, facts


def train_examples(refs: Mapping[tuple[int, int], str], split: Split) -> list[tuple[int, int, str]]:
    """The (user, item, reference) triples of train interactions, in train order: what tuning sees
    (never a valid or test pair)."""
    tr = split.train
    pairs = zip(tr["user"].to_numpy().tolist(), tr["item"].to_numpy().tolist(), strict=True)
    return [(u, i, refs[(u, i)]) for u, i in pairs if (u, i) in refs]
