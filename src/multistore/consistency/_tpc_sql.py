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
(on PostgreSQL in the same round trip as ``PREPARE TRANSACTION``): the row exists if and
only if the branch committed. Recovery uses it to detect heuristic outcomes and purges
old markers.

The gid is quoted into the SQL text: :class:`~multistore.core._tpc.Xid` allows only
letters, digits, ``_``, ``-`` and ``:``, so it cannot close the literal.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Collection
from contextlib import AsyncExitStack
from typing import Final, Self, cast

from multistore.consistency._tpc_log import ensure_table
from multistore.consistency._tpc_participants import Participant, SQLBranch
from multistore.core._tpc import XA_FORMAT_ID, Vote, Xid
from multistore.errors import (
    ConflictError,
    MultistoreError,
    StoreUnavailableError,
)
from multistore.stores._registry import open_store
from multistore.stores.relational import Connection, Params, RelationalStore, Row
from multistore.urls import StoreURL

__all__ = ["MariaDBParticipant", "PostgresParticipant"]


#: The commit markers: one row per branch prepared here, written inside the branch.
MARKERS: Final = "multistore_tpc_markers"
_MARKERS_TABLE: Final = (
    f"CREATE TABLE IF NOT EXISTS {MARKERS} "
    "(gid VARCHAR(200) PRIMARY KEY, created DOUBLE PRECISION NOT NULL)"
)


class _State(enum.Enum):
    ACTIVE = "active"
    PREPARED = "prepared"
    DONE = "done"


