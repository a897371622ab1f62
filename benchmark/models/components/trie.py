"""A prefix tree over item token sequences, stored as flat tensors, and the beam-search constraint.

Every item is one token sequence ending with EOS, so a complete id is a leaf and no id is a
prefix of another. The tree is kept as sorted edge keys (``parent * V + token``), so the node
reached by a batch of prefixes is a few ``searchsorted`` calls ([N] beams at once, no Python
walk per beam), and the tokens allowed after a node are a CSR slice of its children.

Per-row exclusions (the user's train items under the full-ranking protocol) are counts of
excluded items below each node ([B, n_nodes]); a child is allowed only while some item below it
is not excluded, so a beam never walks into a branch that can only end in an excluded item.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor


class ItemTrie:
    """Prefix tree over ``sequences[i]`` (the token ids of item i, each ending with ``eos_id``).

    Args:
        sequences: [n_items] non-empty token id lists, each ending with ``eos_id``, all distinct.
        vocab_size: size of the output vocabulary (token ids are < vocab_size).
        eos_id: the end-of-sequence token.

    Attributes:
        n_nodes: nodes, root = 0.
        edge_key: [E] sorted ``parent * vocab_size + token``.
        edge_child: [E] child node of each edge.
        edge_token: [E] token of each edge.
        child_ptr: [n_nodes + 1] CSR over ``edge_*`` (edges sorted by parent, then token).
        subtree: [n_nodes] items below (or at) each node.
        leaf_item: [n_nodes] item of a leaf node, -1 elsewhere.
        item_path: [n_items, depth] node after each token of the item, -1 padded.
        depth: longest sequence.
    """

    def __init__(self, sequences: Sequence[Sequence[int]], vocab_size: int, eos_id: int) -> None:
        self.vocab_size = int(vocab_size)
        self.eos_id = int(eos_id)
        self.n_items = len(sequences)
        children: list[dict[int, int]] = [{}]
        depth = max((len(s) for s in sequences), default=1)
        path = np.full((len(sequences), depth), -1, dtype=np.int64)
        leaf_item = [-1]
        for item, seq in enumerate(sequences):
            if not len(seq) or int(seq[-1]) != self.eos_id:
                raise ValueError(f"item {item}: token sequence must be non-empty and end with EOS")
            node = 0
            for j, tok in enumerate(seq):
                tok = int(tok)
                if not 0 <= tok < self.vocab_size:
                    raise ValueError(f"item {item}: token {tok} outside the vocabulary ({self.vocab_size})")
                if j < len(seq) - 1 and tok == self.eos_id:
                    raise ValueError(f"item {item}: EOS inside the sequence")
                nxt = children[node].get(tok)
                if nxt is None:
                    nxt = len(children)
                    children[node][tok] = nxt
                    children.append({})
                    leaf_item.append(-1)
                node = nxt
                path[item, j] = node
            if leaf_item[node] != -1:
                raise ValueError(f"items {leaf_item[node]} and {item} have the same token sequence")
            leaf_item[node] = item
        self.n_nodes = len(children)
        self.depth = depth
        parents = np.repeat(np.arange(self.n_nodes), [len(c) for c in children])
        tokens = np.fromiter((t for c in children for t in c), dtype=np.int64, count=len(parents))
        kids = np.fromiter((n for c in children for n in c.values()), dtype=np.int64, count=len(parents))
        key = parents * self.vocab_size + tokens
        order = np.argsort(key, kind="stable")
        self.edge_key = torch.as_tensor(key[order])
        self.edge_child = torch.as_tensor(kids[order])
        self.edge_token = torch.as_tensor(tokens[order])
        ptr = np.zeros(self.n_nodes + 1, dtype=np.int64)
        np.cumsum(np.bincount(parents, minlength=self.n_nodes), out=ptr[1:])
        self.child_ptr = torch.as_tensor(ptr)
        self.leaf_item = torch.as_tensor(np.asarray(leaf_item, dtype=np.int64))
        self.item_path = torch.as_tensor(path)
        sub = np.bincount(path[path >= 0], minlength=self.n_nodes)
        sub[0] = len(sequences)
        self.subtree = torch.as_tensor(sub.astype(np.int64))

    # ------------------------------------------------------------------ lookups

    def step(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[N] nodes (-1 = dead), [N] tokens -> [N] child nodes (-1 where there is no such edge)."""
        if len(self.edge_key) == 0:
            return torch.full_like(nodes, -1)
        key = nodes.clamp(min=0) * self.vocab_size + tokens
        pos = torch.searchsorted(self.edge_key, key).clamp(max=len(self.edge_key) - 1)
        hit = (self.edge_key[pos] == key) & (nodes >= 0) & (tokens >= 0) & (tokens < self.vocab_size)
        return torch.where(hit, self.edge_child[pos], torch.full_like(nodes, -1))

    def walk(self, prefixes: torch.Tensor) -> torch.Tensor:
        """[N, t] token prefixes -> [N] node reached (-1 once a token leaves the tree)."""
        nodes = torch.zeros(prefixes.shape[0], dtype=torch.long, device=prefixes.device)
        for j in range(prefixes.shape[1]):
            nodes = self.step(nodes, prefixes[:, j])
        return nodes

    def items_of(self, generated: torch.Tensor) -> torch.Tensor:
        """[N, t] generated tokens -> [N] item index, read up to the first EOS; -1 = no item.

        A row maps to an item exactly when its tokens up to and including the first EOS are that
        item's sequence (anything after the EOS, e.g. padding, is ignored).
        """
        n, device = generated.shape[0], self.edge_key.device
        nodes = torch.zeros(n, dtype=torch.long, device=device)
        out = torch.full((n,), -1, dtype=torch.long, device=device)
        open_ = torch.ones(n, dtype=torch.bool, device=device)
        gen = generated.to(device)
        for j in range(gen.shape[1]):
            tok = gen[:, j]
            nodes = torch.where(open_, self.step(nodes, tok), nodes)
            ends = open_ & (tok == self.eos_id)
            found = ends & (nodes >= 0)
            out[found] = self.leaf_item[nodes[found]]
            open_ &= ~ends
        return out.cpu()

    def blocked_counts(self, excluded: Sequence[np.ndarray]) -> torch.Tensor:
        """[B, n_nodes] int32: per row, excluded items below each node.

        Args:
            excluded: B arrays of item indices to exclude (duplicates counted once).
        """
        b = len(excluded)
        rows = np.concatenate(
            [np.full(len(np.unique(e)), r) for r, e in enumerate(excluded)] or [np.zeros(0)]
        )
        items = np.concatenate([np.unique(e) for e in excluded] or [np.zeros(0)]).astype(np.int64)
        out = torch.zeros(b * self.n_nodes, dtype=torch.int32)
        if len(items):
            nodes = self.item_path[torch.as_tensor(items)]  # [M, depth]
            flat = torch.as_tensor(rows.astype(np.int64))[:, None] * self.n_nodes + nodes  # [M, depth]
            keep = nodes >= 0
            out += torch.bincount(flat[keep], minlength=b * self.n_nodes).to(torch.int32)
            root = torch.bincount(torch.as_tensor(rows.astype(np.int64)), minlength=b).to(torch.int32)
            out[torch.arange(b) * self.n_nodes] += root  # the root is above every item
        return out.view(b, self.n_nodes)

    def allowed(
        self,
        nodes: torch.Tensor,
        vocab: int,
        row_of: torch.Tensor | None = None,
        blocked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[N, vocab] bool: tokens that keep each beam inside the tree (and off excluded items).

        Args:
            nodes: [N] current node per beam (-1 = dead: nothing allowed).
            vocab: width of the mask (the model's logits width, >= the trie's vocabulary).
            row_of: [N] row of each beam in ``blocked``.
            blocked: [B, n_nodes] counts from :meth:`blocked_counts`.
        """
        device = nodes.device
        mask = torch.zeros(len(nodes), vocab, dtype=torch.bool, device=device)
        live = nodes >= 0
        beams = torch.nonzero(live).squeeze(1)
        if len(beams) == 0:
            return mask
        start = self.child_ptr[nodes[beams]]
        count = self.child_ptr[nodes[beams] + 1] - start
        rep = torch.repeat_interleave(torch.arange(len(beams), device=device), count)  # [M] beam position
        offset = torch.arange(len(rep), device=device) - torch.repeat_interleave(
            count.cumsum(0) - count, count
        )
        edge = start[rep] + offset  # [M]
        child, token = self.edge_child[edge], self.edge_token[edge]
        ok = torch.ones_like(child, dtype=torch.bool)
        if blocked is not None:
            r = row_of[beams][rep]
            ok = self.subtree[child] - blocked[r, child] > 0
        mask[beams[rep[ok]], token[ok]] = True
        return mask

    def to(self, device: torch.device | str) -> ItemTrie:
        """Move the lookup tensors to ``device`` (in place); returns self."""
        for name in (
            "edge_key",
            "edge_child",
            "edge_token",
            "child_ptr",
            "subtree",
            "leaf_item",
            "item_path",
        ):
            setattr(self, name, getattr(self, name).to(device))
        return self


class TrieConstraint(LogitsProcessor):
    """Beam-search logits processor: only continuations inside the trie, never an excluded item.

    Applied by ``generate`` to log-probabilities of shape [B * num_beams, V]; disallowed tokens
    get -inf (allowed ones keep their log-probability, so a finished item's score is its
    log-likelihood under the model).

    Args:
        trie: the item trie (its tensors on the generation device).
        start: column of ``input_ids`` where generated tokens begin (1 for encoder-decoder models:
            the decoder start token; the padded prompt width for decoder-only models).
        num_beams: beams per row (rows are batch-major in ``input_ids``).
        blocked: [B, n_nodes] excluded-item counts per row, or None.
    """

    def __init__(
        self, trie: ItemTrie, start: int, num_beams: int, blocked: torch.Tensor | None = None
    ) -> None:
        self.trie = trie
        self.start = int(start)
        self.num_beams = int(num_beams)
        self.blocked = blocked

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        nodes = self.trie.walk(input_ids[:, self.start :])  # [N]
        row_of = torch.arange(len(nodes), device=nodes.device) // self.num_beams
        ok = self.trie.allowed(nodes, scores.shape[-1], row_of, self.blocked)
        return scores.masked_fill(~ok, float("-inf"))
