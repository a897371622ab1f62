"""Most-popular baseline: an item's score is its number of train interactions."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Pop(nn.Module):
    """Scores every item by its train popularity (the same list for every user)."""

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.register_buffer("counts", torch.zeros(n_items))

    def init_from_train(self, users: np.ndarray, items: np.ndarray) -> None:
        """Count train interactions per item (the train part only)."""
        self.counts = torch.as_tensor(np.bincount(items, minlength=len(self.counts)), dtype=torch.float32)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """[B] users -> [B, n_items] popularity."""
        return self.counts.unsqueeze(0).expand(len(users), -1).clone()

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B] users, [B, C] items -> [B, C] popularity."""
        return self.counts[items]
