"""PostgreSQL and MariaDB participants: native prepare on the relational stores.

* PostgreSQL: ``BEGIN`` … ``PREPARE TRANSACTION 'gid'`` … ``COMMIT PREPARED 'gid'``
  (or ``ROLLBACK PREPARED``); a branch that wrote nothing commits at prepare and votes
  read-only. In-doubt branches come from ``pg_prepared_xacts`` of the database.
* MariaDB: ``XA START`` / ``XA END`` / ``XA PREPARE`` / ``XA COMMIT`` (``ONE PHASE`` for
  a single participant) / ``XA ROLLBACK``, with ``gtrid`` the global id, ``bqual`` the
  participant's name and multistore's ``formatID``. ``XA RECOVER`` lists the whole
  server's branches, so a participant keeps those whose ``bqual`` is its name. A session
  holding a prepared branch is closed rather than pooled again: the branch survives
  the disconnect (MariaDB ≥ 10.5) and is committed from another session.

Each writing branch inserts its id into ``multistore_tpc_markers`` before it prepares
(on PostgreSQL in the same round trip as ``PREPARE TRANSACTION``, on MariaDB in the same
hop to the session's thread as ``XA END`` and ``XA PREPARE``): the row exists if and
only if the branch committed. Recovery uses it to detect heuristic outcomes and purges
old markers.

As a transaction's *last resource* a branch is not prepared: once the other branches
are, it inserts the commit record into ``multistore_tpc_decisions`` and commits, in one
round trip on PostgreSQL (``INSERT …; COMMIT``) and one hop on MariaDB (the insert,
``XA END``, ``XA COMMIT … ONE PHASE``). Recovery's abort record for the same key (a
duplicate key for whichever of the two comes second) keeps a late commit from
happening after recovery rolled the other branches back. Records of finished
transactions are deleted in the background, ``FORGET_BATCH`` at a time in one autocommit
DELETE (one forced log write for the batch): a last resource's transaction inserts its
own record and nothing else in that table, so two of them never wait on each other
there.

Round trips: a branch starts its transaction (``BEGIN``, ``XA START``) together with
its first statement — PostgreSQL in psycopg's pipeline mode, MariaDB in one hop to the
session's thread — so a branch costs its statements, one prepare and one commit. A
branch that ran no statement never starts a transaction and votes read-only.

The gid is quoted into the SQL text: :class:`~multistore.core._tpc.Xid` allows only
letters, digits, ``_``, ``-`` and ``:``, so it cannot close the literal.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import json
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import AsyncExitStack
from typing import Any, Final, Self, cast

import psycopg

from multistore.consistency._tpc_log import DECISIONS_TABLE, DecisionLog, ensure_table, schema
from multistore.consistency._tpc_participants import (
    LOGS_SCHEMA,
    Participant,
    SQLBranch,
    logs_in,
    note_log_in,
    purgeable,
)
from multistore.core._tpc import XA_FORMAT_ID, Vote, Xid
from multistore.errors import (
    ConflictError,
    DuplicateKeyError,
    MultistoreError,
    StoreUnavailableError,
)
from multistore.stores._registry import open_store
from multistore.stores.relational import Connection, Params, RelationalStore, Row
from multistore.stores.relational._mariadb import MariaDBConnection
from multistore.stores.relational._params import bind, compile_sql
from multistore.stores.relational._postgres import PostgresConnection
from multistore.stores.relational._postgres import map_error as map_pg_error
from multistore.stores.relational._rows import Columns
from multistore.urls import StoreURL

__all__ = ["MariaDBParticipant", "PostgresParticipant"]


#: The records of finished transactions are deleted in the background once this many
#: are queued (one by one would cost a round trip each on the critical path).
FORGET_BATCH: Final = 16

#: The commit markers: one row per branch prepared here, written inside the branch.
MARKERS: Final = "multistore_tpc_markers"
_MARKERS_TABLE: Final = (
    f"CREATE TABLE IF NOT EXISTS {MARKERS} "
    "(gid VARCHAR(200) PRIMARY KEY, created DOUBLE PRECISION NOT NULL)"
)


def _record_sql(xid: Xid, prepared: Sequence[str]) -> str:
    """The INSERT of ``xid``'s commit record naming the ``prepared`` participants, with
    the values inline: ids and participant names are letters, digits, ``_``, ``-`` and
    ``:`` only (see :class:`Xid`), so nothing can close the literals."""
    return (
        f"INSERT INTO {DECISIONS_TABLE} (gtrid, node, decision, participants, created) "
        f"VALUES ('{xid.gtrid}', '{xid.node}', 'commit', '{json.dumps(sorted(prepared))}', "
        f"{time.time()!r})"
    )


class _State(enum.Enum):
    ACTIVE = "active"
    PREPARED = "prepared"
    DONE = "done"


class _RelationalParticipant(Participant):
    decisions: DecisionLog

    def __init__(self, name: str, url: StoreURL, store: RelationalStore) -> None:
        super().__init__(name, url)
        self.store = store
        self.decisions = DecisionLog(store, DECISIONS_TABLE, forget_every=FORGET_BATCH)

    @classmethod
    async def open(cls, name: str, url: StoreURL) -> Self:
        store = cast(RelationalStore, await open_store(url, model="relational"))
        try:
            await ensure_table(store, _MARKERS_TABLE)
            await ensure_table(store, schema(DECISIONS_TABLE))
            await ensure_table(store, LOGS_SCHEMA)
        except BaseException:
            await store.close()
            raise
        return cls(name, url, store)

    async def committed(self, xid: Xid) -> bool | None:
        found = await self.store.fetch_val(
            f"SELECT 1 FROM {MARKERS} WHERE gid = :gid", {"gid": str(xid)}
        )
        return found is not None

    async def purge_markers(
        self, older_than: float, keep: Collection[str], owned: Callable[[Xid], bool]
    ) -> int:
        rows = await self.store.fetch_all(
            f"SELECT gid FROM {MARKERS} WHERE created < :cutoff",
            {"cutoff": time.time() - older_than},
        )
        old = purgeable([str(row["gid"]) for row in rows], keep, owned)
        if old:
            await self.store.executemany(
                f"DELETE FROM {MARKERS} WHERE gid = :gid", [{"gid": gid} for gid in old]
            )
        return len(old)

    async def note_log(self, log_id: str, location: str) -> None:
        await note_log_in(self.store, log_id, location)

    async def known_logs(self) -> dict[str, str]:
        return await logs_in(self.store)

    async def close(self) -> None:
        await self.store.close()

    async def execute_script(self, sql: str) -> None:
        await self.store.execute_script(sql)

    async def _lease(self) -> tuple[AsyncExitStack, Connection]:
        stack = AsyncExitStack()
        conn = await stack.enter_async_context(self.store.connection())
        return stack, conn

    async def commit_prepared(self, xid: Xid) -> bool:
        return await self._finish("COMMIT", xid)

    async def rollback_prepared(self, xid: Xid) -> bool:
        return await self._finish("ROLLBACK", xid)

    async def _finish(self, verb: str, xid: Xid) -> bool:
        """Commit or roll back a prepared branch; False when the server does not know it."""
        try:
            await self.store.execute(self._finish_sql(verb, xid))
        except MultistoreError as exc:
            if self._unknown_xid(exc):
                return False
            raise
        return True

    @abc.abstractmethod
    def _finish_sql(self, verb: str, xid: Xid) -> str:
        """The statement that ends a prepared branch with ``verb`` (COMMIT/ROLLBACK)."""

    @abc.abstractmethod
    def _unknown_xid(self, exc: MultistoreError) -> bool:
        """True when ``exc`` says the server has no prepared branch by that id."""


class _SQLBranch(SQLBranch):
    participant: _RelationalParticipant

    def __init__(
        self, participant: _RelationalParticipant, xid: Xid, stack: AsyncExitStack, conn: Connection
    ) -> None:
        super().__init__(participant, xid)
        self._stack = stack
        self._conn: Connection | None = conn
        self.state = _State.ACTIVE
        self.failure: MultistoreError | None = None
        self.executed = False
        """True once ``execute`` ran: the branch is taken to write (no read-only check)."""

    def _active(self) -> Connection:
        if self._conn is None or self.state is not _State.ACTIVE:
            raise ConflictError(f"branch {self.xid} is {self.state.value}; no more statements")
        return self._conn

    async def execute(self, sql: str, params: Params | None = None) -> int:
        self.executed = True
        conn = self._active()
        try:
            if not self.begun:
                return (await self._begin_with(conn, sql, params, fetch=False))[0]
            return await conn.execute(sql, params)
        except MultistoreError as exc:
            self.failure = exc
            raise

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        conn = self._active()
        try:
            if not self.begun:
                return (await self._begin_with(conn, sql, params, fetch=True))[1]
            return await conn.fetch_all(sql, params)
        except MultistoreError as exc:
            self.failure = exc
            raise

    begun = True
    """False while the branch's transaction is not started on the server yet: the
    participant sends its start (``BEGIN``, ``XA START``) with the first statement,
    saving a round trip per branch."""

    @property
    def idle(self) -> bool:
        return not self.begun

    async def commit_deciding(self, prepared: Sequence[str]) -> None:
        self._check_no_failure()
        try:
            await self._commit_with(_record_sql(self.xid, prepared))
        except DuplicateKeyError as exc:
            if not self._record_clash(exc):
                raise
            raise DuplicateKeyError(
                f"{self.name}: a recovery manager decided abort first (its record is there): {exc}"
            ) from exc

    @abc.abstractmethod
    async def _commit_with(self, record: str) -> None:
        """Insert ``record`` in the branch's transaction and commit it in one phase (or,
        with no transaction started, insert it on its own)."""

    @abc.abstractmethod
    def _record_clash(self, exc: DuplicateKeyError) -> bool:
        """True when ``exc`` is the commit record meeting recovery's abort record."""

    @abc.abstractmethod
    async def _begin_with(
        self, conn: Connection, sql: str, params: Params | None, *, fetch: bool
    ) -> tuple[int, list[Row]]:
        """Start the branch's transaction and run its first statement."""

    def _check_no_failure(self) -> None:
        if self.failure is not None:
            raise ConflictError(
                f"{self.name}: a statement of the branch failed ({self.failure}); "
                "it cannot be prepared"
            ) from self.failure

    async def release(self) -> None:
        if self._conn is None:
            return
        if self.state is _State.ACTIVE:
            with contextlib.suppress(MultistoreError):
                await self.rollback()
        self._conn = None
        await self._stack.aclose()


