"""Filters, sorts and indexes as PostgreSQL SQL over ``jsonb`` (pure: no I/O).

Every value is a named parameter (``%(p0)s``); paths were validated by
:func:`~multistore.stores.document._values.parse_path` and are written as quoted
``text[]`` literals (``doc #> '{"specs","cpu"}'``) so that the expressions match
those of the indexes :func:`index_statements` creates.

- Equality with a scalar (and ``$in`` of scalars) is an OR of containment tests
  ``doc @> '{"reviews": [{"rating": 5}]}'``, one per shape the path can take through
  objects and arrays; the collection's GIN index (``jsonb_path_ops``) answers each.
- Ranges, ``$exists`` and equality with arrays or objects expand the path into arms
  like the SQLite compiler does; the value index (``doc #> path``), the string index
  (``(doc #>> path) COLLATE "C"``: strings compare by code point, whatever the
  database's collation) and ``jsonb_typeof`` of each prefix let the planner
  combine index scans with a BitmapOr.
"""

from __future__ import annotations

import hashlib
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
from multistore.stores.document._values import Path, encode, kind

__all__ = [
    "compile_filter",
    "compile_sort",
    "gin_statement",
    "index_name",
    "index_statements",
    "quote_ident",
]

_RANGE_SQL: Final = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _path_literal(segments: tuple[str, ...]) -> str:
    inner = ",".join('"' + s + '"' for s in segments)
    return "'{" + inner.replace("'", "''") + "}'"


def value_expr(path: Path, source: str = "doc") -> str:
    """The ``jsonb`` value at ``path``."""
    if not path.segments:
        return source
    return f"({source} #> {_path_literal(path.segments)})"


def text_expr(path: Path, source: str = "doc") -> str:
    """The value at ``path`` as text in the "C" collation (strings by code point)."""
    return f'(({source} #>> {_path_literal(path.segments)}) COLLATE "C")'


def type_expr(path: Path, source: str = "doc") -> str:
    return f"jsonb_typeof({value_expr(path, source)})"


def _shapes(segments: tuple[str, ...], value: Any) -> list[Any]:
    """Every JSON object that contains ``value`` at ``segments`` through objects or arrays."""

    def below(i: int) -> list[Any]:
        if i == len(segments):
            return [value, [value]]
        objects = [{segments[i]: inner} for inner in below(i + 1)]
        return objects + [[obj] for obj in objects]

    return [{segments[0]: inner} for inner in below(1)]


class _Compiler(SQLCompiler):
    TRUE = "true"
    FALSE = "false"

    def placeholder(self, name: str) -> str:
        return f"%({name})s"

    def false_if_null(self, sql: str) -> str:
        return f"COALESCE({sql}, false)"

    def compare(self, node: Compare) -> str:
        op = _RANGE_SQL[node.op]
        if kind(node.value) == "number":
            p = self.param(encode(node.value))
            return self.any(
                node.path, lambda x, s: f"(jsonb_typeof({x}) = 'number' AND {x} {op} {p}::jsonb)"
            )
        p = self.param(node.value)
        return self.any(
            node.path, lambda x, s: f"(jsonb_typeof({x}) = 'string' AND {s} {op} {p}::text)"
        )

    def id_column(self, node: Compare | In | Exists) -> str:
        if isinstance(node, Exists):
            return "true"
        if isinstance(node, In):
            texts = [v for v in node.values if isinstance(v, str)]
            return f"(id = ANY({self.param(texts)}::text[]))" if texts else "false"
        if not isinstance(node.value, str):
            return "false"
        if node.op == "eq":
            return f"(id = {self.param(node.value)}::text)"
        return f'(id COLLATE "C" {_RANGE_SQL[node.op]} {self.param(node.value)}::text)'

    def exists(self, path: Path) -> str:
        return self.any(path, lambda x, s: f"{x} IS NOT NULL", expand=False)

    def equals(self, path: Path, value: Any) -> str:
        if kind(value) in ("array", "object"):
            p = self.param(encode(value))
            return self.any(path, lambda x, s: f"{x} = {p}::jsonb")
        arms = [
            f"doc @> {self.param(encode(shape))}::jsonb" for shape in _shapes(path.segments, value)
        ]
        contained = "(" + " OR ".join(arms) + ")"
        if value is None:
            return f"({contained} OR NOT {self.false_if_null(self.exists(path))})"
        return contained

    def candidate(self, source: str, segments: tuple[str, ...]) -> tuple[str, str]:
        """The ``jsonb`` value and its text."""
        here = Path(segments)
        return value_expr(here, source), text_expr(here, source)

    def or_element(
        self, source: str, segments: tuple[str, ...], direct: str, alias: str, pred: Pred
    ) -> str:
        x = value_expr(Path(segments), source)
        # Non-empty arrays sort after every boolean and before every object, so
        # the value index can find them with a range scan.
        guard = (
            f"{x} > 'true'::jsonb AND {x} < '{{}}'::jsonb"
            if source == "doc"
            else f"jsonb_typeof({x}) = 'array'"
        )
        element = pred(f"{alias}.value", f"(({alias}.value #>> '{{}}') COLLATE \"C\")")
        return f"({direct} OR ({guard} AND EXISTS ({_elements(x, alias)} WHERE {element})))"

    def or_object_element(
        self, source: str, segments: tuple[str, ...], through: str, alias: str, inner: str
    ) -> str:
        x = value_expr(Path(segments), source)
        return (
            f"({through} OR (jsonb_typeof({x}) = 'array' AND EXISTS "
            f"({_elements(x, alias)} WHERE jsonb_typeof({alias}.value) = 'object' AND {inner})))"
        )


