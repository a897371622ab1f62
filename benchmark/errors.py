"""Errors raised for bad user input; the CLI turns them into one-line messages."""


class BenchmarkError(Exception):
    """Base class: a problem with user input (files, config keys, values)."""


class DataError(BenchmarkError):
    """A dataset file is missing, malformed, or lacks a required field."""


class ConfigError(BenchmarkError):
    """A configuration value is invalid."""
