"""Matrix factorisation trained with the BPR pairwise loss (Rendle et al., 2009)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class BPR(nn.Module):
    """Dot product of user and item embeddings.

    Args:
        n_users: number of users.
        n_items: number of items.
        dim: embedding size.
        reg: L2 weight on the embeddings of each batch.
    """

    def __init__(self, n_users: int, n_items: int, dim: int = 64, reg: float = 0.0) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.reg = reg
        nn.init.xavier_normal_(self.user.weight)
        nn.init.xavier_normal_(self.item.weight)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """-log sigmoid(s(u, pos) - s(u, neg)), averaged over the batch."""
        u = self.user(batch["user"])  # [B, d]
        p = self.item(batch["pos"])  # [B, d]
        n = self.item(batch["neg"])  # [B, d]
        diff = (u * p).sum(-1) - (u * n).sum(-1)  # [B]
        loss = -F.logsigmoid(diff).mean()
        if self.reg:
            loss = loss + self.reg * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / len(u)
        return loss

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """[B] users -> [B, n_items] dot products."""
        return self.user(users) @ self.item.weight.T

    def item_embeddings(self) -> np.ndarray:
        """[n_items, d] the item embedding table (for ``save_item_embeddings``)."""
        return self.item.weight.detach().float().cpu().numpy().copy()

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B] users, [B, C] items -> [B, C] dot products."""
        return torch.einsum("bd,bcd->bc", self.user(users), self.item(items))