def _elements(x: str, alias: str) -> str:
    return (
        f"SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof({x}) = 'array' "
        f"THEN {x} ELSE '[]'::jsonb END) AS {alias}(value)"
    )


def compile_filter(node: Node) -> tuple[str, dict[str, Any]]:
    """A WHERE clause for ``node`` over a table with a ``doc`` column, and its parameters."""
    return _Compiler().compile(node)


def compile_sort(keys: tuple[SortKey, ...]) -> str:
    """An ORDER BY list: per key the kind's rank, then the value; insertion order last."""
    parts: list[str] = []
    for key in keys:
        d = " DESC" if key.descending else ""
        x, t = value_expr(key.path), type_expr(key.path)
        parts.append(
            f"CASE {t} WHEN 'number' THEN 1 WHEN 'string' THEN 2 WHEN 'object' THEN 3 "
            f"WHEN 'array' THEN 4 WHEN 'boolean' THEN 5 ELSE 0 END{d}"
        )
        parts.append(f"CASE WHEN {t} IN ('number', 'boolean') THEN {x} END{d}")
        parts.append(f"CASE WHEN {t} = 'string' THEN {text_expr(key.path)} END{d}")
    parts.append("seq")
    return ", ".join(parts)


def index_name(table: str, what: str, path: Path | None = None) -> str:
    digest = hashlib.sha1(f"{table}|{what}|{path}".encode(), usedforsecurity=False).hexdigest()
    return f"ix_{digest[:16]}"


def gin_statement(table: str) -> str:
    """The GIN index every collection gets: containment (``@>``) on the whole document."""
    name = index_name(table, "gin")
    return (
        f"CREATE INDEX IF NOT EXISTS {quote_ident(name)} ON {quote_ident(table)} "
        "USING gin (doc jsonb_path_ops)"
    )


def index_statements(table: str, path: Path) -> tuple[str, list[str]]:
    """The value index's name, and DDL for it, the string index and prefix type indexes."""
    name = index_name(table, "value", path)
    t = quote_ident(table)
    statements = [
        f"CREATE INDEX IF NOT EXISTS {quote_ident(name)} ON {t} ({value_expr(path)})",
        f"CREATE INDEX IF NOT EXISTS {quote_ident(index_name(table, 'text', path))} "
        f"ON {t} ({text_expr(path)})",
    ]
    for prefix in path.prefixes:
        statements.append(
            f"CREATE INDEX IF NOT EXISTS {quote_ident(index_name(table, 'type', prefix))} "
            f"ON {t} ({type_expr(prefix)})"
        )
    return name, statements