class _RelationalParticipant(Participant):
    def __init__(self, name: str, url: StoreURL, store: RelationalStore) -> None:
        super().__init__(name, url)
        self.store = store

    @classmethod
    async def open(cls, name: str, url: StoreURL) -> Self:
        store = cast(RelationalStore, await open_store(url, model="relational"))
        try:
            await ensure_table(store, _MARKERS_TABLE)
        except BaseException:
            await store.close()
            raise
        return cls(name, url, store)

    async def committed(self, xid: Xid) -> bool | None:
        found = await self.store.fetch_val(
            f"SELECT 1 FROM {MARKERS} WHERE gid = :gid", {"gid": str(xid)}
        )
        return found is not None

    async def purge_markers(self, older_than: float, keep: Collection[str]) -> int:
        rows = await self.store.fetch_all(
            f"SELECT gid FROM {MARKERS} WHERE created < :cutoff",
            {"cutoff": time.time() - older_than},
        )
        old = [{"gid": row["gid"]} for row in rows if row["gid"] not in keep]
        if old:
            await self.store.executemany(f"DELETE FROM {MARKERS} WHERE gid = :gid", old)
        return len(old)

    async def close(self) -> None:
        await self.store.close()

    async def execute_script(self, sql: str) -> None:
        await self.store.execute_script(sql)

    async def _lease(self) -> tuple[AsyncExitStack, Connection]:
        stack = AsyncExitStack()
        conn = await stack.enter_async_context(self.store.connection())
        return stack, conn

    def _unknown_xid(self, exc: MultistoreError) -> bool:
        raise NotImplementedError


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
        try:
            return await self._active().execute(sql, params)
        except MultistoreError as exc:
            self.failure = exc
            raise

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        try:
            return await self._active().fetch_all(sql, params)
        except MultistoreError as exc:
            self.failure = exc
            raise

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
    async def prepare(self) -> Vote:
        conn = self._active()
        if self.failure is not None:
            await self.rollback()
            self._check_no_failure()
        # Only fetches ran: ask whether they wrote (an UPDATE … RETURNING would have).
        if not self.executed and not await conn.fetch_val(
            "SELECT pg_current_xact_id_if_assigned() IS NOT NULL"
        ):
            await conn.execute("COMMIT")
            self.state = _State.DONE
            return Vote.READ_ONLY
        try:
            # The commit marker and the prepare in one round trip (simple query protocol).
            await _raw(
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
            await conn.execute("COMMIT")
            return True
        self.state = _State.DONE
        if self._conn is not None:
            try:
                await _raw(self._conn, f"COMMIT PREPARED '{self.xid}'")
            except StoreUnavailableError:
                pass  # this session is gone: try once on a fresh one
            except MultistoreError as exc:
                if _unknown_pg_xid(exc):
                    return False
                raise
            else:
                return True
        return await self.participant.commit_prepared(self.xid)

    async def rollback(self) -> None:
        if self.state is _State.ACTIVE and self._conn is not None:
            self.state = _State.DONE
            await self._conn.execute("ROLLBACK")
        elif self.state is _State.PREPARED:
            self.state = _State.DONE
            await self.participant.rollback_prepared(self.xid)


class PostgresParticipant(_RelationalParticipant):
    """A PostgreSQL database (needs ``max_prepared_transactions`` > 0)."""

    async def begin(self, xid: Xid) -> PostgresBranch:
        stack, conn = await self._lease()
        try:
            await conn.execute("BEGIN")
        except BaseException:
            await stack.aclose()
            raise
        return PostgresBranch(self, xid, stack, conn)

    async def in_doubt(self) -> list[Xid]:
        rows = await self.store.fetch_all(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
            "ORDER BY prepared"
        )
        found = (Xid.try_parse(row["gid"]) for row in rows)
        return [xid for xid in found if xid is not None]

    async def commit_prepared(self, xid: Xid) -> bool:
        return await self._finish("COMMIT", xid)

    async def rollback_prepared(self, xid: Xid) -> bool:
        return await self._finish("ROLLBACK", xid)

    async def _finish(self, verb: str, xid: Xid) -> bool:
        try:
            await self.store.execute(f"{verb} PREPARED '{xid}'")
        except MultistoreError as exc:
            if _unknown_pg_xid(exc):
                return False
            raise
        return True


def _unknown_pg_xid(exc: MultistoreError) -> bool:
    return "does not exist" in exc.message and "prepared transaction" in exc.message


async def _raw(conn: Connection, sql: str) -> None:
    """Send a protocol statement that has no placeholders (and no ``%``) as it is. Its
    text is unique per transaction, so the ``:name`` compiler's cache would only miss;
    ``_execute`` is the backend's driver primitive (see the relational ``_api``)."""
    await conn._execute(sql, None)


def _xa(xid: Xid) -> str:
    return f"'{xid.gtrid}','{xid.branch}',{XA_FORMAT_ID}"


class MariaDBBranch(_SQLBranch):
    async def prepare(self) -> Vote:
        conn = self._active()
        if self.failure is not None:
            await self.rollback()
            self._check_no_failure()
        try:
            await conn.execute(
                f"INSERT INTO {MARKERS} (gid, created) VALUES (:gid, UNIX_TIMESTAMP(NOW(6)))",
                {"gid": str(self.xid)},
            )
            await _raw(conn, f"XA END {_xa(self.xid)}")
            await _raw(conn, f"XA PREPARE {_xa(self.xid)}")
        except MultistoreError as exc:
            if exc.definite or isinstance(exc, ConflictError):
                with contextlib.suppress(MultistoreError):
                    await _raw(conn, f"XA ROLLBACK {_xa(self.xid)}")
            self.state = _State.DONE
            self._forget_session()
            raise
        self.state = _State.PREPARED
        return Vote.YES

    async def commit(self, *, one_phase: bool = False) -> bool:
        if one_phase:
            self._check_no_failure()
            conn = self._active()
            self.state = _State.DONE
            try:
                await _raw(conn, f"XA END {_xa(self.xid)}")
                await _raw(conn, f"XA COMMIT {_xa(self.xid)} ONE PHASE")
            except MultistoreError:
                self._forget_session()
                raise
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

    async def begin(self, xid: Xid) -> MariaDBBranch:
        stack, conn = await self._lease()
        try:
            await _raw(conn, f"XA START {_xa(xid)}")
        except BaseException:
            await stack.aclose()
            raise
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

    async def commit_prepared(self, xid: Xid) -> bool:
        return await self._finish("COMMIT", xid)

    async def rollback_prepared(self, xid: Xid) -> bool:
        return await self._finish("ROLLBACK", xid)

    async def _finish(self, verb: str, xid: Xid) -> bool:
        try:
            await self.store.execute(f"XA {verb} {_xa(xid)}")
        except MultistoreError as exc:
            if "(1397)" in exc.message:  # XAER_NOTA: unknown XID
                return False
            raise
        return True
