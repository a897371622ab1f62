"""What a conversation is about: the catalogue's titles, years and genres, read from the item table.

- :class:`Catalogue`: per item index, its title, ``Title (Year)`` text (the ``title`` item index of
  :mod:`benchmark.models.components.indexing`: unique, so it maps text back to one item), year,
  decade and genres, and its train popularity (from the train part only).
- :func:`understand`: what a user's utterance reveals (genres, decades, catalogue titles in
  quotes), read the same way from the rule simulator's templates and an LLM simulator's free text.
- :func:`leaks`: whether a text names an item (its title, an alternative title in parentheses, or
  the title with its trailing article moved to the front): the simulator's leakage check.
- :meth:`Catalogue.ground`: a generated title -> the catalogue item it names, or None.

Words are compared case-insensitively as tokens (punctuation at their edges stripped), so
``I'm`` never matches the title ``M`` and ``aliens`` never matches ``Alien``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmark.errors import DataError

# Attributes a recommender may ask about, and the item field each is answered from.
ATTRIBUTES = ("genre", "decade", "similar")
NEEDS = {"genre": "genres", "decade": "year", "similar": "title"}

# Other words for the MovieLens genres that a free-text answer may use (the genre name itself always counts).
GENRE_WORDS = {
    "sci-fi": ("sci-fi", "science fiction", "sci fi", "scifi"),
    "children's": ("children's", "children", "kids", "kid"),
    "film-noir": ("film-noir", "film noir", "noir"),
    "comedy": ("comedy", "comedies", "comedic"),
    "romance": ("romance", "romantic", "romances"),
    "animation": ("animation", "animated"),
    "documentary": ("documentary", "documentaries"),
    "musical": ("musical", "musicals"),
    "thriller": ("thriller", "thrillers"),
    "western": ("western", "westerns"),
    "drama": ("drama", "dramas"),
    "adventure": ("adventure", "adventures"),
    "mystery": ("mystery", "mysteries"),
}
UNKNOWN_GENRES = ("unknown", "")
ARTICLES = ("the", "a", "an", "la", "le", "les", "l'", "il", "el", "das", "der", "die", "los", "las")

_TOKEN = re.compile(r"\w(?:[\w'.&\-]*\w)?")
_QUOTED = re.compile(r"[\"“”]([^\"“”]{1,200})[\"“”]")
_DECADE = re.compile(r"\b(1[89]\d0|20[0-2]0)'?s\b|(?<![\w])'?([0-9]0)'?s\b")
_YEAR = re.compile(r"\b(1[89]\d\d|20[0-2]\d)\b")


def words(text: str) -> list[str]:
    """Lower-case tokens of ``text``: runs of word characters with inner ``' . & -`` kept."""
    return _TOKEN.findall(text.lower())


def _contains(tokens: Sequence[str], phrase: Sequence[str]) -> bool:
    """Whether ``phrase`` occurs in ``tokens`` as a contiguous run."""
    n = len(phrase)
    if n == 0:
        return False
    first = phrase[0]
    return any(
        tokens[i] == first and list(tokens[i : i + n]) == list(phrase) for i in range(len(tokens) - n + 1)
    )


def title_variants(title: str) -> list[list[str]]:
    """The token sequences that name a title: itself, ``Name, The`` as ``The Name`` and (two words
    or more) ``Name``, and each alternative title in parentheses (``Seven (Se7en)``); a
    parenthesised year is no name."""
    out: list[list[str]] = []
    parts = [title.split("(")[0]] + re.findall(r"\(([^()]*)\)", title)
    for part in parts:
        part = part.strip()
        if not part or re.fullmatch(r"\d{4}", part):
            continue
        m = re.fullmatch(r"(.+),\s*(\S+)", part)
        if m and m.group(2).lower() in ARTICLES:
            name = words(m.group(1))
            out.append(words(m.group(2)) + name)
            if len(name) >= 2:
                out.append(name)
        out.append(words(part))
    whole = words(title)
    return [v for v in ([whole] + out) if v]


