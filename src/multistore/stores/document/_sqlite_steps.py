"""The embedded document backend's SQL work, shared by its async and sync drivers.

Each collection is a table ``{prefix}doc_{name}``::

    seq INTEGER PRIMARY KEY      insertion order (ties in sorts, order without a sort)
    id  TEXT NOT NULL UNIQUE     the document's _id
    doc TEXT NOT NULL            the document as compact JSON, _id included

and ``{prefix}doc__indexes`` lists the indexes made by ``create_index``: an
expression index on ``json_extract(doc, '$."a"."b"')`` plus one on ``json_type`` of
each prefix (``a``), which the compiled filters (:mod:`._sqlite_sql`) can use.

Writes that read first (``update``) and multi-row writes run in one ``BEGIN
IMMEDIATE`` transaction, so they cannot interleave with another writer, in this
process or another.

:class:`DocumentSteps` turns each backend hook's checked arguments into its *step*,
a function of the connection; the async driver runs it on the store's worker
thread, the sync driver on the calling thread (:mod:`._sqlite`).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from typing import Any, Final, TypeVar

from multistore.errors import (
    DuplicateKeyError,
    InvalidURLError,
    MultistoreError,
    NotFoundError,
)
from multistore.stores._limits import short_repr
from multistore.stores._sqlite_common import sqlite_error, transaction
from multistore.stores.document import _sqlite_sql as sql
from multistore.stores.document._api import Document, IndexInfo
from multistore.stores.document._filters import MatchAll, Node, SortKey
from multistore.stores.document._updates import ID, check_collection
from multistore.stores.document._values import Path, encode
from multistore.urls import StoreURL

__all__ = ["DocumentSteps", "Step", "check_prefix", "document_error", "prepare"]

T = TypeVar("T")
Step = Callable[[sqlite3.Connection], T]
"""One hook's work on the connection."""

_PREFIX: Final = re.compile(r"[A-Za-z0-9_]*")


def check_prefix(url: StoreURL) -> str:
    """The URL's table-name prefix, checked."""
    prefix = url.str_option("prefix", "")
    if not _PREFIX.fullmatch(prefix) or len(prefix) > 32:
        raise InvalidURLError(
            f"prefix={short_repr(prefix)}: use up to 32 letters, digits or '_' for table names"
        )
    return prefix


def document_error(url: StoreURL, exc: sqlite3.Error, subject: str | None) -> MultistoreError:
    """The error for a driver error in work on collection ``subject``."""
    if subject is not None and str(exc).startswith("no such table"):
        return NotFoundError(f"collection {short_repr(subject)} does not exist in {url}")
    return sqlite_error(url, exc)


