"""Reference-free checks of an explanation against the facts it may state: grounding and hallucination.

An explanation for (user, recommended item) makes *claims*:

- a **title** it cites: a catalogue title (or one of its aliases: ``Godfather, The`` is also
  ``The Godfather``; ``Shanghai Triad (Yao a yao ...)`` is also ``Shanghai Triad``), or any text in
  double quotes. A cited title is supported when some item of the user's train history has it;
  the recommended item's own title is no claim (naming the item is the point), unless the text
  says the user liked (loved, enjoyed, watched ...) it: that is an unsupported history claim. A
  catalogue title outside the history, or a quoted title of no catalogue item, is unsupported.
- an **attribute** it states: a genre of the catalogue's genre vocabulary (with plurals and a
  few fixed synonyms, :data:`GENRE_SYNONYMS`) or a year (1800-2099). Inside parentheses right
  after a cited title (``Toy Story (1995; Comedy)``) it is checked against that title's items;
  anywhere else it is supported when it belongs to the recommended item or to a history title
  the explanation cites (``you liked the comedy Toy Story``).

Title matching is case-sensitive on whole words; a one-word title is not matched at the start of
a sentence (``Heat``, ``Fear``, ``Safe`` are also words) or next to another capitalised word (``Jack``
in ``Captain Jack Sparrow``), and aliases shorter than 3 characters are matched only in quotes. A
quoted text made of genre words only (``"Crime, Drama"``) states genres, not a title. An invented title that is neither quoted nor a catalogue title is not
seen, so the hallucination rate is a lower bound.

Per explanation, :func:`check_explanation` returns the claims found and whether each is supported;
:func:`grounding_metrics` aggregates them; :func:`agreement` compares another verdict (an
LLM judge's) with the check.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Fixed synonyms of genre names (lower case), beside the name itself and its plural.
GENRE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "sci-fi": ("science fiction", "science-fiction", "scifi"),
    "film-noir": ("film noir", "noir"),
    "children's": ("children", "kids"),
    "animation": ("animated",),
    "romance": ("romantic",),
    "comedy": ("comedic",),
    "drama": ("dramatic",),
    "adventure": ("adventurous",),
}
_ARTICLES = ("The", "A", "An", "Les", "La", "Le", "L'", "Il", "El", "Das", "Die", "Der")
_ARTICLE_AT_END = re.compile(r"^(?P<base>.+), (?P<art>" + "|".join(map(re.escape, _ARTICLES)) + r")$")
_PAREN = re.compile(r"^(?P<base>.+?) \((?P<inner>[^()]+)\)$")
_YEAR = re.compile(r"(?<![\w.])(1[89]\d\d|20\d\d)(?![\w])")
_QUOTED = re.compile(r"\"([^\"\n]{2,120})\"|\u201c([^\u201d\n]{2,120})\u201d")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n)\W*$")
# "you liked [the movie] <title>": the title is claimed to be in the history (wrong for the item itself).
_LIKED_BEFORE = re.compile(
    r"\b(?:liked|loved|enjoyed|watched|saw|seen|rated|fans? of)(?:\s+(?:the|a|an|movie|film|movies|films|both|also))*\s*[\"\u201c]?$",
    re.I,
)


def title_aliases(title: str) -> list[str]:
    """Forms a catalogue title may be cited in: as stored, article moved to the front, and without
    a trailing parenthesis that is not a year (alternative titles)."""
    title = " ".join(str(title).split())
    out = [title]
    m = _PAREN.match(title)
    if m and not re.fullmatch(r"\d{4}", m["inner"]):
        out.append(m["base"])
    for t in list(out):
        m = _ARTICLE_AT_END.match(t)
        if m:
            out.append(f"{m['art']} {m['base']}" if not m["art"].endswith("'") else f"{m['art']}{m['base']}")
    return list(dict.fromkeys(a for a in out if a))


def _year(value: Any) -> int | None:
    try:
        y = float(value)
    except (TypeError, ValueError):
        return None
    return int(y) if math.isfinite(y) and 1000 <= y <= 9999 else None


@dataclass
class Catalogue:
    """What an explanation may state about items, per item index.

    Attributes:
        titles: [n_items] display titles ("" for an item without one).
        years: [n_items] release years (None when unknown).
        genres: [n_items] genre names of each item.
    """

    titles: list[str]
    years: list[int | None]
    genres: list[tuple[str, ...]]
    _aliases: dict[str, set[int]] = field(default_factory=dict, repr=False)
    _title_re: re.Pattern[str] | None = field(default=None, repr=False)
    _genre_words: dict[str, str] = field(default_factory=dict, repr=False)
    _genre_re: re.Pattern[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for i, t in enumerate(self.titles):
            for a in title_aliases(t) if t else ():
                self._aliases.setdefault(a, set()).add(i)
        names = sorted((a for a in self._aliases if len(a) >= 3), key=lambda a: (-len(a), a))
        if names:
            self._title_re = re.compile(r"(?<![\w'])(?:" + "|".join(map(re.escape, names)) + r")(?![\w'])")
        for g in sorted({g for gs in self.genres for g in gs if g and g.lower() != "unknown"}):
            low = g.lower()
            forms = {low, low + "s", low[:-1] + "ies" if low.endswith("y") else low + "s"}
            forms |= set(GENRE_SYNONYMS.get(low, ()))
            for f in forms:
                self._genre_words.setdefault(f, g)
        if self._genre_words:
            words = sorted(self._genre_words, key=lambda w: (-len(w), w))
            self._genre_re = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, words)) + r")(?!\w)", re.I)

    @classmethod
    def from_items(cls, items: Any, item_fields: Mapping[str, str], item_ids: Sequence[str]) -> Catalogue:
        """The catalogue of a dataset's item side table.

        Args:
            items: ``Interactions.items`` (indexed by raw item id).
            item_fields: role -> column (``title``, ``year``, ``genres``); a ``title`` column is
                used when the role is not mapped. Genres are a space-separated token list.
            item_ids: [n_items] raw item ids in index order.
        """
        roles = dict(item_fields)
        if "title" not in roles and "title" in getattr(items, "columns", ()):
            roles["title"] = "title"
        cols = {r: c for r, c in roles.items() if c in getattr(items, "columns", ())}
        table = items.reindex([str(i) for i in item_ids]) if cols else None

        def column(role: str) -> list[Any]:
            if table is None or role not in cols:
                return [None] * len(item_ids)
            return table[cols[role]].tolist()

        titles = ["" if _missing(t) else " ".join(str(t).split()) for t in column("title")]
        years = [_year(y) for y in column("year")]
        genres = [() if _missing(g) else tuple(str(g).split()) for g in column("genres")]
        return cls(titles, years, genres)

    def items_titled(self, text: str) -> set[int]:
        """Items one of whose aliases is ``text`` (exact; else case-insensitive)."""
        text = " ".join(text.split())
        if text in self._aliases:
            return set(self._aliases[text])
        low = text.lower()
        return {i for a, items in self._aliases.items() if a.lower() == low for i in items}

    def describe(self) -> dict[str, Any]:
        """Facts for the run record: catalogue size and the genre words the check knows."""
        return {
            "items": len(self.titles),
            "titled_items": sum(1 for t in self.titles if t),
            "genre_words": dict(sorted(self._genre_words.items())),
            "rules": "benchmark.eval.grounding (module docstring)",
        }


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _one_word_as_a_word(text: str, start: int, end: int, alias: str) -> bool:
    """A one-word title that reads as an ordinary word or part of a longer name: at the start of a
    sentence (``Heat is ...``), or next to another capitalised word (``Captain Jack Sparrow``)."""
    if " " in alias:
        return False
    if _SENTENCE_START.search(text[:start]):
        return True
    return bool(re.search(r"\b[A-Z][\w'.-]*\s+$", text[:start]) or re.match(r"\s+[A-Z]", text[end:]))


def _only_genres(cat: Catalogue, text: str) -> bool:
    """True when ``text`` is nothing but genre words and separators (``"Crime, Drama, Mystery"``)."""
    if cat._genre_re is None or not cat._genre_re.search(text):
        return False
    rest = cat._genre_re.sub(" ", text)
    return not re.sub(r"\b(?:and|or)\b|[\s,;/&-]", "", rest, flags=re.I)


def _attached(text: str, end: int) -> tuple[str, int]:
    """A parenthesis right after a title (``Toy Story (1995; Comedy)``): its inside and its end."""
    m = re.compile(r"\s*\(([^()]{1,80})\)").match(text, end)
    return (m.group(1), m.end()) if m else ("", end)


def _attributes(cat: Catalogue, text: str) -> tuple[list[str], list[int]]:
    """Genres (canonical names) and years stated in ``text``."""
    genres = (
        [cat._genre_words[m.group(0).lower()] for m in cat._genre_re.finditer(text)] if cat._genre_re else []
    )
    years = [int(m.group(1)) for m in _YEAR.finditer(text)]
    return genres, years


def _title_claims(
    cat: Catalogue, text: str, item: int, history: set[int]
) -> tuple[list[dict[str, Any]], str]:
    """Cited titles (quoted first, then catalogue titles) with their attached attributes checked;
    returns the claims and the text with every title span blanked."""
    spans: list[tuple[int, int, str, set[int]]] = []
    for m in _QUOTED.finditer(text):
        inner = (m.group(1) or m.group(2)).strip()
        named = cat.items_titled(re.sub(r"\s*\(\d{4}\)$", "", inner))
        if not named and _only_genres(cat, inner):  # quoted genres are genre claims, not a title
            continue
        spans.append((m.start(), m.end(), inner, named))
    taken = [(a, b) for a, b, _, _ in spans]
    if cat._title_re is not None:
        for m in cat._title_re.finditer(text):
            a, b = m.span()
            if any(a < y and x < b for x, y in taken):
                continue
            if len(m.group(0)) < 3 or _one_word_as_a_word(text, a, b, m.group(0)):
                continue
            spans.append((a, b, m.group(0), set(cat._aliases[m.group(0)])))
    claims, blank = [], list(text)
    for a, b, name, named in sorted(spans):
        inside, end = _attached(text, b)
        if named and item in named and not (named & history):
            if _LIKED_BEFORE.search(text[max(0, a - 60) : a]):  # the item said to be one the user liked
                kind, ok, facts_of = "item_as_history", False, {item}
            else:
                kind, ok, facts_of = "item", True, {item}
        elif named & history:
            kind, ok, facts_of = "history", True, named & history
        else:
            kind, ok, facts_of = ("other" if named else "unknown"), False, named
        claim = {"title": name, "kind": kind, "ok": ok}
        genres, years = _attributes(cat, inside)
        if genres or years:
            allowed_g = {g for i in facts_of for g in cat.genres[i]}
            allowed_y = {cat.years[i] for i in facts_of}
            claim["genres"] = [[g, g in allowed_g] for g in genres]
            claim["years"] = [[y, y in allowed_y] for y in years]
        claims.append(claim)
        blank[a:end] = " " * (end - a)
    return claims, "".join(blank)


def named_candidate(cat: Catalogue, text: str, candidates: Sequence[int]) -> int | None:
    """The one candidate an answer names (``eval=candidates``), or None when it names none.

    In order: the whole answer (quotes, a trailing ``(year)`` and end punctuation dropped) is a
    candidate's title or alias; the answer starts with one (the longest alias wins, then the
    candidate listed first); the first title cited anywhere in it (quoted, or a catalogue title
    under the rules of :func:`check_explanation`) that belongs to exactly one candidate. A title
    of an item outside ``candidates`` names nothing.

    Args:
        cat: the catalogue.
        text: the generated answer.
        candidates: [C] item indices of the row's candidate list, in the order shown.
    """
    cands = [int(c) for c in candidates]
    allowed = set(cands)
    t = " ".join(str(text).split()).strip().strip("\"'\u201c\u201d").strip()
    t = re.sub(r"[\s.!]+$", "", t)
    bare = re.sub(r"\s*\(\d{4}\)$", "", t)
    exact = (cat.items_titled(t) | cat.items_titled(bare)) & allowed
    if len(exact) == 1:
        return exact.pop()
    best: tuple[int, int] | None = None  # (alias length, candidate)
    low = t.lower()
    for c in cands:
        for a in title_aliases(cat.titles[c]) if cat.titles[c] else ():
            n = len(a)
            if low.startswith(a.lower()) and (len(t) == n or not t[n].isalnum()) and (best is None or n > best[0]):
                best = (n, c)
    if best is not None:
        return best[1]
    spans: list[tuple[int, set[int]]] = []
    for m in _QUOTED.finditer(text):
        inner = (m.group(1) or m.group(2)).strip()
        spans.append((m.start(), cat.items_titled(re.sub(r"\s*\(\d{4}\)$", "", inner))))
    if cat._title_re is not None:
        spans += [(m.start(), set(cat._aliases[m.group(0)])) for m in cat._title_re.finditer(text)]
    for _, named in sorted(spans, key=lambda s: s[0]):
        hit = named & allowed
        if len(hit) == 1:
            return hit.pop()
    return None


def check_explanation(cat: Catalogue, text: str, item: int, history: Iterable[int]) -> dict[str, Any]:
    """The claims of one explanation and whether each is supported (see the module docstring).

    Args:
        cat: the catalogue.
        text: the explanation.
        item: the recommended item's index.
        history: the user's train item indices.

    Returns:
        ``titles`` (each ``{title, kind: history|item|item_as_history|other|unknown, ok}`` and the attributes in
        its parenthesis), ``genres`` and ``years`` stated elsewhere (``[value, ok]``), ``claims``,
        ``unsupported``, ``cites_history`` and ``grounded`` (no unsupported claim).
    """
    hist = set(int(i) for i in history)
    titles, rest = _title_claims(cat, text, int(item), hist)
    cited = {i for c in titles if c["kind"] == "history" for i in cat.items_titled(c["title"]) & hist}
    about = {int(item)} | cited
    genres, years = _attributes(cat, rest)
    allowed_g = {g for i in about for g in cat.genres[i]}
    allowed_y = {cat.years[i] for i in about}
    out_g = [[g, g in allowed_g] for g in genres]
    out_y = [[y, y in allowed_y] for y in years]
    oks = [c["ok"] for c in titles if c["kind"] != "item"] + [
        ok for c in titles for _, ok in c.get("genres", []) + c.get("years", [])
    ]
    oks += [ok for _, ok in out_g + out_y]
    return {
        "titles": titles,
        "genres": out_g,
        "years": out_y,
        "claims": len(oks),
        "unsupported": sum(1 for ok in oks if not ok),
        "cites_history": any(c["kind"] == "history" for c in titles),
        "grounded": all(oks),
    }


def grounding_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Aggregates of :func:`check_explanation` results.

    Returns:
        ``grounded`` (share of explanations without an unsupported claim), ``hallucination``
        (unsupported claims / claims; None without claims), ``hallucinated_rows`` (share with at
        least one unsupported claim), ``cites_history`` (share citing a history title) and
        ``claims`` (mean claims per explanation); all None without rows.
    """
    if not rows:
        return dict.fromkeys(("grounded", "hallucination", "hallucinated_rows", "cites_history", "claims"))
    claims = sum(int(r["claims"]) for r in rows)
    bad = sum(int(r["unsupported"]) for r in rows)
    return {
        "grounded": float(np.mean([bool(r["grounded"]) for r in rows])),
        "hallucination": bad / claims if claims else None,
        "hallucinated_rows": float(np.mean([int(r["unsupported"]) > 0 for r in rows])),
        "cites_history": float(np.mean([bool(r["cites_history"]) for r in rows])),
        "claims": claims / len(rows),
    }


def agreement(verdicts: Sequence[bool], grounded: Sequence[bool]) -> dict[str, float | None]:
    """How often another verdict (an LLM judge's) agrees with the grounding check.

    Returns:
        ``accuracy`` (share of equal verdicts), ``kappa`` (Cohen's kappa; None when chance
        agreement is 1, i.e. both verdicts are constant and equal) and ``n``; None values
        without rows.
    """
    n = len(verdicts)
    if n != len(grounded):
        raise ValueError(f"{n} verdicts for {len(grounded)} explanations")
    if not n:
        return {"accuracy": None, "kappa": None, "n": 0}
    a = np.asarray(verdicts, dtype=bool)
    b = np.asarray(grounded, dtype=bool)
    po = float(np.mean(a == b))
    pe = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return {"accuracy": po, "kappa": None if pe >= 1.0 else (po - pe) / (1 - pe), "n": n}
