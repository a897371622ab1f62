"""Generated item descriptions: a causal LM writes a short description of every item from its title,
year and genres (``describe=smollm2``; ``configs/describe``), used as extra item text.

The descriptions become the item side table's ``description`` column (role ``description``), so
every consumer of item text (``Title (Year); Genres. Description`` of the MiniLM features: the
text tower, the item adapters, text ILD, in-context and history selection) reads them through
:func:`benchmark.models.components.text_encoder.item_descriptions`; the feature store's key
follows the text, so features with and without descriptions never mix. Only item metadata is
read, never an interaction.

Generation is greedy (deterministic), batched and left-padded, at most ``max_new_tokens`` per
item, cut at the first blank line; the result is cached once under
``<cache>/descriptions/<key[:20]>/`` with the key

    sha256(generator (name, weights digest), prompt, max_new_tokens, item content (id, title, year, genres))

written to a temporary folder and renamed. The record names the generator, the prompt and the key,
and how many descriptions mention a fact absent from the metadata (:func:`unsupported_facts`:
a genre of the catalogue the item does not have, or a year other than the item's).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.errors import ConfigError
from benchmark.util import staged_dir

STORE_VERSION = 1
COLUMN = "description"
YEAR = re.compile(r"\b(1[89]\d\d|20\d\d)\b")


@dataclass
class DescribeConfig:
    """The ``describe`` config node (``configs/describe``).

    Attributes:
        name: ``none`` (no descriptions) or the generator's short name.
        generator: a causal LM name (``smollm2-135m-instruct``), ``.gguf`` file, folder or hub name.
        prompt: the instruction, with ``{title}``, ``{year}`` and ``{genres}``.
        max_new_tokens: longest description in tokens.
        batch_size: items per ``generate`` call.
        cache_dir: cache root (None: ``$LLM4REC_CACHE`` or ``.cache/llm4rec``).
    """

    name: str = "none"
    generator: str = "smollm2-135m-instruct"
    prompt: str = "Describe the movie {title} ({year}), genres: {genres}, in one sentence.\nDescription:"
    max_new_tokens: int = 40
    batch_size: int = 8
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.name == "none":
            return
        fields = {n for _, n, _, _ in __import__("string").Formatter().parse(self.prompt) if n}
        if not fields <= {"title", "year", "genres"} or "title" not in fields:
            raise ConfigError(f"describe.prompt: needs {{title}} and only {{title}}, {{year}}, {{genres}}; got {sorted(fields)}")
        for key in ("max_new_tokens", "batch_size"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 512:
                raise ConfigError(f"describe.{key}: an integer in 1..512, got {v!r}")

    @property
    def active(self) -> bool:
        return self.name != "none"


def item_metadata(items: Any, item_fields: dict[str, str], item_ids: Sequence[str]) -> list[dict[str, str]]:
    """Per item (index order): its title, year and genres from the side table ("" when absent)."""
    from benchmark.models.components.text_encoder import column_values, side_column

    out = [{"title": "", "year": "", "genres": ""} for _ in item_ids]
    for role in ("title", "year", "genres"):
        col = side_column(items, item_fields, role)
        if col is None:
            continue
        for meta, v in zip(out, column_values(items, col, list(item_ids)), strict=True):
            meta[role] = v
    return out


def unsupported_facts(descriptions: Sequence[str], meta: Sequence[dict[str, str]]) -> dict[str, Any]:
    """How many descriptions mention a fact absent from their item's metadata.

    A description is flagged when it names a genre of the catalogue's genre vocabulary (whole
    word, case-insensitive) that the item does not have, or a year (1800-2099) other than the
    item's year. Returns counts and shares.
    """
    vocab = sorted({g.lower() for m in meta for g in m["genres"].split()})
    patterns = {g: re.compile(rf"(?<![\w-]){re.escape(g)}(?![\w-])", re.IGNORECASE) for g in vocab}
    genre_bad = year_bad = either = 0
    for text, m in zip(descriptions, meta, strict=True):
        own = {g.lower() for g in m["genres"].split()}
        g_flag = any(p.search(text) for g, p in patterns.items() if g not in own)
        years = set(YEAR.findall(text))
        y_flag = bool(years - {m["year"]}) if years else False
        genre_bad += g_flag
        year_bad += y_flag
        either += g_flag or y_flag
    n = max(1, len(descriptions))
    return {
        "items": len(descriptions),
        "unsupported_genre": genre_bad,
        "unsupported_year": year_bad,
        "unsupported_any": either,
        "unsupported_share": round(either / n, 6),
        "rule": "names a catalogue genre the item lacks, or a year other than the item's",
    }


def _prompt_text(cfg: DescribeConfig, meta: dict[str, str]) -> str:
    return cfg.prompt.format(
        title=meta["title"] or "(untitled)", year=meta["year"] or "unknown year", genres=meta["genres"] or "unknown"
    )


def describe_items(
    cfg: DescribeConfig, item_ids: Sequence[str], meta: Sequence[dict[str, str]], store_root: Path
) -> tuple[list[str], dict[str, Any]]:
    """The descriptions of ``item_ids`` (from the cache, or generated and cached) and their facts."""
    from benchmark.models.components.llm import load_causal_lm

    t0 = time.perf_counter()
    loaded = load_causal_lm(cfg.generator, "float32", "cpu", cfg.cache_dir)
    weights = loaded.facts.get("file_sha256") or _state_digest(loaded.model)
    content = hashlib.sha256()
    for raw, m in zip(item_ids, meta, strict=True):
        content.update(f"{raw}\t{m['title']}\t{m['year']}\t{m['genres']}\n".encode())
    body = {
        "store_version": STORE_VERSION,
        "generator": cfg.generator,
        "weights": weights,
        "prompt": cfg.prompt,
        "max_new_tokens": cfg.max_new_tokens,
        "content": content.hexdigest(),
    }
    key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    folder = store_root / "descriptions" / key[:20]
    cached = _read(folder, key, len(item_ids))
    if cached is None:
        texts = _generate(loaded, [_prompt_text(cfg, m) for m in meta], cfg)
        with staged_dir(folder) as tmp:
            (tmp / "descriptions.json").write_text(json.dumps(texts, ensure_ascii=False))
            (tmp / "meta.json").write_text(json.dumps({**body, "key": key, "items": len(texts)}, indent=1))
        cache = "created"
    else:
        texts, cache = cached, "hit"
    facts = {
        "name": cfg.name,
        "generator": cfg.generator,
        "weights_sha256": weights,
        "dequantized": bool(loaded.facts.get("dequantized")),
        "prompt": cfg.prompt,
        "max_new_tokens": cfg.max_new_tokens,
        "decoding": "greedy, cut at the first blank line",
        "key": key[:20],
        "cache": cache,
        "mean_chars": round(float(np.mean([len(t) for t in texts])), 1) if texts else 0.0,
        "empty": sum(1 for t in texts if not t),
        "check": unsupported_facts(texts, meta),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return texts, facts


def _read(folder: Path, key: str, n: int) -> list[str] | None:
    """Cached descriptions when the folder holds ``n`` strings under this key, else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        texts = json.loads((folder / "descriptions.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or not isinstance(texts, list) or len(texts) != n or not all(isinstance(t, str) for t in texts):
        return None
    return texts


def _state_digest(model: torch.nn.Module) -> str:
    from benchmark.models.components.encoders import state_digest

    return state_digest(model)


@torch.no_grad()
def _generate(loaded: Any, prompts: list[str], cfg: DescribeConfig) -> list[str]:
    """Greedy continuations, batched by length, cut at the first blank line and stripped."""
    from transformers import GenerationConfig

    from benchmark.models.components.llm import left_pad

    tok, lm = loaded.tokenizer, loaded.model.eval()
    seqs = tok(prompts, add_special_tokens=True)["input_ids"]
    gen_cfg = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
    )
    out = [""] * len(seqs)
    order = np.argsort([len(s) for s in seqs], kind="stable")
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        batch = left_pad([seqs[i] for i in idx], tok.pad_token_id)
        gen = lm.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], generation_config=gen_cfg)
        for r, i in enumerate(idx):
            text = tok.decode(gen[r, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            out[i] = " ".join(text.split("\n\n")[0].split())
    return out


def add_descriptions(node: Any, data: Any, item_ids: Sequence[str], store_root: Path) -> tuple[Any, dict[str, Any] | None]:
    """``data`` with the descriptions of ``node`` (generated or loaded) as its item side table's
    ``description`` column (role ``description``), and their facts; ``data`` itself and None for
    ``describe=none``. The dataset's fingerprint (its source files) does not change."""
    import dataclasses

    import pandas as pd

    from benchmark.config import to_object

    cfg = to_object(node, DescribeConfig, "describe") if node is not None else DescribeConfig()
    if not cfg.active:
        return data, None
    ids = [str(i) for i in item_ids]
    meta = item_metadata(data.items, data.item_fields, ids)
    if not any(m["title"] for m in meta):
        raise ConfigError("describe: the dataset has no item titles to describe")
    with torch.random.fork_rng(devices=[]):  # generation never moves the run's random stream
        texts, facts = describe_items(cfg, ids, meta, store_root)
    items = data.items.reindex(data.items.index.union(pd.Index(ids, dtype=object)))
    items[COLUMN] = pd.Series(dict(zip(ids, texts, strict=True)), dtype=object).reindex(items.index)
    fields = {**dict(data.item_fields), COLUMN: COLUMN}
    return dataclasses.replace(data, items=items, item_fields=fields), facts
