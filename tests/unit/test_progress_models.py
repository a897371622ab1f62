"""LLM scoring (TALLRec) and generation (P5) advance the evaluator's counter batch by batch."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import benchmark.models.tallrec as tallrec_module
from benchmark.data.views import ranking_rows
from benchmark.progress import Progress, RunLog
from tests.unit.test_p5 import p5, tiny  # noqa: F401  (fixture)
from tests.unit.test_tallrec import tallrec, tiny_data, tiny_lm, tiny_split  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def counter(total: int) -> Progress:
    return Progress(total, "eval", log=RunLog(stdout=io.StringIO()), bar=False)


def test_p5_generation_advances_the_counter_per_decode_batch(tiny):  # noqa: F811
    _, split = tiny
    model = p5(tiny, decode_batch_size=3).eval()
    rows = ranking_rows(split, "test")
    n = 7  # the first 7 test rows: decode batches of 3, 3, 1
    bar, seen = counter(n), []
    generate = model.generate_items

    def spy(*args, **kwargs):
        seen.append(bar.done)
        return generate(*args, **kwargs)

    model.generate_items = spy
    with bar.chunk(n):
        model.rank_rows(rows, np.arange(n), 5, "cpu")
    assert seen == [0.0, 3.0, 6.0] and bar.done == n


def test_tallrec_scoring_advances_the_counter_per_prompt_batch(tiny_split, tiny_data, tiny_lm, monkeypatch):  # noqa: F811
    model = tallrec(tiny_split, tiny_data, tiny_lm, score_batch_size=4, prefix_reuse=False).eval()
    users = torch.arange(6)
    items = torch.stack([torch.arange(2), torch.arange(2, 4)] * 3)  # [6, 2]: 12 prompts for 6 rows
    bar, seen = counter(6), []
    forward = tallrec_module.next_token_logits

    def spy(*args, **kwargs):
        seen.append(bar.done)
        return forward(*args, **kwargs)

    monkeypatch.setattr(tallrec_module, "next_token_logits", spy)
    with bar.chunk(6):
        model.score_pairs(users, items)
    # 12 prompts in batches of 4: each batch is a third of the 6 rows
    assert seen == [0.0, 2.0, 4.0] and bar.done == 6
    # With prefix reuse a user's candidates run as one group: the counter moves once per user.
    import benchmark.models.components.llm as llm

    model.prefix_reuse, seen[:] = True, []
    grouped = llm.shared_prefix_next_logits

    def spy_group(*args, **kwargs):
        seen.append(bar.done)
        return grouped(*args, **kwargs)

    monkeypatch.setattr(llm, "shared_prefix_next_logits", spy_group)
    bar = counter(6)
    with bar.chunk(6):
        model.score_pairs(users, items)
    assert seen == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and bar.done == 6