def leaks(text: str, title: str) -> bool:
    """Whether ``text`` names the item titled ``title`` (see :func:`title_variants`)."""
    tokens = words(text)
    return any(_contains(tokens, v) for v in title_variants(title))


@dataclass(frozen=True)
class Revealed:
    """What user utterances revealed: genres (vocabulary names), decades (e.g. 1990) and items named."""

    genres: frozenset[str] = frozenset()
    decades: frozenset[int] = frozenset()
    mentioned: frozenset[int] = frozenset()

    def __or__(self, other: Revealed) -> Revealed:
        return Revealed(
            self.genres | other.genres, self.decades | other.decades, self.mentioned | other.mentioned
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready form (sorted lists) for a stored turn."""
        return {
            "genres": sorted(self.genres),
            "decades": sorted(self.decades),
            "mentioned": sorted(self.mentioned),
        }


@dataclass
class Catalogue:
    """Per item index: facts a simulator answers from and a recommender filters by.

    Attributes:
        item_ids: [n] raw item ids.
        titles: [n] titles as in the item table ("" when absent).
        texts: [n] unique ``Title (Year)`` texts (the ``title`` item index).
        years: [n] release years, -1 when unknown.
        genres: [n] sets of genre names (``unknown`` dropped).
        popularity: [n] train interactions per item.
        fields: the item fields the dataset has (``title``, ``year``, ``genres``).
    """

    item_ids: np.ndarray
    titles: list[str]
    texts: list[str]
    years: np.ndarray
    genres: list[frozenset[str]]
    popularity: np.ndarray
    fields: frozenset[str] = frozenset()
    vocab: tuple[str, ...] = field(init=False)
    genre_matrix: np.ndarray = field(init=False)  # [n, G] bool

    def __post_init__(self) -> None:
        self.vocab = tuple(sorted({g for gs in self.genres for g in gs}))
        col = {g: j for j, g in enumerate(self.vocab)}
        self.genre_matrix = np.zeros((len(self.titles), len(self.vocab)), dtype=bool)
        for i, gs in enumerate(self.genres):
            self.genre_matrix[i, [col[g] for g in gs]] = True
        self._exact = {_norm(t): i for i, t in enumerate(self.texts)}
        bare: dict[str, list[int]] = {}
        for i, t in enumerate(self.titles):
            bare.setdefault(_norm(t), []).append(i)
        self._bare = {t: ids[0] for t, ids in bare.items() if len(ids) == 1 and t}
        self._genre_phrases = [
            (g, [words(w) for w in GENRE_WORDS.get(g.lower(), ()) + (g,)]) for g in self.vocab
        ]

    def __len__(self) -> int:
        return len(self.titles)

    @property
    def decades(self) -> np.ndarray:
        """[n] decade of each item (1990 for 1995), -1 when the year is unknown."""
        return np.where(self.years >= 0, self.years // 10 * 10, -1)

    def ground(self, text: str) -> int | None:
        """The item a generated title names: its exact ``Title (Year)`` text, else its bare title
        when only one item has it (case and spacing ignored); None when it names no item."""
        key = _norm(text)
        hit = self._exact.get(key)
        return hit if hit is not None else self._bare.get(key)

    def genre_words(self, text: str) -> frozenset[str]:
        """The vocabulary genres ``text`` mentions (by name or another word for it)."""
        tokens = words(text)
        return frozenset(
            g for g, phrases in self._genre_phrases if any(_contains(tokens, p) for p in phrases)
        )

    def allowed(self, revealed: Revealed) -> np.ndarray:
        """[n] bool: items whose genres include every revealed genre and whose decade is a revealed
        one (no constraint from what was not revealed; a genre outside the vocabulary matches nothing)."""
        mask = np.ones(len(self), dtype=bool)
        col = {g: j for j, g in enumerate(self.vocab)}
        for g in revealed.genres:
            mask &= self.genre_matrix[:, col[g]] if g in col else False
        if revealed.decades:
            mask &= np.isin(self.decades, sorted(revealed.decades))
        return mask

    def similar_to(self, target: int, avoid_title: str) -> int | None:
        """The item most like ``target`` that does not name it: most shared genres (Jaccard), then
        nearest year, then most popular in train, then lowest index. None when every item names it."""
        g = self.genre_matrix
        inter = (g & g[target]).sum(axis=1)
        union = (g | g[target]).sum(axis=1)
        jac = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        gap = np.where(
            (self.years >= 0) & (self.years[target] >= 0), np.abs(self.years - self.years[target]), 10_000
        )
        order = np.lexsort((np.arange(len(self)), -self.popularity, gap, -jac))
        for i in order:
            if int(i) != target and not leaks(self.texts[i], avoid_title):
                return int(i)
        return None


def _year(value: Any) -> int:
    """A release year from an item-table cell (``1995``, ``1995.0``); -1 when it is none."""
    try:
        y = float(str(value).strip())
    except ValueError:
        return -1
    return int(y) if y == y and 1800 <= y <= 2100 else -1


def _norm(text: str) -> str:
    return " ".join(text.strip().strip("\"'“”").lower().split())


def decades_in(text: str) -> frozenset[int]:
    """Decades a text names: ``1990s``, ``90s``/``'90s`` (19xx), or a year (its decade)."""
    out: set[int] = set()
    low = text.lower()
    for full, short in _DECADE.findall(low):
        out.add(int(full) if full else 1900 + int(short))
    for y in _YEAR.findall(low):
        out.add(int(y) // 10 * 10)
    return frozenset(out)


def understand(text: str, catalogue: Catalogue) -> Revealed:
    """What a user utterance reveals: catalogue titles in double quotes, and genre words and decades
    outside the quotes (a named movie's year or genre-like title word is not the target's)."""
    named = (catalogue.ground(q) for q in _QUOTED.findall(text))
    rest = _QUOTED.sub(" ", text)
    return Revealed(
        catalogue.genre_words(rest), decades_in(rest), frozenset(i for i in named if i is not None)
    )


def split_genres(value: Any) -> frozenset[str]:
    """Genre names of one item-table cell (space separated, as RecBole's token_seq)."""
    if value is None or value != value:  # NaN
        return frozenset()
    return frozenset(g for g in str(value).split() if g.lower() not in UNKNOWN_GENRES)


def catalogue_of(data: Any, split: Any, need: Iterable[str] = ()) -> Catalogue:
    """The catalogue of ``split`` (its item index order) from the dataset's item table.

    Args:
        data: the :class:`~benchmark.data.interactions.Interactions` (item table, ``item_fields``).
        split: the split (catalogue order; popularity and the title index from its train part).
        need: item fields that must exist (``title``, ``year``, ``genres``).

    Raises:
        DataError: one line, when a needed field is absent or empty for every item.
    """
    from benchmark.models.components.indexing import title_index

    roles = dict(data.item_fields)
    table = data.items
    have = {
        r for r, col in roles.items() if col in getattr(table, "columns", ()) and table[col].notna().any()
    }
    for role in need:
        if role not in have:
            raise DataError(
                f"conversation: dataset {data.name} has no item {role} (data.item_fields.{role}); "
                f"the simulator answers from it"
            )

    def column(role: str) -> list[Any]:
        if role not in have:
            return [None] * split.n_items
        col = table[roles[role]]
        return [col.get(raw) for raw in split.item_ids]

    titles = ["" if t is None or t != t else " ".join(str(t).split()) for t in column("title")]
    years = np.array([_year(y) for y in column("year")], dtype=np.int64)
    genres = [split_genres(v) for v in column("genres")]
    if "genres" in need and not any(genres):
        raise DataError(
            f"conversation: dataset {data.name} has no genres for any item (data.item_fields.genres)"
        )
    texts, _ = title_index(split, data)
    pop = np.bincount(split.train["item"].to_numpy(), minlength=split.n_items).astype(np.int64)
    return Catalogue(np.asarray(split.item_ids), titles, texts, years, genres, pop, frozenset(have))
