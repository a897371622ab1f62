r"""Splits and item indexes supplied as files by other code bases, read into :class:`AuditData`.

Layouts of ``llm4rec audit --files DIR`` (found by their file names, or named with ``--layout``):

- ``export``: ``llm4rec export-split``'s files: ``train.tsv``, ``valid.tsv`` (optional),
  ``test.tsv`` with ``user, item, rating, timestamp`` (sequence protocols add ``label``,
  ``history``, ``history_likes``), optional ``test_negatives.tsv`` (``user, negatives``) and
  ``meta.json`` (protocol, fingerprint). Ids are unescaped as :func:`benchmark.data.export.unescape_id` does.
- ``p5``: P5 / OpenP5's ``sequential_data.txt`` (or ``user_sequence.txt``): one line per user,
  ``user item1 item2 ...`` in time order. As in P5, the last item is the test row, the second
  last the valid row (users with at least 3 items), the rest train. No timestamps: the timeline
  checks do not apply. An optional ``negative_samples.txt`` (``user neg1 neg2 ...``) gives fixed
  negatives. Index files in DIR named ``item_*index*.txt`` are audited too. When every item id
  is a number, the file's own ids are audited as an index (P5's files hold already remapped ids).
- ``tallrec``: TALLRec's ``train.json``, ``valid.json`` (optional), ``test.json``: a list of
  ``{"instruction", "input", "output"}``; ``input`` names the history titles in quotes on its
  ``User Preference:`` and ``User Unpreference:`` lines and the target on its last line
  (``... the target movie "Title (Year)"?``); ``output`` is ``Yes.`` or ``No.`` (the label).
  Items are titles; there are no user ids, so rows with the same history count as one user.

Index files (``--index FILE``, and ``item_*index*.txt`` of a P5 folder): one line per item,
``ITEM<tab or space>ID`` (the id is the rest of the line), as OpenP5's
``item_sequential_indexing_original.txt`` and ``item_collaborative_indexing_*.txt``.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.audit.identifiers import AuditIndex
from benchmark.audit.table import PARTS, AuditData, Part
from benchmark.errors import DataError

LAYOUTS = ("export", "p5", "tallrec")
P5_FILES = ("sequential_data.txt", "user_sequence.txt")
_QUOTED = re.compile(r'"([^"]*)"')


def detect_layout(directory: Path) -> str:
    """The layout of a folder, from its file names.

    Raises:
        DataError: not a folder, or none of the known layouts.
    """
    if not directory.is_dir():
        raise DataError(f"--files {directory}: no such folder")
    if (directory / "train.tsv").is_file() and (directory / "test.tsv").is_file():
        return "export"
    if any((directory / f).is_file() for f in P5_FILES):
        return "p5"
    if (directory / "train.json").is_file() and (directory / "test.json").is_file():
        return "tallrec"
    raise DataError(
        f"--files {directory}: no known layout (export: train.tsv + test.tsv; p5: {' or '.join(P5_FILES)}; "
        "tallrec: train.json + test.json)"
    )


def read_files(directory: Path, layout: str | None = None) -> tuple[AuditData, list[AuditIndex]]:
    """Read a folder of split files (and the indexes it holds).

    Raises:
        DataError: a missing file, or a file that does not follow its layout (one line naming it).
    """
    layout = layout or detect_layout(directory)
    if layout not in LAYOUTS:
        raise DataError(f"--layout: unknown layout '{layout}' (one of {', '.join(LAYOUTS)})")
    if not directory.is_dir():
        raise DataError(f"--files {directory}: no such folder")
    reader = {"export": read_export, "p5": read_p5, "tallrec": read_tallrec}[layout]
    data, indexes = reader(directory)
    data.facts.update({"layout": layout, "folder": str(directory)})
    return data, indexes


# ----------------------------------------------------------------------------- export (.tsv)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None


def _check_fields(raw: bytes, path: Path) -> list[str]:
    """The header's column names; every line must have as many tab-separated fields.

    Raises:
        DataError: an empty file, or the first line whose field count differs (1-based).
    """
    buf = np.frombuffer(raw, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    if len(buf) and buf[-1] != 10:
        ends = np.r_[ends, len(buf)]
    if not len(ends):
        raise DataError(f"{path}: empty file (expected a header line)")
    tabs = np.bincount(np.searchsorted(ends, np.flatnonzero(buf == 9)), minlength=len(ends))
    header = raw[: ends[0]].decode("utf-8", errors="replace").rstrip("\r").split("\t")
    bad = np.flatnonzero(tabs != len(header) - 1)
    if len(bad):
        n = int(bad[0])
        raise DataError(f"{path}: line {n + 1}: {tabs[n] + 1} fields, the header has {len(header)}")
    return header


def _ids(values: np.ndarray) -> np.ndarray:
    """Unescape ids written by the export (only those with a backslash differ)."""
    from benchmark.data.export import unescape_id

    out = values.astype(object)
    for j in np.flatnonzero(np.char.find(values.astype(str), "\\") >= 0):
        out[j] = unescape_id(str(values[j]))
    return out.astype(str)


def _numbers(values: np.ndarray, path: Path, column: str) -> np.ndarray:
    """Text column -> float (empty = NaN); a bad number is a one-line error naming its line."""
    text = np.asarray(values, dtype=str)
    out = np.full(len(text), np.nan)
    filled = text != ""
    try:
        out[filled] = text[filled].astype(np.float64)
    except ValueError:
        for j in np.flatnonzero(filled):
            try:
                float(text[j])
            except ValueError:
                raise DataError(f"{path}: line {j + 2}: {column} '{text[j]}' is not a number") from None
    return out


def _read_tsv(path: Path, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Columns of one export file as text arrays, checked for shape and required columns."""
    import csv

    import pandas as pd

    raw = _read(path)
    header = _check_fields(raw, path)
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (header: {header})")
    df = pd.read_csv(
        io.BytesIO(raw), sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False, na_filter=False
    )
    return {c: df[c].to_numpy(dtype=str) for c in df.columns}


