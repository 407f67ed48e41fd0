"""The relational interface: connections, transactions, rows and migrations.

Backends implement a handful of driver primitives on :class:`Connection`
(``_execute``, ``_executemany``, ``_fetch``, ``_script``) that take SQL already in the
driver's parameter style and raise multistore errors; everything the caller sees —
the ``:name`` translation, transactions and savepoints, migrations — is shared here.
"""

from __future__ import annotations

import abc
import contextlib
import functools
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, TypeVar

from multistore.stores._base import Store
from multistore.stores._plans import drive_async
from multistore.stores.relational._migrations import (
    AppliedMigration,
    Migration,
    read_applied,
    run_migrations,
)
from multistore.stores.relational._params import Dialect
from multistore.stores.relational._protocol import (
    ConnectionCore,
    Op,
    Params,
    Steps,
    TransactionState,
    TransactionStatus,
)
from multistore.stores.relational._rows import Row

__all__ = [
    "Connection",
    "Params",
    "Queries",
    "RelationalStore",
    "Transaction",
    "TransactionStatus",
]

T = TypeVar("T")


class Queries(abc.ABC):
    """The statement methods shared by a connection and a transaction."""

    @abc.abstractmethod
    async def execute(self, sql: str, params: Params | None = None) -> int:
        """Run one statement; return the number of rows it inserted, updated or
        deleted (0 for statements that change no rows)."""

    @abc.abstractmethod
    async def executemany(self, sql: str, seq_of_params: Sequence[Params]) -> int:
        """Run one statement once per mapping of parameters; return the rows changed.
        All or nothing: outside a transaction the call runs in one of its own."""

    @abc.abstractmethod
    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        """Run a query and return all its rows."""

    @abc.abstractmethod
    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        """Run a query and return its first row, or None when it has none."""

    @abc.abstractmethod
    async def execute_script(self, sql: str) -> None:
        """Run several ``;``-separated statements (DDL, migrations). No parameters.

        Outside a transaction PostgreSQL runs the script as one implicit transaction;
        SQLite and MariaDB commit it statement by statement, so an error after the
        first statement is indeterminate (the earlier ones stay). Run it inside
        ``transaction()`` to make it all or nothing (except MariaDB DDL, which commits
        implicitly)."""

    async def fetch_val(self, sql: str, params: Params | None = None) -> Any:
        """Run a query and return the first column of its first row (None if no row)."""
        row = await self.fetch_one(sql, params)
        return None if row is None else row[0]


