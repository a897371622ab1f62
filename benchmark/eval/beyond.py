"""Beyond-accuracy metrics of top-k lists: diversity, novelty, popularity bias, exposure, calibration.

Pure functions over arrays. They read the lists and facts learned from the train part only
(:class:`ItemFacts`), never the test targets, so every committed ranking run gets them by
recomputation from its predictions file.

Conventions shared by every function here:

- ``ranked`` is [R, L] item indices, best first; -1 is an output that maps to no catalogue item.
  A metric at cut-off ``k`` reads the first ``k`` columns and skips -1 entries (an invalid output
  has no popularity, genres or text). A repeated item counts each time it occurs (a list that
  repeats itself is less diverse).
- Per-row metrics return [R] float values, NaN where a row has nothing to measure (no valid item;
  fewer than two for a pairwise diversity; no genre in the user's train history for calibration).
  The evaluator averages the finite values of the rows it covers.

Definitions (``pop(i)`` = number of distinct train users who interacted with item ``i``, which is
the number of train interactions of ``i`` when (user, item) pairs are unique, as the dataset
readers make them; ``U`` = number of distinct users in the train part):

- ``ild`` (text): 1 - mean cosine similarity over the unordered pairs of the list's valid items,
  with L2-normalised item text embeddings (all-MiniLM-L6-v2 of ``Title (Year); Genres``).
- ``ildgenre``: 1 - mean cosine similarity of binary genre vectors over the unordered pairs of
  list items that both have at least one genre (cosine, not Jaccard).
- ``novelty``: mean self-information ``-log2((pop(i) + 1) / (U + 1))`` of the list's valid items
  (add-one smoothing keeps items unseen in train finite: log2(U + 1) bits; an item every train
  user has seen: 0 bits).
- ``arp``: average recommendation popularity, the mean ``pop(i)`` of the list's valid items.
- ``longtail``: share of the list's valid items outside the head; the head is the smallest set
  of most popular items (popularity descending, ties by lower index) whose train interactions
  sum to at least :data:`HEAD_SHARE` (20 %) of all train interactions.
- ``calib``: Steck (2018) miscalibration ``KL(p || q~)`` in nats, where ``p(g)`` is the genre
  distribution of the user's train history and ``q(g)`` that of the list (each item spreads a
  weight of 1 evenly over its genres; list positions weigh equally; items without genres add
  nothing), smoothed ``q~ = (1 - alpha) q + alpha p`` with ``alpha`` = :data:`CALIBRATION_ALPHA`.
  0 when the list's genre distribution equals the history's; ``log(1/alpha)`` when the list has
  no genre at all.
- ``heldout`` (strict cold-start splits only, ``split.holdout_items`` > 0): 1 when the first k
  entries of the list hold at least one item held out of train, else 0; its mean is the share of
  rows in which the model recommends a never-trained item at all.
- ``gini`` (a set metric, like coverage): Gini coefficient of item exposure over the whole
  catalogue, exposure = how often an item occurs in the top-k lists of all rows. 0 when every
  item is shown equally often, ``(n - 1) / n`` when one item takes all exposure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEAD_SHARE = 0.2  # the head covers this share of train interactions
CALIBRATION_ALPHA = 0.01  # smoothing of the list's genre distribution (Steck 2018)
_ROWS_PER_BLOCK = 512  # rows per [B, k, d] float64 block in the pairwise similarities (bounded memory)


@dataclass(frozen=True)
class ItemFacts:
    """What the beyond-accuracy metrics know about items (and users), from the train part only.

    Index spaces are those of the split (item index, user index), so ``ranked`` and
    ``RankingRows.users`` index these arrays directly.

    Attributes:
        item_ids: [n_items] raw item ids (str), to map predictions files (raw ids) to indices.
        user_ids: [n_users] raw user ids (str).
        popularity: [n_items] int64 distinct train users per item.
        n_train_users: distinct users in the train part (``U``).
        head: [n_items] bool, the head items (see :func:`head_mask`).
        genres: [n_items, G] bool genre membership, or None (dataset without genres: no genre metric).
        user_genres: [n_users, G] float64 genre distribution of each user's train history
            (rows sum to 1; all zeros when the history has no genre), or None without genres.
        embeddings: [n_items, d] float32 L2-normalised text embeddings, or None (no titles: no text ILD).
        notes: how the facts were made (popularity rule, genre count, text encoder and store key).
        holdout: [n_items] bool, the items held out of train by the split's definition (strict
            cold start), or None (no held-out items: no ``heldout`` metric).
    """

    item_ids: np.ndarray
    user_ids: np.ndarray
    popularity: np.ndarray
    n_train_users: int
    head: np.ndarray
    genres: np.ndarray | None = None
    user_genres: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    notes: dict | None = None
    holdout: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def head_mask(popularity: np.ndarray, share: float = HEAD_SHARE) -> np.ndarray:
    """The head: the most popular items whose popularity sums to at least ``share`` of the total.

    Args:
        popularity: [n_items] train interactions per item.
        share: the share of all train interactions the head covers.

    Returns:
        [n_items] bool. Items are taken in popularity order (ties: lower index first) until the
        running sum reaches ``share * total``; nothing is head when there is no train interaction.
    """
    pop = np.asarray(popularity, dtype=np.int64)
    head = np.zeros(len(pop), dtype=bool)
    total = int(pop.sum())
    if total == 0:
        return head
    order = np.lexsort((np.arange(len(pop)), -pop))  # popularity desc, index asc
    running = np.cumsum(pop[order])
    n_head = int(np.searchsorted(running, share * total, side="left")) + 1
    head[order[:n_head]] = True
    return head


def genre_distribution(genres: np.ndarray) -> np.ndarray:
    """Per item, a weight of 1 spread evenly over its genres.

    Args:
        genres: [n_items, G] bool.

    Returns:
        [n_items, G] float64; rows of items without a genre are zeros.
    """
    g = np.asarray(genres, dtype=np.float64)
    n = g.sum(axis=1, keepdims=True)
    return np.divide(g, n, out=np.zeros_like(g), where=n > 0)


def history_genres(users: np.ndarray, items: np.ndarray, genres: np.ndarray, n_users: int) -> np.ndarray:
    """Genre distribution ``p(g|u)`` of each user's train history (Steck 2018, equal item weights).

    Args:
        users, items: [N] train interactions (user index, item index).
        genres: [n_items, G] bool.
        n_users: number of users.

    Returns:
        [n_users, G] float64, rows sum to 1 (zeros for users without a genre in their history).
    """
    per_item = genre_distribution(genres)  # [n_items, G]
    acc = np.zeros((n_users, per_item.shape[1]))
    np.add.at(acc, np.asarray(users, dtype=np.int64), per_item[np.asarray(items, dtype=np.int64)])
    total = acc.sum(axis=1, keepdims=True)
    return np.divide(acc, total, out=np.zeros_like(acc), where=total > 0)


def _top(ranked: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k columns with -1 replaced by 0 (for gathering), and their validity mask [R, k]."""
    top = np.asarray(ranked)[:, :k]
    valid = top >= 0
    return np.where(valid, top, 0), valid


