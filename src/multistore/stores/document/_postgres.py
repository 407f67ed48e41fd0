"""The server document backend: PostgreSQL ``jsonb`` through psycopg 3 (async) and a pool.

Each collection is a table ``{prefix}doc_{name}``::

    seq bigserial PRIMARY KEY    insertion order (ties in sorts, order without a sort)
    id  text NOT NULL UNIQUE     the document's _id
    doc jsonb NOT NULL           the document, _id included

with a GIN index (``jsonb_path_ops``) on ``doc`` that answers equality filters
(compiled to containment, ``@>``). ``create_index`` adds btree expression indexes on
the path for ranges and strings; ``{prefix}doc__indexes`` lists them. Collections
and indexes are created under an advisory lock, so concurrent clients cannot race.

Connections come from a :class:`psycopg_pool.AsyncConnectionPool` in autocommit
mode. Before a pooled connection is handed out, its socket is polled: a server that
closed it (restart, crash) leaves it readable, and only then is it checked with a
round trip and replaced if dead — so the store recovers by itself after a restart
at no cost in the common case.

URL options: ``pool_min`` (default 1), ``pool_max`` (10), ``connect_timeout`` (5 s;
also the wait for a free pooled connection), ``timeout`` (the server's
``statement_timeout``, 30 s), ``sslmode``, ``prefix`` (prepended to table names).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import select
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, Self

import psycopg
import psycopg.errors
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from multistore.errors import (
    ConfigError,
    DuplicateKeyError,
    InvalidURLError,
    InvalidValueError,
    MultistoreError,
    NotFoundError,
    Outcome,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    UsageError,
)
from multistore.stores._limits import short_repr
from multistore.stores.document import _postgres_sql as sql
from multistore.stores.document._api import Document, DocumentStore, IndexInfo
from multistore.stores.document._filters import Node, SortKey
from multistore.stores.document._updates import ID, check_collection
from multistore.stores.document._values import Path, encode
from multistore.urls import StoreURL

__all__ = ["PostgresDocumentStore"]

PgConn = psycopg.AsyncConnection[Any]

_PREFIX: Final = re.compile(r"[A-Za-z0-9_]*")


class PostgresDocumentStore(DocumentStore):
    """Document store on PostgreSQL (``postgresql://user:pass@host:port/db``).

    ``native`` is the :class:`psycopg_pool.AsyncConnectionPool`
    (``async with store.native.connection() as conn: ...``).
    """

    def __init__(self, url: StoreURL, pool: AsyncConnectionPool[PgConn], conninfo: str) -> None:
        self.url = url
        self._pool = pool
        self._conninfo = conninfo
        self._prefix = url.str_option("prefix", "")
        self._catalog = f"{self._prefix}doc__indexes"
        self._connect_timeout = url.float_option("connect_timeout", 5.0)
        self._closed = False

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        prefix = url.str_option("prefix", "")
        if not _PREFIX.fullmatch(prefix) or len(prefix) > 32:
            raise InvalidURLError(
                f"prefix={short_repr(prefix)}: use up to 32 letters, digits or '_' for table names"
            )
        connect_timeout = url.float_option("connect_timeout", 5.0)
        timeout = url.float_option("timeout", 30.0)
        conninfo = make_conninfo(
            "",
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=url.database or "postgres",
            connect_timeout=max(2, math.ceil(connect_timeout)),
            sslmode=url.str_option("sslmode", "prefer"),
            application_name="multistore-document",
            # jit=off: the planner overestimates jsonb_array_elements() and would
            # JIT-compile small queries, adding milliseconds to each.
            options=f"-c statement_timeout={int(timeout * 1000)} -c jit=off",
        )
        # One direct connection first: a refused port or a bad password fails at once
        # with the server's message rather than after the pool's timeout.
        probe = await _connect(conninfo, url)
        try:
            await _create_catalog(probe, f"{prefix}doc__indexes")
        except psycopg.Error as exc:
            raise _map_error(exc, None) from exc
        finally:
            await probe.close()
        pool: AsyncConnectionPool[PgConn] = AsyncConnectionPool(
            conninfo,
            kwargs={"autocommit": True},
            check=_check_connection,
            min_size=url.int_option("pool_min", 1),
            max_size=url.int_option("pool_max", 10),
            timeout=connect_timeout,
            open=False,
            name=f"multistore-document-{url.host}:{url.port}/{url.database}",
        )
        store = cls(url, pool, conninfo)
        try:
            await pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout:
            await pool.close()
            await (await _connect(conninfo, url)).close()  # the server's own refusal, if any
            raise StoreTimeoutError(
                f"the PostgreSQL pool did not fill within {connect_timeout:g} s "
                f"(pool_min={pool.min_size})",
                outcome=Outcome.DEFINITE,
            ) from None
        return store

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._pool.close(timeout=self._connect_timeout)

    @property
    def native(self) -> AsyncConnectionPool[PgConn]:
        return self._pool

    # -- plumbing ----------------------------------------------------------------------

    def _table(self, name: str) -> str:
        return f"{self._prefix}doc_{name}"

    @contextlib.asynccontextmanager
    async def _connection(self, collection: str | None) -> AsyncIterator[PgConn]:
        if self._closed:
            raise UsageError(f"the document store {self.url} is closed")
        try:
            conn = await self._pool.getconn()
        except PoolTimeout:
            conn = await self._direct_connection()
            pooled = False
        else:
            pooled = True
        try:
            yield conn
        except psycopg.Error as exc:
            raise _map_error(exc, collection) from exc
        finally:
            if pooled:
                await self._pool.putconn(conn)
            else:
                await conn.close()

    async def _direct_connection(self) -> PgConn:
        """After the pool gave no connection in time: the server's refusal when it cannot
        be reached; a timeout when every pooled connection is busy; otherwise the pool is
        waiting out its reconnect backoff after an outage, and a direct connection
        serves this one call while the pool recovers in the background."""
        probe = await _connect(self._conninfo, self.url)
        stats = self._pool.get_stats()
        if stats.get("pool_size", 0) >= stats.get("pool_max", 0):
            await probe.close()
            raise StoreTimeoutError(
                f"no free PostgreSQL connection within {self._connect_timeout:g} s "
                f"(pool_max={self._pool.max_size}); raise pool_max or connect_timeout",
                outcome=Outcome.DEFINITE,
            )
        return probe

    async def _ensure_table(self, conn: PgConn, table: str) -> bool:
        """Create the collection's table and GIN index unless they exist; True if created."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(table),))
            cur = await conn.execute("SELECT to_regclass(%s)", (sql.quote_ident(table),))
            row = await cur.fetchone()
            if row is not None and row[0] is not None:
                return False
            t = sql.quote_ident(table)
            await conn.execute(
                f"CREATE TABLE {t} (seq bigserial PRIMARY KEY, id text NOT NULL UNIQUE, "
                "doc jsonb NOT NULL)".encode()
            )
            await conn.execute(sql.gin_statement(table).encode())
            return True

    async def _fetch(self, name: str, query: str, params: dict[str, Any]) -> list[Any]:
        async with self._connection(name) as conn:
            cur = await conn.execute(query.encode(), params)
            return await cur.fetchall()

    async def _change(self, name: str, query: str, params: dict[str, Any]) -> int:
        async with self._connection(name) as conn:
            cur = await conn.execute(query.encode(), params)
            return cur.rowcount

    # -- hooks -------------------------------------------------------------------------

    async def _create_collection(self, name: str) -> bool:
        async with self._connection(name) as conn:
            return await self._ensure_table(conn, self._table(name))

    async def _drop_collection(self, name: str) -> bool:
        table = self._table(name)
        async with self._connection(name) as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(table),))
            cur = await conn.execute("SELECT to_regclass(%s)", (sql.quote_ident(table),))
            row = await cur.fetchone()
            if row is None or row[0] is None:
                return False
            await conn.execute(f"DROP TABLE {sql.quote_ident(table)}".encode())
            await conn.execute(
                f"DELETE FROM {sql.quote_ident(self._catalog)} WHERE collection = %s".encode(),
                (name,),
            )
            return True

    async def _collections(self) -> list[str]:
        start = f"{self._prefix}doc_"
        query = (
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema() "
            "AND left(c.relname, %(n)s) = %(start)s"
        )
        rows = await self._fetch("", query, {"n": len(start), "start": start})
        names = [str(row[0])[len(start) :] for row in rows]
        return [name for name in names if _is_collection(name)]

    async def _insert(self, name: str, docs: list[Document]) -> None:
        table = self._table(name)
        t = sql.quote_ident(table)
        if len(docs) == 1:
            query = f"INSERT INTO {t} (id, doc) VALUES (%(ids)s, %(docs)s::jsonb)"
            params: dict[str, Any] = {
                "ids": docs[0][ID],
                "docs": encode(docs[0], positional_floats=True),
            }
        else:  # one statement: atomic, one round trip, rows keep their order
            query = (
                f"INSERT INTO {t} (id, doc) SELECT u.id, u.doc::jsonb FROM "
                "unnest(%(ids)s::text[], %(docs)s::text[]) WITH ORDINALITY AS u(id, doc, n) "
                "ORDER BY u.n"
            )
            params = {
                "ids": [doc[ID] for doc in docs],
                "docs": [encode(doc, positional_floats=True) for doc in docs],
            }
        async with self._connection(name) as conn:
            try:
                await _insert_rows(conn, query.encode(), params, name)
            except psycopg.errors.UndefinedTable:
                await self._ensure_table(conn, table)
                await _insert_rows(conn, query.encode(), params, name)

    async def _get(self, name: str, doc_id: str) -> Document | None:
        query = f"SELECT doc FROM {sql.quote_ident(self._table(name))} WHERE id = %(id)s"
        rows = await self._fetch(name, query, {"id": doc_id})
        return _document(rows[0][0]) if rows else None

    async def _replace(self, name: str, doc: Document) -> bool:
        query = (
            f"UPDATE {sql.quote_ident(self._table(name))} SET doc = %(doc)s::jsonb "
            "WHERE id = %(id)s"
        )
        params = {"id": doc[ID], "doc": encode(doc, positional_floats=True)}
        return await self._change(name, query, params) > 0

    async def _modify(self, name: str, doc_id: str, change: Callable[[Document], Document]) -> bool:
        t = sql.quote_ident(self._table(name))
        async with self._connection(name) as conn, conn.transaction():
            cur = await conn.execute(
                f"SELECT doc FROM {t} WHERE id = %(id)s FOR UPDATE".encode(), {"id": doc_id}
            )
            row = await cur.fetchone()
            if row is None:
                return False
            new = change(_document(row[0]))
            await conn.execute(
                f"UPDATE {t} SET doc = %(doc)s::jsonb WHERE id = %(id)s".encode(),
                {"id": doc_id, "doc": encode(new, positional_floats=True)},
            )
            return True

    async def _delete(self, name: str, doc_id: str) -> bool:
        query = f"DELETE FROM {sql.quote_ident(self._table(name))} WHERE id = %(id)s"
        return await self._change(name, query, {"id": doc_id}) > 0

    async def _find(
        self,
        name: str,
        node: Node,
        sort: tuple[SortKey, ...],
        skip: int,
        limit: int | None,
    ) -> list[Document]:
        query, params = self._select(name, node, sort, skip, limit)
        return [_document(row[0]) for row in await self._fetch(name, query, params)]

    def _select(
        self, name: str, node: Node, sort: tuple[SortKey, ...], skip: int, limit: int | None
    ) -> tuple[str, dict[str, Any]]:
        where, params = sql.compile_filter(node)
        params["skip"] = skip
        params["limit"] = limit
        query = (
            f"SELECT doc FROM {sql.quote_ident(self._table(name))} WHERE {where} "
            f"ORDER BY {sql.compile_sort(sort)} LIMIT %(limit)s OFFSET %(skip)s"
        )
        return query, params

    async def _explain(self, name: str, node: Node, sort: tuple[SortKey, ...]) -> str:
        query, params = self._select(name, node, sort, 0, None)
        rows = await self._fetch(name, f"EXPLAIN {query}", params)
        return "\n".join(str(row[0]) for row in rows)

    async def _count(self, name: str, node: Node) -> int:
        where, params = sql.compile_filter(node)
        query = f"SELECT count(*) FROM {sql.quote_ident(self._table(name))} WHERE {where}"
        rows = await self._fetch(name, query, params)
        return int(rows[0][0])

    async def _create_index(self, name: str, path: Path) -> IndexInfo:
        table = self._table(name)
        index, statements = sql.index_statements(table, path)
        async with self._connection(name) as conn:
            await self._ensure_table(conn, table)
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(table),))
                for statement in statements:
                    await conn.execute(statement.encode())
                await conn.execute(
                    f"INSERT INTO {sql.quote_ident(self._catalog)} (collection, path, name) "
                    "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING".encode(),
                    (name, str(path), index),
                )
        return IndexInfo(collection=name, path=str(path), name=index)

    async def _indexes(self, name: str) -> list[IndexInfo]:
        table = self._table(name)
        async with self._connection(name) as conn:
            cur = await conn.execute("SELECT to_regclass(%s)", (sql.quote_ident(table),))
            row = await cur.fetchone()
            if row is None or row[0] is None:
                raise NotFoundError(f"collection {short_repr(name)} does not exist in {self.url}")
            cur = await conn.execute(
                f"SELECT path, name FROM {sql.quote_ident(self._catalog)} "
                "WHERE collection = %s".encode(),
                (name,),
            )
            rows = await cur.fetchall()
        return [IndexInfo(collection=name, path=str(p), name=str(n)) for p, n in rows]


