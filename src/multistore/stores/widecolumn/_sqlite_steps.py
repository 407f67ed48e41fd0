"""The embedded wide-column backend's SQL and plans, shared by its async and sync
drivers (:mod:`._sqlite`): one SQLite table per wide-column table.

Table ``t`` becomes ``"wc_t"``, a ``WITHOUT ROWID, STRICT`` table whose primary key
is the partition key columns followed by the clustering columns, each clustering
column in its declared order (``PRIMARY KEY (sensor_id, "timestamp" DESC)``), so
a partition is one run of the primary-key B-tree already in clustering order and
``select`` is one index range scan. A hidden column ``_ms_expires_at`` (epoch
seconds, NULL for no TTL) hides expired rows from reads; ``purge_expired``
deletes them. Schemas are recorded as JSON in ``multistore_wc_tables`` so a
reopened store (or another process) knows them.

Types: text → TEXT, int → INTEGER, float → REAL, bool → INTEGER 0/1,
timestamp → INTEGER microseconds since the epoch (UTC), blob → BLOB. Text
clustering columns sort by code point (SQLite's BINARY collation on UTF-8).

Each operation is a plan (:class:`WideColumnSteps`): a generator that yields the
steps to run on the connection, so that the schema lookup (which may read the
catalog) and the work share one piece of code on both APIs.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from multistore.errors import (
    InvalidValueError,
    MultistoreError,
    NotFoundError,
)
from multistore.stores._limits import short_repr
from multistore.stores._sqlite_common import Plan, sqlite_error, write
from multistore.stores.widecolumn._api import (
    Condition,
    Order,
    TableSchema,
    check_identifier,
)
from multistore.stores.widecolumn._query import (
    SelectPlan,
    check_existing,
    check_rows,
    check_ttl,
    from_micros,
    plan_delete,
    plan_select,
    to_micros,
)
from multistore.urls import StoreURL

__all__ = ["WideColumnSteps", "prepare"]

_META: Final = """
CREATE TABLE IF NOT EXISTS multistore_wc_tables (
    name TEXT PRIMARY KEY COLLATE NOCASE NOT NULL,
    schema TEXT NOT NULL
) WITHOUT ROWID
"""
_EXPIRES: Final = "_ms_expires_at"
_SQL_TYPES: Final = {
    "text": "TEXT",
    "int": "INTEGER",
    "float": "REAL",
    "bool": "INTEGER",
    "timestamp": "INTEGER",
    "blob": "BLOB",
}


def _q(identifier: str) -> str:
    """A checked identifier, double-quoted (identifiers are [A-Za-z_][A-Za-z0-9_]*)."""
    return f'"{identifier}"'


def _table(name: str) -> str:
    return _q(f"wc_{name}")


def _to_sql(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "timestamp":
        return to_micros(value)
    if kind == "bool":
        return int(value)
    return value


#: How to turn a stored value back into the column's Python type (None: as stored).
_FROM_SQL: Final[dict[str, Callable[[Any], Any] | None]] = {
    "text": None,
    "int": None,
    "float": float,
    "bool": bool,
    "timestamp": from_micros,
    "blob": bytes,
}


def _decode_rows(
    columns: tuple[str, ...], kinds: list[str], rows: list[tuple[Any, ...]]
) -> list[dict[str, Any]]:
    convert: list[tuple[int, Callable[[Any], Any]]] = [
        (i, fn) for i, k in enumerate(kinds) if (fn := _FROM_SQL[k]) is not None
    ]
    result = []
    for row in rows:
        values = list(row)
        for i, fn in convert:
            if values[i] is not None:
                values[i] = fn(values[i])
        result.append(dict(zip(columns, values, strict=True)))
    return result


class WideColumnSteps:
    """The plans of the wide-column operations, and the schemas they know (a cache of
    ``multistore_wc_tables``, reloaded when a table is not in it)."""

    def __init__(self, url: StoreURL) -> None:
        self.url = url
        self.schemas: dict[str, TableSchema] = {}

    def error(self, exc: sqlite3.Error) -> MultistoreError:
        """The error for a driver error (a table dropped meanwhile is NotFoundError)."""
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and text.startswith("no such table: wc_"):
            name = text.removeprefix("no such table: wc_")
            self.schemas.pop(name, None)
            return NotFoundError(f"wide-column table {short_repr(name)} does not exist")
        return sqlite_error(self.url, exc)

    def load(self) -> Plan[None]:
        self.schemas = yield _load_schemas

    def schema(self, name: str) -> Plan[TableSchema]:
        check_identifier(name, "table name")
        schema = self.schemas.get(name)
        if schema is None:  # perhaps created by another store on the same file
            yield from self.load()
            schema = self.schemas.get(name)
        if schema is None:
            raise NotFoundError(
                f"wide-column table {short_repr(name)} does not exist in {self.url}"
            )
        return schema

    def create_table(self, schema: TableSchema, if_not_exists: bool) -> Plan[None]:
        if not isinstance(schema, TableSchema):
            raise InvalidValueError(f"create_table takes a TableSchema, not {short_repr(schema)}")
        flag = bool(if_not_exists)
        yield lambda conn: write(conn, _create_table, schema, flag)
        self.schemas[schema.name] = schema

    def drop_table(self, name: str, if_exists: bool) -> Plan[None]:
        check_identifier(name, "table name")
        dropped = yield lambda conn: write(conn, _drop_table, name)
        self.schemas.pop(name, None)
        if not dropped and not if_exists:
            raise NotFoundError(
                f"wide-column table {short_repr(name)} does not exist in {self.url}"
            )

    def tables(self) -> Plan[list[str]]:
        yield from self.load()
        return sorted(self.schemas)

    def upsert_many(
        self, table: str, rows: Sequence[Mapping[str, Any]], ttl: float | None
    ) -> Plan[None]:
        schema = yield from self.schema(table)
        seconds = check_ttl(ttl)
        checked = check_rows(schema, rows)
        if not checked:
            return
        columns = list(schema.columns)
        values = [[_to_sql(schema.columns[c], r[c]) for c in columns] for r in checked]
        names = ", ".join([*map(_q, columns), _EXPIRES])
        marks = ", ".join("?" * (len(columns) + 1))
        sql = f"INSERT OR REPLACE INTO {_table(schema.name)} ({names}) VALUES ({marks})"
        yield lambda conn: write(conn, _upsert, sql, values, seconds)

    def select(
        self,
        table: str,
        partition: Mapping[str, Any],
        where: Sequence[Condition],
        order: Order | None,
        limit: int | None,
        columns: Sequence[str] | None,
    ) -> Plan[list[dict[str, Any]]]:
        schema = yield from self.schema(table)
        plan = plan_select(schema, partition, where, order, limit, columns)
        sql, params = _select_sql(plan)
        rows = yield lambda conn: _select(conn, sql, params)
        return _decode_rows(plan.columns, [schema.columns[c] for c in plan.columns], rows)

    def delete(
        self, table: str, partition: Mapping[str, Any], clustering: Mapping[str, Any] | None
    ) -> Plan[None]:
        schema = yield from self.schema(table)
        values, prefix = plan_delete(schema, partition, clustering)
        names = [*schema.partition_key, *schema.clustering_names[: len(prefix)]]
        pairs = zip(names, (*values, *prefix), strict=True)
        params = [_to_sql(schema.columns[c], v) for c, v in pairs]
        conds = " AND ".join(f"{_q(c)} = ?" for c in names)
        sql = f"DELETE FROM {_table(schema.name)} WHERE {conds}"
        yield lambda conn: write(conn, _execute, sql, params)

    def purge_expired(self) -> Plan[int]:
        removed = yield lambda conn: write(conn, _purge)
        return int(removed)


def _select_sql(plan: SelectPlan) -> tuple[str, list[Any]]:
    """SQL and parameters for a plan; the first parameter (now) is added by the worker."""
    schema = plan.schema
    conds = [f"({_EXPIRES} IS NULL OR {_EXPIRES} > ?)"]
    params: list[Any] = []
    for column, value in zip(schema.partition_key, plan.partition, strict=True):
        conds.append(f"{_q(column)} = ?")
        params.append(_to_sql(schema.columns[column], value))
    for column, value in zip(schema.clustering_names, plan.prefix, strict=False):
        conds.append(f"{_q(column)} = ?")
        params.append(_to_sql(schema.columns[column], value))
    if plan.range_column is not None:
        kind = schema.columns[plan.range_column]
        for bound, op in ((plan.lower, ">"), (plan.upper, "<")):
            if bound is not None:
                conds.append(f"{_q(plan.range_column)} {op}{'=' if bound.inclusive else ''} ?")
                params.append(_to_sql(kind, bound.value))
    sql = f"SELECT {', '.join(map(_q, plan.columns))} FROM {_table(schema.name)} "
    sql += f"WHERE {' AND '.join(conds)}"
    if schema.clustering:
        flip = {"asc": "DESC", "desc": "ASC"} if plan.reverse else {"asc": "ASC", "desc": "DESC"}
        sql += " ORDER BY " + ", ".join(f"{_q(c.name)} {flip[c.order]}" for c in schema.clustering)
    if plan.limit is not None:
        sql += " LIMIT ?"
        params.append(plan.limit)
    return sql, params


# -- the steps' work: each function gets the connection first ------------------------


def prepare(conn: sqlite3.Connection) -> None:
    conn.execute(_META)


def _load_schemas(conn: sqlite3.Connection) -> dict[str, TableSchema]:
    rows = conn.execute("SELECT schema FROM multistore_wc_tables")
    schemas = [TableSchema.from_json(json.loads(text)) for (text,) in rows]
    return {s.name: s for s in schemas}


def _create_table(
    conn: sqlite3.Connection, now: float, schema: TableSchema, if_not_exists: bool
) -> None:
    row = conn.execute(
        "SELECT schema FROM multistore_wc_tables WHERE name = ?", (schema.name,)
    ).fetchone()
    if row is not None:
        check_existing(TableSchema.from_json(json.loads(row[0])), schema, if_not_exists)
        return
    columns = [
        f"{_q(c)} {_SQL_TYPES[kind]}{' NOT NULL' if c in schema.primary_key else ''}"
        for c, kind in schema.columns.items()
    ]
    key = [_q(c) for c in schema.partition_key]
    key += [f"{_q(c.name)} {c.order.upper()}" for c in schema.clustering]
    conn.execute(
        f"CREATE TABLE {_table(schema.name)} ({', '.join(columns)}, {_EXPIRES} REAL, "
        f"PRIMARY KEY ({', '.join(key)})) WITHOUT ROWID, STRICT"
    )
    conn.execute(
        "INSERT INTO multistore_wc_tables (name, schema) VALUES (?, ?)",
        (schema.name, json.dumps(schema.to_json())),
    )


def _drop_table(conn: sqlite3.Connection, now: float, name: str) -> bool:
    row = conn.execute("SELECT name FROM multistore_wc_tables WHERE name = ?", (name,)).fetchone()
    if row is None or row[0] != name:
        return False
    conn.execute(f"DROP TABLE IF EXISTS {_table(name)}")
    conn.execute("DELETE FROM multistore_wc_tables WHERE name = ?", (name,))
    return True


def _upsert(
    conn: sqlite3.Connection, now: float, sql: str, rows: list[list[Any]], ttl: float | None
) -> None:
    expires = None if ttl is None else now + ttl
    conn.executemany(sql, [(*row, expires) for row in rows])


def _select(conn: sqlite3.Connection, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(sql, (time.time(), *params)).fetchall()


def _execute(conn: sqlite3.Connection, now: float, sql: str, params: list[Any]) -> None:
    conn.execute(sql, params)


def _purge(conn: sqlite3.Connection, now: float) -> int:
    removed = 0
    for name in _load_schemas(conn):
        cur = conn.execute(f"DELETE FROM {_table(name)} WHERE {_EXPIRES} <= ?", (now,))
        removed += cur.rowcount
    return removed