class PostgresBranch(_SQLBranch):
    """Statements run on one psycopg cursor kept for the branch; ``BEGIN`` goes with the
    first of them in one round trip (psycopg's pipeline mode), and the protocol
    statements (whose text is unique per transaction) skip psycopg's prepared-statement
    bookkeeping."""

    begun = False
    _cursor: psycopg.AsyncCursor[Any] | None = None

    async def execute(self, sql: str, params: Params | None = None) -> int:
        self.executed = True
        try:
            return (await self._run(self._active(), sql, params, fetch=False))[0]
        except MultistoreError as exc:
            self.failure = exc
            raise

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        try:
            return (await self._run(self._active(), sql, params, fetch=True))[1]
        except MultistoreError as exc:
            self.failure = exc
            raise

    async def _run(
        self, conn: Connection, sql: str, params: Params | None, *, fetch: bool
    ) -> tuple[int, list[Row]]:
        compiled = compile_sql(sql, "postgresql")
        args = bind(compiled, params)
        if not isinstance(conn, PostgresConnection):  # pragma: no cover - always is
            if not self.begun:
                self.begun = True
                await conn.execute("BEGIN")
            if fetch:
                return 0, await conn.fetch_all(sql, params)
            return await conn.execute(sql, params), []
        cur = self._cursor
        if cur is None:
            cur = self._cursor = conn._conn.cursor()
        try:
            if self.begun:
                await cur.execute(compiled.sql, args)
            else:
                self.begun = True  # from here on a ROLLBACK ends whatever was started
                async with conn._conn.pipeline():
                    await cur.execute(b"BEGIN", prepare=False)
                    await cur.execute(compiled.sql, args)
            if not fetch:
                return max(cur.rowcount, 0), []
            if cur.description is None:
                return 0, []
            columns = Columns([d.name for d in cur.description])
            return 0, [columns.row(values) for values in await cur.fetchall()]
        except psycopg.Error as exc:
            raise map_pg_error(exc) from exc

    async def _begin_with(
        self, conn: Connection, sql: str, params: Params | None, *, fetch: bool
    ) -> tuple[int, list[Row]]:
        return await self._run(conn, sql, params, fetch=fetch)  # BEGIN rides along

    async def release(self) -> None:
        await super().release()
        self._cursor = None

    async def _protocol(self, conn: Connection, sql: str) -> None:
        """A protocol statement (no parameters), unprepared, on the branch's cursor."""
        cur = self._cursor
        if cur is None or not isinstance(conn, PostgresConnection):
            await _raw(conn, sql)
            return
        try:
            await cur.execute(sql.encode(), prepare=False)
        except psycopg.Error as exc:
            raise map_pg_error(exc) from exc

    async def prepare(self) -> Vote:
        conn = self._active()
        if self.failure is not None:
            await self.rollback()
            self._check_no_failure()
        if not self.begun:  # no statement ran: there is no transaction to prepare
            self.state = _State.DONE
            return Vote.READ_ONLY
        # Only fetches ran: ask whether they wrote (an UPDATE … RETURNING would have).
        if not self.executed and not await conn.fetch_val(
            "SELECT pg_current_xact_id_if_assigned() IS NOT NULL"
        ):
            await conn.execute("COMMIT")
            self.state = _State.DONE
            return Vote.READ_ONLY
        try:
            # The commit marker and the prepare in one round trip (simple query protocol).
            await self._protocol(
                conn,
                f"INSERT INTO {MARKERS} (gid, created) "
                f"VALUES ('{self.xid}', extract(epoch FROM clock_timestamp())); "
                f"PREPARE TRANSACTION '{self.xid}'",
            )
        except MultistoreError:
            self.state = _State.DONE
            # A failed PREPARE ends the transaction; a failed marker insert leaves it
            # aborted. Either way nothing of it can commit; close it if it is still open.
            with contextlib.suppress(MultistoreError):
                await conn.execute("ROLLBACK")
            raise
        self.state = _State.PREPARED
        return Vote.YES

    async def commit(self, *, one_phase: bool = False) -> bool:
        if one_phase:
            self._check_no_failure()
            conn = self._active()
            self.state = _State.DONE
            if self.begun:
                await self._protocol(conn, "COMMIT")
            return True
        self.state = _State.DONE
        if self._conn is not None:
            try:
                await self._protocol(self._conn, self.participant._finish_sql("COMMIT", self.xid))
            except StoreUnavailableError:
                pass  # this session is gone: try once on a fresh one
            except MultistoreError as exc:
                if self.participant._unknown_xid(exc):
                    return False
                raise
            else:
                return True
        # (The first COMMIT PREPARED may have gone through before the session died; then
        # the branch is unknown here, and the coordinator asks its commit marker.)
        return await self.participant.commit_prepared(self.xid)

    async def _commit_with(self, record: str) -> None:
        conn = self._active()
        self.state = _State.DONE
        if not self.begun:  # nothing to commit but the record: one autocommit insert
            await self._protocol(conn, record)
            return
        try:
            # One round trip (simple query protocol): the record, then COMMIT.
            await self._protocol(conn, f"{record}; COMMIT")
        except MultistoreError as exc:
            if exc.definite:  # a failed statement left the transaction open and aborted
                with contextlib.suppress(MultistoreError):
                    await self._protocol(conn, "ROLLBACK")
            raise

    def _record_clash(self, exc: DuplicateKeyError) -> bool:
        # Not a deferred unique constraint of the branch's own tables.
        return DECISIONS_TABLE in exc.message

    async def rollback(self) -> None:
        if self.state is _State.ACTIVE and self._conn is not None:
            self.state = _State.DONE
            if self.begun:
                await self._protocol(self._conn, "ROLLBACK")
        elif self.state is _State.PREPARED:
            self.state = _State.DONE
            await self.participant.rollback_prepared(self.xid)