def _document(value: Any) -> Document:
    assert isinstance(value, dict)
    return value


def _is_collection(name: str) -> bool:
    try:
        check_collection(name)
    except MultistoreError:
        return False
    return True


def _lock_key(table: str) -> int:
    digest = hashlib.sha1(f"multistore-document|{table}".encode(), usedforsecurity=False)
    return int.from_bytes(digest.digest()[:8], "big", signed=True)


async def _insert_rows(conn: PgConn, query: bytes, params: dict[str, Any], name: str) -> None:
    try:
        await conn.execute(query, params)
    except psycopg.errors.UniqueViolation as exc:
        detail = exc.diag.message_detail or ""
        raise DuplicateKeyError(
            f"a document with that _id already exists in {short_repr(name)}: {detail}".rstrip(": ")
        ) from exc


async def _create_catalog(conn: PgConn, catalog: str) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(catalog),))
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {sql.quote_ident(catalog)} (collection text NOT NULL, "
            "path text NOT NULL, name text NOT NULL, PRIMARY KEY (collection, path))".encode()
        )


async def _check_connection(conn: PgConn) -> None:
    """Pool check: a round trip only when the idle socket is readable (closed by the server)."""
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        await AsyncConnectionPool.check_connection(conn)


async def _connect(conninfo: str, url: StoreURL) -> PgConn:
    try:
        return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        mapped = _map_error(exc, None)
        if isinstance(mapped, StoreUnavailableError):
            mapped = StoreUnavailableError(
                f"cannot connect to PostgreSQL at {url.host}:{url.port}: {mapped.message}",
                outcome=Outcome.DEFINITE,
            )
        raise mapped from exc


def _map_error(exc: psycopg.Error, collection: str | None) -> MultistoreError:
    """The multistore error for a psycopg error; the server's message is kept."""
    message = f"postgresql: {' '.join(str(exc).split())}"
    state = exc.sqlstate or ""
    if state == "42P01" and collection:
        return NotFoundError(f"collection {short_repr(collection)} does not exist")
    if state == "23505":
        return DuplicateKeyError(message)
    if state in ("3D000", "42P01"):
        return NotFoundError(message)
    if state in ("28000", "28P01"):
        return ConfigError(message)
    if state.startswith("22") or state == "54000":  # bad data; a value too big to index
        return InvalidValueError(message)
    if state in ("57014", "55P03"):
        return StoreTimeoutError(message)
    if state.startswith("08") or state in ("57P01", "57P02", "57P03"):
        return StoreUnavailableError(message)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and not state:
        return StoreUnavailableError(message)
    return StoreError(message)
