"""Shared fixtures: small atomic datasets written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ["tests.unit.yesno_fixtures"]


def write_atomic(directory: Path, name: str, rows: list[tuple], items: dict[str, str] | None = None) -> Path:
    """Write ``name.inter`` (user, item, rating, timestamp) and optionally ``name.item``."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in rows]
    (directory / f"{name}.inter").write_text("\n".join(lines) + "\n")
    if items is not None:
        lines = ["item_id:token\ttitle:token_seq"] + [f"{i}\t{t}" for i, t in items.items()]
        (directory / f"{name}.item").write_text("\n".join(lines) + "\n")
    return directory


def random_rows(n_users: int = 40, n_items: int = 60, per_user: int = 12, seed: int = 0) -> list[tuple]:
    """Interactions with distinct timestamps per user and ratings 1..5."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False)
        times = np.sort(rng.choice(10_000, size=per_user, replace=False))
        for i, t in zip(items, times, strict=True):
            rows.append((f"u{u}", f"i{i}", int(rng.integers(1, 6)), int(t)))
    order = rng.permutation(len(rows))  # file order differs from time order
    return [rows[j] for j in order]


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    """A 40-user x 60-item atomic dataset named ``tiny``."""
    return write_atomic(tmp_path / "tiny", "tiny", random_rows(), {f"i{i}": f"Title {i}" for i in range(60)})


@pytest.fixture
def one_torch_thread():
    """Tiny models: one intra-op thread (on a busy machine, more threads wait on each other)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
