"""Metric registry, ranking protocols and the single evaluator every model family uses."""
