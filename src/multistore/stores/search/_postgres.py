"""The server search backend: PostgreSQL full text search (tsvector + GIN), psycopg 3.

``postgresql://user:pass@host:port/db?pool_max=10&timeout=10&prefix=shop_`` opens a
pool of connections. Each index is a table ``<prefix>search_<name>`` (layout in
``_pgsql``); the schemas live in ``<prefix>multistore_search_indexes``. A search is one
statement, so its total, page and facet counts come from one snapshot.

Connections come from a ``psycopg_pool.AsyncConnectionPool``. When none is ready at
once, the store checks that the server answers with a direct connection attempt, so a
server that is down gives :class:`~multistore.errors.StoreUnavailableError` in
milliseconds instead of after the pool's timeout. Every operation is idempotent (an
upsert, a delete by id, a read), so one that fails because a pooled connection died
(the server restarted) is retried once on a fresh connection.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Self, TypeVar

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from multistore.errors import (
    ConflictError,
    InvalidURLError,
    InvalidValueError,
    NotFoundError,
    Outcome,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from multistore.stores._limits import short_repr
from multistore.stores.search._api import (
    FieldType,
    Hit,
    SearchResult,
    SearchSchema,
    SearchStore,
    SortOrder,
)
from multistore.stores.search._pgsql import create_table_sql, filter_columns, search_sql, upsert_sql
from multistore.stores.search._request import (
    build_request,
    check_id,
    check_index_name,
    known_index_name,
    prepare_docs,
    sort_facet_counts,
)
from multistore.urls import StoreURL

__all__ = ["PostgresSearchStore"]

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]

#: How long to wait for a pooled connection before checking whether the server is up.
_FAST_ACQUIRE: Final = 0.2
#: A successful probe vouches for the server this long (a busy pool, not a dead server).
_PROBE_TTL: Final = 1.0
#: Advisory lock key that serialises index creation and removal.
_DDL_LOCK: Final = "multistore.search.ddl"


class PostgresSearchStore(SearchStore):
    """Search indexes as PostgreSQL tables with a tsvector column and a GIN index."""

    def __init__(
        self, url: StoreURL, pool: AsyncConnectionPool[Conn], conninfo: str, timeout: float
    ) -> None:
        self.url = url
        self._pool = pool
        self._conninfo = conninfo
        self._timeout = timeout
        prefix = url.str_option("prefix", "")
        if prefix and not (prefix.replace("_", "a").isalnum() and prefix.isascii()):
            raise InvalidURLError(
                f"prefix={short_repr(prefix)}: use letters, digits and underscores"
            )
        self._prefix = prefix.lower()
        self._meta = f"{self._prefix}multistore_search_indexes"
        self._schemas: dict[str, SearchSchema] = {}
        self._probe_lock = asyncio.Lock()
        self._probe_ok_at = -math.inf
        self._closed = False

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        timeout = url.float_option("timeout", 10.0)
        connect_timeout = url.float_option("connect_timeout", 5.0)
        params: dict[str, Any] = {
            "host": url.host,
            "port": url.port,
            "user": url.username,
            "password": url.password,
            "dbname": url.database,
            # libpq takes whole seconds and treats anything below 2 as 2.
            "connect_timeout": max(2, math.ceil(connect_timeout)),
            "application_name": "multistore-search",
        }
        if timeout > 0:
            params["options"] = f"-c statement_timeout={int(timeout * 1000)}"
        sslmode = url.option("sslmode")
        if sslmode is not None:
            params["sslmode"] = str(sslmode)
        conninfo = make_conninfo("", **{k: v for k, v in params.items() if v is not None})
        await _probe(conninfo, url)
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            conninfo,
            min_size=url.int_option("pool_min", 1),
            max_size=max(url.int_option("pool_max", 10), url.int_option("pool_min", 1), 1),
            kwargs={"autocommit": True},
            open=False,
            timeout=timeout,
            name="multistore-search",
        )
        try:
            await pool.open(wait=True, timeout=connect_timeout)
            store = cls(url, pool, conninfo, timeout)
            await store._setup()
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, PoolTimeout):
                raise StoreUnavailableError(
                    f"no connection to PostgreSQL at {url} within {connect_timeout} s",
                    outcome=Outcome.DEFINITE,
                ) from exc
            raise
        return store

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._pool.close()

    @property
    def native(self) -> AsyncConnectionPool[Conn]:
        """The ``psycopg_pool.AsyncConnectionPool`` (autocommit connections)."""
        return self._pool

    # -- connections and errors ---------------------------------------------------------

    async def _acquire(self) -> Conn:
        if self._closed:
            raise StoreError("the search store is closed", outcome=Outcome.DEFINITE)
        try:
            return await self._pool.getconn(timeout=_FAST_ACQUIRE)
        except PoolTimeout:
            pass
        except PoolClosed as exc:
            raise StoreError("the search store is closed", outcome=Outcome.DEFINITE) from exc
        await self._check_server()  # raises at once when the server is down
        try:
            return await self._pool.getconn(timeout=max(self._timeout - _FAST_ACQUIRE, 0.1))
        except PoolTimeout as exc:
            raise StoreTimeoutError(
                f"no free PostgreSQL connection within {self._timeout} s "
                f"(pool_max={self._pool.max_size})",
                outcome=Outcome.DEFINITE,
            ) from exc

    async def _check_server(self) -> None:
        """Probe the server with a direct connection; waiters share one recent answer."""
        async with self._probe_lock:
            if time.monotonic() - self._probe_ok_at < _PROBE_TTL:
                return
            await _probe(self._conninfo, self.url)
            self._probe_ok_at = time.monotonic()

    async def _run(
        self, what: str, op: Callable[[Conn], Awaitable[T]], index: str | None = None
    ) -> T:
        """Run ``op`` on a pooled connection. If that connection turns out dead (the
        server restarted since it was opened), drop every dead idle connection and
        retry once: all operations of this store are idempotent."""
        for attempt in (1, 2):
            conn = await self._acquire()
            try:
                return await op(conn)
            except psycopg.Error as exc:
                lost = conn.broken or conn.closed
                if lost and not isinstance(exc, psycopg.errors.QueryCanceled) and attempt == 1:
                    await self._pool.check()  # the other idle connections died with it
                    continue
                raise self._error(exc, what, index, lost) from exc
            finally:
                await self._pool.putconn(conn)
        raise AssertionError("unreachable")

    def _error(self, exc: psycopg.Error, what: str, index: str | None, lost: bool) -> Exception:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return StoreTimeoutError(f"PostgreSQL did not {what} within {self._timeout} s")
        if lost or isinstance(exc, psycopg.OperationalError):
            return StoreUnavailableError(f"lost the PostgreSQL connection to {what}: {detail}")
        if isinstance(exc, psycopg.errors.UndefinedTable) and index is not None:
            self._schemas.pop(index, None)
            return NotFoundError(f"no search index named {short_repr(index)}")
        if isinstance(exc, psycopg.errors.ProgramLimitExceeded):
            return InvalidValueError(f"PostgreSQL cannot {what}: {detail}")
        if isinstance(exc, psycopg.errors.DuplicateTable):
            return ConflictError(f"cannot {what}: {detail}")
        return StoreError(f"PostgreSQL failed to {what}: {detail}", outcome=Outcome.DEFINITE)

    def _table(self, name: str) -> str:
        return f"{self._prefix}search_{name}"

    async def _setup(self) -> None:
        async def op(conn: Conn) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_DDL_LOCK,))
                await conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, "
                        "schema jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
                    ).format(sql.Identifier(self._meta))
                )

        await self._run("create the search metadata table", op)

    async def _schema_of(self, name: str) -> SearchSchema:
        known_index_name(name)
        cached = self._schemas.get(name)
        if cached is not None:
            return cached

        async def op(conn: Conn) -> Any:
            cur = await conn.execute(
                sql.SQL("SELECT schema FROM {} WHERE name = %s").format(sql.Identifier(self._meta)),
                (name,),
            )
            return await cur.fetchone()

        row = await self._run(f"read the schema of index {short_repr(name)}", op)
        if row is None:
            raise NotFoundError(f"no search index named {short_repr(name)}")
        schema = self._schemas[name] = SearchSchema.from_dict(row[0])
        return schema

    # -- index management ---------------------------------------------------------------

    async def create_index(self, name: str, schema: SearchSchema) -> None:
        check_index_name(name)
        if not isinstance(schema, SearchSchema):
            raise InvalidValueError("create_index needs a SearchSchema")
        meta = sql.Identifier(self._meta)

        async def op(conn: Conn) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_DDL_LOCK,))
                cur = await conn.execute(
                    sql.SQL("SELECT schema FROM {} WHERE name = %s").format(meta), (name,)
                )
                row = await cur.fetchone()
                if row is not None:
                    existing = SearchSchema.from_dict(row[0])
                    if existing == schema:
                        return
                    raise ConflictError(
                        f"search index {short_repr(name)} exists with another schema "
                        f"({existing.to_dict()}); drop it first to change it"
                    )
                for statement in create_table_sql(self._table(name), schema):
                    await conn.execute(statement)
                await conn.execute(
                    sql.SQL("INSERT INTO {} (name, schema) VALUES (%s, %s)").format(meta),
                    (name, Jsonb(schema.to_dict())),
                )

        await self._run(f"create search index {short_repr(name)}", op, name)
        self._schemas[name] = schema

    async def drop_index(self, name: str) -> None:
        known_index_name(name)
        meta = sql.Identifier(self._meta)

        async def op(conn: Conn) -> bool:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_DDL_LOCK,))
                cur = await conn.execute(
                    sql.SQL("DELETE FROM {} WHERE name = %s RETURNING name").format(meta), (name,)
                )
                if await cur.fetchone() is None:
                    return False
                await conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self._table(name)))
                )
                return True

        self._schemas.pop(name, None)
        if not await self._run(f"drop search index {short_repr(name)}", op, name):
            raise NotFoundError(f"no search index named {short_repr(name)}")

    async def indexes(self) -> list[str]:
        async def op(conn: Conn) -> list[str]:
            cur = await conn.execute(
                sql.SQL("SELECT name FROM {} ORDER BY name").format(sql.Identifier(self._meta))
            )
            return [str(row[0]) for row in await cur.fetchall()]

        return await self._run("list search indexes", op)

    async def schema(self, name: str) -> SearchSchema:
        return await self._schema_of(name)

    # -- documents ----------------------------------------------------------------------

    async def index(self, name: str, docs: Sequence[Mapping[str, Any]]) -> None:
        schema = await self._schema_of(name)
        prepared = prepare_docs(schema, name, docs)
        if not prepared:
            return
        statement = upsert_sql(self._table(name), schema)
        columns = filter_columns(schema)
        rows = [
            (
                item.id,
                Jsonb(item.doc),
                item.text,
                *[item.keywords[c] if c in item.keywords else item.numbers[c] for c in columns],
            )
            for item in prepared
        ]

        async def op(conn: Conn) -> None:
            if len(rows) == 1:  # one autocommitted statement is atomic by itself
                await conn.execute(statement, rows[0])
                return
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(statement, rows)

        await self._run(f"index documents into {short_repr(name)}", op, name)

    async def delete(self, name: str, id: str) -> bool:
        await self._schema_of(name)
        check_id(id, name)
        statement = sql.SQL("DELETE FROM {} WHERE _id = %s").format(
            sql.Identifier(self._table(name))
        )

        async def op(conn: Conn) -> bool:
            cur = await conn.execute(statement, (id,))
            return cur.rowcount > 0

        return await self._run(f"delete from {short_repr(name)}", op, name)

    async def get(self, name: str, id: str) -> dict[str, Any] | None:
        schema = await self._schema_of(name)
        check_id(id, name)
        statement = sql.SQL("SELECT _doc FROM {} WHERE _id = %s").format(
            sql.Identifier(self._table(name))
        )

        async def op(conn: Conn) -> Any:
            cur = await conn.execute(statement, (id,))
            return await cur.fetchone()

        row = await self._run(f"read from {short_repr(name)}", op, name)
        return None if row is None else _doc(schema, row[0])

    # -- search -------------------------------------------------------------------------

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
        schema = await self._schema_of(name)
        request = build_request(schema, name, query, filters, ranges, facets, sort, offset, limit)
        statement, params = search_sql(self._table(name), request)

        async def op(conn: Conn) -> Any:
            cur = await conn.execute(statement, params)
            return await cur.fetchone()

        row = await self._run(f"search {short_repr(name)}", op, name)
        assert row is not None
        hits = [
            Hit(id=str(hit_id), score=float(score), doc=_doc(schema, doc))
            for hit_id, score, doc in row[1]
        ]
        facet_counts = {
            field: sort_facet_counts({str(k): int(v) for k, v in counts.items()})
            for field, counts in zip(request.facets, row[2:], strict=True)
        }
        return SearchResult(total=int(row[0]), hits=hits, facets=facet_counts)


def _doc(schema: SearchSchema, data: Any) -> dict[str, Any]:
    doc = dict(data)
    for name in schema.names(FieldType.NUMERIC):
        if doc.get(name) is not None:
            doc[name] = float(doc[name])
    return doc


async def _probe(conninfo: str, url: StoreURL) -> None:
    """Connect once, directly: raise StoreUnavailableError (definite) if that fails."""
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise StoreUnavailableError(
            f"cannot connect to PostgreSQL at {url}: {detail}", outcome=Outcome.DEFINITE
        ) from exc
    await conn.close()
