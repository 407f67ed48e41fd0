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
from collections.abc import Callable
from typing import Any, Final

from multistore.stores.document._filters import (
    And,
    Compare,
    Exists,
    In,
    MatchAll,
    Node,
    Not,
    Or,
    SortKey,
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
_ID_PATH: Final = Path(("_id",))
_RANGE_SQL: Final = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}

Pred = Callable[[str, str], str]
"""SQL that tests one candidate, given SQL for its JSON type and its SQL value."""


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


class _Compiler:
    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self._aliases = 0

    def param(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def alias(self) -> str:
        self._aliases += 1
        return f"e{self._aliases}"

    def node(self, node: Node) -> str:
        if isinstance(node, MatchAll):
            return "1"
        if isinstance(node, And):
            return "(" + " AND ".join(self.node(item) for item in node.items) + ")"
        if isinstance(node, Or):
            return "(" + " OR ".join(self.node(item) for item in node.items) + ")"
        if isinstance(node, Not):
            return f"(NOT IFNULL({self.node(node.item)}, 0))"
        if node.path == _ID_PATH:
            return self.id_column(node)
        if isinstance(node, Exists):
            return self.exists(node.path)
        if isinstance(node, In):
            if not node.values:
                return "0"
            return "(" + " OR ".join(self.equals(node.path, v) for v in node.values) + ")"
        if node.op == "eq":
            return self.equals(node.path, node.value)
        p = self.param(node.value)
        op = _RANGE_SQL[node.op]
        types = _NUMBER if kind(node.value) == "number" else "('text')"
        return self.any(node.path, lambda t, v: f"({t} IN {types} AND {v} {op} {p})")

    def id_column(self, node: Compare | In | Exists) -> str:
        """``_id`` is always a top-level string, kept in the indexed ``id`` column too."""
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
            return f"({present} OR NOT IFNULL({self.exists(path)}, 0))"
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

    def any(self, path: Path, pred: Pred, *, expand: bool = True) -> str:
        """SQL true when some candidate at ``path`` satisfies ``pred``."""
        return self._any("doc", (), path.segments, pred, expand)

    def _any(
        self,
        source: str,
        done: tuple[str, ...],
        rest: tuple[str, ...],
        pred: Pred,
        expand: bool,
    ) -> str:
        here = Path(done)
        t, v = type_expr(here, source), value_expr(here, source)
        if not rest:
            direct = pred(t, v)
            if not expand:
                return direct
            e = self.alias()
            # JSON text of an array starts with '[': a range the value index can scan.
            guard = f"{v} >= '[' AND {v} < '\\' AND " if source == "doc" else ""
            element = pred(f"{e}.type", f"{e}.value")
            return (
                f"({direct} OR ({guard}{t} = 'array' AND EXISTS (SELECT 1 FROM "
                f"json_each({source}, {_literal(_json_path(done))}) AS {e} WHERE {element})))"
            )
        through_object = self._any(source, (*done, rest[0]), rest[1:], pred, expand)
        if not done:
            return through_object
        e = self.alias()
        inner = self._any(f"{e}.value", (), rest, pred, expand)
        return (
            f"({through_object} OR ({t} = 'array' AND EXISTS (SELECT 1 FROM "
            f"json_each({source}, {_literal(_json_path(done))}) AS {e} "
            f"WHERE CASE WHEN {e}.type = 'object' THEN {inner} ELSE 0 END)))"
        )


def compile_filter(node: Node) -> tuple[str, dict[str, Any]]:
    """A WHERE clause for ``node`` over a table with a ``doc`` column, and its parameters."""
    compiler = _Compiler()
    return compiler.node(node), compiler.params


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
