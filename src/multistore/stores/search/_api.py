"""The search interface: full-text indexes with keyword filters, numeric ranges, facets
and sorting — the shop's catalog search.

An index has a fixed :class:`SearchSchema`: each field is TEXT (analysed full text),
KEYWORD (an exact string: filter and facet on it) or NUMERIC (a float: range filters
and sorting). Documents are dicts keyed by field name plus the id field; indexing a
document whose id exists replaces it. Every backend implements the same rules, and one
conformance suite holds them to it:

- **Analysis.** The TEXT fields of a document are searched together as one text, in
  schema order. Text is lower-cased and split into words at every character that is
  not a letter or a digit; English stop words (the Snowball list PostgreSQL uses) are
  dropped and the other words are stemmed (Snowball English), so "laptops" finds
  "laptop".
- **Query string.** Words must all match (AND). ``"a quoted phrase"`` matches the words
  next to each other; ``-word`` and ``-"a phrase"`` exclude documents. A word with
  punctuation inside (``wi-fi``, ``title:foo``) is a phrase of its parts. Nothing else
  is syntax: ``OR``, ``AND``, ``NOT``, ``field:``, ``*``, ``~``, ``^``, parentheses are
  plain words or separators. A blank query (no words at all) matches every document; a
  query whose words are all stop words matches none. An unbalanced ``"`` is an
  :class:`~multistore.errors.InvalidQueryError`.
- **Filters** ``{"category": "books"}`` or ``{"category": ["books", "music"]}`` (any of
  the values) on KEYWORD fields, exact and case-sensitive; several fields are ANDed.
- **Ranges** ``{"price": (10.0, 99.5)}`` on NUMERIC fields include both bounds; ``None``
  leaves a side open (``(None, None)`` means "has a value"). Documents without a value
  never match a range.
- **Facets** count, for each listed KEYWORD field, the documents of the whole result
  (not just the page) per value; documents without a value are not counted.
- **Sort** by a NUMERIC field, ``"asc"`` or ``"desc"``; documents without a value come
  last either way. Without a sort, hits come by relevance (best first). Ties come in
  an unspecified order, and scores differ between backends (BM25 vs ``ts_rank``); a
  hit's score is 0.0 when the results are sorted by a field or the query has no
  positive words.
- Results are visible as soon as :meth:`SearchStore.index` returns.
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

from multistore.errors import InvalidValueError
from multistore.stores._base import Store
from multistore.stores._limits import short_repr

__all__ = [
    "FieldType",
    "Hit",
    "SearchResult",
    "SearchSchema",
    "SearchStore",
    "SortOrder",
]

SortOrder = Literal["asc", "desc"]

#: Field names: a letter, then letters, digits and underscores (names starting with an
#: underscore are reserved for the backends' own columns).
_FIELD_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")


class FieldType(enum.Enum):
    """How a field is indexed."""

    TEXT = "text"
    """Analysed full text: found by the query string."""
    KEYWORD = "keyword"
    """An exact string: filterable and facetable."""
    NUMERIC = "numeric"
    """A float: range filters and sorting."""


def _field_type(value: object, name: str) -> FieldType:
    if isinstance(value, FieldType):
        return value
    if isinstance(value, str):
        try:
            return FieldType(value.lower())
        except ValueError:
            pass
    raise InvalidValueError(
        f"field {short_repr(name)} has type {short_repr(value)}; use FieldType.TEXT, "
        "KEYWORD or NUMERIC"
    )


@dataclass(frozen=True)
class SearchSchema:
    """The fields of an index and the name of its id field.

    ``fields`` maps names to :class:`FieldType` (or their names, ``"text"`` …). The id
    field holds each document's unique non-empty string id; it may also be listed as a
    KEYWORD field to filter and facet on it.
    """

    fields: Mapping[str, FieldType]
    id_field: str = "id"

    def __post_init__(self) -> None:
        if not isinstance(self.fields, Mapping):
            raise InvalidValueError("SearchSchema.fields must be a mapping of name -> FieldType")
        checked: dict[str, FieldType] = {}
        for name, kind in self.fields.items():
            if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
                raise InvalidValueError(
                    f"field name {short_repr(name)} is not allowed; use a letter followed "
                    "by letters, "
                    "digits or underscores (at most 63)"
                )
            checked[name] = _field_type(kind, name)
        if not isinstance(self.id_field, str) or not _FIELD_NAME.fullmatch(self.id_field):
            raise InvalidValueError(f"id field name {short_repr(self.id_field)} is not allowed")
        id_kind = checked.get(self.id_field)
        if id_kind is not None and id_kind is not FieldType.KEYWORD:
            raise InvalidValueError(
                f"the id field {short_repr(self.id_field)} may only be listed as a KEYWORD field, "
                f"not {id_kind.name}"
            )
        object.__setattr__(self, "fields", checked)

    def names(self, kind: FieldType) -> list[str]:
        """The names of the fields of one type, in schema order."""
        return [name for name, k in self.fields.items() if k is kind]

    def to_dict(self) -> dict[str, Any]:
        """The schema as JSON-ready data (what the backends persist)."""
        return {
            "fields": {name: kind.value for name, kind in self.fields.items()},
            "id_field": self.id_field,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSchema:
        return cls(fields=dict(data["fields"]), id_field=str(data.get("id_field", "id")))


@dataclass(frozen=True)
class Hit:
    """One matching document."""

    id: str
    score: float
    """Relevance (backend-specific scale); 0.0 when sorted by a field or with no
    positive query words."""
    doc: dict[str, Any]
    """The document as indexed (NUMERIC values as floats)."""


@dataclass(frozen=True)
class SearchResult:
    """The answer of :meth:`SearchStore.search`."""

    total: int
    """How many documents match, whatever the page."""
    hits: list[Hit]
    """The page of matches (``offset``/``limit``) in result order."""
    facets: dict[str, dict[str, int]] = field(default_factory=dict)
    """For each facet field asked for: value -> number of matching documents, most
    frequent first (ties by value)."""

    @property
    def ids(self) -> list[str]:
        """The ids of the hits, in order."""
        return [hit.id for hit in self.hits]


class SearchStore(Store, abc.ABC):
    """A full-text search store of named indexes (see the module docstring for the rules)."""

    model: ClassVar[str] = "search"

    @abc.abstractmethod
    async def create_index(self, name: str, schema: SearchSchema) -> None:
        """Create index ``name``. A no-op when it exists with the same schema;
        :class:`~multistore.errors.ConflictError` when it exists with another one.
        Names: a lower-case letter, then lower-case letters, digits, underscores (≤ 40)."""

    @abc.abstractmethod
    async def drop_index(self, name: str) -> None:
        """Remove index ``name`` and its documents; NotFoundError when there is none."""

    @abc.abstractmethod
    async def indexes(self) -> list[str]:
        """The names of the indexes, sorted."""

    @abc.abstractmethod
    async def schema(self, name: str) -> SearchSchema:
        """The schema of index ``name``; NotFoundError when there is none."""

    @abc.abstractmethod
    async def index(self, name: str, docs: Sequence[Mapping[str, Any]]) -> None:
        """Add or replace documents (by id). The whole batch is validated first: an
        unknown field or a value of the wrong type raises
        :class:`~multistore.errors.InvalidValueError` and nothing of the batch is
        indexed. Within a batch, the last document with an id wins."""

    @abc.abstractmethod
    async def delete(self, name: str, id: str) -> bool:
        """Remove the document with ``id``; True when it existed."""

    @abc.abstractmethod
    async def get(self, name: str, id: str) -> dict[str, Any] | None:
        """The document with ``id``, or None."""

    @abc.abstractmethod
    async def search(
        self,
        name: str,
        query: str = "",
        *,
        filters: Mapping[str, str | Sequence[str]] | None = None,
        ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
        facets: Sequence[str] | None = None,
        sort: tuple[str, SortOrder] | None = None,
        offset: int = 0,
        limit: int = 10,
    ) -> SearchResult:
        """Find documents; see the module docstring for the query language and rules.
        Bad arguments (a filter on a non-KEYWORD field, NaN bounds, ``limit < 0``, an
        unbalanced quote …) raise :class:`~multistore.errors.InvalidQueryError`."""
