"""llm4rec-bench: a reproducible benchmark framework for LLM-based recommenders."""

__version__ = "0.1.0"