class PostgresParticipant(_RelationalParticipant):
    """A PostgreSQL database (needs ``max_prepared_transactions`` > 0)."""

    # A MariaDB branch saves more by not preparing: each of its steps is a hop to the
    # session's thread, dearer than a PostgreSQL round trip on the event loop.
    last_resource_rank = 1

    async def begin(self, xid: Xid) -> PostgresBranch:
        # BEGIN goes with the branch's first statement (one round trip for both).
        stack, conn = await self._lease()
        return PostgresBranch(self, xid, stack, conn)

    async def in_doubt(self) -> list[Xid]:
        rows = await self.store.fetch_all(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
            "ORDER BY prepared"
        )
        found = (Xid.try_parse(row["gid"]) for row in rows)
        # Several participants may share a database: each lists its own branches.
        return [xid for xid in found if xid is not None and xid.branch == self.name]

    def _finish_sql(self, verb: str, xid: Xid) -> str:
        return f"{verb} PREPARED '{xid}'"

    def _unknown_xid(self, exc: MultistoreError) -> bool:
        return "does not exist" in exc.message and "prepared transaction" in exc.message


async def _raw(conn: Connection, sql: str) -> None:
    """Send a protocol statement that has no placeholders (and no ``%``) as it is. Its
    text is unique per transaction, so the ``:name`` compiler's cache would only miss;
    ``_execute`` is the backend's driver primitive (see the relational ``_api``)."""
    await conn._execute(sql, None)


