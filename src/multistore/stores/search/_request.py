"""Checking what callers hand a search store, the same way for every backend (pure).

:func:`prepare_docs` validates a batch of documents against a schema and turns each
into a :class:`PreparedDoc` (normalised text, keyword and numeric values);
:func:`build_request` validates the arguments of ``search`` into a
:class:`SearchRequest`. Both raise before a backend touches its engine, so a bad
batch or query never changes anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from multistore.errors import InvalidQueryError, InvalidValueError, NotFoundError
from multistore.stores._limits import check_count, short_repr
from multistore.stores.search._analysis import ParsedQuery, normalize_text, parse_query
from multistore.stores.search._api import FieldType, SearchSchema

__all__ = [
    "MAX_KEYWORD_BYTES",
    "MAX_WINDOW",
    "PreparedDoc",
    "SearchRequest",
    "build_request",
    "check_id",
    "check_index_name",
    "known_index_name",
    "prepare_docs",
    "sort_facet_counts",
]

_INDEX_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,39}")
#: Longest id or KEYWORD value, in UTF-8 bytes (PostgreSQL's b-tree entries are limited).
MAX_KEYWORD_BYTES: Final = 1024
#: Largest ``offset + limit`` of one search.
MAX_WINDOW: Final = 100_000


def check_index_name(name: object) -> str:
    """Return ``name`` if it is a valid index name, else raise InvalidValueError."""
    if not isinstance(name, str) or not _INDEX_NAME.fullmatch(name):
        raise InvalidValueError(
            f"index name {short_repr(name)} is not allowed; use a lower-case letter followed by "
            "lower-case letters, digits or underscores (at most 40)"
        )
    return name


def known_index_name(name: object) -> str:
    """Return ``name`` if it could name an index, else raise NotFoundError."""
    if not isinstance(name, str) or not _INDEX_NAME.fullmatch(name):
        raise NotFoundError(f"no search index named {short_repr(name)}")
    return name


def _check_string(value: str, what: str) -> None:
    if "\x00" in value:
        raise InvalidValueError(f"{what} contains a NUL character, which cannot be stored")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValueError(f"{what} is not valid Unicode (a lone surrogate?)") from None


def check_id(id: object, index: str) -> str:
    """Return ``id`` if it is a valid document id, else raise InvalidValueError."""
    if not isinstance(id, str) or not id:
        raise InvalidValueError(
            f"document ids in index {short_repr(index)} are non-empty strings, got {short_repr(id)}"
        )
    _check_string(id, f"id {id[:40]!r}")
    if len(id.encode("utf-8")) > MAX_KEYWORD_BYTES:
        raise InvalidValueError(f"id {id[:40]!r}… is longer than {MAX_KEYWORD_BYTES} bytes")
    return id


@dataclass(frozen=True)
class PreparedDoc:
    """A validated document, ready for a backend."""

    id: str
    doc: dict[str, Any]
    """The document to store and return (NUMERIC values as floats)."""
    text: str
    """The TEXT fields, normalised and joined in schema order."""
    keywords: dict[str, str | None]
    """Every KEYWORD field of the schema -> its value (None when absent)."""
    numbers: dict[str, float | None]
    """Every NUMERIC field of the schema -> its value (None when absent)."""


def prepare_docs(
    schema: SearchSchema, index: str, docs: Sequence[Mapping[str, Any]]
) -> list[PreparedDoc]:
    """Validate a batch against ``schema``; raise InvalidValueError on the first problem."""
    if isinstance(docs, Mapping) or not isinstance(docs, Sequence) or isinstance(docs, str):
        raise InvalidValueError(
            f"index({short_repr(index)}, docs) takes a list of documents, not {type(docs).__name__}"
        )
    return [_prepare(schema, index, position, doc) for position, doc in enumerate(docs)]


def _prepare(schema: SearchSchema, index: str, position: int, doc: object) -> PreparedDoc:
    where = f"document #{position} of the batch for index {short_repr(index)}"
    if not isinstance(doc, Mapping):
        raise InvalidValueError(f"{where} is a {type(doc).__name__}, not a dict")
    if schema.id_field not in doc:
        raise InvalidValueError(f"{where} has no id field {short_repr(schema.id_field)}")
    doc_id = check_id(doc[schema.id_field], index)
    where = f"document {doc_id[:40]!r} (#{position}) of the batch for index {short_repr(index)}"
    stored: dict[str, Any] = {}
    for name, value in doc.items():
        if name == schema.id_field and name not in schema.fields:
            stored[name] = doc_id
            continue
        kind = schema.fields.get(name) if isinstance(name, str) else None
        if kind is None:
            known = ", ".join([schema.id_field, *schema.fields])
            raise InvalidValueError(
                f"{where} has unknown field {short_repr(name)}; the schema has {known}"
            )
        stored[name] = _check_value(kind, value, f"field {short_repr(name)} of {where}")
    texts = [stored.get(name) for name in schema.names(FieldType.TEXT)]
    return PreparedDoc(
        id=doc_id,
        doc=stored,
        text=" ".join(normalize_text(t) for t in texts if t),
        keywords={name: stored.get(name) for name in schema.names(FieldType.KEYWORD)},
        numbers={name: stored.get(name) for name in schema.names(FieldType.NUMERIC)},
    )


def _check_value(kind: FieldType, value: object, what: str) -> Any:
    if value is None:
        return None
    if kind is FieldType.NUMERIC:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidValueError(
                f"{what} is NUMERIC and needs an int or float, got {type(value).__name__}"
            )
        try:
            number = float(value)
        except OverflowError:
            raise InvalidValueError(f"{what} is too large for a float") from None
        if not math.isfinite(number):
            raise InvalidValueError(f"{what} is {number}; only finite numbers can be indexed")
        return number
    if not isinstance(value, str):
        raise InvalidValueError(
            f"{what} is {kind.name} and needs a str, got {type(value).__name__}"
        )
    _check_string(value, what)
    if kind is FieldType.KEYWORD and len(value.encode("utf-8")) > MAX_KEYWORD_BYTES:
        raise InvalidValueError(f"{what} is longer than {MAX_KEYWORD_BYTES} bytes")
    return value


@dataclass(frozen=True)
class SearchRequest:
    """The validated arguments of one search."""

    query: ParsedQuery
    filters: tuple[tuple[str, tuple[str, ...]], ...]
    """(KEYWORD field, accepted values): a document matches one of the values."""
    ranges: tuple[tuple[str, float | None, float | None], ...]
    """(NUMERIC field, lower, upper), bounds inclusive, None open."""
    facets: tuple[str, ...]
    sort: tuple[str, bool] | None
    """(NUMERIC field, descending), or None for relevance."""
    offset: int
    limit: int

    @property
    def scored(self) -> bool:
        """True when hits carry relevance scores (relevance order, positive words)."""
        return self.sort is None and bool(self.query.positive)


def build_request(
    schema: SearchSchema,
    index: str,
    query: str,
    filters: Mapping[str, str | Sequence[str]] | None,
    ranges: Mapping[str, tuple[float | None, float | None]] | None,
    facets: Sequence[str] | None,
    sort: tuple[str, str] | None,
    offset: int,
    limit: int,
) -> SearchRequest:
    """Check the arguments of ``search`` against ``schema``; raise InvalidQueryError."""
    parsed = parse_query(query)
    return SearchRequest(
        query=parsed,
        filters=_filters(schema, index, filters),
        ranges=_ranges(schema, index, ranges),
        facets=_facets(schema, index, facets),
        sort=_sort(schema, index, sort),
        offset=_count("offset", offset),
        limit=_limit(offset, limit),
    )


def _field_of(schema: SearchSchema, index: str, name: object, kind: FieldType, use: str) -> str:
    actual = schema.fields.get(name) if isinstance(name, str) else None
    if actual is None:
        raise InvalidQueryError(f"{use}: index {short_repr(index)} has no field {short_repr(name)}")
    if actual is not kind:
        raise InvalidQueryError(
            f"{use}: field {short_repr(name)} of index {short_repr(index)} is "
            f"{actual.name}, not {kind.name}"
        )
    assert isinstance(name, str)
    return name


def _filters(
    schema: SearchSchema, index: str, filters: Mapping[str, str | Sequence[str]] | None
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if filters is None:
        return ()
    if not isinstance(filters, Mapping):
        raise InvalidQueryError("filters must be a dict of KEYWORD field -> value(s)")
    result = []
    for name, value in filters.items():
        field = _field_of(schema, index, name, FieldType.KEYWORD, "filter")
        values: Sequence[object] = [value] if isinstance(value, str) else value
        if not isinstance(values, Sequence):
            raise InvalidQueryError(
                f"filter on {short_repr(field)} needs a str or a list of str, got "
                f"{type(value).__name__}"
            )
        for item in values:
            if not isinstance(item, str):
                raise InvalidQueryError(
                    f"filter on {short_repr(field)}: values are strings, got {type(item).__name__}"
                )
        result.append((field, tuple(str(v) for v in dict.fromkeys(values))))
    return tuple(result)


def _bound(field: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidQueryError(
            f"range on {short_repr(field)}: bounds are numbers or None, got {type(value).__name__}"
        )
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidQueryError(
            f"range on {short_repr(field)}: bound {short_repr(value)} is not a finite number"
        )
    return number


def _ranges(
    schema: SearchSchema, index: str, ranges: Mapping[str, tuple[float | None, float | None]] | None
) -> tuple[tuple[str, float | None, float | None], ...]:
    if ranges is None:
        return ()
    if not isinstance(ranges, Mapping):
        raise InvalidQueryError("ranges must be a dict of NUMERIC field -> (low, high)")
    result = []
    for name, bounds in ranges.items():
        field = _field_of(schema, index, name, FieldType.NUMERIC, "range")
        if not isinstance(bounds, tuple | list) or len(bounds) != 2:
            raise InvalidQueryError(f"range on {short_repr(field)} must be a (low, high) pair")
        result.append((field, _bound(field, bounds[0]), _bound(field, bounds[1])))
    return tuple(result)


def _facets(schema: SearchSchema, index: str, facets: Sequence[str] | None) -> tuple[str, ...]:
    if facets is None:
        return ()
    if isinstance(facets, str) or not isinstance(facets, Sequence):
        raise InvalidQueryError("facets must be a list of KEYWORD field names")
    names = [_field_of(schema, index, name, FieldType.KEYWORD, "facet") for name in facets]
    return tuple(dict.fromkeys(names))


def _sort(
    schema: SearchSchema, index: str, sort: tuple[str, str] | None
) -> tuple[str, bool] | None:
    if sort is None:
        return None
    if not isinstance(sort, tuple | list) or len(sort) != 2:
        raise InvalidQueryError('sort must be (field, "asc" | "desc") or None')
    name, direction = sort
    field = _field_of(schema, index, name, FieldType.NUMERIC, "sort")
    if direction not in ("asc", "desc"):
        raise InvalidQueryError(
            f'sort direction must be "asc" or "desc", not {short_repr(direction)}'
        )
    return field, direction == "desc"


def _count(what: str, value: object) -> int:
    return check_count(value, what)


def _limit(offset: object, limit: object) -> int:
    checked = _count("limit", limit)
    if isinstance(offset, int) and offset + checked > MAX_WINDOW:
        raise InvalidQueryError(
            f"offset + limit is {short_repr(offset + checked)}; at most {MAX_WINDOW} hits "
            "can be paged "
            "through (narrow the query or sort instead)"
        )
    return checked


def sort_facet_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Facet counts most frequent first, ties by value."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
