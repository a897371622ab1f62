r"""Export a split as plain files with raw dataset ids, for use outside the framework.

Files (UTF-8, tab-separated, one line per row ending in ``\n``, a header line first):
    train.tsv, valid.tsv, test.tsv   user, item, rating, timestamp (file order); sequence protocols
                                     (tallrec_movie) add label, history (space-separated raw item
                                     ids, oldest first) and history_likes (space-separated 0/1)
    test_slices.tsv                  user, item, slices (comma-separated names, may be empty)
    test_negatives.tsv               user, negatives (space-separated raw item ids); with eval=sampled,
                                     eval=candidates or eval.also_candidates
    meta.json                        protocol, configs, fingerprints, statistics

Ids are escaped so that any id round-trips (:func:`escape_id`): backslash ``\\``, tab
``\t``, line feed ``\n``, carriage return ``\r``, space ``\s``, and the double quote and
every other control or line-breaking character as ``\uXXXX`` (4 hex digits, e.g. ``\u0022``).
An id without those characters is written as it is. So a file never holds a tab, line
break, space or double quote inside an id: split lines on ``\n``, fields on tabs, lists
on spaces, then unescape each id (:func:`unescape_id`; :func:`read_split_tsv` does all of
it). No field is quoted, and CSV readers that treat ``"`` as quoting read the files as written.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from benchmark.config import DataConfig, EvalConfig, SliceConfig, SplitConfig, to_object
from benchmark.data.loading import load_dataset
from benchmark.data.splits import PARTS, Split, build_split
from benchmark.data.views import array_fingerprint, ranking_rows, sample_negatives, slice_masks
from benchmark.errors import BenchmarkError
from benchmark.util import staged_dir

META = "meta.json"

# Characters escaped in ids: the separators of the files (tab, line breaks, space), the escape
# character, the double quote (CSV readers would take it as quoting), every other control
# character and what str.splitlines() breaks lines on (U+0085, U+2028, U+2029).
_SPECIAL = re.compile(r'[\\ "\x00-\x1f\x7f\x85\u2028\u2029]')
_SHORT = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", " ": "\\s"}
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)
_UNSHORT = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r", "s": " "}

#: Columns of the split files that hold one id, and those that hold space-separated ids.
ID_COLUMNS = ("user", "item")
ID_LIST_COLUMNS = ("history", "negatives")


def escape_id(raw: str) -> str:
    """An id as written in the split files (unchanged unless it has a special character)."""
    return _SPECIAL.sub(lambda m: _SHORT.get(m.group(), f"\\u{ord(m.group()):04x}"), raw)


def unescape_id(text: str) -> str:
    """Inverse of :func:`escape_id`.

    Raises:
        ValueError: an escape sequence that :func:`escape_id` never writes.
    """

    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        if len(code) == 5:
            return chr(int(code[1:], 16))
        if code not in _UNSHORT:
            raise ValueError(f"unknown escape sequence {m.group()!r} in id {text!r}")
        return _UNSHORT[code]

    if "\\" in _ESCAPE.sub("", text):
        raise ValueError(f"id {text!r} ends in a lone backslash")
    return _ESCAPE.sub(one, text)


def read_split_tsv(path: str | Path) -> list[dict[str, Any]]:
    """Read one ``.tsv`` file of a split export back, ids unescaped.

    Args:
        path: ``train.tsv``, ``valid.tsv``, ``test.tsv``, ``test_slices.tsv`` or ``test_negatives.tsv``.

    Returns:
        One dict per row, keyed by the header's column names: ``user`` / ``item`` the raw
        ids; ``history`` / ``negatives`` lists of raw ids; ``history_likes`` and ``slices``
        lists of str; every other column the text as written.

    Raises:
        ValueError: a row whose number of fields differs from the header, or a bad escape.
    """
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError(f"{path}: empty file (expected a header line)")
    names = lines[0].split("\t")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        values = line.split("\t")
        if len(values) != len(names):
            raise ValueError(f"{path}: line {n}: {len(values)} fields, the header has {len(names)}")
        row: dict[str, Any] = {}
        for name, v in zip(names, values, strict=True):
            if name in ID_COLUMNS:
                row[name] = unescape_id(v)
            elif name in ID_LIST_COLUMNS:
                row[name] = [unescape_id(x) for x in v.split(" ")] if v else []
            elif name == "history_likes":
                row[name] = v.split(" ") if v else []
            elif name == "slices":
                row[name] = v.split(",") if v else []
            else:
                row[name] = v
        rows.append(row)
    return rows


def _escaped(ids: np.ndarray) -> np.ndarray:
    return np.asarray([escape_id(str(x)) for x in ids], dtype=object)


def _part_tsv(split: Split, part: str, user_ids: np.ndarray, item_ids: np.ndarray) -> str:
    df = split.parts[part]
    sequence = "history" in df.columns  # rows that carry their own history and label
    lines = ["user\titem\trating\ttimestamp" + ("\tlabel\thistory\thistory_likes" if sequence else "")]
    users = user_ids[df["user"].to_numpy()]
    items = item_ids[df["item"].to_numpy()]
    rows = zip(users, items, df["rating"].to_numpy(), df["timestamp"].to_numpy(), strict=True)
    for j, (u, i, r, t) in enumerate(rows):
        line = f"{u}\t{i}\t{'' if np.isnan(r) else repr(float(r))}\t{repr(float(t))}"
        if sequence:
            history = " ".join(item_ids[list(df["history"].iat[j])])
            likes = " ".join(str(int(x)) for x in df["history_likes"].iat[j])
            line += f"\t{int(df['label'].iat[j])}\t{history}\t{likes}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_split_files(split: Split, directory: Path, ev: EvalConfig, slices: SliceConfig, meta: dict) -> None:
    """Write the split files of a built split into an existing directory (ids escaped, see :func:`escape_id`)."""
    user_ids, item_ids = _escaped(split.user_ids), _escaped(split.item_ids)
    for part in PARTS:
        (directory / f"{part}.tsv").write_text(_part_tsv(split, part, user_ids, item_ids), encoding="utf-8")
    test = split.test
    masks = slice_masks(split, test["user"].to_numpy(), test["item"].to_numpy(), slices)
    lines = ["user\titem\tslices"]
    for j, (u, i) in enumerate(zip(test["user"].to_numpy(), test["item"].to_numpy(), strict=True)):
        names = ",".join(n for n, m in masks.items() if m[j])
        lines.append(f"{user_ids[u]}\t{item_ids[i]}\t{names}")
    (directory / "test_slices.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = dict(meta)
    # Fixed negatives of eval=sampled / eval=candidates, or of a full run's candidates view.
    n_neg = ev.num_negatives if ev.protocol in ("sampled", "candidates") else (ev.candidates_negatives if ev.also_candidates else 0)
    if n_neg:
        rows = ranking_rows(split, "test")
        neg = sample_negatives(split, rows, n_neg, ev.negatives_seed)
        lines = ["user\tnegatives"]
        for u, ns in zip(rows.users, neg, strict=True):
            lines.append(f"{user_ids[u]}\t{' '.join(item_ids[ns])}")
        (directory / "test_negatives.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        meta["negatives"] = {
            "num_negatives": n_neg,
            "seed": ev.negatives_seed,
            "fingerprint": array_fingerprint(rows.users, neg),
        }
    (directory / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def export_split(cfg: DictConfig, out: Path) -> Path:
    """Build the configured split and write it to ``out`` atomically."""
    data_cfg = to_object(cfg.data, DataConfig)
    split_cfg = to_object(cfg.split, SplitConfig)
    ev = to_object(cfg.eval, EvalConfig)
    slices = to_object(cfg.slices, SliceConfig)
    if out.exists() and any(out.iterdir()) and not (out / META).exists():
        raise BenchmarkError(f"out={out}: directory exists and is not a split export; refusing to overwrite")
    data = load_dataset(data_cfg)
    split = build_split(data, split_cfg)
    meta = {
        "dataset": {"name": data.name, "fingerprint": data.fingerprint, "files": data.files},
        "data_config": asdict(data_cfg),
        "split_config": asdict(split_cfg),
        "slices_config": asdict(slices),
        "protocol": split.protocol,
        "fingerprint": split.fingerprint,
        "stats": split.stats(),
    }
    with staged_dir(out, exists="replace") as tmp:  # a previous export is replaced in one rename
        write_split_files(split, tmp, ev, slices, meta)
    return out
