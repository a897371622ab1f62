"""Cost of generated item descriptions (``describe=smollm2``): generated once per (generator,
prompt, item content) and cached, versus read back from the cache.

- ``generate``: the generator of ``configs/describe/smollm2.yaml`` (SmolLM2-135M-Instruct, greedy,
  at most 40 new tokens, batches of 8) describes the 1,682 MovieLens-100K items into an empty
  description store (a miss: model load + generation + write), then the same call again (a hit:
  model load + weight digest + read). Both passes include loading the generator, which a hit
  needs for the weight digest of its cache key.
- ``features``: all-MiniLM-L6-v2 text features of ``Title (Year); Genres. Description`` (the item
  text the text tower and the adapters read with descriptions) into an empty feature store (a
  miss), then again (a hit), as :mod:`benchmark.bench.feature_cache` does for titles alone.

``--store DIR`` puts the description store under ``DIR/descriptions`` (e.g. the runs' cache root
``.cache/llm4rec``, so the runs after the benchmark read what it generated); the folder must not
hold these descriptions yet, or the first pass would not be a miss. Without it a temporary folder
is used and removed. Results go to ``<out_dir>/descriptions.json`` with the load average.

Run: ``python -m benchmark.bench.descriptions [--out results/perf] [--store DIR] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmark.bench import write_result
from benchmark.errors import ConfigError

OUT_NAME = "descriptions.json"


def _config() -> Any:
    from omegaconf import OmegaConf

    from benchmark.models.components.describe import DescribeConfig

    node = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "describe" / "smollm2.yaml")
    return DescribeConfig(**{k: v for k, v in OmegaConf.to_container(node).items() if k != "cache_dir"})


def measure_generation(data: Any, item_ids: list[str], store: Path) -> tuple[list[str], dict[str, Any]]:
    """Seconds of a miss and of a hit of the description cache, and what the record would say."""
    from benchmark.models.components.describe import describe_items, item_metadata

    cfg = _config()
    meta = item_metadata(data.items, data.item_fields, item_ids)
    t0 = time.perf_counter()
    texts, first = describe_items(cfg, item_ids, meta, store)
    miss_s = time.perf_counter() - t0
    if first["cache"] != "created":
        raise ConfigError(f"--store: {store / 'descriptions'} already holds these descriptions; name an empty store")
    t0 = time.perf_counter()
    again, second = describe_items(cfg, item_ids, meta, store)
    hit_s = time.perf_counter() - t0
    if again != texts:
        raise RuntimeError("the cached descriptions differ from the generated ones")
    return texts, {
        "generator": first["generator"],
        "dequantized": first["dequantized"],
        "prompt": first["prompt"],
        "max_new_tokens": first["max_new_tokens"],
        "batch_size": cfg.batch_size,
        "decoding": first["decoding"],
        "key": first["key"],
        "items": len(texts),
        "mean_chars": first["mean_chars"],
        "empty": first["empty"],
        "check": first["check"],
        "miss_seconds": round(miss_s, 3),
        "hit_seconds": round(hit_s, 3),
        "miss_seconds_per_item": round(miss_s / max(len(texts), 1), 4),
        "caches": [first["cache"], second["cache"]],
    }


def measure_features(data: Any, item_ids: list[str], texts: list[str], store: Path) -> dict[str, Any]:
    """MiniLM features of the item text with descriptions: a miss, then a hit."""
    import dataclasses

    import pandas as pd

    from benchmark.bench.feature_cache import store_costs
    from benchmark.models.components.describe import COLUMN
    from benchmark.models.components.text_encoder import item_descriptions

    items = data.items.copy()
    items[COLUMN] = pd.Series(dict(zip(item_ids, texts, strict=True)), dtype=object).reindex(items.index)
    described = dataclasses.replace(data, items=items, item_fields={**dict(data.item_fields), COLUMN: COLUMN})
    full = item_descriptions(described.items, described.item_fields, item_ids)
    mean_chars = round(sum(len(t) for t in full) / max(len(full), 1), 1)
    return {"text": "Title (Year); Genres. Description", "mean_chars": mean_chars, **store_costs(item_ids, full, store)}


def main(out_dir: Path, store: Path | None = None, threads: int = 1) -> dict[str, Any]:
    """Measure and write ``<out_dir>/descriptions.json``; returns what was written.

    ``store``: the description store root (None: a temporary folder); ``threads``: torch threads.
    """
    from benchmark.bench.feature_cache import _data

    load_before = os.getloadavg()
    default_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    data, split = _data()
    ids = [str(i) for i in split.item_ids]
    with tempfile.TemporaryDirectory(prefix="llm4rec-descriptions-") as tmp:
        root = Path(store) if store is not None else Path(tmp)
        texts, gen = measure_generation(data, ids, root)
        feats = measure_features(data, ids, texts, Path(tmp) / "features")
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "generate": gen,
        "features": feats,
        "examples": {ids[i]: texts[i] for i in range(0, len(ids), max(len(ids) // 5, 1))},
    }
    torch.set_num_threads(default_threads)
    write_result(Path(out_dir) / OUT_NAME, result)
    print(
        f"descriptions: {gen['items']} items generated in {gen['miss_seconds']} s "
        f"({gen['miss_seconds_per_item']} s/item), cached {gen['hit_seconds']} s; features with "
        f"descriptions miss {feats['miss_seconds']} s, hit {feats['hit_seconds']} s -> {Path(out_dir) / OUT_NAME}"
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmark.bench.descriptions", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/perf"))
    parser.add_argument("--store", type=Path, default=None, help="description store root (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while measuring (0: default)")
    a = parser.parse_args()
    try:
        main(a.out, a.store, a.threads)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
