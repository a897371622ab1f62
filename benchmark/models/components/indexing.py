"""Item identifiers for generative recommenders (P5-style), computed from the TRAIN part only.

Every scheme maps each catalogue item to an identifier text, the thing the model generates:

- ``random``: a number 1..n by seed (train items get 1..n_train, in a permutation of their index
  order drawn by seed).
- ``sequential``: numbers by order of first appearance in the TRAIN sequences (users in index
  order, each user's train items in time order). P5's original indexing ran over whole user
  sequences, so a user's valid/test items got the numbers right after their history (a leak);
  here the valid/test parts are never read.
- ``collaborative``: hierarchical tokens from spectral clustering of the train co-occurrence graph
  (two items co-occur when one user has both in train), clustered recursively into ``n_clusters``
  groups until a group has at most ``max_leaf`` items; an item's id is its cluster at each level
  then its position in the leaf, one new token per level and value (``<c0_3><c1_12>``).
- ``semantic``: residual k-means codes (RQ-KMeans, ``levels`` x ``codebook``) over frozen
  all-MiniLM-L6-v2 embeddings of the item text (title, year, genres); the codebooks are fitted on
  train items. Items that share all codes get one extra code (``<s3_j>``) and are counted.
- ``title``: the item's title (``Title (Year)``); duplicate titles get `` [2]``, `` [3]``, ...

Items absent from train (cold: only in valid/test, or held out by ``strict_cold_item``) still
need an id, and it is built without test information and without moving any train item's id:

- ``random``/``sequential``: the numbers after the train items, in a permutation by seed;
- ``collaborative``: a separate root branch (the next top-level token; when all train items fit
  in one leaf, the next leaf positions), ordered by item index;
- ``semantic``: nearest train-fitted centroids of their own text (text only); their extra
  collision code always comes after those of train items;
- ``title``: their title; a title already used gets the next free suffix after the train items'.

So a train item's id is a function of the train part (and, for ``semantic``/``title``, of its own
text) and of the seed only: adding a test-only item or changing the test part never changes it.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from benchmark.data.histories import time_order
from benchmark.data.splits import Split
from benchmark.errors import ConfigError
from benchmark.util import sha256_text

SCHEMES = ("random", "sequential", "collaborative", "semantic", "title")
STRUCTURED = ("collaborative", "semantic")  # schemes whose ids are new tokens


@dataclass
class IndexConfig:
    """Options of an item indexing scheme (validated).

    Attributes:
        scheme: one of :data:`SCHEMES`.
        n_clusters: collaborative: clusters per level.
        max_leaf: collaborative: a cluster of at most this many items is a leaf.
        max_depth: collaborative: tokens per id at most (the last level is always a leaf).
        levels: semantic: residual quantisation levels.
        codebook: semantic: codes per level.
        text_encoder: semantic/title: sentence encoder folder or name (None: offline all-MiniLM-L6-v2).
    """

    scheme: str = "collaborative"
    n_clusters: int = 20
    max_leaf: int = 100
    max_depth: int = 4
    levels: int = 3
    codebook: int = 32
    text_encoder: str | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"model indexing: unknown scheme '{self.scheme}' (one of {', '.join(SCHEMES)})")
        if self.n_clusters < 2 or self.max_leaf < 1 or self.max_depth < 2:
            raise ConfigError("model indexing: need n_clusters >= 2, max_leaf >= 1, max_depth >= 2")
        if self.levels < 1 or self.codebook < 2:
            raise ConfigError("model indexing: need levels >= 1 and codebook >= 2")


@dataclass
class ItemIndex:
    """Identifier texts of all items.

    Attributes:
        scheme: the scheme name.
        texts: [n_items] identifier text per item index (what the model reads and generates).
        new_tokens: tokens the tokenizer must get (structured schemes), in a fixed order.
        cold: [n_items] bool, items absent from train.
        facts: what the run record says about the index.
    """

    scheme: str
    texts: list[str]
    new_tokens: list[str] = field(default_factory=list)
    cold: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        """sha256 of the identifier texts in item order."""
        return sha256_text("\n".join(self.texts))


# ----------------------------------------------------------------------------- train facts


def train_sequences(split: Split) -> list[np.ndarray]:
    """[n_users] arrays: each user's train items in time order (ties: file order)."""
    tr = split.train
    u, i = tr["user"].to_numpy(), tr["item"].to_numpy()
    order = time_order(tr)
    u, i = u[order], i[order]
    bounds = np.searchsorted(u, np.arange(split.n_users + 1))
    return [i[bounds[k] : bounds[k + 1]].astype(np.int64) for k in range(split.n_users)]


