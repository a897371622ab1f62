"""Shared fixtures of the yes/no LLM scorer tests (precision, smoothing, prompts): a tiny dataset
with titles, its temporal split and a tiny random Llama whose vocabulary covers the TALLRec prompt.
Registered for every test through ``pytest_plugins`` in tests/conftest.py."""

from __future__ import annotations

import pytest

from benchmark.config import SplitConfig
from benchmark.data.atomic import read_atomic
from benchmark.data.splits import build_split
from tests.conftest import random_rows, write_atomic


@pytest.fixture(scope="module")
def yesno_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    write_atomic(
        d,
        "tiny",
        random_rows(n_users=12, n_items=30, per_user=14),
        {f"i{i}": f"Title {i}" for i in range(30)},
    )
    return read_atomic(d, "tiny")


@pytest.fixture(scope="module")
def yesno_lm(tmp_path_factory):
    from tests.unit.test_tallrec import make_tiny_lm, template_words

    titles = [f"Title {i}" for i in range(30)]
    return make_tiny_lm(tmp_path_factory.mktemp("lm"), template_words("tallrec") + titles, seed=3)


@pytest.fixture(scope="module")
def yesno_split(yesno_data):
    return build_split(yesno_data, SplitConfig(protocol="temporal"))
