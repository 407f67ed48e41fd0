"""Text analysis and the query string, shared by every search backend (pure, no I/O).

The engines analyse text themselves (tantivy with a tokenizer chain, PostgreSQL with
``to_tsvector('english', …)``), but their tokenizers disagree on punctuation, e-mail
addresses, hyphens, decimals and case folding outside ASCII. So text is *normalised*
here first, the same way for both: lower-cased, cut into runs of letters and digits,
joined by single spaces. What each engine then sees is a plain list of words, which
both split the same way; each drops the same stop words (:data:`STOP_WORDS`, keeping
their positions) and stems the rest with Snowball English.

The query language is parsed here too, into :class:`ParsedQuery`; each backend only
translates clauses (a word or a phrase, required or excluded) into its own query
objects, so no user text ever reaches an engine's query parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from multistore.errors import InvalidQueryError
from multistore.stores._limits import short_repr

__all__ = [
    "MAX_WORD_BYTES",
    "STOP_WORDS",
    "Clause",
    "ParsedQuery",
    "is_indexed_word",
    "normalize_text",
    "normalize_words",
    "parse_query",
]

#: The Snowball English stop word list, as PostgreSQL's ``english`` configuration uses
#: it (``tsearch_data/english.stop``); the tantivy backend installs the same list.
STOP_WORDS: Final[frozenset[str]] = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves what
    which who whom this that these those am is are was were be been being have has had
    having do does did doing a an the and but if or because as until while of at by for
    with about against between into through during before after above below to from up
    down in out on off over under again further then once here there when where why how
    all any both each few more most other some such no nor not only own same so than too
    very s t can will just don should now
    """.split()  # noqa: SIM905 - a word list reads best as text
)

#: Words of this many UTF-8 bytes or more are not indexed (PostgreSQL's limit; the
#: tantivy backend drops them too).
MAX_WORD_BYTES: Final = 2047

_WORD: Final = re.compile(r"[^\W_]+")


def normalize_words(text: str) -> list[str]:
    """The words of ``text``: lower-cased runs of letters and digits."""
    return _WORD.findall(text.lower())


def normalize_text(text: str) -> str:
    """``text`` as the engines are given it: its words joined by single spaces."""
    return " ".join(normalize_words(text))


def is_indexed_word(word: str) -> bool:
    """True when a normalised word ends up in the index (not a stop word, not too long)."""
    return word not in STOP_WORDS and len(word.encode("utf-8")) < MAX_WORD_BYTES


@dataclass(frozen=True)
class Clause:
    """One clause of a query: a word, or a phrase of words that must be adjacent."""

    words: tuple[str, ...]
    """Normalised words in order, stop words included (they keep their positions)."""
    negated: bool = False

    @property
    def terms(self) -> list[tuple[int, str]]:
        """(position in the phrase, word) of the words that are searchable."""
        return [(pos, word) for pos, word in enumerate(self.words) if is_indexed_word(word)]

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass(frozen=True)
class ParsedQuery:
    """A parsed query string. ``clauses`` keeps only clauses with a searchable word."""

    clauses: tuple[Clause, ...]
    had_words: bool
    """False for a blank query (no words at all): it matches every document."""

    @property
    def positive(self) -> list[Clause]:
        return [c for c in self.clauses if not c.negated]

    @property
    def negative(self) -> list[Clause]:
        return [c for c in self.clauses if c.negated]

    @property
    def matches_all(self) -> bool:
        """True for a query with no words: every document matches."""
        return not self.had_words

    @property
    def matches_none(self) -> bool:
        """True when the query had words but none is searchable (all stop words)."""
        return self.had_words and not self.clauses


def parse_query(query: str) -> ParsedQuery:
    """Parse the query language described in :mod:`multistore.stores.search._api`.

    Raises :class:`InvalidQueryError` for a non-string or an unbalanced quote.
    """
    if not isinstance(query, str):
        raise InvalidQueryError(f"the query must be a string, not {type(query).__name__}")
    clauses: list[Clause] = []
    had_words = False
    i, n = 0, len(query)
    while i < n:
        char = query[i]
        if char.isspace():
            i += 1
            continue
        negated = False
        if char == "-":
            negated = True
            i += 1
            if i >= n or query[i].isspace():
                continue  # a lone "-" is punctuation
        if query[i] == '"':
            end = query.find('"', i + 1)
            if end < 0:
                raise InvalidQueryError(
                    f"unbalanced quote at position {i} in query {short_repr(_shorten(query))}; "
                    'close the phrase with another "'
                )
            raw = query[i + 1 : end]
            i = end + 1
        else:
            start = i
            while i < n and not query[i].isspace() and query[i] != '"':
                i += 1
            raw = query[start:i]
        words = tuple(normalize_words(raw))
        if not words:
            continue
        had_words = True
        clause = Clause(words, negated)
        if clause.terms:
            clauses.append(clause)
    return ParsedQuery(tuple(clauses), had_words)


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