def read_export(directory: Path) -> tuple[AuditData, list[AuditIndex]]:
    """``llm4rec export-split``'s files (see the module docstring)."""
    cols: dict[str, dict[str, np.ndarray]] = {}
    for name in PARTS:
        path = directory / f"{name}.tsv"
        if name == "valid" and not path.is_file():
            continue
        if not path.is_file():
            raise DataError(f"{path}: missing ({name} part of an export)")
        cols[name] = _read_tsv(path, ("user", "item"))
        for c in ("user", "item"):
            cols[name][c] = _ids(cols[name][c])
        if "history" in cols[name]:
            cols[name]["history"] = [
                _ids(np.array(h.split(" "))) if h else np.zeros(0, str) for h in cols[name]["history"]
            ]
    negatives = None
    neg_path = directory / "test_negatives.tsv"
    if neg_path.is_file():
        neg = _read_tsv(neg_path, ("user", "negatives"))
        lists = [_ids(np.array(v.split(" "))) if v else np.zeros(0, str) for v in neg["negatives"]]
        if len({len(v) for v in lists}) > 1:
            raise DataError(f"{neg_path}: rows have different numbers of negatives")
        negatives = (_ids(neg["user"]), lists)
    meta = _meta(directory / "meta.json")
    users = np.unique(np.concatenate([c["user"] for c in cols.values()]))
    every = [c["item"] for c in cols.values()] + [h for c in cols.values() for h in c.get("history", [])]
    if negatives is not None:
        every += negatives[1]
        users = np.unique(np.r_[users, negatives[0]])
    items = np.unique(np.concatenate(every))
    parts = {name: _export_part(cols.get(name), users, items, directory / f"{name}.tsv") for name in PARTS}
    data = AuditData(
        directory.name, meta.get("protocol", "export"), users, items, parts, facts=_export_facts(meta)
    )
    if negatives is not None:
        data.negatives = (
            np.searchsorted(users, negatives[0]),
            np.searchsorted(items, np.array(negatives[1])),
        )
    return data, []


