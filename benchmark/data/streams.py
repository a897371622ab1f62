"""Seeded, rank-aware epoch batching shared by the models that bring their own training batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> Iterator[list[int]]:
    """Index batches of one epoch: a permutation of ``range(n)`` seeded by (seed, epoch), cut into
    batches of ``batch_size``; rank ``rank`` of ``world`` takes every ``world``-th batch."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    for b, start in enumerate(range(0, n, batch_size)):
        if b % world == rank:
            yield perm[start : start + batch_size]


class EpochStream(IterableDataset):
    """A stream of ``n`` examples in batches: the order of epoch e is a function of (seed, e) only,
    and rank r of world w (set by the training task) takes every w-th batch."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.rank, self.world = 0, 0, 1

    def __len__(self) -> int:
        n_batches = -(-self.n // self.batch_size)
        return -(-n_batches // self.world)

    def batches(self) -> Iterator[list[int]]:
        """This rank's index batches of the next epoch."""
        self.epoch += 1
        return shuffled_batches(self.n, self.batch_size, self.seed, self.epoch - 1, self.rank, self.world)
