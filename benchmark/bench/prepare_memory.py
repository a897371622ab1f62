"""Peak memory and wall time of preparing a Yelp-sized review dump with the recipe preparer.

The real Yelp review file (~7M reviews, ~5 GB) cannot be shipped or downloaded here, so
this benchmark writes a synthetic file with the same shape: one JSON object per line
with ``review_id``, ``user_id``, ``business_id`` (22-character ids), ``stars``, ``date``,
``text`` (~500 characters, with escapes), ``useful``/``funny``/``cool``, plus a business
file; users and businesses are drawn with a heavy-tailed popularity. It then runs
``prepare("yelp", ...)`` in a fresh child process per preprocessing (none = every
review kept, the worst case; and ``p5``), each child reporting its own wall time and
peak RSS (``VmHWM``). Results go to ``<out_dir>/prepare_memory.json`` with a
linear extrapolation, labelled as such, to the real dump's size.

Run: ``python -m benchmark.bench prepare_memory`` (default size) or
``python -m benchmark.bench.prepare_memory --reviews 3000000 --out results/perf``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.bench import write_result

OUT_NAME = "prepare_memory.json"
DEFAULT_REVIEWS = 4_000_000
YELP_REVIEWS = 7_000_000  # the real review dump is about 7M reviews (~5 GB)
USERS_PER_REVIEW = 0.28  # Yelp: ~2M users for ~7M reviews
BUSINESSES_PER_REVIEW = 0.021  # ~150k businesses for ~7M reviews
MEMORY_BAR_GB = 8.0
TEXT_CHARS = 500
CHUNK = 50_000
SEED = 0
_WORDS = (
    "the food was great and service friendly but parking lot crowded we ordered pizza "
    "pasta salad coffee burger fries tacos sushi ramen staff waited minutes again would "
    "come back recommend place downtown evening lunch dinner price fair quality fresh"
).split()


# ----------------------------------------------------------------------------- synthetic data


def _ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` random 22-character url-safe ids, like Yelp's."""
    raw = rng.bytes(16 * n)
    return [base64.urlsafe_b64encode(raw[16 * k : 16 * k + 16]).decode()[:22] for k in range(n)]


def _skewed(rng: np.random.Generator, n: int, size: int, power: float) -> np.ndarray:
    """Indices in [0, n) with a heavy head: floor(n * u**power), u ~ U(0, 1)."""
    return np.minimum((n * rng.random(size) ** power).astype(np.int64), n - 1)


def _corpus(rng: np.random.Generator) -> str:
    """A long JSON-safe text to cut review texts from (has ``\\n`` escapes and quotes)."""
    words = rng.choice(_WORDS, size=400_000)
    text = " ".join(words)
    return text.replace(" again ", " again.\\n").replace(" place ", ' \\"place\\" ')


