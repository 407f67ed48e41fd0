"""The embedded document backend: SQLite with its JSON1 functions.

Each collection is a table ``{prefix}doc_{name}``::

    seq INTEGER PRIMARY KEY      insertion order (ties in sorts, order without a sort)
    id  TEXT NOT NULL UNIQUE     the document's _id
    doc TEXT NOT NULL            the document as compact JSON, _id included

and ``{prefix}doc__indexes`` lists the indexes made by ``create_index``: an
expression index on ``json_extract(doc, '$."a"."b"')`` plus one on ``json_type`` of
each prefix (``a``), which the compiled filters (:mod:`._sqlite_sql`) can use.

Writes that read first (``update``) and multi-row writes run in one ``BEGIN
IMMEDIATE`` transaction, so they cannot interleave with another writer, in this
process or another. The connection lives on a
:class:`~multistore.stores._worker.Worker` thread.

URL: ``sqlite:///path.db`` (``sqlite:///:memory:`` for a private in-memory store).
Options: ``timeout`` (busy timeout, default 5 s), ``journal_mode`` (default
``wal``), ``synchronous`` (default ``normal``), ``create`` (default true; false
refuses to create a missing file), ``prefix`` (prepended to table names).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from typing import Any, Final, Self

from multistore.errors import (
    DuplicateKeyError,
    InvalidURLError,
    MultistoreError,
    NotFoundError,
)
from multistore.stores._limits import short_repr
from multistore.stores._sqlite_common import (
    SQLiteStore,
    connect,
    sqlite_error,
    start,
    transaction,
)
from multistore.stores._worker import Worker
from multistore.stores.document import _sqlite_sql as sql
from multistore.stores.document._api import Document, DocumentStore, IndexInfo
from multistore.stores.document._filters import MatchAll, Node, SortKey
from multistore.stores.document._updates import ID, check_collection
from multistore.stores.document._values import Path, encode
from multistore.urls import StoreURL

__all__ = ["SQLiteDocumentStore"]

_PREFIX: Final = re.compile(r"[A-Za-z0-9_]*")


class SQLiteDocumentStore(SQLiteStore, DocumentStore):
    """Document store in one SQLite file (``sqlite:///path.db``)."""

    _noun = "document store"

    def __init__(self, url: StoreURL, worker: Worker, conn: sqlite3.Connection) -> None:
        super().__init__(url, worker, conn)
        self._prefix = url.str_option("prefix", "")
        self._catalog = f"{self._prefix}doc__indexes"

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        prefix = url.str_option("prefix", "")
        if not _PREFIX.fullmatch(prefix) or len(prefix) > 32:
            raise InvalidURLError(
                f"prefix={short_repr(prefix)}: use up to 32 letters, digits or '_' for table names"
            )
        catalog = f"{prefix}doc__indexes"
        worker, conn = await start(
            "document-sqlite", connect, url, "a document store", lambda c: _prepare(c, catalog)
        )
        return cls(url, worker, conn)

    # -- plumbing ----------------------------------------------------------------------

    def _table(self, name: str) -> str:
        return f"{self._prefix}doc_{name}"

    def _error(self, exc: sqlite3.Error, subject: str | None) -> MultistoreError:
        if subject is not None and str(exc).startswith("no such table"):
            return NotFoundError(f"collection {short_repr(subject)} does not exist in {self.url}")
        return sqlite_error(self.url, exc)

    # -- hooks -------------------------------------------------------------------------

    async def _create_collection(self, name: str) -> bool:
        return await self._call_on(name, _create_table, self._table(name))

    async def _drop_collection(self, name: str) -> bool:
        return await self._call_on(name, _drop_table, self._table(name), self._catalog, name)

    async def _collections(self) -> list[str]:
        return await self._call(_list_tables, f"{self._prefix}doc_")

    async def _insert(self, name: str, docs: list[Document]) -> None:
        rows = [(doc[ID], encode(doc)) for doc in docs]
        await self._call_on(name, _insert, self._table(name), name, rows)

    async def _get(self, name: str, doc_id: str) -> Document | None:
        query = f"SELECT doc FROM {sql.quote_ident(self._table(name))} WHERE id = ?"
        row = await self._call_on(name, _fetch_one, query, (doc_id,))
        return None if row is None else _decode(row[0])

    async def _replace(self, name: str, doc: Document) -> bool:
        query = f"UPDATE {sql.quote_ident(self._table(name))} SET doc = ? WHERE id = ?"
        return await self._call_on(name, _change_one, query, (encode(doc), doc[ID])) > 0

    async def _modify(self, name: str, doc_id: str, change: Callable[[Document], Document]) -> bool:
        return await self._call_on(name, _modify, self._table(name), doc_id, change)

    async def _delete(self, name: str, doc_id: str) -> bool:
        query = f"DELETE FROM {sql.quote_ident(self._table(name))} WHERE id = ?"
        return await self._call_on(name, _change_one, query, (doc_id,)) > 0

    async def _find(
        self,
        name: str,
        node: Node,
        sort: tuple[SortKey, ...],
        skip: int,
        limit: int | None,
    ) -> list[Document]:
        query, params = self._select(name, node, sort, skip, limit)
        rows = await self._call_on(name, _fetch_all, query, params)
        return [_decode(row[0]) for row in rows]

    def _select(
        self, name: str, node: Node, sort: tuple[SortKey, ...], skip: int, limit: int | None
    ) -> tuple[str, dict[str, Any]]:
        where, params = sql.compile_filter(node)
        params["skip"] = skip
        params["limit"] = -1 if limit is None else limit
        query = (
            f"SELECT doc FROM {sql.quote_ident(self._table(name))} WHERE {where} "
            f"ORDER BY {sql.compile_sort(sort, filtered=not isinstance(node, MatchAll))} "
            "LIMIT :limit OFFSET :skip"
        )
        return query, params

    async def _explain(self, name: str, node: Node, sort: tuple[SortKey, ...]) -> str:
        query, params = self._select(name, node, sort, 0, None)
        rows = await self._call_on(name, _fetch_all, f"EXPLAIN QUERY PLAN {query}", params)
        return "\n".join(str(row[3]) for row in rows)

    async def _count(self, name: str, node: Node) -> int:
        where, params = sql.compile_filter(node)
        query = f"SELECT count(*) FROM {sql.quote_ident(self._table(name))} WHERE {where}"
        row = await self._call_on(name, _fetch_one, query, params)
        assert row is not None
        return int(row[0])

    async def _create_index(self, name: str, path: Path) -> IndexInfo:
        table = self._table(name)
        index, statements = sql.index_statements(table, path)
        await self._call_on(
            name, _create_index, table, self._catalog, name, path, index, statements
        )
        return IndexInfo(collection=name, path=str(path), name=index)

    async def _indexes(self, name: str) -> list[IndexInfo]:
        rows = await self._call_on(name, _list_indexes, self._table(name), self._catalog, name)
        return [IndexInfo(collection=name, path=path, name=index) for path, index in rows]


def _decode(text: str) -> Document:
    doc: Document = json.loads(text)
    return doc


# -- worker-thread functions: each gets the connection first --------------------------


def _prepare(conn: sqlite3.Connection, catalog: str) -> None:
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


def _fetch_one(conn: sqlite3.Connection, query: str, params: Any) -> Any:
    return conn.execute(query, params).fetchone()


def _fetch_all(conn: sqlite3.Connection, query: str, params: Any) -> list[Any]:
    return conn.execute(query, params).fetchall()


def _change_one(conn: sqlite3.Connection, query: str, params: Any) -> int:
    return conn.execute(query, params).rowcount


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
