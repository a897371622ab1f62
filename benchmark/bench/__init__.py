"""Performance benchmarks run by ``make bench`` (``python -m benchmark.bench``); results go to ``results/perf``."""