class Connection(Queries):
    """One database connection, leased from the store with ``store.connection()``.

    Outside a transaction every statement commits on its own (autocommit).
    ``conn.transaction()`` opens a transaction; inside one it opens a savepoint.
    The protocol is :class:`~multistore.stores.relational._protocol.ConnectionCore`'s;
    this class awaits each driver primitive it asks for.
    """

    dialect: ClassVar[Dialect]

    def __init__(self) -> None:
        self._core = ConnectionCore(self.dialect)

    # -- driver primitives: SQL in the driver's style, driver errors already mapped --

    @abc.abstractmethod
    async def _execute(self, sql: str, params: Any) -> int: ...

    @abc.abstractmethod
    async def _executemany(self, sql: str, seq_of_params: list[Any]) -> int: ...

    @abc.abstractmethod
    async def _fetch(self, sql: str, params: Any, *, one: bool) -> list[Row]: ...

    @abc.abstractmethod
    async def _script(self, sql: str) -> None: ...

    async def _begin(self) -> None:
        await self._execute("BEGIN", None)

    async def _commit(self) -> None:
        await self._execute("COMMIT", None)

    async def _rollback(self) -> None:
        await self._execute("ROLLBACK", None)

    async def _run(self, op: Op) -> Any:
        kind = op.kind
        if kind == "execute":
            return await self._execute(op.sql, op.args)
        if kind == "fetch":
            return await self._fetch(op.sql, op.args, one=op.one)
        if kind == "executemany":
            return await self._executemany(op.sql, op.args)
        if kind == "script":
            return await self._script(op.sql)
        if kind == "begin":
            return await self._begin()
        if kind == "commit":
            return await self._commit()
        return await self._rollback()

    async def _drive(self, steps: Steps[T]) -> T:
        return await drive_async(steps, self._run)

    # -- the public statement methods --

    @property
    def in_transaction(self) -> bool:
        return bool(self._core.levels)

    @property
    def _levels(self) -> list[TransactionState]:
        return self._core.levels

    @property
    def _released(self) -> bool:
        return self._core.released

    @_released.setter
    def _released(self, value: bool) -> None:
        self._core.released = value

    async def execute(self, sql: str, params: Params | None = None) -> int:
        return await self._drive(self._core.execute(sql, params))

    async def executemany(self, sql: str, seq_of_params: Sequence[Params]) -> int:
        own = functools.partial(Transaction, self, None)
        return await self._drive(self._core.executemany(sql, seq_of_params, own))

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        return await self._drive(self._core.fetch(sql, params, one=False))

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        rows = await self._drive(self._core.fetch(sql, params, one=True))
        return rows[0] if rows else None

    async def execute_script(self, sql: str) -> None:
        await self._drive(self._core.script(sql))

    # -- transactions --

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A transaction (or, inside one, a savepoint): committed when the block ends
        normally, rolled back when it raises; the exception propagates."""
        tx = Transaction(self, await self._drive(self._core.begin()))
        self._core.levels.append(tx)
        try:
            yield tx
        except BaseException as exc:
            await self._drive(self._core.end(tx, exc))
            raise
        await self._drive(self._core.end(tx, None))


class Transaction(TransactionState, Queries):
    """An open transaction (or savepoint) on one connection; run statements on it.

    ``status`` is :class:`TransactionStatus`; ``tx.transaction()`` nests a savepoint.
    """

    def __init__(self, connection: Connection, savepoint: str | None) -> None:
        super().__init__(savepoint)
        self.connection = connection

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A savepoint inside this transaction."""
        return self._active().transaction()

    async def execute(self, sql: str, params: Params | None = None) -> int:
        return await self._active().execute(sql, params)

    async def executemany(self, sql: str, seq_of_params: Sequence[Params]) -> int:
        return await self._active().executemany(sql, seq_of_params)

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        return await self._active().fetch_all(sql, params)

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        return await self._active().fetch_one(sql, params)

    async def execute_script(self, sql: str) -> None:
        await self._active().execute_script(sql)

    def _active(self) -> Connection:
        self.check_active()
        return self.connection


class RelationalStore(Store):
    """SQL tables with transactions, one parameter style (``:name``) on every backend.

    ``store.connection()`` leases a connection (autocommit per statement);
    ``store.transaction()`` leases one and opens a transaction on it. The statement
    methods on the store itself run on a pooled connection of their own.
    """

    model: ClassVar[str] = "relational"

    @abc.abstractmethod
    def connection(self) -> AbstractAsyncContextManager[Connection]:
        """Lease a connection for several statements; returned to the pool on exit."""

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """Lease a connection and run a transaction on it: commit when the block ends
        normally, roll back (and re-raise) when it raises."""
        async with self.connection() as conn, conn.transaction() as tx:
            yield tx

    async def execute(self, sql: str, params: Params | None = None) -> int:
        async with self.connection() as conn:
            return await conn.execute(sql, params)

    async def executemany(self, sql: str, seq_of_params: Sequence[Params]) -> int:
        async with self.connection() as conn:
            return await conn.executemany(sql, seq_of_params)

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        async with self.connection() as conn:
            return await conn.fetch_all(sql, params)

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        async with self.connection() as conn:
            return await conn.fetch_one(sql, params)

    async def fetch_val(self, sql: str, params: Params | None = None) -> Any:
        async with self.connection() as conn:
            return await conn.fetch_val(sql, params)

    async def execute_script(self, sql: str) -> None:
        async with self.connection() as conn:
            await conn.execute_script(sql)

    # -- migrations --

    async def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Apply the migrations not applied yet, in version order, each in its own
        transaction; return the versions applied now. A migration whose SQL changed
        after it was applied raises :class:`~multistore.errors.ConflictError`."""
        async with self._migration_connection() as conn:
            return await run_migrations(conn, migrations, self.backend, self._lock_migrations)

    async def applied_migrations(self) -> list[AppliedMigration]:
        """The migrations recorded in ``multistore_migrations``, by version."""
        async with self.connection() as conn:
            return await read_applied(conn)

    def _migration_connection(self) -> AbstractAsyncContextManager[Connection]:
        """The connection migrations run on (hook: MariaDB takes a session lock)."""
        return self.connection()

    async def _lock_migrations(self, tx: Transaction) -> None:
        """Serialise concurrent migrators; called first in every migration
        transaction (hook: PostgreSQL takes an advisory transaction lock)."""