def train_item_mask(split: Split) -> np.ndarray:
    """[n_items] bool: the item has at least one train interaction."""
    return np.bincount(split.train["item"].to_numpy(), minlength=split.n_items) > 0


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) % (2**63), 9_173, stream])


# ----------------------------------------------------------------------------- numbers


def _numbers(order_train: np.ndarray, cold: np.ndarray, n_items: int, seed: int) -> list[str]:
    """Numbers 1..n: train items in ``order_train``, then cold items in a permutation by seed."""
    number = np.zeros(n_items, dtype=np.int64)
    number[order_train] = np.arange(1, len(order_train) + 1)
    cold_items = np.flatnonzero(cold)
    number[cold_items[_rng(seed, 2).permutation(len(cold_items))]] = (
        len(order_train) + 1 + np.arange(len(cold_items))
    )
    return [str(int(x)) for x in number]


def random_index(split: Split, seed: int) -> list[str]:
    """Random numbers by seed: a permutation of 1..n_train over train items (index order)."""
    trained = train_item_mask(split)
    train_items = np.flatnonzero(trained)
    order = train_items[_rng(seed, 1).permutation(len(train_items))]
    return _numbers(order, ~trained, split.n_items, seed)


def sequential_index(split: Split, seed: int) -> list[str]:
    """Numbers by first appearance in the train sequences (users in index order)."""
    seqs = [s for s in train_sequences(split) if len(s)]
    flat = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
    _, first = np.unique(flat, return_index=True)
    order = flat[np.sort(first)]
    return _numbers(order, ~train_item_mask(split), split.n_items, seed)


# ----------------------------------------------------------------------------- collaborative


def cooccurrence(split: Split) -> sp.csr_matrix:
    """[n_items, n_items] co-occurrence counts over train users (zero diagonal)."""
    tr = split.train
    x = sp.csr_matrix(
        (np.ones(len(tr)), (tr["user"].to_numpy(), tr["item"].to_numpy())),
        shape=(split.n_users, split.n_items),
    )
    x.data[:] = 1.0  # duplicates count once
    c = (x.T @ x).tocsr()
    c.setdiag(0)
    c.eliminate_zeros()
    return c


def _spectral(affinity: sp.csr_matrix, k: int, seed: int) -> np.ndarray:
    """Cluster labels of a precomputed affinity, renumbered by each cluster's first member."""
    from sklearn.cluster import SpectralClustering

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "graph is not fully connected": components become clusters
        labels = SpectralClustering(
            n_clusters=k, affinity="precomputed", random_state=int(seed) % (2**32), assign_labels="cluster_qr"
        ).fit_predict(affinity)
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(labels.max() + 1, dtype=np.int64)
    rank[labels[np.sort(first)]] = np.arange(len(first))
    return rank[labels]


