"""Mongo-style filters and sorts: parse into an AST, validate, evaluate (pure: no I/O).

The backends compile the AST of this module to SQL (each dialect a subclass of
:class:`SQLCompiler`); :func:`matches` evaluates it in Python and is the reference
the conformance tests hold the backends to.

Semantics
---------
- ``{"a": v}`` is ``{"a": {"$eq": v}}``; several fields are ANDed, and so are several
  operators on one field. Operators: ``$eq $ne $lt $lte $gt $gte $in $nin $exists
  $not`` on a field, ``$and $or $nor`` on filters.
- A path reaches into objects and *through arrays*: ``reviews.rating`` yields the
  ``rating`` of every object in the ``reviews`` array (arrays directly inside arrays
  are not entered). The values a path yields are its *candidates*; a comparison
  matches when any candidate matches. A candidate that is an array also offers its
  elements, so ``{"sizes": "M"}`` matches ``sizes: ["S", "M"]`` and
  ``{"sizes": ["S", "M"]}`` matches the whole array.
- Type bracketing: ``$lt $lte $gt $gte`` take a number or a string and only compare
  with candidates of the same kind (numbers by value, strings by code point).
  Equality needs the same kind too (``1`` equals ``1.0``, not ``True`` or ``"1"``).
- ``null`` matches a null value *or a missing field* (``{"a": None}`` matches a
  document without ``a``); ``$ne``, ``$nin`` and ``$not`` are negations, so they match
  documents where the field is missing.
- Sorting: ``[("price", -1), ("name", 1)]``; a sort path follows objects only (not
  arrays). Kinds sort as missing = null < numbers < strings < objects < arrays <
  booleans (MongoDB's order); objects and arrays are not ordered among themselves.
  Ties keep insertion order.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, TypeAlias

from multistore.errors import InvalidQueryError
from multistore.stores._limits import short_repr
from multistore.stores.document._values import Path, check_value, json_equal, kind, parse_path

__all__ = [
    "And",
    "Compare",
    "CompareOp",
    "Exists",
    "In",
    "MatchAll",
    "Node",
    "Not",
    "Or",
    "Pred",
    "SQLCompiler",
    "SortKey",
    "candidates",
    "matches",
    "parse_filter",
    "parse_sort",
    "sort_documents",
    "sort_rank",
    "sort_value",
]

CompareOp: TypeAlias = Literal["eq", "lt", "lte", "gt", "gte"]


@dataclass(frozen=True)
class MatchAll:
    """The empty filter."""


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


@dataclass(frozen=True)
class Compare:
    """Some candidate at ``path`` relates to ``value`` by ``op`` (``eq`` with ``None``
    also matches a missing field)."""

    path: Path
    op: CompareOp
    value: Any


@dataclass(frozen=True)
class In:
    """Some candidate at ``path`` equals one of ``values``."""

    path: Path
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Exists:
    """The path yields at least one value (``null`` counts)."""

    path: Path


Node: TypeAlias = MatchAll | And | Or | Not | Compare | In | Exists

_RANGE_OPS: Final[Mapping[str, CompareOp]] = {
    "$lt": "lt",
    "$lte": "lte",
    "$gt": "gt",
    "$gte": "gte",
}
_FIELD_OPS: Final = ("$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$in", "$nin", "$exists", "$not")
_LOGICAL_OPS: Final = ("$and", "$or", "$nor")


# -- parsing -------------------------------------------------------------------------


def parse_filter(raw: object) -> Node:
    """The AST of a filter dict; :class:`InvalidQueryError` for anything malformed."""
    if raw is None:
        return MatchAll()
    return _parse_filter(raw, "filter")


def _parse_filter(raw: object, where: str) -> Node:
    if not isinstance(raw, Mapping):
        raise InvalidQueryError(f"{where} must be a dict, not {type(raw).__name__}")
    clauses: list[Node] = []
    for key, value in raw.items():
        if not isinstance(key, str):
            raise InvalidQueryError(f"{where}: key {short_repr(key)} is not a string")
        if key.startswith("$"):
            clauses.append(_parse_logical(key, value, where))
        else:
            path = parse_path(key, where=where)
            clauses.append(_parse_field(path, value, where))
    return _all_of(clauses)


def _all_of(clauses: list[Node]) -> Node:
    if not clauses:
        return MatchAll()
    if len(clauses) == 1:
        return clauses[0]
    return And(tuple(clauses))


def _parse_logical(op: str, value: object, where: str) -> Node:
    if op not in _LOGICAL_OPS:
        hint = " (use it on a field: {'a': {'$not': {...}}})" if op == "$not" else ""
        raise InvalidQueryError(
            f"unknown top-level operator {short_repr(op)} in {where}{hint}; known: "
            f"{', '.join(_LOGICAL_OPS)}"
        )
    if not isinstance(value, list) or not value:
        raise InvalidQueryError(
            f"{op} in {where} takes a non-empty list of filters, not {short_repr(value)}"
        )
    items = tuple(_parse_filter(item, f"{op}[{i}]") for i, item in enumerate(value))
    if op == "$and":
        return And(items)
    if op == "$or":
        return Or(items)
    return Not(Or(items))


def _parse_field(path: Path, value: object, where: str) -> Node:
    if isinstance(value, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in value):
        return _parse_operators(path, value, where)
    return Compare(path, "eq", _query_value(value, path, "$eq"))


def _parse_operators(path: Path, ops: Mapping[Any, Any], where: str) -> Node:
    clauses: list[Node] = []
    for op, operand in ops.items():
        if not isinstance(op, str) or not op.startswith("$"):
            raise InvalidQueryError(
                f"{where}: the value for {short_repr(str(path))} mixes operators and fields "
                f"({short_repr(op)}); "
                "use a dotted path for a nested field"
            )
        if op == "$eq":
            clauses.append(Compare(path, "eq", _query_value(operand, path, op)))
        elif op == "$ne":
            clauses.append(Not(Compare(path, "eq", _query_value(operand, path, op))))
        elif op in _RANGE_OPS:
            clauses.append(Compare(path, _RANGE_OPS[op], _range_value(operand, path, op)))
        elif op in ("$in", "$nin"):
            if not isinstance(operand, list):
                raise InvalidQueryError(
                    f"{op} on {short_repr(str(path))} takes a list, not {type(operand).__name__}"
                )
            node: Node = In(path, tuple(_query_value(v, path, op) for v in operand))
            clauses.append(node if op == "$in" else Not(node))
        elif op == "$exists":
            if not isinstance(operand, bool | int) or operand not in (0, 1):
                raise InvalidQueryError(
                    f"$exists on {short_repr(str(path))} takes true or false, not "
                    f"{short_repr(operand)}"
                )
            clauses.append(Exists(path) if operand else Not(Exists(path)))
        elif op == "$not":
            if not isinstance(operand, Mapping) or not operand:
                raise InvalidQueryError(
                    f"$not on {short_repr(str(path))} takes a dict of operators, e.g. {{'$gt': 5}}"
                )
            if not all(isinstance(k, str) and k.startswith("$") for k in operand):
                raise InvalidQueryError(
                    f"$not on {short_repr(str(path))} takes operators only, not "
                    f"{short_repr(dict(operand))}"
                )
            clauses.append(Not(_parse_operators(path, operand, where)))
        else:
            raise InvalidQueryError(
                f"unknown operator {short_repr(op)} on {short_repr(str(path))} in {where}; "
                f"known: {', '.join(_FIELD_OPS)}"
            )
    return _all_of(clauses)


def _query_value(value: object, path: Path, op: str) -> Any:
    check_value(value, f"{op} value for {short_repr(str(path))}", InvalidQueryError)
    return value


def _range_value(value: object, path: Path, op: str) -> Any:
    if kind(value) not in ("number", "string"):
        raise InvalidQueryError(
            f"{op} on {short_repr(str(path))} compares with a number or a string, not "
            f"{short_repr(value)}"
        )
    return _query_value(value, path, op)


# -- evaluation ----------------------------------------------------------------------


def candidates(doc: Mapping[str, Any], path: Path) -> list[Any]:
    """The values ``path`` reaches in ``doc``, through objects and arrays of objects."""
    out: list[Any] = []
    _walk(doc, path.segments, 0, out)
    return out


def _walk(value: Any, segments: tuple[str, ...], i: int, out: list[Any]) -> None:
    if i == len(segments):
        out.append(value)
        return
    key = segments[i]
    if isinstance(value, dict):
        if key in value:
            _walk(value[key], segments, i + 1, out)
    elif isinstance(value, list) and i > 0:
        for item in value:
            if isinstance(item, dict) and key in item:
                _walk(item[key], segments, i + 1, out)


def _expanded(values: Iterable[Any]) -> Iterator[Any]:
    for value in values:
        yield value
        if isinstance(value, list):
            yield from value


def _relates(op: CompareOp, candidate: Any, value: Any) -> bool:
    if op == "eq":
        return json_equal(candidate, value)
    kc = kind(candidate)
    if kc != kind(value) or kc not in ("number", "string"):
        return False
    if op == "lt":
        return bool(candidate < value)
    if op == "lte":
        return bool(candidate <= value)
    if op == "gt":
        return bool(candidate > value)
    return bool(candidate >= value)


def _equals_any(found: list[Any], value: Any) -> bool:
    if value is None and not found:
        return True
    return any(json_equal(c, value) for c in _expanded(found))


def matches(node: Node, doc: Mapping[str, Any]) -> bool:
    """Whether ``doc`` satisfies the filter ``node``."""
    if isinstance(node, MatchAll):
        return True
    if isinstance(node, And):
        return all(matches(item, doc) for item in node.items)
    if isinstance(node, Or):
        return any(matches(item, doc) for item in node.items)
    if isinstance(node, Not):
        return not matches(node.item, doc)
    if isinstance(node, Exists):
        return bool(candidates(doc, node.path))
    if isinstance(node, In):
        found = candidates(doc, node.path)
        return any(_equals_any(found, v) for v in node.values)
    found = candidates(doc, node.path)
    if node.op == "eq":
        return _equals_any(found, node.value)
    return any(_relates(node.op, c, node.value) for c in _expanded(found))


# -- compiling to SQL -----------------------------------------------------------------

Pred: TypeAlias = Callable[[str, str], str]
"""SQL that tests one candidate, given the two SQL expressions for it that the
dialect's :meth:`SQLCompiler.candidate` writes."""

