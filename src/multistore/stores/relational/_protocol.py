"""The relational connection's protocol, free of I/O: statement checks, transactions
and savepoints, the failure that aborts a transaction, commit outcomes.

Each public operation of a connection is a generator that yields the driver
primitives to run (:class:`Op`) and receives their results (or has their errors
thrown in); :func:`~multistore.stores._plans.drive` runs one on a sync connection,
the async :class:`~multistore.stores.relational.Connection` awaits each primitive
with :func:`~multistore.stores._plans.drive_async`. The state lives
in :class:`ConnectionCore` and in the transaction objects (:class:`TransactionState`).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from multistore.errors import ConflictError, InvalidQueryError, MultistoreError, UsageError
from multistore.stores.relational._params import Dialect, bind, compile_sql
from multistore.stores.relational._rows import Row

__all__ = [
    "ConnectionCore",
    "Op",
    "Params",
    "Steps",
    "TransactionState",
    "TransactionStatus",
]

T = TypeVar("T")
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


class Op(NamedTuple):
    """One driver primitive: ``execute``, ``executemany``, ``fetch``, ``script``,
    ``begin``, ``commit`` or ``rollback``, with its SQL (in the driver's parameter
    style) and arguments."""

    kind: str
    sql: str = ""
    args: Any = None
    one: bool = False


Steps = Generator[Op, Any, T]
"""An operation in progress: it yields primitives and returns the answer."""


class TransactionState:
    """What the protocol keeps of an open transaction (or savepoint)."""

    def __init__(self, savepoint: str | None) -> None:
        self.savepoint = savepoint
        self.status = TransactionStatus.ACTIVE
        self.failure: BaseException | None = None
        """The error of a statement that failed inside this transaction, if any."""

    def check_active(self) -> None:
        if self.status is not TransactionStatus.ACTIVE:
            raise UsageError(
                f"this transaction is {self.status.value}; run statements inside its block"
            )

    def __repr__(self) -> str:
        kind = f"savepoint {self.savepoint}" if self.savepoint else "transaction"
        return f"<Transaction {kind} {self.status.value}>"


class ConnectionCore:
    """A connection's protocol state: the open transaction levels, and whether its
    lease has ended. Outside a transaction every statement commits on its own."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.levels: list[TransactionState] = []
        self.released = False

    # -- statements --

    def execute(self, sql: str, params: Params | None) -> Steps[int]:
        compiled = compile_sql(sql, self.dialect)
        args = bind(compiled, params)
        self.check_usable()
        with self.guard():
            count: int = yield Op("execute", compiled.sql, args)
        return count

    def executemany(
        self, sql: str, seq_of_params: Sequence[Params], own: Callable[[], TransactionState]
    ) -> Steps[int]:
        """``own()`` makes the transaction object of the call's own transaction (used
        when the caller has none open)."""
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
        self.check_usable()
        if self.levels:
            with self.guard():
                count: int = yield Op("executemany", compiled.sql, args)
            return count
        # No transaction of the caller's: one of its own, so that the rows land all or
        # none, and an error of one row is definite for the whole call.
        tx = own()
        tx.savepoint = yield from self.begin()
        self.levels.append(tx)
        try:
            with self.guard():
                count = yield Op("executemany", compiled.sql, args)
        except BaseException as exc:
            yield from self.end(tx, exc)
            raise
        yield from self.end(tx, None)
        return count

    def fetch(self, sql: str, params: Params | None, *, one: bool) -> Steps[list[Row]]:
        compiled = compile_sql(sql, self.dialect)
        args = bind(compiled, params)
        self.check_usable()
        with self.guard():
            rows: list[Row] = yield Op("fetch", compiled.sql, args, one)
        return rows

    def script(self, sql: str) -> Steps[None]:
        self.check_usable()
        with self.guard():
            yield Op("script", sql)

    # -- transactions --

    def begin(self) -> Steps[str | None]:
        """Open a transaction (or, inside one, a savepoint); its savepoint name. The
        caller then makes the transaction object and appends it to :attr:`levels`."""
        self.check_usable()
        depth = len(self.levels)
        savepoint = f"multistore_sp{depth}" if depth else None
        with self.guard():
            try:
                if savepoint is None:
                    yield Op("begin")
                else:
                    yield Op("execute", f"SAVEPOINT {savepoint}")
            except BaseException as exc:
                if not (isinstance(exc, MultistoreError) and exc.definite):
                    # cancelled (or lost) while BEGIN ran: it may have begun a transaction
                    # that nothing would end, and the connection's next BEGIN would fail
                    with contextlib.suppress(MultistoreError):
                        yield from self._undo(savepoint)
                raise
        return savepoint

    def end(self, tx: TransactionState, exc: BaseException | None) -> Steps[None]:
        """End ``tx`` when its block ends: roll back when it raised ``exc`` (the caller
        re-raises it) or when a statement inside failed (:class:`ConflictError`),
        else commit."""
        if exc is not None:
            yield from self._finish(tx, commit=False)
            return
        if tx.failure is not None:
            yield from self._finish(tx, commit=False)
            raise ConflictError(
                f"transaction rolled back: a statement inside it failed ({tx.failure}) "
                "and the error was caught inside the block; catch it outside the block, "
                "or wrap the statement in a nested transaction() (a savepoint)"
            ) from tx.failure
        yield from self._finish(tx, commit=True)

    def _finish(self, tx: TransactionState, *, commit: bool) -> Steps[None]:
        if self.levels and self.levels[-1] is tx:
            self.levels.pop()
        sp = tx.savepoint
        if commit:
            try:
                if sp is None:
                    yield Op("commit")
                else:
                    yield Op("execute", f"RELEASE SAVEPOINT {sp}")
            except MultistoreError as exc:
                definite = exc.definite
                tx.status = TransactionStatus.ROLLED_BACK if definite else TransactionStatus.UNKNOWN
                with contextlib.suppress(MultistoreError):
                    yield from self._undo(sp)
                if sp is not None and self.levels:
                    self.levels[-1].failure = exc
                raise
            tx.status = TransactionStatus.COMMITTED
            return
        tx.status = TransactionStatus.ROLLED_BACK
        try:
            yield from self._undo(sp)
        except MultistoreError as exc:
            # The connection is gone or the server already ended the transaction;
            # either way nothing of it was committed. The caller's error propagates.
            if sp is not None and self.levels and self.levels[-1].failure is None:
                self.levels[-1].failure = exc

    def _undo(self, savepoint: str | None) -> Steps[None]:
        if savepoint is None:
            yield Op("rollback")
        else:
            yield Op("execute", f"ROLLBACK TO SAVEPOINT {savepoint}")
            yield Op("execute", f"RELEASE SAVEPOINT {savepoint}")

    # -- state --

    def check_usable(self) -> None:
        if self.released:
            raise UsageError(
                "this connection (or transaction) was used after its block ended; "
                "run statements inside the block that leased it"
            )
        if self.levels and self.levels[-1].failure is not None:
            raise InvalidQueryError(
                f"the transaction is aborted: an earlier statement failed "
                f"({self.levels[-1].failure}); leave the block to roll it back, or run "
                "statements that may fail inside a nested transaction() (a savepoint)"
            )

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Mark the innermost transaction failed when the block raises."""
        try:
            yield
        except BaseException as exc:
            if self.levels:
                self.levels[-1].failure = exc
            raise
