"""SQLite participant: write intents made durable at prepare, applied at commit.

SQLite has no prepared state, so the branch works like this:

* Statements run in a ``BEGIN IMMEDIATE`` transaction on the store's connection, so
  the branch holds SQLite's write lock (other writers wait) and reads its own writes.
  Each write statement and its parameters are recorded: the write-set.
* **prepare** writes the write-set as an *intent* into a side file
  (``<db>-2pc``, ``synchronous=full``) and commits it there; the main transaction stays
  open and keeps the lock.
* **commit** adds a row to ``multistore_tpc_applied`` in the main transaction and
  commits it, then deletes the intent; the row stays as the commit marker (recovery
  purges old ones). **rollback** rolls back and deletes the intent.
* After a crash the main transaction is gone but the intent is on disk: recovery lists
  it as in doubt; commit replays the statements in one transaction (unless the applied
  marker shows they committed already), abort deletes the intent.

Parameters must be JSON values (str, int, float, bool, None) so they can be stored.
Between a crash and recovery the lock is lost: a replay re-runs the statements against
the data as it is then.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import Collection
from contextlib import AsyncExitStack
from typing import Any, Final, Self, cast

from multistore.consistency._tpc_participants import Participant, SQLBranch
from multistore.core._tpc import Vote, Xid
from multistore.errors import (
    ConflictError,
    InvalidValueError,
    MultistoreError,
    StoreTimeoutError,
    UsageError,
)
from multistore.stores._registry import open_store
from multistore.stores.relational import Connection, Params, RelationalStore, Row
from multistore.urls import StoreURL

__all__ = ["SQLiteParticipant"]

_INTENTS: Final = "multistore_tpc_intents"
_APPLIED: Final = "multistore_tpc_applied"
_INSERT_APPLIED: Final = f"INSERT INTO {_APPLIED} (gid, created) VALUES (:gid, :t)"


def _json_params(name: str, params: Params | None) -> dict[str, Any]:
    values = dict(params or {})
    try:
        json.dumps(values, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(
            f"{name}: SQLite 2PC parameters must be JSON values ({exc})"
        ) from exc
    return values


class SQLiteBranch(SQLBranch):
    participant: SQLiteParticipant

    def __init__(
        self, participant: SQLiteParticipant, xid: Xid, stack: AsyncExitStack, conn: Connection
    ) -> None:
        super().__init__(participant, xid)
        self._stack = stack
        self._conn = conn
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.state = "active"
        self.failure: MultistoreError | None = None

    def _active(self) -> Connection:
        if self.state != "active":
            raise ConflictError(f"branch {self.xid} is {self.state}; no more statements")
        return self._conn

    async def execute(self, sql: str, params: Params | None = None) -> int:
        values = _json_params(self.name, params)
        try:
            count = await self._active().execute(sql, values)
        except MultistoreError as exc:
            self.failure = exc
            raise
        self.writes.append((sql, values))
        return count

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        conn = self._active()
        db = self.participant.native
        before = db.total_changes  # safe: this branch holds the store's only connection
        try:
            rows = await conn.fetch_all(sql, params)
        except MultistoreError as exc:
            self.failure = exc
            raise
        if db.total_changes != before:  # it wrote (UPDATE … RETURNING): part of the write-set
            self.writes.append((sql, _json_params(self.name, params)))
        return rows

    async def prepare(self) -> Vote:
        conn = self._active()
        if self.failure is not None:
            await self.rollback()
            raise ConflictError(
                f"{self.name}: a statement of the branch failed ({self.failure})"
            ) from self.failure
        if not self.writes:
            self.state = "done"
            await conn.execute("ROLLBACK")
            return Vote.READ_ONLY
        violations = await conn.fetch_all("PRAGMA foreign_key_check")
        if violations:
            await self.rollback()
            raise ConflictError(f"{self.name}: foreign key violations: {list(violations[0])}")
        await self.participant.intents.execute(
            f"INSERT INTO {_INTENTS} (gid, writes, created) VALUES (:gid, :writes, :created)",
            {"gid": str(self.xid), "writes": json.dumps(self.writes), "created": time.time()},
        )
        self.state = "prepared"
        return Vote.YES

    async def commit(self, *, one_phase: bool = False) -> bool:
        if one_phase:
            conn = self._active()
            self.state = "done"
            await conn.execute("COMMIT")
            return True
        if self.state != "prepared":
            raise ConflictError(f"branch {self.xid} is {self.state}, not prepared")
        self.state = "done"
        await self._conn.execute(_INSERT_APPLIED, {"gid": str(self.xid), "t": time.time()})
        await self._conn.execute("COMMIT")
        await self.participant.forget(self.xid)
        return True

    async def rollback(self) -> None:
        was = self.state
        self.state = "done"
        if was in ("active", "prepared"):
            await self._conn.execute("ROLLBACK")
        if was == "prepared":
            await self.participant.forget(self.xid)

    async def release(self) -> None:
        if self.state == "active":
            with contextlib.suppress(MultistoreError):
                await self.rollback()
        elif self.state == "prepared":
            # Leave the intent for recovery; the uncommitted work goes.
            with contextlib.suppress(MultistoreError):
                await self._conn.execute("ROLLBACK")
            self.state = "done"
        await self._stack.aclose()


class SQLiteParticipant(Participant):
    """A SQLite file; intents live in ``<file>-2pc`` beside it."""

    def __init__(
        self,
        name: str,
        url: StoreURL,
        store: RelationalStore,
        intents: RelationalStore,
        lock_timeout: float,
    ) -> None:
        super().__init__(name, url)
        self.store = store
        self.intents = intents
        self.lock_timeout = lock_timeout

    @classmethod
    async def open(cls, name: str, url: StoreURL) -> Self:
        if url.path == ":memory:":
            raise UsageError(f"participant {name!r}: an in-memory SQLite database cannot prepare")
        side = dataclasses.replace(
            url,
            database=f"{url.path}-2pc",
            options={**url.options, "synchronous": "full"},
        )
        store = cast(RelationalStore, await open_store(url, model="relational"))
        try:
            intents = cast(RelationalStore, await open_store(side, model="relational"))
        except BaseException:
            await store.close()
            raise
        self = cls(name, url, store, intents, url.float_option("timeout", 30.0))
        try:
            await intents.execute(
                f"CREATE TABLE IF NOT EXISTS {_INTENTS} "
                "(gid TEXT PRIMARY KEY, writes TEXT NOT NULL, created REAL NOT NULL)"
            )
            await store.execute(
                f"CREATE TABLE IF NOT EXISTS {_APPLIED} "
                "(gid TEXT PRIMARY KEY, created REAL NOT NULL)"
            )
        except BaseException:
            await self.close()
            raise
        return self

    @property
    def native(self) -> sqlite3.Connection:
        return cast(sqlite3.Connection, self.store.native)

    async def close(self) -> None:
        await self.store.close()
        await self.intents.close()

    async def execute_script(self, sql: str) -> None:
        await self.store.execute_script(sql)

    async def begin(self, xid: Xid) -> SQLiteBranch:
        stack = AsyncExitStack()
        try:
            conn = await asyncio.wait_for(
                stack.enter_async_context(self.store.connection()), self.lock_timeout
            )
        except TimeoutError:
            await stack.aclose()
            raise StoreTimeoutError(
                f"{self.name}: SQLite is held by another transaction for more than "
                f"{self.lock_timeout:g} s"
            ) from None
        try:
            await conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            await stack.aclose()
            raise
        return SQLiteBranch(self, xid, stack, conn)

    async def in_doubt(self) -> list[Xid]:
        rows = await self.intents.fetch_all(f"SELECT gid FROM {_INTENTS} ORDER BY created")
        found = (Xid.try_parse(row["gid"]) for row in rows)
        return [xid for xid in found if xid is not None]

    async def commit_prepared(self, xid: Xid) -> bool:
        writes = await self.intents.fetch_val(
            f"SELECT writes FROM {_INTENTS} WHERE gid = :gid", {"gid": str(xid)}
        )
        if writes is None:
            return False
        async with self.store.connection() as conn:
            async with conn.transaction() as tx:
                done = await tx.fetch_val(
                    f"SELECT 1 FROM {_APPLIED} WHERE gid = :gid", {"gid": str(xid)}
                )
                if not done:
                    for sql, params in json.loads(writes):
                        await tx.execute(sql, params)
                    await tx.execute(_INSERT_APPLIED, {"gid": str(xid), "t": time.time()})
            await self.forget(xid)
        return True

    async def rollback_prepared(self, xid: Xid) -> bool:
        existed = await self.intents.execute(
            f"DELETE FROM {_INTENTS} WHERE gid = :gid", {"gid": str(xid)}
        )
        return existed > 0

    async def forget(self, xid: Xid) -> None:
        """Drop the intent (the applied marker stays as the commit marker)."""
        await self.intents.execute(f"DELETE FROM {_INTENTS} WHERE gid = :gid", {"gid": str(xid)})

    async def committed(self, xid: Xid) -> bool | None:
        found = await self.store.fetch_val(
            f"SELECT 1 FROM {_APPLIED} WHERE gid = :gid", {"gid": str(xid)}
        )
        return found is not None

    async def purge_markers(self, older_than: float, keep: Collection[str]) -> int:
        rows = await self.store.fetch_all(
            f"SELECT gid FROM {_APPLIED} WHERE created < :cutoff",
            {"cutoff": time.time() - older_than},
        )
        old = [{"gid": row["gid"]} for row in rows if row["gid"] not in keep]
        if old:
            await self.store.executemany(f"DELETE FROM {_APPLIED} WHERE gid = :gid", old)
        return len(old)

    async def intent_count(self) -> int:
        """How many intents are on disk (tests and status reports)."""
        return int(await self.intents.fetch_val(f"SELECT count(*) FROM {_INTENTS}"))