_ID_PATH: Final = Path(("_id",))


class SQLCompiler(abc.ABC):
    """The walk of a filter into one SQL condition over a ``doc`` column, as every SQL
    dialect does it; a subclass writes the leaves.

    Shared here: ``$and``/``$or`` nest; ``$not`` counts an unknown (NULL) condition
    as false before negating; ``$in`` is an OR of equalities (false when empty); ``_id``
    has a column of its own; and :meth:`any`, a path that reaches through objects and
    arrays (see the module docstring), as an OR of arms, one per way to reach a value.
    Values become named parameters (``p0``, ``p1`` …) and array elements are read
    under aliases (``e1``, ``e2`` …), numbered in the order they are made.
    """

    TRUE: ClassVar[str]
    FALSE: ClassVar[str]

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self._aliases = 0

    def compile(self, node: Node) -> tuple[str, dict[str, Any]]:
        """The condition for ``node`` and its parameters."""
        return self.node(node), self.params

    def param(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return self.placeholder(name)

    def alias(self) -> str:
        self._aliases += 1
        return f"e{self._aliases}"

    def node(self, node: Node) -> str:
        if isinstance(node, MatchAll):
            return self.TRUE
        if isinstance(node, And):
            return "(" + " AND ".join(self.node(item) for item in node.items) + ")"
        if isinstance(node, Or):
            return "(" + " OR ".join(self.node(item) for item in node.items) + ")"
        if isinstance(node, Not):
            return f"(NOT {self.false_if_null(self.node(node.item))})"
        if node.path == _ID_PATH:
            return self.id_column(node)
        if isinstance(node, Exists):
            return self.exists(node.path)
        if isinstance(node, In):
            if not node.values:
                return self.FALSE
            return "(" + " OR ".join(self.equals(node.path, v) for v in node.values) + ")"
        if node.op == "eq":
            return self.equals(node.path, node.value)
        return self.compare(node)

    def any(self, path: Path, pred: Pred, *, expand: bool = True) -> str:
        """SQL true when some candidate at ``path`` satisfies ``pred``; with ``expand``,
        the elements of a candidate that is an array are candidates too."""
        return self._any("doc", (), path.segments, pred, expand)

    def _any(
        self,
        source: str,
        done: tuple[str, ...],
        rest: tuple[str, ...],
        pred: Pred,
        expand: bool,
    ) -> str:
        if not rest:
            direct = pred(*self.candidate(source, done))
            if not expand:
                return direct
            return self.or_element(source, done, direct, self.alias(), pred)
        through_object = self._any(source, (*done, rest[0]), rest[1:], pred, expand)
        if not done:
            return through_object
        e = self.alias()
        inner = self._any(f"{e}.value", (), rest, pred, expand)
        return self.or_object_element(source, done, through_object, e, inner)

    @abc.abstractmethod
    def placeholder(self, name: str) -> str:
        """The dialect's reference to the named parameter ``name``."""

    @abc.abstractmethod
    def false_if_null(self, sql: str) -> str:
        """``sql``, with NULL read as false."""

    @abc.abstractmethod
    def id_column(self, node: Compare | In | Exists) -> str:
        """``node`` on ``_id``: always a top-level string, kept in the ``id`` column."""

    @abc.abstractmethod
    def exists(self, path: Path) -> str:
        """``$exists: true`` on ``path``."""

    @abc.abstractmethod
    def equals(self, path: Path, value: Any) -> str:
        """``path`` equals ``value`` (a null value also matches a missing field)."""

    @abc.abstractmethod
    def compare(self, node: Compare) -> str:
        """A range comparison (``lt``, ``lte``, ``gt``, ``gte``)."""

    @abc.abstractmethod
    def candidate(self, source: str, segments: tuple[str, ...]) -> tuple[str, str]:
        """The two expressions a :data:`Pred` gets for the value at ``segments`` of the
        JSON ``source``."""

    @abc.abstractmethod
    def or_element(
        self, source: str, segments: tuple[str, ...], direct: str, alias: str, pred: Pred
    ) -> str:
        """``direct`` (the test of the value at ``segments``) OR, when that value is an
        array, the test ``pred`` of some element of it, read as ``alias``."""

    @abc.abstractmethod
    def or_object_element(
        self, source: str, segments: tuple[str, ...], through: str, alias: str, inner: str
    ) -> str:
        """``through`` (the path followed into the object at ``segments``) OR, when that
        value is an array, ``inner`` (the rest of the path, from ``{alias}.value``) for
        some object element of it, read as ``alias``."""


# -- sorting -------------------------------------------------------------------------


@dataclass(frozen=True)
class SortKey:
    path: Path
    descending: bool


def parse_sort(raw: object) -> tuple[SortKey, ...]:
    """``[("price", -1), ("name", 1)]`` as sort keys."""
    if raw is None:
        return ()
    if isinstance(raw, str | Mapping) or not isinstance(raw, Sequence):
        raise InvalidQueryError(
            "sort takes a list of (path, 1 or -1) pairs, e.g. [('price', -1)], not "
            f"{short_repr(raw)}"
        )
    keys: list[SortKey] = []
    for item in raw:
        if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2:
            raise InvalidQueryError(f"sort entry {short_repr(item)} is not a (path, 1 or -1) pair")
        path = parse_path(item[0], where="sort")
        direction = item[1]
        if isinstance(direction, bool) or direction not in (1, -1):
            raise InvalidQueryError(
                f"sort direction for {short_repr(item[0])} must be 1 or -1, not "
                f"{short_repr(direction)}"
            )
        if any(k.path == path for k in keys):
            raise InvalidQueryError(f"sort names {short_repr(item[0])} twice")
        keys.append(SortKey(path, direction == -1))
    return tuple(keys)


_MISSING: Final = object()
_RANKS: Final[Mapping[str, int]] = {
    "null": 0,
    "number": 1,
    "string": 2,
    "object": 3,
    "array": 4,
    "bool": 5,
}


def sort_value(doc: Mapping[str, Any], path: Path) -> Any:
    """The value at ``path`` following objects only, or a marker for "missing"."""
    value: Any = doc
    for segment in path.segments:
        if not isinstance(value, dict) or segment not in value:
            return _MISSING
        value = value[segment]
    return value


def sort_rank(value: Any) -> tuple[int, Any]:
    """Sort key of one value: its kind's rank, then the value where kinds are ordered."""
    if value is _MISSING:
        return (0, 0)
    rank = _RANKS[kind(value)]
    if rank in (1, 2, 5):
        return (rank, value)
    return (rank, 0)


def sort_documents(docs: Iterable[Mapping[str, Any]], keys: Sequence[SortKey]) -> list[Any]:
    """``docs`` ordered by ``keys``; ties keep the input order (stable sorts)."""
    result = list(docs)
    for key in reversed(keys):
        result.sort(key=_sort_key(key.path), reverse=key.descending)
    return result


def _sort_key(path: Path) -> Callable[[Mapping[str, Any]], tuple[int, Any]]:
    return lambda doc: sort_rank(sort_value(doc, path))
