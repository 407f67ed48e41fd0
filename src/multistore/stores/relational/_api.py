"""The relational interface: connections, transactions, rows and migrations.

Backends implement a handful of driver primitives on :class:`Connection`
(``_execute``, ``_executemany``, ``_fetch``, ``_script``) that take SQL already in the
driver's parameter style and raise multistore errors; everything the caller sees —
the ``:name`` translation, transactions and savepoints, migrations — is shared here.
"""

from __future__ import annotations

import abc
import contextlib
import enum
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

from multistore.errors import ConflictError, InvalidQueryError, MultistoreError, UsageError
from multistore.stores._base import Store
from multistore.stores.relational._migrations import (
    AppliedMigration,
    Migration,
    read_applied,
    run_migrations,
)
from multistore.stores.relational._params import Dialect, bind, compile_sql
from multistore.stores.relational._rows import Row

__all__ = [
    "Connection",
    "Params",
    "Queries",
    "RelationalStore",
    "Transaction",
    "TransactionStatus",
]

Params = Mapping[str, Any]


class TransactionStatus(enum.Enum):
    """Where a transaction (or savepoint) stands."""

    ACTIVE = "active"
    COMMITTED = "committed"
    """Committed (a savepoint: released into its enclosing transaction)."""
    ROLLED_BACK = "rolled_back"
    UNKNOWN = "unknown"
    """COMMIT was sent but the connection failed before the answer: it may have
    committed (the error raised is indeterminate)."""


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
    """

    dialect: ClassVar[Dialect]

    def __init__(self) -> None:
        self._levels: list[Transaction] = []
        self._released = False

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

    # -- the public statement methods --

    @property
    def in_transaction(self) -> bool:
        return bool(self._levels)

    async def execute(self, sql: str, params: Params | None = None) -> int:
        compiled = compile_sql(sql, self.dialect)
        args = bind(compiled, params)
        self._check_usable()
        with self._guard():
            return await self._execute(compiled.sql, args)

    async def executemany(self, sql: str, seq_of_params: Sequence[Params]) -> int:
        compiled = compile_sql(sql, self.dialect)
        if isinstance(seq_of_params, Mapping | str | bytes):
            raise InvalidQueryError("executemany takes a sequence of parameter mappings")
        args = [bind(compiled, params) for params in seq_of_params]
        if not args:
            return 0
        if not compiled.has_params:
            raise InvalidQueryError(
                "executemany needs a statement with :name placeholders; use execute()"
            )
        self._check_usable()
        if not self._levels:
            # No transaction of the caller's: one of its own, so that the rows land all
            # or none, and an error of one row is definite for the whole call.
            async with self.transaction():
                with self._guard():
                    return await self._executemany(compiled.sql, args)
        with self._guard():
            return await self._executemany(compiled.sql, args)

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        compiled = compile_sql(sql, self.dialect)
        args = bind(compiled, params)
        self._check_usable()
        with self._guard():
            return await self._fetch(compiled.sql, args, one=False)

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        compiled = compile_sql(sql, self.dialect)
        args = bind(compiled, params)
        self._check_usable()
        with self._guard():
            rows = await self._fetch(compiled.sql, args, one=True)
        return rows[0] if rows else None

    async def execute_script(self, sql: str) -> None:
        self._check_usable()
        with self._guard():
            await self._script(sql)

    # -- transactions --

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A transaction (or, inside one, a savepoint): committed when the block ends
        normally, rolled back when it raises; the exception propagates."""
        self._check_usable()
        depth = len(self._levels)
        savepoint = f"multistore_sp{depth}" if depth else None
        with self._guard():
            try:
                if savepoint is None:
                    await self._begin()
                else:
                    await self._execute(f"SAVEPOINT {savepoint}", None)
            except BaseException as exc:
                if not (isinstance(exc, MultistoreError) and exc.definite):
                    # cancelled (or lost) while BEGIN ran: it may have begun a transaction
                    # that nothing would end, and the connection's next BEGIN would fail
                    with contextlib.suppress(MultistoreError):
                        await self._undo(savepoint)
                raise
        tx = Transaction(self, savepoint)
        self._levels.append(tx)
        try:
            yield tx
        except BaseException:
            await self._finish(tx, commit=False)
            raise
        if tx.failure is not None:
            await self._finish(tx, commit=False)
            raise ConflictError(
                f"transaction rolled back: a statement inside it failed ({tx.failure}) "
                "and the error was caught inside the block; catch it outside the block, "
                "or wrap the statement in a nested transaction() (a savepoint)"
            ) from tx.failure
        await self._finish(tx, commit=True)

    async def _finish(self, tx: Transaction, *, commit: bool) -> None:
        if self._levels and self._levels[-1] is tx:
            self._levels.pop()
        sp = tx.savepoint
        if commit:
            try:
                if sp is None:
                    await self._commit()
                else:
                    await self._execute(f"RELEASE SAVEPOINT {sp}", None)
            except MultistoreError as exc:
                definite = exc.definite
                tx.status = TransactionStatus.ROLLED_BACK if definite else TransactionStatus.UNKNOWN
                with contextlib.suppress(MultistoreError):
                    await self._undo(sp)
                if sp is not None and self._levels:
                    self._levels[-1].failure = exc
                raise
            tx.status = TransactionStatus.COMMITTED
            return
        tx.status = TransactionStatus.ROLLED_BACK
        try:
            await self._undo(sp)
        except MultistoreError as exc:
            # The connection is gone or the server already ended the transaction;
            # either way nothing of it was committed. The caller's error propagates.
            if sp is not None and self._levels and self._levels[-1].failure is None:
                self._levels[-1].failure = exc

    async def _undo(self, savepoint: str | None) -> None:
        if savepoint is None:
            await self._rollback()
        else:
            await self._execute(f"ROLLBACK TO SAVEPOINT {savepoint}", None)
            await self._execute(f"RELEASE SAVEPOINT {savepoint}", None)

    def _check_usable(self) -> None:
        if self._released:
            raise UsageError(
                "this connection (or transaction) was used after its block ended; "
                "run statements inside the async with block that leased it"
            )
        if self._levels and self._levels[-1].failure is not None:
            raise InvalidQueryError(
                f"the transaction is aborted: an earlier statement failed "
                f"({self._levels[-1].failure}); leave the block to roll it back, or run "
                "statements that may fail inside a nested transaction() (a savepoint)"
            )

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            if self._levels:
                self._levels[-1].failure = exc
            raise


class Transaction(Queries):
    """An open transaction (or savepoint) on one connection; run statements on it.

    ``status`` is :class:`TransactionStatus`; ``tx.transaction()`` nests a savepoint.
    """

    def __init__(self, connection: Connection, savepoint: str | None) -> None:
        self.connection = connection
        self.savepoint = savepoint
        self.status = TransactionStatus.ACTIVE
        self.failure: BaseException | None = None
        """The error of a statement that failed inside this transaction, if any."""

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
        if self.status is not TransactionStatus.ACTIVE:
            raise UsageError(
                f"this transaction is {self.status.value}; run statements inside its block"
            )
        return self.connection

    def __repr__(self) -> str:
        kind = f"savepoint {self.savepoint}" if self.savepoint else "transaction"
        return f"<Transaction {kind} {self.status.value}>"


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
