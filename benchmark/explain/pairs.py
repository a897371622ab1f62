"""The (user, item) pairs an explanation run explains, and what the generator sees of each user.

- ``first_stage``: the top-1 item of a committed full-ranking run made on the same split, read with
  the bounded, path-checked reader of run folders (:mod:`benchmark.untrusted`, as the LLM reranker
  reads its first stage).
- ``test_item``: the user's held-out test item (the pair a reference review exists for).

Users are a seeded sample of the test users that have a pair (:func:`pick_users`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.config import DataConfig, SplitConfig, to_object
from benchmark.data.histories import user_histories
from benchmark.data.interactions import Interactions
from benchmark.data.splits import Split
from benchmark.errors import ConfigError
from benchmark.models.explainers import ExplainRequest

SOURCES = ("first_stage", "test_item")


def load_split(run_overrides: Sequence[str]) -> tuple[DataConfig, Interactions, Split]:
    """The dataset and split the main config composes with ``run_overrides``."""
    from benchmark.compose import compose
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split

    cfg = compose(list(run_overrides))
    data_cfg: DataConfig = to_object(cfg.data, DataConfig)
    data = load_dataset(data_cfg)
    return data_cfg, data, build_split(data, to_object(cfg.split, SplitConfig))


def first_stage_top1(run_dir: str | Path, split: Split) -> tuple[np.ndarray, dict[str, Any]]:
    """Every user's top-1 item of a first-stage run, checked against this split.

    Args:
        run_dir: a run folder (``record.json`` and its predictions file).
        split: the split the pairs are explained on (its fingerprint must equal the run's).

    Returns:
        ([n_users] item index, -1 for a user the run did not rank; facts: run id, model label,
        path, split fingerprint).

    Raises:
        ConfigError: the folder is not a readable run of a full ranking on this split (one line).
    """
    from benchmark.untrusted import Rejected, prediction_lines, read_run_dir

    where = f"pairs.first_stage: {run_dir}"
    try:  # a run folder may come from anyone: bounded, path-checked, strict JSON
        sub = read_run_dir(Path(run_dir))
        lines = prediction_lines(sub.predictions)
    except Rejected as e:
        raise ConfigError(f"{where}: {e}") from None
    rec = sub.record
    if not all(isinstance(rec.get(k), dict) for k in ("split", "eval", "model")) or not isinstance(
        rec.get("run_id"), str
    ):
        raise ConfigError(f"{where}: not a run record (run_id, split, eval or model missing)")
    if rec["split"].get("fingerprint") != split.fingerprint:
        raise ConfigError(
            f"{where}: run {rec['run_id']} was made on split {str(rec['split'].get('fingerprint'))[:12]}, "
            f"this split is {split.fingerprint[:12]} ({split.protocol}); use the first stage's data and split"
        )
    if rec["eval"].get("protocol") != "full":
        raise ConfigError(
            f"{where}: run {rec['run_id']} used eval={rec['eval'].get('protocol')}; its top-1 needs eval=full"
        )
    user_of = {u: i for i, u in enumerate(split.user_ids.tolist())}
    item_of = {x: i for i, x in enumerate(split.item_ids.tolist())}
    top = np.full(split.n_users, -1, dtype=np.int64)
    for line in lines:
        if (
            not isinstance(line, dict)
            or not isinstance(line.get("ranked"), list)
            or line.get("user") not in user_of
        ):
            raise ConfigError(
                f"{where}: a predictions line is not a ranked list of a known user ({str(line)[:80]})"
            )
        ranked = [item_of[x] for x in line["ranked"] if isinstance(x, str) and x in item_of]
        if ranked:
            top[user_of[line["user"]]] = ranked[0]
    facts = {
        "run_id": rec["run_id"],
        "model": rec["model"].get("label") or rec["model"].get("name"),
        "path": str(run_dir),
        "split_fingerprint": split.fingerprint,
    }
    return top, facts


def test_items(split: Split) -> np.ndarray:
    """[n_users] each user's held-out test item (its last test row), -1 without one."""
    out = np.full(split.n_users, -1, dtype=np.int64)
    test = split.test
    out[test["user"].to_numpy()] = test["item"].to_numpy()
    return out


def pick_users(items: np.ndarray, split: Split, n: int | None, seed: int) -> np.ndarray:
    """A seeded sample of ``n`` test users that have a pair (all of them when ``n`` is None).

    Args:
        items: [n_users] item per user, -1 where there is no pair.
        split: the split (its test users).
        n: users to keep.
        seed: sample seed.

    Returns:
        sorted user indices.
    """
    tested = np.zeros(split.n_users, dtype=bool)
    tested[split.test["user"].to_numpy()] = True
    pool = np.flatnonzero(tested & (items >= 0))
    if n is None or n >= len(pool):
        return pool
    if n < 1:
        raise ConfigError(f"users: need >= 1 (or null for all), got {n}")
    return np.sort(np.random.default_rng([int(seed), 8_513]).choice(pool, size=int(n), replace=False))


def requests_for(
    split: Split, users: np.ndarray, items: np.ndarray, history: int, like_threshold: float
) -> list[ExplainRequest]:
    """One :class:`ExplainRequest` per user: its pair's item and its last ``history`` train items."""
    hist = user_histories(split, int(history), float(like_threshold))
    return [
        ExplainRequest(str(split.user_ids[u]), int(items[u]), hist[u][0], hist[u][1]) for u in users.tolist()
    ]


def train_items(split: Split) -> list[set[int]]:
    """[n_users] every train item of each user (what a cited title must belong to)."""
    out: list[set[int]] = [set() for _ in range(split.n_users)]
    tr = split.train
    for u, i in zip(tr["user"].to_numpy().tolist(), tr["item"].to_numpy().tolist(), strict=True):
        out[u].add(i)
    return out