class DocumentSteps:
    """The step of each document hook, for a table-name ``prefix``."""

    __slots__ = ("catalog", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.catalog = f"{prefix}doc__indexes"

    def prepare(self, conn: sqlite3.Connection) -> None:
        """Set up a newly opened connection (functions, the index catalog)."""
        prepare(conn, self.catalog)

    def _table(self, name: str) -> str:
        return f"{self.prefix}doc_{name}"

    def _quoted(self, name: str) -> str:
        return sql.quote_ident(self._table(name))

    def create_collection(self, name: str) -> Step[bool]:
        table = self._table(name)
        return lambda conn: _create_table(conn, table)

    def drop_collection(self, name: str) -> Step[bool]:
        table, catalog = self._table(name), self.catalog
        return lambda conn: _drop_table(conn, table, catalog, name)

    def collections(self) -> Step[list[str]]:
        start = f"{self.prefix}doc_"
        return lambda conn: _list_tables(conn, start)

    def insert(self, name: str, docs: list[Document]) -> Step[None]:
        rows = [(doc[ID], encode(doc)) for doc in docs]
        table = self._table(name)
        return lambda conn: _insert(conn, table, name, rows)

    def get(self, name: str, doc_id: str) -> Step[Document | None]:
        query = f"SELECT doc FROM {self._quoted(name)} WHERE id = ?"

        def step(conn: sqlite3.Connection) -> Document | None:
            row = conn.execute(query, (doc_id,)).fetchone()
            return None if row is None else _decode(row[0])

        return step

    def replace(self, name: str, doc: Document) -> Step[bool]:
        query = f"UPDATE {self._quoted(name)} SET doc = ? WHERE id = ?"
        params = (encode(doc), doc[ID])
        return lambda conn: conn.execute(query, params).rowcount > 0

    def modify(self, name: str, doc_id: str, change: Callable[[Document], Document]) -> Step[bool]:
        table = self._table(name)
        return lambda conn: _modify(conn, table, doc_id, change)

    def delete(self, name: str, doc_id: str) -> Step[bool]:
        query = f"DELETE FROM {self._quoted(name)} WHERE id = ?"
        return lambda conn: conn.execute(query, (doc_id,)).rowcount > 0

    def _select(
        self, name: str, node: Node, sort: tuple[SortKey, ...], skip: int, limit: int | None
    ) -> tuple[str, dict[str, Any]]:
        where, params = sql.compile_filter(node)
        params["skip"] = skip
        params["limit"] = -1 if limit is None else limit
        query = (
            f"SELECT doc FROM {self._quoted(name)} WHERE {where} "
            f"ORDER BY {sql.compile_sort(sort, filtered=not isinstance(node, MatchAll))} "
            "LIMIT :limit OFFSET :skip"
        )
        return query, params

    def find(
        self, name: str, node: Node, sort: tuple[SortKey, ...], skip: int, limit: int | None
    ) -> Step[list[Document]]:
        query, params = self._select(name, node, sort, skip, limit)
        return lambda conn: [_decode(row[0]) for row in conn.execute(query, params)]

    def explain(self, name: str, node: Node, sort: tuple[SortKey, ...]) -> Step[str]:
        query, params = self._select(name, node, sort, 0, None)
        plan = f"EXPLAIN QUERY PLAN {query}"
        return lambda conn: "\n".join(str(row[3]) for row in conn.execute(plan, params))

    def count(self, name: str, node: Node) -> Step[int]:
        where, params = sql.compile_filter(node)
        query = f"SELECT count(*) FROM {self._quoted(name)} WHERE {where}"
        return lambda conn: int(conn.execute(query, params).fetchone()[0])

    def create_index(self, name: str, path: Path) -> Step[IndexInfo]:
        table, catalog = self._table(name), self.catalog
        index, statements = sql.index_statements(table, path)

        def step(conn: sqlite3.Connection) -> IndexInfo:
            _create_index(conn, table, catalog, name, path, index, statements)
            return IndexInfo(collection=name, path=str(path), name=index)

        return step

    def indexes(self, name: str) -> Step[list[IndexInfo]]:
        table, catalog = self._table(name), self.catalog

        def step(conn: sqlite3.Connection) -> list[IndexInfo]:
            rows = _list_indexes(conn, table, catalog, name)
            return [IndexInfo(collection=name, path=path, name=index) for path, index in rows]

        return step


def _decode(text: str) -> Document:
    doc: Document = json.loads(text)
    return doc


# -- the steps' work: each function gets the connection first -------------------------


def prepare(conn: sqlite3.Connection, catalog: str) -> None:
    conn.create_function(sql.JSON_EQ_FUNCTION, 2, sql.json_eq, deterministic=True)
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {sql.quote_ident(catalog)} (collection TEXT NOT NULL, "
        "path TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (collection, path))"
    )


def _table_exists(conn: sqlite3.Connection, table: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return conn.execute(query, (table,)).fetchone() is not None


def _table_ddl(table: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {sql.quote_ident(table)} "
        "(seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc TEXT NOT NULL)"
    )


def _create_table(conn: sqlite3.Connection, table: str) -> bool:
    with transaction(conn):
        if _table_exists(conn, table):
            return False
        conn.execute(_table_ddl(table))
        return True


def _drop_table(conn: sqlite3.Connection, table: str, catalog: str, name: str) -> bool:
    with transaction(conn):
        if not _table_exists(conn, table):
            return False
        conn.execute(f"DROP TABLE {sql.quote_ident(table)}")
        conn.execute(f"DELETE FROM {sql.quote_ident(catalog)} WHERE collection = ?", (name,))
        return True


def _list_tables(conn: sqlite3.Connection, start: str) -> list[str]:
    query = "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, ?) = ?"
    names = [row[0][len(start) :] for row in conn.execute(query, (len(start), start))]
    return [n for n in names if _is_collection(n)]


def _is_collection(name: str) -> bool:
    try:
        check_collection(name)
    except MultistoreError:
        return False
    return True


def _insert(conn: sqlite3.Connection, table: str, name: str, rows: list[tuple[str, str]]) -> None:
    query = f"INSERT INTO {sql.quote_ident(table)} (id, doc) VALUES (?, ?)"

    def write() -> None:
        if len(rows) == 1:
            _insert_row(conn, query, name, rows[0])
            return
        with transaction(conn):
            for row in rows:
                _insert_row(conn, query, name, row)

    try:
        write()
    except sqlite3.OperationalError as exc:
        if not str(exc).startswith("no such table"):
            raise
        _create_table(conn, table)
        write()


def _insert_row(conn: sqlite3.Connection, query: str, name: str, row: tuple[str, str]) -> None:
    try:
        conn.execute(query, row)
    except sqlite3.IntegrityError as exc:
        raise DuplicateKeyError(
            f"a document with _id {short_repr(row[0])} already exists in {short_repr(name)}"
        ) from exc


def _modify(
    conn: sqlite3.Connection,
    table: str,
    doc_id: str,
    change: Callable[[Document], Document],
) -> bool:
    t = sql.quote_ident(table)
    with transaction(conn):
        row = conn.execute(f"SELECT doc FROM {t} WHERE id = ?", (doc_id,)).fetchone()
        if row is None:
            return False
        new = change(_decode(row[0]))
        conn.execute(f"UPDATE {t} SET doc = ? WHERE id = ?", (encode(new), doc_id))
        return True


def _create_index(
    conn: sqlite3.Connection,
    table: str,
    catalog: str,
    name: str,
    path: Path,
    index: str,
    statements: list[str],
) -> None:
    with transaction(conn):
        conn.execute(_table_ddl(table))
        for statement in statements:
            conn.execute(statement)
        conn.execute(
            f"INSERT OR IGNORE INTO {sql.quote_ident(catalog)} (collection, path, name) "
            "VALUES (?, ?, ?)",
            (name, str(path), index),
        )


def _list_indexes(
    conn: sqlite3.Connection, table: str, catalog: str, name: str
) -> list[tuple[str, str]]:
    if not _table_exists(conn, table):
        raise NotFoundError(f"collection {short_repr(name)} does not exist")
    query = f"SELECT path, name FROM {sql.quote_ident(catalog)} WHERE collection = ?"
    return [(row[0], row[1]) for row in conn.execute(query, (name,))]