def _row_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[R, k] values averaged over the masked-in entries of each row; NaN where a row has none."""
    n = mask.sum(axis=1)
    s = np.where(mask, values, 0.0).sum(axis=1)
    return np.divide(s, n, out=np.full(len(n), np.nan), where=n > 0)


def novelty_at_k(ranked: np.ndarray, popularity: np.ndarray, n_train_users: int, k: int) -> np.ndarray:
    """Mean self-information ``-log2((pop(i) + 1) / (U + 1))`` of the top-k valid items, [R]."""
    top, valid = _top(ranked, k)
    info = -np.log2((np.asarray(popularity, dtype=np.float64) + 1.0) / (n_train_users + 1.0))
    return _row_mean(info[top], valid)


def arp_at_k(ranked: np.ndarray, popularity: np.ndarray, k: int) -> np.ndarray:
    """Average recommendation popularity: mean ``pop(i)`` of the top-k valid items, [R]."""
    top, valid = _top(ranked, k)
    return _row_mean(np.asarray(popularity, dtype=np.float64)[top], valid)


def longtail_at_k(ranked: np.ndarray, head: np.ndarray, k: int) -> np.ndarray:
    """Share of the top-k valid items that are not head items, [R]."""
    top, valid = _top(ranked, k)
    return _row_mean((~np.asarray(head, dtype=bool))[top].astype(np.float64), valid)


def _pairwise_mean_cosine(vectors: np.ndarray, top: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Mean cosine over unordered pairs (a, b), a < b, of usable list entries, [R] (NaN: < 1 pair).

    Args:
        vectors: [n_items, d] L2-normalised rows (cosine = dot product).
        top: [R, k] item indices (valid for gathering).
        usable: [R, k] bool, which entries take part.
    """
    n_rows, k = top.shape
    out = np.full(n_rows, np.nan)
    upper = np.triu(np.ones((k, k), dtype=bool), 1)  # [k, k] pairs a < b
    for start in range(0, n_rows, _ROWS_PER_BLOCK):
        t, u = top[start : start + _ROWS_PER_BLOCK], usable[start : start + _ROWS_PER_BLOCK]
        e = np.asarray(vectors[t], dtype=np.float64)  # [B, k, d]
        sim = e @ e.transpose(0, 2, 1)  # [B, k, k]
        pairs = u[:, :, None] & u[:, None, :] & upper  # [B, k, k]
        n = pairs.sum(axis=(1, 2))
        s = np.where(pairs, sim, 0.0).sum(axis=(1, 2))
        out[start : start + len(t)] = np.divide(s, n, out=np.full(len(n), np.nan), where=n > 0)
    return out


def ild_at_k(ranked: np.ndarray, embeddings: np.ndarray, k: int) -> np.ndarray:
    """Text intra-list diversity: 1 - mean pairwise cosine of the top-k valid items' embeddings, [R].

    Args:
        ranked: [R, L] item indices (-1 invalid).
        embeddings: [n_items, d] L2-normalised text embeddings.
        k: cut-off.
    """
    top, valid = _top(ranked, k)
    return 1.0 - _pairwise_mean_cosine(embeddings, top, valid)


