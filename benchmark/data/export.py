"""Export a split as plain files with raw dataset ids, for use outside the framework.

Files (tab-separated, with a header line):
    train.tsv, valid.tsv, test.tsv   user, item, rating, timestamp (file order); sequence protocols
                                     (tallrec_movie) add label, history (space-separated raw item
                                     ids, oldest first) and history_likes (space-separated 0/1)
    test_slices.tsv                  user, item, slices (comma-separated names, may be empty)
    test_negatives.tsv               user, negatives (space-separated raw item ids); with eval=sampled
    meta.json                        protocol, configs, fingerprints, statistics
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from benchmark.config import DataConfig, EvalConfig, SliceConfig, SplitConfig, to_object
from benchmark.data.loading import load_dataset
from benchmark.data.splits import PARTS, Split, build_split
from benchmark.data.views import array_fingerprint, ranking_rows, sample_negatives, slice_masks
from benchmark.errors import BenchmarkError

META = "meta.json"


def _part_tsv(split: Split, part: str) -> str:
    df = split.parts[part]
    sequence = "history" in df.columns  # rows that carry their own history and label
    lines = ["user\titem\trating\ttimestamp" + ("\tlabel\thistory\thistory_likes" if sequence else "")]
    users = split.user_ids[df["user"].to_numpy()]
    items = split.item_ids[df["item"].to_numpy()]
    rows = zip(users, items, df["rating"].to_numpy(), df["timestamp"].to_numpy(), strict=True)
    for j, (u, i, r, t) in enumerate(rows):
        line = f"{u}\t{i}\t{'' if np.isnan(r) else repr(float(r))}\t{repr(float(t))}"
        if sequence:
            history = " ".join(split.item_ids[list(df["history"].iat[j])])
            likes = " ".join(str(int(x)) for x in df["history_likes"].iat[j])
            line += f"\t{int(df['label'].iat[j])}\t{history}\t{likes}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_split_files(split: Split, directory: Path, ev: EvalConfig, slices: SliceConfig, meta: dict) -> None:
    """Write the split files of a built split into an existing directory."""
    for part in PARTS:
        (directory / f"{part}.tsv").write_text(_part_tsv(split, part))
    test = split.test
    masks = slice_masks(split, test["user"].to_numpy(), test["item"].to_numpy(), slices)
    lines = ["user\titem\tslices"]
    for j, (u, i) in enumerate(zip(test["user"].to_numpy(), test["item"].to_numpy(), strict=True)):
        names = ",".join(n for n, m in masks.items() if m[j])
        lines.append(f"{split.user_ids[u]}\t{split.item_ids[i]}\t{names}")
    (directory / "test_slices.tsv").write_text("\n".join(lines) + "\n")
    meta = dict(meta)
    if ev.protocol == "sampled":
        rows = ranking_rows(split, "test")
        neg = sample_negatives(split, rows, ev.num_negatives, ev.negatives_seed)
        lines = ["user\tnegatives"]
        for u, ns in zip(rows.users, neg, strict=True):
            lines.append(f"{split.user_ids[u]}\t{' '.join(split.item_ids[ns])}")
        (directory / "test_negatives.tsv").write_text("\n".join(lines) + "\n")
        meta["negatives"] = {
            "num_negatives": ev.num_negatives,
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o755)
    try:
        write_split_files(split, tmp, ev, slices, meta)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