def _meta(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        meta = json.loads(_read(path))
    except ValueError as e:
        raise DataError(f"{path}: not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object")
    return meta


def _export_facts(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in ("protocol", "fingerprint") if k in meta}


def _export_part(cols: dict[str, Any] | None, users: np.ndarray, items: np.ndarray, path: Path) -> Part:
    if cols is None:
        empty = np.zeros(0, np.int64)
        return Part(empty, empty, np.zeros(0), np.zeros(0))
    n = len(cols["user"])
    part = Part(
        user=np.searchsorted(users, cols["user"]).astype(np.int64),
        item=np.searchsorted(items, cols["item"]).astype(np.int64),
        timestamp=_numbers(cols["timestamp"], path, "timestamp")
        if "timestamp" in cols
        else np.full(n, np.nan),
        rating=_numbers(cols["rating"], path, "rating") if "rating" in cols else np.full(n, np.nan),
    )
    if "label" in cols:
        label = _numbers(cols["label"], path, "label")
        if np.isnan(label).any() or not np.isin(label, (0, 1)).all():
            raise DataError(f"{path}: label must be 0 or 1 on every row")
        part.label = label.astype(np.int8)
    if "history" in cols:
        lengths = np.array([len(h) for h in cols["history"]], dtype=np.int64)
        part.hist_ptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        flat = np.concatenate(cols["history"]) if n else np.zeros(0, str)
        part.hist_items = np.searchsorted(items, flat).astype(np.int64)
    return part


# ----------------------------------------------------------------------------- P5 / OpenP5


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """Non-empty lines of a whitespace-separated text file: (1-based line number, fields)."""
    try:
        text = _read(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_p5(directory: Path) -> tuple[AuditData, list[AuditIndex]]:
    """P5 / OpenP5's user sequences, negatives and index files (see the module docstring)."""
    path = next(directory / f for f in P5_FILES if (directory / f).is_file())
    users: list[str] = []
    seqs: list[list[str]] = []
    for n, fields in _lines(path):
        if len(fields) < 2:
            raise DataError(f"{path}: line {n}: expected 'user item1 item2 ...', got {len(fields)} field(s)")
        users.append(fields[0])
        seqs.append(fields[1:])
    if not users:
        raise DataError(f"{path}: no user sequences")
    if len(set(users)) != len(users):
        dup = next(u for u in users if users.count(u) > 1)
        raise DataError(f"{path}: user '{dup}' has more than one line")
    neg_path = directory / "negative_samples.txt"
    neg_rows = _p5_negatives(neg_path, set(users)) if neg_path.is_file() else None
    item_ids = np.unique(
        np.concatenate([np.array(s) for s in seqs] + ([np.array(neg_rows[1]).ravel()] if neg_rows else []))
    )
    user_ids = np.array(users)  # file order: P5 numbers items by first appearance in this order
    rows: dict[str, list[tuple[int, str]]] = {p: [] for p in PARTS}
    for u, seq in enumerate(seqs):
        cut = len(seq) - (2 if len(seq) >= 3 else 1)
        rows["train"] += [(u, i) for i in seq[:cut]]
        if len(seq) >= 3:
            rows["valid"].append((u, seq[-2]))
        rows["test"].append((u, seq[-1]))
    parts = {}
    for name, rs in rows.items():
        u = np.array([r[0] for r in rs], dtype=np.int64)
        parts[name] = Part(
            u,
            np.searchsorted(item_ids, np.array([r[1] for r in rs], dtype=str)).astype(np.int64),
            np.full(len(rs), np.nan),
            np.full(len(rs), np.nan),
        )
    data = AuditData(directory.name, "p5", user_ids, item_ids, parts, facts={"sequences": path.name})
    if neg_rows is not None:
        index_of_user = {u: k for k, u in enumerate(users)}
        data.negatives = (
            np.array([index_of_user[u] for u in neg_rows[0]], dtype=np.int64),
            np.searchsorted(item_ids, np.array(neg_rows[1], dtype=str)),
        )
    indexes = [read_index_file(f, item_ids) for f in sorted(directory.glob("item_*index*.txt"))]
    if all(i.isdigit() for i in item_ids):
        indexes.insert(
            0, AuditIndex("file item ids", [str(i) for i in item_ids], facts={"source": path.name})
        )
    return data, indexes


def _p5_negatives(path: Path, users: set[str]) -> tuple[list[str], list[list[str]]]:
    out_users, out_neg = [], []
    for n, fields in _lines(path):
        if len(fields) < 2:
            raise DataError(f"{path}: line {n}: expected 'user neg1 neg2 ...'")
        if fields[0] not in users:
            raise DataError(f"{path}: line {n}: user '{fields[0]}' has no sequence")
        if out_neg and len(fields) - 1 != len(out_neg[0]):
            raise DataError(f"{path}: line {n}: {len(fields) - 1} negatives, line 1 has {len(out_neg[0])}")
        out_users.append(fields[0])
        out_neg.append(fields[1:])
    return out_users, out_neg


def read_index_file(path: Path, item_ids: np.ndarray) -> AuditIndex:
    """An item index file: one ``ITEM<tab or space>ID`` line per item (see the module docstring).

    Raises:
        DataError: a missing file, a line without an id, or an item on two lines.
    """
    if not path.is_file():
        raise DataError(f"--index {path}: no such file")
    try:
        text = _read(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    ids: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        sep = "\t" if "\t" in line else None
        fields = line.strip().split(sep, 1)
        if len(fields) < 2 or not fields[1].strip():
            raise DataError(f"{path}: line {n}: expected 'ITEM ID', got {line.strip()[:60]!r}")
        if fields[0] in ids:
            raise DataError(f"{path}: line {n}: item '{fields[0]}' already has an id")
        ids[fields[0]] = fields[1].strip()
    if not ids:
        raise DataError(f"{path}: no ids")
    known = set(map(str, item_ids))
    return AuditIndex(
        path.name,
        [ids.get(str(i)) for i in item_ids],
        facts={"source": str(path), "ids_of_unknown_items": sum(1 for k in ids if k not in known)},
    )


# ----------------------------------------------------------------------------- TALLRec JSON


def _tallrec_rows(path: Path) -> list[tuple[list[str], str, int]]:
    """(history titles, target title, label) per element of a TALLRec JSON file."""
    try:
        doc = json.loads(_read(path))
    except ValueError as e:
        raise DataError(f"{path}: not JSON ({e})") from None
    if not isinstance(doc, list):
        raise DataError(
            f"{path}: expected a JSON list of {{instruction, input, output}}, got {type(doc).__name__}"
        )
    rows = []
    for n, el in enumerate(doc):
        if (
            not isinstance(el, dict)
            or not isinstance(el.get("input"), str)
            or not isinstance(el.get("output"), str)
        ):
            raise DataError(f"{path}: element {n}: expected an object with string 'input' and 'output'")
        answer = el["output"].strip().rstrip(".").strip().lower()
        if answer not in ("yes", "no"):
            raise DataError(f"{path}: element {n}: output {el['output'][:30]!r} is neither 'Yes.' nor 'No.'")
        lines = [ln for ln in el["input"].splitlines() if ln.strip()]
        target = _QUOTED.findall(lines[-1]) if lines else []
        if not target:
            raise DataError(f"{path}: element {n}: no quoted target title on the input's last line")
        history = [
            t for ln in lines[:-1] if ln.lstrip().lower().startswith("user ") for t in _QUOTED.findall(ln)
        ]
        rows.append((history, target[-1], int(answer == "yes")))
    return rows


def read_tallrec(directory: Path) -> tuple[AuditData, list[AuditIndex]]:
    """TALLRec's JSON files (see the module docstring)."""
    raw = {}
    for name in PARTS:
        path = directory / f"{name}.json"
        if name == "valid" and not path.is_file():
            raw[name] = []
            continue
        if not path.is_file():
            raise DataError(f"{path}: missing ({name} part of a TALLRec folder)")
        raw[name] = _tallrec_rows(path)
    rows = [r for name in PARTS for r in raw[name]]
    items = np.unique(np.array([t for h, t, _ in rows] + [x for h, _, _ in rows for x in h], dtype=str))
    histories = sorted({"\x1f".join(h) for h, _, _ in rows})
    user_of = {h: k for k, h in enumerate(histories)}
    parts = {}
    for name in PARTS:
        rs = raw[name]
        lengths = np.array([len(h) for h, _, _ in rs], dtype=np.int64)
        flat = np.array([x for h, _, _ in rs for x in h], dtype=str)
        parts[name] = Part(
            user=np.array([user_of["\x1f".join(h)] for h, _, _ in rs], dtype=np.int64),
            item=np.searchsorted(items, np.array([t for _, t, _ in rs], dtype=str)).astype(np.int64),
            timestamp=np.full(len(rs), np.nan),
            rating=np.full(len(rs), np.nan),
            label=np.array([y for _, _, y in rs], dtype=np.int8),
            hist_ptr=np.r_[0, np.cumsum(lengths)].astype(np.int64),
            hist_items=np.searchsorted(items, flat).astype(np.int64),
        )
    user_ids = np.array([f"history-{k}" for k in range(len(histories))])
    facts = {"users": "none in the files: rows with the same history count as one user"}
    return AuditData(directory.name, "tallrec", user_ids, items, parts, facts=facts), []