def genre_ild_at_k(ranked: np.ndarray, genres: np.ndarray, k: int) -> np.ndarray:
    """Genre intra-list diversity: 1 - mean pairwise cosine of binary genre vectors, [R].

    Pairs take part only when both items are valid and have at least one genre.

    Args:
        ranked: [R, L] item indices (-1 invalid).
        genres: [n_items, G] bool.
        k: cut-off.
    """
    g = np.asarray(genres, dtype=np.float64)
    norm = np.linalg.norm(g, axis=1, keepdims=True)
    unit = np.divide(g, norm, out=np.zeros_like(g), where=norm > 0)  # [n_items, G]
    top, valid = _top(ranked, k)
    return 1.0 - _pairwise_mean_cosine(unit, top, valid & (norm[:, 0] > 0)[top])


def calibration_at_k(
    ranked: np.ndarray,
    users: np.ndarray,
    genres: np.ndarray,
    user_genres: np.ndarray,
    k: int,
    alpha: float = CALIBRATION_ALPHA,
) -> np.ndarray:
    """Miscalibration ``KL(p || (1 - alpha) q + alpha p)`` in nats per row (Steck 2018), [R].

    Args:
        ranked: [R, L] item indices (-1 invalid).
        users: [R] user index of each row.
        genres: [n_items, G] bool.
        user_genres: [n_users, G] history genre distributions ``p`` (rows sum to 1 or are zeros).
        k: cut-off.
        alpha: smoothing weight of ``p`` in ``q~``.

    Returns:
        [R] KL divergences; NaN for a user whose history has no genre.
    """
    top, valid = _top(ranked, k)
    per_item = genre_distribution(genres)  # [n_items, G]
    q = (per_item[top] * valid[:, :, None]).sum(axis=1)  # [R, G]
    mass = q.sum(axis=1, keepdims=True)
    q = np.divide(q, mass, out=np.zeros_like(q), where=mass > 0)
    p = np.asarray(user_genres, dtype=np.float64)[np.asarray(users, dtype=np.int64)]  # [R, G]
    q_s = (1.0 - alpha) * q + alpha * p
    terms = np.where(p > 0, p * np.log(np.divide(p, q_s, out=np.ones_like(p), where=p > 0)), 0.0)
    kl = terms.sum(axis=1)
    return np.where(p.sum(axis=1) > 0, kl, np.nan)


def heldout_at_k(ranked: np.ndarray, holdout: np.ndarray, k: int) -> np.ndarray:
    """[R] 1.0 when the first k entries hold an item held out of train (invalid entries: not), else 0.0."""
    top = ranked[:, :k]
    valid = top >= 0
    return (valid & holdout[np.where(valid, top, 0)]).any(axis=1).astype(np.float64)


def gini_at_k(ranked: np.ndarray, n_items: int, k: int) -> float:
    """Gini coefficient of top-k exposure over all ``n_items`` catalogue items (invalid ids ignored).

    With exposures sorted ascending ``x_1 <= ... <= x_n``:
    ``G = sum_i (2i - n - 1) x_i / (n * sum_i x_i)``; NaN when no list holds a valid item.
    """
    top = np.asarray(ranked)[:, :k]
    exposure = np.sort(np.bincount(top[top >= 0], minlength=n_items)).astype(np.float64)
    n, total = len(exposure), exposure.sum()
    if total == 0 or n == 0:
        return float("nan")
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * exposure).sum() / (n * total))


def beyond_per_row(
    ranked: np.ndarray, users: np.ndarray, facts: ItemFacts, ks: list[int]
) -> dict[str, np.ndarray]:
    """Every per-row beyond-accuracy metric the facts allow, at every cut-off.

    Args:
        ranked: [R, L] item indices in the facts' index space (-1 invalid).
        users: [R] user index of each row (for calibration).
        facts: train-part facts; genre metrics need ``genres``, text ILD needs ``embeddings``.
        ks: cut-offs.

    Returns:
        ``{name}@{k}`` -> [R] float (NaN where a row has nothing to measure). Absent, not zero,
        when the facts lack what a metric needs.
    """
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if facts.embeddings is not None:
            out[f"ild@{k}"] = ild_at_k(ranked, facts.embeddings, k)
        if facts.genres is not None:
            out[f"ildgenre@{k}"] = genre_ild_at_k(ranked, facts.genres, k)
        out[f"novelty@{k}"] = novelty_at_k(ranked, facts.popularity, facts.n_train_users, k)
        out[f"arp@{k}"] = arp_at_k(ranked, facts.popularity, k)
        out[f"longtail@{k}"] = longtail_at_k(ranked, facts.head, k)
        if facts.genres is not None and facts.user_genres is not None:
            out[f"calib@{k}"] = calibration_at_k(ranked, users, facts.genres, facts.user_genres, k)
        if facts.holdout is not None:
            out[f"heldout@{k}"] = heldout_at_k(ranked, facts.holdout, k)
    return out


def finite_mean(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN when there is none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")