def collaborative_index(split: Split, cfg: IndexConfig, seed: int) -> tuple[list[str], list[str], dict]:
    """Hierarchical spectral-cluster ids (see the module docstring)."""
    trained = train_item_mask(split)
    items = np.flatnonzero(trained)
    aff = cooccurrence(split)[items][:, items].tocsr()
    codes: dict[int, list[int]] = {}
    leaves: list[int] = []

    def recurse(members: np.ndarray, prefix: list[int]) -> None:
        level = len(prefix)
        if len(members) <= cfg.max_leaf or level >= cfg.max_depth - 1:
            for j, m in enumerate(members):
                codes[int(items[m])] = [*prefix, j]
            leaves.append(len(members))
            return
        k = min(cfg.n_clusters, len(members))
        labels = _spectral(aff[members][:, members], k, seed)
        if labels.max() == 0:  # no split found: contiguous chunks in index order
            labels = np.arange(len(members)) * k // len(members)
        for c in range(int(labels.max()) + 1):
            recurse(members[labels == c], [*prefix, c])

    if len(items):
        recurse(np.arange(len(items)), [])
    cold = np.flatnonzero(~trained)
    root_is_leaf = len(items) <= cfg.max_leaf
    if root_is_leaf:
        for j, i in enumerate(cold):
            codes[int(i)] = [len(items) + j]
    else:
        branch = 1 + max(c[0] for c in codes.values())
        for j, i in enumerate(cold):
            codes[int(i)] = [branch, j]
    texts = ["".join(f"<c{lvl}_{v}>" for lvl, v in enumerate(codes[i])) for i in range(split.n_items)]
    facts = {
        "n_clusters": cfg.n_clusters,
        "max_leaf": cfg.max_leaf,
        "max_depth": cfg.max_depth,
        "leaves": len(leaves),
        "largest_leaf": max(leaves, default=0),
        "depth_max": max((len(c) for c in codes.values()), default=0),
        "cold_rule": "own root branch (next top-level token), item index order",
    }
    return texts, _tokens_of(texts), facts


# ----------------------------------------------------------------------------- semantic


def rq_kmeans(emb: np.ndarray, fit_mask: np.ndarray, levels: int, codebook: int, seed: int) -> np.ndarray:
    """Residual k-means codes: codebooks fitted on ``emb[fit_mask]``, every row assigned.

    Args:
        emb: [N, D] embeddings.
        fit_mask: [N] bool, the rows the codebooks are fitted on (train items).
        levels: number of codes per row.
        codebook: codes per level (fewer when there are fewer distinct fit rows).
        seed: k-means seed.

    Returns:
        [N, levels] int64 codes.
    """
    from sklearn.cluster import KMeans

    residual = emb.astype(np.float64).copy()
    codes = np.zeros((len(emb), levels), dtype=np.int64)
    for lvl in range(levels):
        fit = residual[fit_mask]
        k = min(codebook, len(np.unique(fit.round(12), axis=0)))
        if k < 2:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            km = KMeans(n_clusters=k, random_state=int(seed) % (2**32) + lvl, n_init=4).fit(fit)
        c = km.predict(residual)
        codes[:, lvl] = c
        residual -= km.cluster_centers_[c]
    return codes


def _extra_codes(keys: list[tuple], trained: np.ndarray) -> tuple[list[int | None], dict[str, int]]:
    """Extra code per item resolving identical keys: train items first (index order), then cold.

    A train item gets one only when another TRAIN item has its key; a cold item gets one when its
    key is taken by any earlier item (so cold items never change a train item's id).
    """
    extra: list[int | None] = [None] * len(keys)
    train_count: dict[tuple, int] = {}
    for i, key in enumerate(keys):
        if trained[i]:
            train_count[key] = train_count.get(key, 0) + 1
    used: dict[tuple, int] = {}
    for i in np.r_[np.flatnonzero(trained), np.flatnonzero(~trained)]:
        key = keys[i]
        j = used.get(key, 0)
        if trained[i] and train_count[key] > 1:
            extra[i] = j
        elif not trained[i] and (j > 0 or train_count.get(key, 0) > 0):
            extra[i] = max(j, train_count.get(key, 0))
            j = extra[i]
        used[key] = j + 1
    groups = [n for n in train_count.values() if n > 1]
    facts = {
        "train_collision_groups": len(groups),
        "train_items_with_extra_code": int(sum(groups)),
        "cold_items_with_extra_code": int(
            sum(1 for i, e in enumerate(extra) if e is not None and not trained[i])
        ),
        "largest_collision_group": max(groups, default=1),
    }
    return extra, facts


