"""Full-ranking evaluation benchmark: our ``rank_full`` + evaluator against RecBole's.

Two parts, written to ``<out_dir>/ranking_eval.json``:

a. MovieLens-100K (RecBole's bundled copy, read in place), leave-one-out, full
   ranking: RecBole's ``Trainer.evaluate`` on its own BPR model against our
   ``rank_full`` + ``ranking_per_row`` fed with the *same* user/item embeddings,
   the same test users and the same history exclusion (RecBole's internal ids,
   item 0 = padding excluded), so both rank identical score matrices. Times are
   best of ``REPEATS`` after one warm-up; metrics are cross-checked per user.
b. Synthetic scale: 100k users x 100k items, 64-d random embeddings, 20 history
   items excluded per user, top-20 over all users, one fresh child process per
   ``chunk_users`` value so that its peak RSS is its own.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.bench import write_result
from benchmark.util import package_version

OUT_NAME = "ranking_eval.json"
KS = [5, 10, 20]
REPEATS = 5  # timed repetitions (best is reported), after one warm-up
TRAIN_EPOCHS = 10  # RecBole BPR epochs before evaluating (0 = random init)
OUR_CHUNK_USERS = 1024
# Synthetic scale (part b).
SYN_USERS = 100_000
SYN_ITEMS = 100_000
SYN_DIM = 64
SYN_HISTORY = 20
SYN_K = 20
SYN_CHUNKS = (1024, 2048, 512)
SYN_SUBSET_USERS = 20_000  # rows ranked for the extra chunk sizes when the full run is slow
SYN_FULL_SLOW_S = 300.0  # a full run slower than this is not repeated per chunk size
MEMORY_BAR_MB = 4096.0
REPO_ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- helpers


def _best_of(fn: Callable[[], Any], repeats: int = REPEATS) -> tuple[float, list[float], Any]:
    """Run ``fn`` once to warm up, then ``repeats`` timed times.

    Returns:
        (best seconds, every timed run in seconds, the last return value).
    """
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, out


def _proc_status_mb(field: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB, None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _maxrss_mb(who: int) -> float:
    """``ru_maxrss`` of ``RUSAGE_SELF``/``RUSAGE_CHILDREN`` in MiB (kB on Linux, bytes on macOS)."""
    v = resource.getrusage(who).ru_maxrss
    return v / 2**20 if sys.platform == "darwin" else v / 1024


def machine_facts() -> dict[str, Any]:
    """CPU, thread and version facts of this process."""
    import torch

    return {
        "device": "CPU",
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "recbole_version": package_version("recbole"),
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


@contextlib.contextmanager
def _recbole_sandbox(workdir: str) -> Iterator[None]:
    """Run RecBole quietly with its relative writes kept out of the repository.

    RecBole's ``Trainer`` opens a TensorBoard writer under the relative path
    ``log_tensorboard/`` and ``Config`` sets ``CUDA_VISIBLE_DEVICES``; both are
    confined here (cwd = ``workdir``, env restored) and its logging and
    pandas/torch warnings are silenced. Everything is restored on exit.
    """
    cwd = os.getcwd()
    cuda_env = os.environ.get("CUDA_VISIBLE_DEVICES")
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.chdir(workdir)
            yield
    finally:
        os.chdir(cwd)
        logging.disable(disabled)
        if cuda_env is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = cuda_env


# ----------------------------------------------------------------------------- part a: ML-100K


def _rows_from_recbole(test_data: Any) -> Any:
    """Ranking rows mirroring RecBole's full-sort test loader, in RecBole's internal ids.

    Users are ``test_data.uid_list`` (ascending, RecBole's iteration order), targets
    ``uid2positive_item`` and exclusions ``uid2history_item`` (train + valid items)
    plus item 0, RecBole's padding id, which its trainer also sets to -inf.
    """
    from benchmark.data.views import RankingRows

    users = test_data.uid_list.numpy().astype(np.int64)
    targets = [np.sort(test_data.uid2positive_item[u].numpy()) for u in users]
    excl = [np.union1d([0], test_data.uid2history_item[u].numpy()) for u in users]
    target_ptr = np.r_[0, np.cumsum([len(t) for t in targets])].astype(np.int64)
    exclude_ptr = np.r_[0, np.cumsum([len(e) for e in excl])].astype(np.int64)
    return RankingRows(
        "test",
        users,
        target_ptr,
        np.concatenate(targets).astype(np.int64),
        exclude_ptr,
        np.concatenate(excl).astype(np.int64),
    )


def _recbole_hits_and_scores(trainer: Any, test_data: Any, k: int) -> tuple[np.ndarray, Any]:
    """RecBole's own per-user hit matrix and masked scores, from one untimed pass.

    Runs the body of ``Trainer.evaluate`` (``_full_sort_batch_eval`` + the collector)
    and keeps what it discards: ``rec.topk`` and the scores after RecBole's -inf masking.

    Returns:
        hits [U, k] bool (rank j of user row u is a test item) and scores [U, n_items].
    """
    import torch

    trainer.model.eval()
    trainer.tot_item_num = test_data._dataset.item_num
    blocks = []
    with torch.no_grad():
        for batch in test_data:
            interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
            trainer.eval_collector.eval_batch_collect(scores, interaction, positive_u, positive_i)
            blocks.append(scores.clone())
    struct = trainer.eval_collector.get_data_struct()
    return struct.get("rec.topk")[:, :k].numpy().astype(bool), torch.cat(blocks)


@dataclass
class _RecBoleSide:
    """What the RecBole half of :func:`compare_recbole_ml100k` measured and keeps for ours."""

    build_s: float
    train_s: float
    default_batch: int
    users_per_batch: int
    one_batch_size: int
    best: float
    times: list[float]
    metrics: dict[str, float]  # our metric names (hr@10, ...)
    big_best: float
    big_times: list[float]
    big_metrics: dict[str, float]
    hits: np.ndarray  # [U, max(KS)] bool
    scores: Any  # [U, n_items] torch.Tensor, RecBole's masked scores
    user_emb: Any  # [n_users, d] torch.Tensor
    item_emb: Any  # [n_items, d] torch.Tensor
    rows: Any  # RankingRows in RecBole's internal ids


def _recbole_config_dict(workdir: str, train_epochs: int) -> dict[str, Any]:
    """RecBole settings: bundled ML-100K, leave-one-out, full ranking, CPU, nothing saved."""
    data_root = Path(str(resources.files("recbole") / "dataset_example"))
    return {
        "data_path": str(data_root),
        "checkpoint_dir": os.path.join(workdir, "saved"),
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Hit", "NDCG", "MRR", "Recall"],
        "topk": KS,
        "valid_metric": "NDCG@10",
        "metric_decimal_place": 12,
        "epochs": max(train_epochs, 1),
        "use_gpu": False,
        "log_wandb": False,
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
    }


def _our_metric_names(recbole_result: dict[str, float]) -> dict[str, float]:
    """RecBole names (hit@k, ndcg@k, mrr@k, recall@k) -> ours (hr@k, ndcg@k, mrr@k, recall@k)."""
    rename = {"hit": "hr", "ndcg": "ndcg", "mrr": "mrr", "recall": "recall"}
    return {f"{rename[m.split('@')[0]]}@{m.split('@')[1]}": float(v) for m, v in recbole_result.items()}


def _run_recbole(train_epochs: int, repeats: int) -> _RecBoleSide:
    """Build RecBole's ML-100K, train its BPR, time ``Trainer.evaluate`` (default and one batch)."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import BPR as RecBoleBPR
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    workdir = tempfile.mkdtemp(prefix="bench_recbole_")
    with _recbole_sandbox(workdir):
        t0 = time.perf_counter()
        config = Config(
            model="BPR", dataset="ml-100k", config_dict=_recbole_config_dict(workdir, train_epochs)
        )
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        train_data, _valid_data, test_data = data_preparation(config, dataset)
        build_s = time.perf_counter() - t0
        model = RecBoleBPR(config, train_data.dataset)
        trainer = Trainer(config, model)
        train_s = 0.0
        if train_epochs > 0:
            t0 = time.perf_counter()
            trainer.fit(train_data, None, saved=False, show_progress=False)
            train_s = time.perf_counter() - t0
        default_batch = int(config["eval_batch_size"])
        users_per_batch_default = test_data.step

        def recbole_eval() -> dict[str, float]:
            return dict(trainer.evaluate(test_data, load_best_model=False))

        rb_best, rb_times, rb_result = _best_of(recbole_eval, repeats)
        # The same evaluation with every test user in one batch, like our single chunk.
        one_batch_size = test_data._dataset.item_num * OUR_CHUNK_USERS
        config["eval_batch_size"] = one_batch_size
        test_data.update_config(config)
        rb_big_best, rb_big_times, rb_big_result = _best_of(recbole_eval, repeats)
        rb_hits, rb_scores = _recbole_hits_and_scores(trainer, test_data, max(KS))
        trainer.tensorboard.close()
    shutil.rmtree(workdir, ignore_errors=True)  # RecBole's tensorboard events, empty checkpoint dir
    return _RecBoleSide(
        build_s=build_s,
        train_s=train_s,
        default_batch=default_batch,
        users_per_batch=users_per_batch_default,
        one_batch_size=one_batch_size,
        best=rb_best,
        times=rb_times,
        metrics=_our_metric_names(rb_result),
        big_best=rb_big_best,
        big_times=rb_big_times,
        big_metrics=_our_metric_names(rb_big_result),
        hits=rb_hits,
        scores=rb_scores,
        user_emb=model.user_embedding.weight.detach().clone(),  # [n_users, d]
        item_emb=model.item_embedding.weight.detach().clone(),  # [n_items, d]
        rows=_rows_from_recbole(test_data),
    )


def _run_ours(
    scorer: Callable[[Any], Any], rows: Any, repeats: int
) -> tuple[dict[str, Any], np.ndarray, dict[str, float]]:
    """Time our ``rank_full`` + ``ranking_per_row`` (and ``rank_full`` alone) on ``rows``.

    Returns:
        (the report's ``ours`` section, ranked [U, max(KS)] item indices, mean metrics).
    """
    from benchmark.eval.evaluator import ranking_per_row
    from benchmark.eval.ranking import rank_full

    def ours_eval() -> tuple[np.ndarray, dict[str, np.ndarray]]:
        ranked = rank_full(scorer, rows, max(KS), chunk_users=OUR_CHUNK_USERS)
        per_row, _keep = ranking_per_row(ranked, rows, KS)
        return ranked, per_row

    ours_best, ours_times, (ranked, per_row) = _best_of(ours_eval, repeats)
    ours_rank_best, ours_rank_times, _ = _best_of(
        lambda: rank_full(scorer, rows, max(KS), chunk_users=OUR_CHUNK_USERS), repeats
    )
    ours = {name: float(v.mean()) for name, v in per_row.items()}
    section = {
        "what": "benchmark.eval.ranking.rank_full (k=20) + benchmark.eval.evaluator.ranking_per_row (ks 5,10,20)",
        "chunk_users": OUR_CHUNK_USERS,
        "best_seconds": ours_best,
        "all_seconds": ours_times,
        "rank_full_only_best_seconds": ours_rank_best,
        "rank_full_only_all_seconds": ours_rank_times,
        "rows_per_second": len(rows) / ours_best,
        "metrics": ours,
    }
    return section, ranked, ours


def _score_agreement(scorer: Callable[[Any], Any], rows: Any, rb_scores: Any) -> dict[str, Any]:
    """Our masked score matrix against RecBole's, cell by cell, and the ties near the cut."""
    import torch

    with torch.no_grad():
        s = scorer(torch.as_tensor(rows.users))  # [U, n_items]
        for r in range(len(rows)):
            s[r, rows.exclude[rows.exclude_ptr[r] : rows.exclude_ptr[r + 1]]] = float("-inf")
        same_mask = bool(torch.equal(torch.isneginf(s), torch.isneginf(rb_scores)))
        finite = torch.isfinite(s) & torch.isfinite(rb_scores)
        score_max_abs_diff = float((s[finite] - rb_scores[finite]).abs().max())
        # Ties: rows whose 20th and 21st best rankable scores are equal (where ordering may differ).
        top = s.topk(max(KS) + 1, dim=1).values  # [U, max(KS) + 1]
        return {
            "same_excluded_cells": same_mask,
            "score_max_abs_diff": score_max_abs_diff,
            "rows_with_score_tie_at_rank_20_21": int((top[:, -1] == top[:, -2]).sum()),
            "rows_with_any_score_tie_in_top21": int((top[:, 1:] == top[:, :-1]).any(dim=1).sum()),
        }


def _agreement(
    scorer: Callable[[Any], Any], rb: _RecBoleSide, ranked: np.ndarray, ours: dict[str, float]
) -> dict[str, Any]:
    """Per-metric and per-user agreement of our evaluation with RecBole's."""
    from benchmark.eval.evaluator import hit_matrix

    recbole = rb.metrics
    max_abs_diff = max(abs(ours[m] - recbole[m]) for m in recbole)
    our_hits = hit_matrix(ranked, rb.rows)[:, : max(KS)]  # [U, max(KS)]
    users_differing = (
        int((our_hits != rb.hits).any(axis=1).sum()) if rb.hits.shape == our_hits.shape else None
    )
    scores = _score_agreement(scorer, rb.rows, rb.scores)
    agree = {}
    for m in ("hr@10", "ndcg@10"):
        agree[m] = {"ours": ours[m], "recbole": recbole[m], "abs_diff": abs(ours[m] - recbole[m])}
    identical = users_differing == 0 and max_abs_diff < 1e-9
    return {
        **agree,
        "max_abs_diff_all_metrics": max_abs_diff,
        "same_excluded_cells": scores["same_excluded_cells"],
        "score_max_abs_diff": scores["score_max_abs_diff"],
        "users_with_different_top20_hits": users_differing,
        "rows_with_score_tie_at_rank_20_21": scores["rows_with_score_tie_at_rank_20_21"],
        "rows_with_any_score_tie_in_top21": scores["rows_with_any_score_tie_in_top21"],
        "identical": identical,
        "note": "identical per-user hit vectors at ranks 1..20"
        if identical
        else "differences are expected only from tie-breaking (RecBole: torch.topk order; ours: item index)",
    }


def compare_recbole_ml100k(train_epochs: int = TRAIN_EPOCHS, repeats: int = REPEATS) -> dict[str, Any]:
    """Time RecBole's full-sort test evaluation and ours on identical BPR scores.

    Args:
        train_epochs: RecBole BPR training epochs before evaluating (0 = random init).
        repeats: timed repetitions per path (best reported), after one warm-up.

    Returns:
        timings, their ratio, both metric sets and the per-user agreement.
    """
    import torch

    rb = _run_recbole(train_epochs, repeats)
    user_emb, item_emb = rb.user_emb, rb.item_emb

    def scorer(users: torch.Tensor) -> torch.Tensor:
        return user_emb[users] @ item_emb.T  # [B, n_items]

    ours_section, ranked, ours = _run_ours(scorer, rb.rows, repeats)
    ours_best = ours_section["best_seconds"]
    return {
        "dataset": "ml-100k (RecBole's bundled copy, read in place)",
        "protocol": "leave-one-out (RecBole LS valid_and_test, order TO, group_by user), full ranking",
        "model": "random-init BPR" if train_epochs == 0 else f"BPR trained {train_epochs} epochs",
        "model_detail": "RecBole BPR (64-d), default hyper-parameters, seed 2020; ours scores U[users] @ I.T "
        "with the same embedding matrices",
        "device": "CPU",
        "n_test_users": len(rb.rows),
        "n_items_incl_padding": item_emb.shape[0],
        "recbole_build_dataset_seconds": rb.build_s,
        "recbole_train_seconds": rb.train_s,
        "repeats": repeats,
        "warmup_runs": 1,
        "recbole": {
            "what": "recbole.trainer.Trainer(config, model).evaluate(test_data, load_best_model=False)",
            "eval_batch_size": rb.default_batch,
            "users_per_batch": rb.users_per_batch,
            "best_seconds": rb.best,
            "all_seconds": rb.times,
            "metrics": rb.metrics,
        },
        "recbole_one_batch": {
            "what": "same, with eval_batch_size = n_items * 1024 (all test users in one batch)",
            "eval_batch_size": rb.one_batch_size,
            "best_seconds": rb.big_best,
            "all_seconds": rb.big_times,
            "metrics": rb.big_metrics,
        },
        "ours": ours_section,
        "ratio_recbole_over_ours": rb.best / ours_best,
        "ratio_recbole_one_batch_over_ours": rb.big_best / ours_best,
        "ours_at_least_as_fast": rb.best / ours_best >= 1.0,
        "agreement": _agreement(scorer, rb, ranked, ours),
    }


# ----------------------------------------------------------------------------- part b: synthetic scale


def _synthetic_history(n_users: int, n_items: int, history: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user ``history + 1`` distinct random items: [U] targets and [U, history] exclusions."""
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, n_items, size=(n_users, history + 1), dtype=np.int64)
    s = np.sort(draw, axis=1)
    dup = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
    for u in dup:  # rare (~0.2% of users): redraw without replacement
        draw[u] = rng.choice(n_items, size=history + 1, replace=False)
    return draw[:, 0].copy(), draw[:, 1:].copy()


def _synthetic_rows(n_users: int, n_items: int, history: int, seed: int) -> tuple[Any, np.ndarray]:
    """Ranking rows of ``n_users`` random users: one target and ``history`` excluded items each.

    Returns:
        (RankingRows with user ``u`` in row ``u``, targets [U]).
    """
    from benchmark.data.views import RankingRows

    targets, excl = _synthetic_history(n_users, n_items, history, seed)  # [U], [U, history]
    rows = RankingRows(
        "test",
        np.arange(n_users, dtype=np.int64),
        np.arange(n_users + 1, dtype=np.int64),
        targets,
        np.arange(n_users + 1, dtype=np.int64) * history,
        excl.reshape(-1),  # [U * history]
    )
    return rows, targets


def _synthetic_checks(
    ranked: np.ndarray, rows: Any, targets: np.ndarray, n_rows: int, k: int
) -> dict[str, Any]:
    """Sanity on the first 1000 rows: full lists, no excluded item ranked; HR@k of random scores."""
    check = min(1000, n_rows)
    bad_excluded = sum(
        int(np.isin(ranked[r], rows.exclude[rows.exclude_ptr[r] : rows.exclude_ptr[r + 1]]).any())
        for r in range(check)
    )
    return {
        "check_rows": check,
        "check_rows_with_excluded_item": bad_excluded,
        "check_rows_with_missing_items": int((ranked[:check] < 0).any(axis=1).sum()),
        "hr_at_k_random": float(np.mean(ranked[:n_rows] == targets[:n_rows, None]) * k),
    }


def synthetic_child(
    n_users: int,
    n_items: int,
    dim: int,
    history: int,
    k: int,
    chunk_users: int,
    seed: int = 0,
    max_rows: int | None = None,
) -> dict[str, Any]:
    """Rank ``n_items`` for (the first ``max_rows`` of) ``n_users`` random users in this process.

    Meant to run in a fresh process (see :func:`run_synthetic`): peak memory is read
    from this process's own ``VmHWM`` (high-water RSS of its address space).

    Returns:
        timings, rows/s, RSS before ranking and peak RSS (MiB), sanity checks.
    """
    import torch

    from benchmark.eval.ranking import rank_full

    rss_imports = _rss_mb()
    gen = torch.Generator().manual_seed(seed)
    user_emb = torch.randn(n_users, dim, generator=gen)  # [U, d] float32
    item_emb = torch.randn(n_items, dim, generator=gen)  # [N, d] float32
    rows, targets = _synthetic_rows(n_users, n_items, history, seed)
    gc.collect()

    def scorer(users: torch.Tensor) -> torch.Tensor:
        return user_emb[users] @ item_emb.T  # [B, N]

    row_ids = None if max_rows is None or max_rows >= n_users else np.arange(max_rows)
    n_rows = n_users if row_ids is None else len(row_ids)
    rss_before = _rss_mb()
    hwm_before = _proc_status_mb("VmHWM")
    done = [0]
    t0 = time.perf_counter()
    ranked = rank_full(
        scorer,
        rows,
        k,
        chunk_users=chunk_users,
        row_ids=row_ids,
        progress=lambda n: done.__setitem__(0, done[0] + n),
    )
    seconds = time.perf_counter() - t0
    peak_hwm = _proc_status_mb("VmHWM")
    peak_ru = _maxrss_mb(resource.RUSAGE_SELF)
    return {
        "n_users": n_users,
        "n_items": n_items,
        "dim": dim,
        "history_per_user": history,
        "k": k,
        "chunk_users": chunk_users,
        "rows_ranked": n_rows,
        "rows_done_by_progress": done[0],
        "seconds": seconds,
        "users_per_second": n_rows / seconds,
        "torch_threads": torch.get_num_threads(),
        "rss_after_imports_mb": rss_imports,
        "rss_before_ranking_mb": rss_before,
        "hwm_before_ranking_mb": hwm_before,
        "peak_rss_mb": peak_hwm,
        "ru_maxrss_self_mb": peak_ru,
        "score_block_mb": chunk_users * n_items * 4 / 2**20,
        **_synthetic_checks(ranked, rows, targets, n_rows, k),
    }


_CHILD_CODE = (
    "import json, sys\n"
    "from benchmark.bench.ranking_eval import synthetic_child\n"
    "print('@@RESULT ' + json.dumps(synthetic_child(**json.loads(sys.argv[1]))), flush=True)\n"
)


def run_synthetic(chunk_users: int, max_rows: int | None = None, timeout_s: float = 3600) -> dict[str, Any]:
    """Run :func:`synthetic_child` in a fresh ``python`` subprocess and return its report.

    The child's own ``VmHWM`` is its peak. ``ru_maxrss`` of ``RUSAGE_CHILDREN`` read
    here is also recorded, but on Linux it is a running maximum over all waited-for
    children and, after fork+exec, also counts the parent's RSS at fork time, so it
    is an upper bound only.
    """
    args = {
        "n_users": SYN_USERS,
        "n_items": SYN_ITEMS,
        "dim": SYN_DIM,
        "history": SYN_HISTORY,
        "k": SYN_K,
        "chunk_users": chunk_users,
        "max_rows": max_rows,
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD_CODE, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
    )
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"synthetic child failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(lines[-1][len("@@RESULT ") :])
    out["child_wall_seconds"] = wall
    out["ru_maxrss_children_mb_upper_bound"] = _maxrss_mb(resource.RUSAGE_CHILDREN)
    out["under_memory_bar"] = out["peak_rss_mb"] is not None and out["peak_rss_mb"] < MEMORY_BAR_MB
    return out


def synthetic_scale() -> dict[str, Any]:
    """Full-size run at the first chunk size, then the other sizes (on a subset if slow)."""
    runs = []
    first = run_synthetic(SYN_CHUNKS[0])
    first["scope"] = "full"
    runs.append(first)
    _print_syn(first)
    slow = first["seconds"] > SYN_FULL_SLOW_S
    for c in SYN_CHUNKS[1:]:
        r = run_synthetic(c, max_rows=SYN_SUBSET_USERS if slow else None)
        r["scope"] = (
            f"first {SYN_SUBSET_USERS} users (full run took > {SYN_FULL_SLOW_S:.0f}s)" if slow else "full"
        )
        runs.append(r)
        _print_syn(r)
    return {
        "what": f"rank_full over {SYN_USERS} users x {SYN_ITEMS} items, {SYN_DIM}-d random float32 "
        f"embeddings, {SYN_HISTORY} excluded history items + 1 target per user, k={SYN_K}",
        "memory_bar_mb": MEMORY_BAR_MB,
        "peak_memory_how": "VmHWM of a fresh child process (python -c ...), i.e. its own high-water RSS, "
        "including interpreter, torch, embeddings and CSR exclusions",
        "runs": runs,
        "all_under_memory_bar": all(r["under_memory_bar"] for r in runs),
    }


def _print_syn(r: dict[str, Any]) -> None:
    print(
        f"  synthetic chunk_users={r['chunk_users']:>5} rows={r['rows_ranked']:>6}: "
        f"{r['seconds']:.1f}s, {r['users_per_second']:.0f} users/s, RSS before {r['rss_before_ranking_mb']:.0f} MiB, "
        f"peak {r['peak_rss_mb']:.0f} MiB ({'<' if r['under_memory_bar'] else '>='} {MEMORY_BAR_MB:.0f})",
        flush=True,
    )


# ----------------------------------------------------------------------------- entry point


def main(out_dir: Path) -> dict[str, Any]:
    """Run both parts, write ``<out_dir>/ranking_eval.json`` and print a summary.

    Args:
        out_dir: output folder (``results/perf`` from the dispatcher).

    Returns:
        the JSON document written.
    """
    import torch

    out_dir = Path(out_dir)
    machine = machine_facts()  # load average before we add our own load
    t0 = time.perf_counter()
    # Synthetic children first, while this process is small (see run_synthetic).
    print("ranking_eval: synthetic scale (fresh child process per chunk size)", flush=True)
    synthetic = synthetic_scale()
    print("ranking_eval: ML-100K, ours vs RecBole", flush=True)
    ml = compare_recbole_ml100k()
    doc = {
        "benchmark": "ranking_eval",
        "created_unix": time.time(),
        "machine": machine,
        "labels": ["CPU", ml["model"]],
        "ml100k_vs_recbole": ml,
        "synthetic_scale": synthetic,
        "total_seconds": time.perf_counter() - t0,
        "load_average_1_5_15_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "timing_note": "wall-clock on a shared machine: a load average above cpu_count means other "
        "processes competed for the CPUs, so absolute times are pessimistic; best-of-N is reported",
        "torch_threads": torch.get_num_threads(),
    }
    write_result(out_dir / OUT_NAME, doc)
    a = ml["agreement"]
    print(
        f"ML-100K ({ml['model']}, {ml['n_test_users']} users, CPU): RecBole {ml['recbole']['best_seconds'] * 1e3:.1f} ms "
        f"(one batch: {ml['recbole_one_batch']['best_seconds'] * 1e3:.1f} ms), ours {ml['ours']['best_seconds'] * 1e3:.1f} ms "
        f"-> ratio {ml['ratio_recbole_over_ours']:.2f}x (one batch {ml['ratio_recbole_one_batch_over_ours']:.2f}x)\n"
        f"  HR@10 ours {a['hr@10']['ours']:.6f} vs RecBole {a['hr@10']['recbole']:.6f} (|d|={a['hr@10']['abs_diff']:.2g}); "
        f"NDCG@10 ours {a['ndcg@10']['ours']:.6f} vs RecBole {a['ndcg@10']['recbole']:.6f} (|d|={a['ndcg@10']['abs_diff']:.2g}); "
        f"users with different top-20 hits: {a['users_with_different_top20_hits']}\n"
        f"wrote {out_dir / OUT_NAME}",
        flush=True,
    )
    return doc