def write_synthetic_yelp(raw_dir: Path, n_reviews: int, seed: int = SEED) -> dict[str, Any]:
    """Write ``yelp_academic_dataset_{review,business}.json`` of Yelp's shape.

    Args:
        raw_dir: output folder.
        n_reviews: number of review lines.
        seed: random seed (the files are deterministic given it).

    Returns:
        Sizes and counts of what was written.
    """
    rng = np.random.default_rng(seed)
    n_users = max(10, int(n_reviews * USERS_PER_REVIEW))
    n_biz = max(10, int(n_reviews * BUSINESSES_PER_REVIEW))
    users, biz = _ids(rng, n_users), _ids(rng, n_biz)
    corpus = _corpus(rng)
    start = int(np.datetime64("2005-03-01T00:00:00", "s").astype(np.int64))
    end = int(np.datetime64("2022-01-19T00:00:00", "s").astype(np.int64))
    review_path = raw_dir / "yelp_academic_dataset_review.json"
    with open(review_path, "w", encoding="utf-8") as f:
        for lo in range(0, n_reviews, CHUNK):
            n = min(CHUNK, n_reviews - lo)
            u = _skewed(rng, n_users, n, 2.5)
            b = _skewed(rng, n_biz, n, 3.0)
            stars = rng.integers(1, 6, n)
            votes = rng.poisson(0.7, (n, 3))
            dates = np.datetime_as_string(
                rng.integers(start, end, n).astype("datetime64[s]"), unit="s"
            )
            cut = rng.integers(0, len(corpus) - 2 * TEXT_CHARS, n)
            length = rng.integers(TEXT_CHARS // 2, TEXT_CHARS * 3 // 2, n)
            rids = _ids(rng, n)
            lines = []
            for k in range(n):
                text = corpus[cut[k] : cut[k] + length[k]].lstrip('"').rstrip("\\")
                lines.append(
                    f'{{"review_id":"{rids[k]}","user_id":"{users[u[k]]}",'
                    f'"business_id":"{biz[b[k]]}","stars":{stars[k]}.0,"useful":{votes[k, 0]},'
                    f'"funny":{votes[k, 1]},"cool":{votes[k, 2]},"text":"{text}",'
                    f'"date":"{dates[k].replace("T", " ")}"}}\n'
                )
            f.write("".join(lines))
    business_path = raw_dir / "yelp_academic_dataset_business.json"
    with open(business_path, "w", encoding="utf-8") as f:
        for k, bid in enumerate(biz):
            doc = {
                "business_id": bid, "name": f"Business {k}", "address": f"{k} Main St",
                "city": "Las Vegas", "state": "NV", "postal_code": "89101",
                "latitude": 36.1, "longitude": -115.1, "stars": 4.0, "review_count": 10,
                "is_open": 1, "attributes": {"WiFi": "u'free'"},
                "categories": "Restaurants, Pizza", "hours": {"Monday": "8:0-22:0"},
            }  # fmt: skip
            f.write(json.dumps(doc) + "\n")
    return {
        "reviews": n_reviews,
        "users_drawn_from": n_users,
        "businesses": n_biz,
        "review_file_bytes": review_path.stat().st_size,
        "business_file_bytes": business_path.stat().st_size,
    }


# ----------------------------------------------------------------------------- measurement


def _peak_rss_kb() -> int:
    """This process's own peak RSS in kB.

    ``VmHWM`` of ``/proc/self/status`` on Linux: it belongs to this process's memory
    map, which ``exec`` made fresh. (``ru_maxrss`` is not used there because Linux
    carries the parent's RSS at fork over into the child's value.) Elsewhere
    ``ru_maxrss`` (kB on Linux/BSD, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return v // 1024 if sys.platform == "darwin" else v


def child(raw_dir: str, cache_dir: str, preprocess: str | None) -> dict[str, Any]:
    """Prepare Yelp in this (fresh) process; report wall time, peak RSS and sizes."""
    import warnings

    from benchmark.data.recipes import prepare

    base_kb = _peak_rss_kb()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unpublished checksums: expected here
        out = prepare("yelp", raw_dir, cache_dir, preprocess=preprocess, download=False)
    wall = time.perf_counter() - t0
    peak_kb = _peak_rss_kb()
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    return {
        "preprocess": preprocess,
        "wall_s": round(wall, 2),
        "peak_rss_bytes": peak_kb * 1024,
        "peak_rss_gb": round(peak_kb / 2**20, 3),
        "baseline_rss_after_imports_gb": round(base_kb / 2**20, 3),
        "rows_read": counts.get("raw_rows"),
        "interactions_written": counts.get("interactions"),
        "users": counts.get("users"),
        "items": counts.get("items"),
        "inter_file_bytes": (out / "yelp.inter").stat().st_size,
    }


def _run_child(raw_dir: Path, cache_dir: Path, preprocess: str | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmark.bench.prepare_memory", "--child",
           str(raw_dir), str(cache_dir), preprocess or ""]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"prepare child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("@@RESULT "))
    return json.loads(line[len("@@RESULT ") :])


def _machine() -> dict[str, Any]:
    import psutil

    return {
        "cpu_count": os.cpu_count(),
        "memory_total_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _extrapolate(run: dict[str, Any], n_reviews: int) -> dict[str, Any]:
    ratio = YELP_REVIEWS / n_reviews
    peak, base = run["peak_rss_gb"], run["baseline_rss_after_imports_gb"]
    return {
        "label": "EXTRAPOLATION (linear in the number of reviews), not a measurement",
        "preprocess": run["preprocess"],
        "target_reviews": YELP_REVIEWS,
        "scale": round(ratio, 3),
        "peak_rss_gb_whole_peak_scaled": round(peak * ratio, 2),
        "peak_rss_gb_baseline_plus_scaled_growth": round(base + (peak - base) * ratio, 2),
        "wall_s": round(run["wall_s"] * ratio, 1),
        "below_bar": peak * ratio < MEMORY_BAR_GB,
    }


def main(
    out_dir: str | Path,
    n_reviews: int | None = None,
    work_dir: str | Path | None = None,
    preprocesses: tuple[str | None, ...] = (None, "p5"),
) -> dict[str, Any]:
    """Generate the synthetic dump, prepare it per preprocessing, write the JSON report.

    Args:
        out_dir: folder for ``prepare_memory.json`` (``results/perf`` under ``make bench``).
        n_reviews: synthetic size; default ``$LLM4REC_BENCH_YELP_REVIEWS`` or 4M.
        work_dir: where the synthetic files and caches go (a temporary folder by
            default, removed afterwards; it needs ~0.8 KB per review of disk).
        preprocesses: preprocessings to measure, each in its own child process.

    Returns:
        The report that was written.
    """
    n = int(n_reviews or os.environ.get("LLM4REC_BENCH_YELP_REVIEWS", DEFAULT_REVIEWS))
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="prepare_memory-") as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        t0 = time.perf_counter()
        data = write_synthetic_yelp(raw, n)
        data["generate_s"] = round(time.perf_counter() - t0, 1)
        print(f"synthetic yelp: {n:,} reviews, {data['review_file_bytes'] / 2**30:.2f} GiB "
              f"in {data['generate_s']} s", flush=True)  # fmt: skip
        runs = []
        for k, pre in enumerate(preprocesses):
            runs.append(_run_child(raw, Path(tmp) / f"cache{k}", pre))
            print(f"prepare yelp preprocess={pre}: {runs[-1]['wall_s']} s, "
                  f"peak RSS {runs[-1]['peak_rss_gb']} GiB", flush=True)  # fmt: skip
    worst = max(runs, key=lambda r: r["peak_rss_gb"])
    report = {
        "benchmark": "prepare_memory",
        "what": "benchmark.data.recipes.prepare('yelp') on a synthetic Yelp-shaped review dump",
        "created_unix": int(time.time()),
        "machine": _machine(),
        "input": data,
        "runs": runs,
        "bar": {
            "peak_rss_limit_gb": MEMORY_BAR_GB,
            "measured_below_bar": worst["peak_rss_gb"] < MEMORY_BAR_GB,
        },
        "extrapolation_to_real_yelp": [_extrapolate(r, n) for r in runs],
        "notes": [
            "peak_rss = VmHWM (own peak resident set) of the child process that ran prepare; "
            "GiB = 2**30 bytes",
            "preprocess null keeps every review (worst case); p5 keeps 2019 reviews, 5-core",
            "synthetic dates are uniform over 2005-2022, so p5 keeps a smaller share than "
            "the real dump's 2019 volume would; the null run is the memory bound",
        ],
    }
    write_result(out_dir / OUT_NAME, report, indent=2)
    return report


def _cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.bench.prepare_memory")
    parser.add_argument("--out", type=Path, default=Path("results/perf"))
    parser.add_argument("--reviews", type=int, default=None)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--child", nargs=3, metavar=("RAW", "CACHE", "PREPROCESS"))
    args = parser.parse_args(argv)
    if args.child:
        raw, cache, pre = args.child
        print("@@RESULT " + json.dumps(child(raw, cache, pre or None)), flush=True)
        return
    main(args.out, args.reviews, args.work_dir)


if __name__ == "__main__":
    _cli()
