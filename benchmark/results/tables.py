"""The shape of the leaderboard's tables: their headline columns, keys and titles.

Shared by the table writers (:mod:`benchmark.results.leaderboard`: Markdown, CSV, LaTeX) and the
HTML page (:mod:`benchmark.results.html`), so neither imports the other's module for them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

# Columns shown in the Markdown/LaTeX tables per protocol (the CSV and HTML have every metric).
HEADLINE = {
    "ranking": ["hr@10", "ndcg@10", "mrr@10", "recall@20", "ndcg@20", "coverage@10"],
    "labeled": ["auc", "gauc", "logloss"],
    "candidates": ["hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10", "valid_ratio"],
}
SIGNIFICANCE_METRIC = {"ranking": "ndcg@10", "labeled": "auc", "candidates": "ndcg@10"}
# The candidates view of full runs (eval.also_candidates) shown beside their full-ranking columns.
VIEW_COLUMNS = ["hit@1", "ndcg@10"]
# The same model's eval=full row (same dataset, split and label), shown beside a candidates row.
FULL_COLUMNS = ["hr@10", "ndcg@10"]
# Beyond-accuracy columns of ranking tables (benchmark.eval.beyond), shown when some row has them.
BEYOND = ["ild@10", "ildgenre@10", "novelty@10", "arp@10", "longtail@10", "gini@10", "calib@10"]
SLICES = ("cold_user", "cold_item", "strict_cold_item")
# Strict cold start (split.holdout_items): the share of lists that hold a never-trained item at all.
HELDOUT = ("heldout@10", "heldout@20")


def kind_of(protocol: str) -> str:
    """``labeled`` or ``candidates`` for those protocols (and labels derived from them), else
    ``ranking`` (full and sampled)."""
    base = protocol.split("[")[0]
    return base if base in ("labeled", "candidates") else "ranking"


def table_key(row: dict[str, Any]) -> tuple[str, str, str]:
    """(dataset, split, eval) labels of a leaderboard row: the table it belongs to."""
    return (row["dataset"], row["split"], row["eval"])


def tables(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Leaderboard rows grouped by table, in the order of their first row."""
    out: dict[tuple, list] = defaultdict(list)
    for r in rows:
        out[table_key(r)].append(r)
    return out


def _base(label: str) -> str:
    return label.split("[", 1)[0]


def table_title(key: tuple[str, str, str], setting: list[str] | None = None) -> str:
    """``dataset · split=… · eval=…``, plus what differs from the default config when anything does."""
    ds, sp, ev = (_base(k) for k in key)
    title = f"{ds} · split={sp} · eval=" + ("sampled (100 negatives)" if key[2] == "sampled" else ev)
    if ev == "candidates":
        n = "negatives as set" if "num_negatives=" in key[2] else "19 negatives"  # e.g. [test_users=200]: still 19
        title += f" (1 target + {n}; a candidate list, not comparable with full ranking)"
    if setting:
        title += " · not the default: " + ", ".join(setting)
    return title
