"""Item-based k-nearest-neighbour recommender: a model plugin in one file.

This file is all the Python a new model needs. It imports nothing from ``benchmark``: the
run builds it from ``conf/model/itemknn_plugin.yaml`` (``module._target_:
itemknn_plugin.ItemKNN``) with the catalogue sizes, lets it read the train part, and asks
it for scores; training loop, evaluation and run records stay with the benchmark.

    PYTHONPATH=examples/plugin llm4rec run model=itemknn_plugin \\
        hydra.searchpath=[file://$PWD/examples/plugin/conf] data=ml-100k

Scoring (as in RecBole's ``ItemKNN``): ``R`` [n_users, n_items] is the binary train matrix;
``S[i, j]`` the cosine similarity of the item columns ``i`` and ``j`` of ``R`` (0 on the
diagonal and for items without train interactions); for each item ``j`` only its ``k`` most
similar items ``i`` are kept (the others set to 0); a user's score of item ``j`` is
``sum_i R[u, i] * S[i, j]``, the similarity of ``j`` to the user's train items.

Memory: ``R`` and ``S`` are dense (n_users x n_items and n_items x n_items float32), fine for
catalogues of a few ten thousand items; a sparse ``S`` would be the next step beyond.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ItemKNN(nn.Module):
    """Item-item cosine similarity from the train part, top-``k`` neighbours per item.

    Args:
        n_users: number of users (indices 0..n_users-1), passed by the run.
        n_items: number of catalogue items (indices 0..n_items-1), passed by the run.
        k: neighbours kept per item (``model.module.k``).
    """

    def __init__(self, n_users: int, n_items: int, k: int = 50) -> None:
        super().__init__()
        if int(k) < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        self.k = int(k)
        # Buffers, not parameters: nothing here is trained, and they move with .to(device).
        self.register_buffer("train_matrix", torch.zeros(n_users, n_items))  # R [U, N], 0/1
        self.register_buffer("similarity", torch.zeros(n_items, n_items))  # S [N, N], top-k per column

    def init_from_train(self, users: np.ndarray, items: np.ndarray) -> None:
        """Build ``R`` and the pruned similarity ``S`` from the train interactions.

        Args:
            users: [N_train] user index of each train interaction.
            items: [N_train] item index of each train interaction (repeats count once).
        """
        r = torch.zeros_like(self.train_matrix)  # [U, N]
        r[torch.tensor(users, dtype=torch.long), torch.tensor(items, dtype=torch.long)] = 1.0  # copies
        norms = r.norm(dim=0)  # [N]: sqrt(number of train users of each item)
        sim = (r.T @ r) / (norms[:, None] * norms[None, :]).clamp_min(1e-12)  # [N, N] cosine
        sim.fill_diagonal_(0.0)
        top = sim.topk(min(self.k, sim.shape[0]), dim=0)  # per column j: its k best rows i, [k, N]
        self.train_matrix = r
        self.similarity = torch.zeros_like(sim).scatter_(0, top.indices, top.values)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """users [B] -> scores [B, n_items]: similarity of each item to the user's train items."""
        return self.train_matrix[users] @ self.similarity  # [B, N] @ [N, N] -> [B, N]

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users [B], items [B, C] -> scores [B, C] of those (user, item) pairs."""
        return self.score(users).gather(1, items)  # [B, N] -> [B, C]