def _xa(xid: Xid) -> str:
    return f"'{xid.gtrid}','{xid.bqual}',{XA_FORMAT_ID}"


def _run_in_order(
    session: Any, statements: Sequence[tuple[str, Any]], fetch: bool
) -> tuple[int, list[Row]]:
    """On the MariaDB session's worker thread: run ``statements`` (driver style) in
    order, stopping at the first error; the rows changed and, with ``fetch``, the rows
    of the last one. Several statements cost one hop to the thread instead of one each."""
    count, rows = 0, []
    for sql, args in statements:
        with session.cursor() as cur:
            cur.execute(sql, args)
            count = max(int(cur.rowcount), 0)
            if fetch and cur.description is not None:
                columns = Columns([d[0] for d in cur.description])
                rows = [columns.row(values) for values in cur.fetchall()]
    return count, rows


async def _my_run(
    conn: Connection, statements: Sequence[tuple[str, Any]], *, fetch: bool = False
) -> tuple[int, list[Row]]:
    if isinstance(conn, MariaDBConnection):
        return await conn._call(_run_in_order, statements, fetch)
    count = 0  # pragma: no cover - a MariaDB participant always has MariaDB connections
    for sql, args in statements:
        count = await conn._execute(sql, args)
    return count, []


_MARKER_INSERT: Final = compile_sql(
    f"INSERT INTO {MARKERS} (gid, created) VALUES (:gid, UNIX_TIMESTAMP(NOW(6)))", "mariadb"
)


