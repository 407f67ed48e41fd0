"""The relational interface for sync code: connections, transactions and rows as on
:class:`multistore.stores.relational.RelationalStore`, as plain methods and ``with``
blocks. The protocol (statement checks, transactions, savepoints, outcomes) is the
same :class:`~multistore.stores.relational._protocol.ConnectionCore`, driven on the
calling thread."""

from __future__ import annotations

import abc
import contextlib
import functools
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from multistore.stores._plans import drive
from multistore.stores._sync_base import SyncStore
from multistore.stores.relational._migrations import (
    AppliedMigration,
    Migration,
    read_applied_sync,
    run_migrations_sync,
)
from multistore.stores.relational._params import Dialect
from multistore.stores.relational._protocol import (
    ConnectionCore,
    Op,
    Params,
    TransactionState,
)
from multistore.stores.relational._rows import Row

__all__ = ["SyncConnection", "SyncQueries", "SyncRelationalStore", "SyncTransaction"]


class SyncQueries(abc.ABC):
    """The statement methods shared by a connection and a transaction; see
    :class:`multistore.stores.relational.Queries`."""

    @abc.abstractmethod
    def execute(self, sql: str, params: Params | None = None) -> int:
        """Run one statement; the number of rows it changed."""

    @abc.abstractmethod
    def executemany(self, sql: str, seq_of_params: Sequence[Params]) -> int:
        """Run one statement once per mapping of parameters, all or nothing."""

    @abc.abstractmethod
    def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        """Run a query and return all its rows."""

    @abc.abstractmethod
    def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        """Run a query and return its first row, or None."""

    @abc.abstractmethod
    def execute_script(self, sql: str) -> None:
        """Run several ``;``-separated statements (no parameters)."""

    def fetch_val(self, sql: str, params: Params | None = None) -> Any:
        """The first column of the first row (None if no row)."""
        row = self.fetch_one(sql, params)
        return None if row is None else row[0]


class SyncConnection(SyncQueries):
    """One database connection, leased with ``store.connection()``: autocommit per
    statement outside a transaction, ``with conn.transaction() as tx:`` for one."""

    dialect: ClassVar[Dialect]

    def __init__(self) -> None:
        self._core = ConnectionCore(self.dialect)

    # -- driver primitives: SQL in the driver's style, driver errors already mapped --

    @abc.abstractmethod
    def _execute(self, sql: str, params: Any) -> int: ...

    @abc.abstractmethod
    def _executemany(self, sql: str, seq_of_params: list[Any]) -> int: ...

    @abc.abstractmethod
    def _fetch(self, sql: str, params: Any, *, one: bool) -> list[Row]: ...

    @abc.abstractmethod
    def _script(self, sql: str) -> None: ...

    def _begin(self) -> None:
        self._execute("BEGIN", None)

    def _commit(self) -> None:
        self._execute("COMMIT", None)

    def _rollback(self) -> None:
        self._execute("ROLLBACK", None)

    def _run(self, op: Op) -> Any:
        kind = op.kind
        if kind == "execute":
            return self._execute(op.sql, op.args)
        if kind == "fetch":
            return self._fetch(op.sql, op.args, one=op.one)
        if kind == "executemany":
            return self._executemany(op.sql, op.args)
        if kind == "script":
            return self._script(op.sql)
        if kind == "begin":
            return self._begin()
        if kind == "commit":
            return self._commit()
        return self._rollback()

    @property
    def in_transaction(self) -> bool:
        return bool(self._core.levels)

    def execute(self, sql: str, params: Params | None = None) -> int:
        return drive(self._core.execute(sql, params), self._run)

    def executemany(self, sql: str, seq_of_params: Sequence[Params]) -> int:
        own = functools.partial(SyncTransaction, self, None)
        return drive(self._core.executemany(sql, seq_of_params, own), self._run)

    def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        return drive(self._core.fetch(sql, params, one=False), self._run)

    def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        rows = drive(self._core.fetch(sql, params, one=True), self._run)
        return rows[0] if rows else None

    def execute_script(self, sql: str) -> None:
        drive(self._core.script(sql), self._run)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SyncTransaction]:
        """A transaction (or, inside one, a savepoint): committed when the block ends
        normally, rolled back when it raises; the exception propagates."""
        tx = SyncTransaction(self, drive(self._core.begin(), self._run))
        self._core.levels.append(tx)
        try:
            yield tx
        except BaseException as exc:
            drive(self._core.end(tx, exc), self._run)
            raise
        drive(self._core.end(tx, None), self._run)


class SyncTransaction(TransactionState, SyncQueries):
    """An open transaction (or savepoint) on one sync connection."""

    def __init__(self, connection: SyncConnection, savepoint: str | None) -> None:
        super().__init__(savepoint)
        self.connection = connection

    def transaction(self) -> AbstractContextManager[SyncTransaction]:
        """A savepoint inside this transaction."""
        return self._active().transaction()

    def execute(self, sql: str, params: Params | None = None) -> int:
        return self._active().execute(sql, params)

    def executemany(self, sql: str, seq_of_params: Sequence[Params]) -> int:
        return self._active().executemany(sql, seq_of_params)

    def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        return self._active().fetch_all(sql, params)

    def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        return self._active().fetch_one(sql, params)

    def execute_script(self, sql: str) -> None:
        self._active().execute_script(sql)

    def _active(self) -> SyncConnection:
        self.check_active()
        return self.connection


class SyncRelationalStore(SyncStore):
    """SQL tables with transactions for sync code; see
    :class:`multistore.stores.relational.RelationalStore`."""

    model: ClassVar[str] = "relational"

    @abc.abstractmethod
    def connection(self) -> AbstractContextManager[SyncConnection]:
        """Lease a connection for several statements; returned on exit."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SyncTransaction]:
        """Lease a connection and run a transaction on it."""
        with self.connection() as conn, conn.transaction() as tx:
            yield tx

    def execute(self, sql: str, params: Params | None = None) -> int:
        with self.connection() as conn:
            return conn.execute(sql, params)

    def executemany(self, sql: str, seq_of_params: Sequence[Params]) -> int:
        with self.connection() as conn:
            return conn.executemany(sql, seq_of_params)

    def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        with self.connection() as conn:
            return conn.fetch_all(sql, params)

    def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        with self.connection() as conn:
            return conn.fetch_one(sql, params)

    def fetch_val(self, sql: str, params: Params | None = None) -> Any:
        with self.connection() as conn:
            return conn.fetch_val(sql, params)

    def execute_script(self, sql: str) -> None:
        with self.connection() as conn:
            conn.execute_script(sql)

    def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Apply the migrations not applied yet, in version order, each in its own
        transaction; the versions applied now (see the async ``migrate``)."""
        with self._migration_connection() as conn:
            return run_migrations_sync(conn, migrations, self.backend, self._lock_migrations)

    def applied_migrations(self) -> list[AppliedMigration]:
        """The migrations recorded in ``multistore_migrations``, by version."""
        with self.connection() as conn:
            return read_applied_sync(conn)

    def _migration_connection(self) -> AbstractContextManager[SyncConnection]:
        """The connection migrations run on (hook)."""
        return self.connection()

    def _lock_migrations(self, tx: SyncTransaction) -> None:
        """Serialise concurrent migrators (hook)."""
