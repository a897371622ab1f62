"""P5's training stream: sliding windows over each user's train sequence, shuffled per epoch.

A window is (user, position of the target item in the user's train sequence); the prompt shows
the items before it (the last ``history`` of them) and the model learns to generate the target's id.
Valid and test items never appear: the sequences are the train part only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset


def train_windows(train_seq: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All train windows: ([N] user, [N] target position >= 1) over every train sequence, in
    user order then position order."""
    lens = np.array([len(s) for s in train_seq], dtype=np.int64)
    n = np.clip(lens - 1, 0, None)
    users = np.repeat(np.arange(len(lens)), n)
    ends = np.concatenate([np.arange(1, m + 1) for m in n]) if n.sum() else np.zeros(0, np.int64)
    return users.astype(np.int64), ends.astype(np.int64)


class WindowStream(IterableDataset):
    """Shuffled batches of train windows (user, position of the target in their train sequence).

    The order, the template of every window and the optional subsample of epoch e are a function
    of (seed, e) only; rank r of world w takes every w-th window of each global batch (like
    :class:`benchmark.training.PairwiseStream`), so steps and global batch size do not depend
    on the number of processes. A last batch smaller than the world size is dropped.

    Args:
        users: [N] user of each window.
        ends: [N] position of the target item in the user's train sequence (>= 1).
        n_templates: seen templates to draw from.
        collate: ``(users, ends, templates) -> batch`` (a dict of tensors).
        batch_size: global batch size.
        seed: the run seed.
        sample: windows per epoch (a fresh subsample each epoch), None = all.
    """

    def __init__(
        self,
        users: np.ndarray,
        ends: np.ndarray,
        n_templates: int,
        collate: Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, torch.Tensor]],
        batch_size: int,
        seed: int,
        sample: int | None = None,
    ) -> None:
        self.users, self.ends = users, ends
        self.n_templates = n_templates
        self.collate = collate
        self.batch_size = batch_size
        self.seed = seed
        self.sample = None if sample is None else min(int(sample), len(users))
        self.epoch = 0
        self.rank, self.world = 0, 1

    def __len__(self) -> int:
        n = len(self.users) if self.sample is None else self.sample
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        g = np.random.default_rng([int(self.seed) % (2**63), 4_243, self.epoch])
        order = g.permutation(len(self.users))
        templates = g.integers(self.n_templates, size=len(self.users))
        if self.sample is not None:
            order = order[: self.sample]
        n_batches = max(1, -(-len(order) // self.batch_size))
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            idx = order[start : start + self.batch_size]
            if len(idx) < self.world:
                continue
            idx = idx[self.rank :: self.world]
            yield self.batch(self.users[idx], self.ends[idx], templates[idx], b, n_batches)

    def batch(
        self, users: np.ndarray, ends: np.ndarray, templates: np.ndarray, b: int, n_batches: int
    ) -> dict[str, torch.Tensor]:
        """The ``b``-th of ``n_batches`` batches of this epoch (a subclass may pass more to ``collate``)."""
        return self.collate(users, ends, templates)
