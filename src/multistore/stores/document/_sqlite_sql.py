"""Filters, sorts and indexes as SQLite SQL over the JSON1 functions (pure: no I/O).

Every value is a named parameter (``:p0``); paths were validated by
:func:`~multistore.stores.document._values.parse_path` and are written as quoted
JSON-path literals (``'$."specs"."cpu"'``) so that the expressions match those of
the indexes :func:`index_statements` creates.

A comparison on ``a.b`` becomes an OR of *arms*, one per way the path can reach a
value: ``a`` an object or an array of objects, the value itself or an element of it.
Each arm at the top level starts with a test an index can answer: the value
expression itself, ``json_type`` of a prefix, or the range of JSON texts that start
with ``[`` (arrays), so SQLite can plan a ``MULTI-INDEX OR`` over the indexes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

from multistore.stores.document._filters import (
    Compare,
    Exists,
    In,
    Node,
    Pred,
    SortKey,
    SQLCompiler,
)
from multistore.stores.document._values import Path, encode, json_equal, kind

__all__ = [
    "JSON_EQ_FUNCTION",
    "compile_filter",
    "compile_sort",
    "index_name",
    "index_statements",
    "json_eq",
    "quote_ident",
    "type_expr",
    "value_expr",
]

#: Name of the SQL function (registered on each connection) for array/object equality.
JSON_EQ_FUNCTION: Final = "multistore_json_eq"

_NUMBER: Final = "('integer', 'real')"
_RANGE_SQL: Final = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _json_path(segments: tuple[str, ...]) -> str:
    return "$" + "".join(f'."{s}"' for s in segments)


def value_expr(path: Path, source: str = "doc") -> str:
    """The SQL value at ``path`` (what a value index on ``path`` holds)."""
    return f"json_extract({source}, {_literal(_json_path(path.segments))})"


def type_expr(path: Path, source: str = "doc") -> str:
    """The JSON type at ``path``: null, true, false, integer, real, text, array, object."""
    return f"json_type({source}, {_literal(_json_path(path.segments))})"


def json_eq(value: object, wanted: object) -> int:
    """Body of the :data:`JSON_EQ_FUNCTION`: JSON text ``value`` equals JSON text ``wanted``."""
    if not isinstance(value, str) or not isinstance(wanted, str):
        return 0
    try:
        return int(json_equal(json.loads(value), json.loads(wanted)))
    except ValueError:
        return 0


class _Compiler(SQLCompiler):
    TRUE = "1"
    FALSE = "0"

    def placeholder(self, name: str) -> str:
        return f":{name}"

    def false_if_null(self, sql: str) -> str:
        return f"IFNULL({sql}, 0)"

    def compare(self, node: Compare) -> str:
        p = self.param(node.value)
        op = _RANGE_SQL[node.op]
        types = _NUMBER if kind(node.value) == "number" else "('text')"
        return self.any(node.path, lambda t, v: f"({t} IN {types} AND {v} {op} {p})")

    def id_column(self, node: Compare | In | Exists) -> str:
        if isinstance(node, Exists):
            return "1"
        if isinstance(node, In):
            texts = [self.param(v) for v in node.values if isinstance(v, str)]
            return f"(id IN ({', '.join(texts)}))" if texts else "0"
        if not isinstance(node.value, str):
            return "0"
        op = "=" if node.op == "eq" else _RANGE_SQL[node.op]
        return f"(id {op} {self.param(node.value)})"

    def exists(self, path: Path) -> str:
        return self.any(path, lambda t, v: f"{t} IS NOT NULL", expand=False)

    def equals(self, path: Path, value: Any) -> str:
        k = kind(value)
        if k == "null":
            present = self.any(path, lambda t, v: f"{t} = 'null'")
            return f"({present} OR NOT {self.false_if_null(self.exists(path))})"
        if k == "bool":
            name = "'true'" if value else "'false'"
            return self.any(path, lambda t, v: f"{t} = {name}")
        if k in ("array", "object"):
            p = self.param(encode(value))
            json_type = "'array'" if k == "array" else "'object'"
            return self.any(
                path, lambda t, v: f"({t} = {json_type} AND {JSON_EQ_FUNCTION}({v}, {p}))"
            )
        p = self.param(value)
        types = _NUMBER if k == "number" else "('text')"
        return self.any(path, lambda t, v: f"({t} IN {types} AND {v} = {p})")

    def candidate(self, source: str, segments: tuple[str, ...]) -> tuple[str, str]:
        """The JSON type and the SQL value."""
        here = Path(segments)
        return type_expr(here, source), value_expr(here, source)

    def or_element(
        self, source: str, segments: tuple[str, ...], direct: str, alias: str, pred: Pred
    ) -> str:
        t, v = self.candidate(source, segments)
        # JSON text of an array starts with '[': a range the value index can scan.
        guard = f"{v} >= '[' AND {v} < '\\' AND " if source == "doc" else ""
        element = pred(f"{alias}.type", f"{alias}.value")
        return (
            f"({direct} OR ({guard}{t} = 'array' AND EXISTS (SELECT 1 FROM "
            f"json_each({source}, {_literal(_json_path(segments))}) AS {alias} "
            f"WHERE {element})))"
        )

    def or_object_element(
        self, source: str, segments: tuple[str, ...], through: str, alias: str, inner: str
    ) -> str:
        t = type_expr(Path(segments), source)
        return (
            f"({through} OR ({t} = 'array' AND EXISTS (SELECT 1 FROM "
            f"json_each({source}, {_literal(_json_path(segments))}) AS {alias} "
            f"WHERE CASE WHEN {alias}.type = 'object' THEN {inner} ELSE 0 END)))"
        )


def compile_filter(node: Node) -> tuple[str, dict[str, Any]]:
    """A WHERE clause for ``node`` over a table with a ``doc`` column, and its parameters."""
    return _Compiler().compile(node)


def compile_sort(keys: tuple[SortKey, ...], *, filtered: bool = True) -> str:
    """An ORDER BY list: per key the kind's rank, then the value; insertion order last.

    With a filter, the tie-break is written ``+seq``: plain ``seq`` would tempt SQLite
    into a full scan in rowid order (to skip the sort) instead of using an index."""
    parts: list[str] = []
    for key in keys:
        d = " DESC" if key.descending else ""
        t, v = type_expr(key.path), value_expr(key.path)
        parts.append(
            f"CASE {t} WHEN 'integer' THEN 1 WHEN 'real' THEN 1 WHEN 'text' THEN 2 "
            f"WHEN 'object' THEN 3 WHEN 'array' THEN 4 WHEN 'true' THEN 5 WHEN 'false' THEN 5 "
            f"ELSE 0 END{d}"
        )
        parts.append(
            f"CASE WHEN {t} IN ('integer', 'real', 'text', 'true', 'false') THEN {v} END{d}"
        )
    parts.append("+seq" if filtered else "seq")
    return ", ".join(parts)


def index_name(table: str, what: str, path: Path | None = None) -> str:
    digest = hashlib.sha1(f"{table}|{what}|{path}".encode(), usedforsecurity=False).hexdigest()
    return f"ix_{digest[:16]}"


def index_statements(table: str, path: Path) -> tuple[str, list[str]]:
    """The value index's name and the DDL for it and for ``json_type`` of each prefix."""
    name = index_name(table, "value", path)
    statements = [
        f"CREATE INDEX IF NOT EXISTS {quote_ident(name)} ON {quote_ident(table)} "
        f"({value_expr(path)})"
    ]
    for prefix in path.prefixes:
        statements.append(
            f"CREATE INDEX IF NOT EXISTS {quote_ident(index_name(table, 'type', prefix))} "
            f"ON {quote_ident(table)} ({type_expr(prefix)})"
        )
    return name, statements