#: MariaDB's limit on an XA branch qualifier, in bytes.
_BQUAL_MAX: Final = 64


class MariaDBBranch(_SQLBranch):
    begun = False

    async def _begin_with(
        self, conn: Connection, sql: str, params: Params | None, *, fetch: bool
    ) -> tuple[int, list[Row]]:
        """``XA START`` and the first statement in one hop to the session's thread."""
        compiled = compile_sql(sql, "mariadb")
        args = bind(compiled, params)
        self.begun = True  # from here on rollback sends XA END / XA ROLLBACK
        return await _my_run(
            conn, [(f"XA START {_xa(self.xid)}", None), (compiled.sql, args)], fetch=fetch
        )

    async def prepare(self) -> Vote:
        conn = self._active()
        if self.failure is not None:
            await self.rollback()
            self._check_no_failure()
        if not self.begun:  # no statement ran: no XA transaction was started
            self.state = _State.DONE
            return Vote.READ_ONLY
        try:
            # The commit marker, XA END and XA PREPARE: one hop to the session's thread.
            await _my_run(
                conn,
                [
                    (_MARKER_INSERT.sql, bind(_MARKER_INSERT, {"gid": str(self.xid)})),
                    (f"XA END {_xa(self.xid)}", None),
                    (f"XA PREPARE {_xa(self.xid)}", None),
                ],
            )
        except MultistoreError as exc:
            if exc.definite or isinstance(exc, ConflictError):
                with contextlib.suppress(MultistoreError):
                    await _raw(conn, f"XA ROLLBACK {_xa(self.xid)}")
            self.state = _State.DONE
            self._forget_session()
            raise
        self.state = _State.PREPARED
        return Vote.YES

    async def _one_phase(self, first: Sequence[str]) -> None:
        """``first`` (statements of the branch), ``XA END`` and ``XA COMMIT … ONE PHASE``
        in one hop; a session that failed there is closed, which rolls back its branch."""
        self._check_no_failure()
        conn = self._active()
        self.state = _State.DONE
        try:
            await _my_run(
                conn,
                [
                    *((sql, None) for sql in first),
                    (f"XA END {_xa(self.xid)}", None),
                    (f"XA COMMIT {_xa(self.xid)} ONE PHASE", None),
                ],
            )
        except MultistoreError:
            self._forget_session()
            raise

    async def _commit_with(self, record: str) -> None:
        if self.begun:
            await self._one_phase([record])
            return
        conn = self._active()  # nothing to commit but the record: one autocommit insert
        self.state = _State.DONE
        await _raw(conn, record)

    def _record_clash(self, exc: DuplicateKeyError) -> bool:
        return True  # no deferred constraints: only the record's insert can clash at commit

    async def commit(self, *, one_phase: bool = False) -> bool:
        if one_phase:
            if self.begun:
                await self._one_phase(())
            else:
                self._check_no_failure()
                self._active()
                self.state = _State.DONE
            return True
        self.state = _State.DONE
        if self._conn is not None:
            try:
                await _raw(self._conn, f"XA COMMIT {_xa(self.xid)}")
            except MultistoreError as exc:
                self._forget_session()
                if "(1397)" in exc.message:
                    return False
                raise
            return True
        return await self.participant.commit_prepared(self.xid)

    async def rollback(self) -> None:
        conn = self._conn
        if self.state is _State.ACTIVE and conn is not None:
            self.state = _State.DONE
            if not self.begun:
                return
            with contextlib.suppress(MultistoreError):
                await _raw(conn, f"XA END {_xa(self.xid)}")
            try:
                await _raw(conn, f"XA ROLLBACK {_xa(self.xid)}")
            except MultistoreError:
                self._forget_session()
                raise
        elif self.state is _State.PREPARED:
            self.state = _State.DONE
            if conn is not None:
                await _raw(conn, f"XA ROLLBACK {_xa(self.xid)}")
            else:
                await self.participant.rollback_prepared(self.xid)

    async def release(self) -> None:
        if self.state is _State.PREPARED:
            self._forget_session()
        await super().release()

    def _forget_session(self) -> None:
        """Close this session when it goes back to the pool instead of reusing it (it
        may hold a prepared branch, or be in an unknown XA state)."""
        slot = getattr(self._conn, "_slot", None)  # MariaDBConnection's pool slot
        if slot is not None:
            slot.broken = True


class MariaDBParticipant(_RelationalParticipant):
    """A MariaDB (≥ 10.5) database, through XA transactions."""

    def accepts(self, xid: Xid) -> bool:
        return len(xid.bqual.encode()) <= _BQUAL_MAX

    async def begin(self, xid: Xid) -> MariaDBBranch:
        # XA START goes with the branch's first statement (one hop for both).
        stack, conn = await self._lease()
        return MariaDBBranch(self, xid, stack, conn)

    async def in_doubt(self) -> list[Xid]:
        rows = await self.store.fetch_all("XA RECOVER")
        found: list[Xid] = []
        for row in rows:
            if int(row["formatID"]) != XA_FORMAT_ID:
                continue
            data = row["data"]
            text = data.decode() if isinstance(data, bytes | bytearray) else str(data)
            g = int(row["gtrid_length"])
            xid = Xid.try_parse(f"{text[:g]}:{text[g:]}")
            if xid is not None and xid.branch == self.name:
                found.append(xid)
        return found

    def _finish_sql(self, verb: str, xid: Xid) -> str:
        return f"XA {verb} {_xa(xid)}"

    def _unknown_xid(self, exc: MultistoreError) -> bool:
        return "(1397)" in exc.message  # XAER_NOTA: unknown XID