def semantic_index(split: Split, data: Any, cfg: IndexConfig, seed: int) -> tuple[list[str], list[str], dict]:
    """RQ-KMeans codes over MiniLM embeddings of item texts (see the module docstring)."""
    from benchmark.models.components.text_encoder import TextEncoder, item_descriptions

    enc = TextEncoder(cfg.text_encoder)
    texts = item_descriptions(data.items, data.item_fields, split.item_ids)
    trained = train_item_mask(split)
    if not trained.any():
        raise ConfigError("model indexing semantic: the train part has no items")
    codes = rq_kmeans(enc.encode(texts), trained, cfg.levels, cfg.codebook, seed)
    keys = [tuple(int(c) for c in row) for row in codes]
    extra, collisions = _extra_codes(keys, trained)
    ids = []
    for key, e in zip(keys, extra, strict=True):
        body = "".join(f"<s{lvl}_{v}>" for lvl, v in enumerate(key))
        ids.append(body + (f"<s{cfg.levels}_{e}>" if e is not None else ""))
    facts = {
        "levels": cfg.levels,
        "codebook": cfg.codebook,
        "text": "Title (Year); Genres",
        "example_text": texts[0] if texts else "",
        **enc.describe(),
        "collisions": collisions,
        "cold_rule": "nearest train-fitted centroids of the item's own text",
    }
    return ids, _tokens_of(ids), facts


# ----------------------------------------------------------------------------- title


def title_index(split: Split, data: Any) -> tuple[list[str], dict]:
    """``Title (Year)`` per item; repeated titles get `` [2]``, `` [3]``, ... (train items first)."""
    from benchmark.models.components.prompts import item_texts

    base = item_texts(data.items, data.item_fields, split.item_ids, "{title} ({year})")
    base = [" ".join(t.split()) or str(raw) for t, raw in zip(base, split.item_ids, strict=True)]
    trained = train_item_mask(split)
    extra, collisions = _extra_codes([(t,) for t in base], trained)
    ids = [t if e is None or e == 0 else f"{t} [{e + 1}]" for t, e in zip(base, extra, strict=True)]
    return ids, {"collisions": collisions, "format": "{title} ({year})"}


# ----------------------------------------------------------------------------- entry point


def _tokens_of(texts: list[str]) -> list[str]:
    """The distinct ``<..>`` tokens used in ``texts``, ordered by (prefix, level, value)."""
    found = {t for text in texts for t in re.findall(r"<[a-z]\d+_\d+>", text)}

    def key(tok: str) -> tuple:
        m = re.match(r"<([a-z])(\d+)_(\d+)>", tok)
        return (m.group(1), int(m.group(2)), int(m.group(3)))

    return sorted(found, key=key)


def build_index(cfg: IndexConfig, split: Split, data: Any, seed: int) -> ItemIndex:
    """Identifiers of every catalogue item under ``cfg.scheme``, from the train part only.

    Args:
        cfg: the scheme and its options.
        split: the split (only ``split.train``, the catalogue and ``n_users`` are read).
        data: the dataset (item side table, for ``semantic`` and ``title``).
        seed: the run seed (random numbers, cold order, clustering and k-means seeds).

    Returns:
        the index; ``texts`` are unique.
    """
    trained = train_item_mask(split)
    new_tokens: list[str] = []
    facts: dict[str, Any] = {}
    if cfg.scheme == "random":
        texts = random_index(split, seed)
        facts["cold_rule"] = "numbers after the train items, permutation by seed"
    elif cfg.scheme == "sequential":
        texts = sequential_index(split, seed)
        facts["cold_rule"] = "numbers after the train items, permutation by seed"
        facts["order"] = "first appearance in train sequences only (users in index order, time order)"
    elif cfg.scheme == "collaborative":
        texts, new_tokens, facts = collaborative_index(split, cfg, seed)
    elif cfg.scheme == "semantic":
        texts, new_tokens, facts = semantic_index(split, data, cfg, seed)
    else:
        texts, facts = title_index(split, data)
        facts["cold_rule"] = "own title; a taken title gets the next free suffix"
    if len(set(texts)) != len(texts):  # a bug, never bad input: every scheme resolves collisions
        raise RuntimeError(f"indexing {cfg.scheme}: identifiers are not unique")
    facts = {
        "scheme": cfg.scheme,
        "options": {k: v for k, v in asdict(cfg).items() if k != "scheme"},
        "built_from": "train part only",
        "items": split.n_items,
        "train_items": int(trained.sum()),
        "cold_items": int((~trained).sum()),
        "new_tokens": len(new_tokens),
        **facts,
    }
    out = ItemIndex(cfg.scheme, texts, new_tokens, ~trained, facts)
    out.facts["sha256"] = out.sha256
    out.facts["example"] = texts[0] if texts else ""
    return out
