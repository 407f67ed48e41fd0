"""SQLite participant: write intents made durable at prepare, applied at commit.

SQLite has no prepared state, so the branch works like this:

* Statements run in a ``BEGIN IMMEDIATE`` transaction on the store's connection, so
  the branch holds SQLite's write lock (other writers wait) and reads its own writes.
  Each write statement and its parameters are recorded: the write-set. Temporary
  triggers on every table of the database record each row the branch changes, with
  the row's values after the change (SQLite's ``quote()`` of each column, exact for
  every type): the *row images*.
* **prepare** writes the write-set and the final image of every changed row (or "gone"
  for a deleted one) as an *intent* into a side file (``<db>-2pc``,
  ``synchronous=full``) and commits it there; the main transaction stays open and keeps
  the lock.
* **commit** adds a row to ``multistore_tpc_applied`` and commits, in one call to
  SQLite's thread (a cancelled caller cannot split them), then deletes the intent; the
  row stays as the commit marker (recovery purges old ones). A commit that fails rolls
  the main transaction back and leaves the intent to recovery. **rollback** rolls back
  and deletes the intent.
* After a crash the main transaction is gone but the intent is on disk: recovery lists
  it as in doubt. Commit replays the statements in one transaction (unless the applied
  marker shows they committed already) and compares the rows they change with the
  intent's images: only when the replay changes exactly the same rows to exactly the
  same values does it commit. Otherwise — another writer changed those rows, took a
  rowid the branch had used, or a unique key it needed, between the crash and
  recovery — the replay is rolled back, the intent is kept, and recovery reports a
  heuristic hazard (:class:`BranchHazardError`) that names the first difference. Abort
  deletes the intent.

Parameters must be JSON values (str, int, float, bool, None) so they can be stored.
Statements whose effect depends on the moment they run (``datetime('now')``,
``random()``) replay differently and so end as hazards: pass such values as parameters.
Intents written before row images existed are replayed without the comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import AsyncExitStack
from typing import Any, Final, NoReturn, Self, cast

from multistore.consistency._tpc_errors import BranchHazardError
from multistore.consistency._tpc_participants import (
    LOGS_SCHEMA,
    Participant,
    SQLBranch,
    logs_in,
    note_log_in,
    purgeable,
)
from multistore.core._tpc import Vote, Xid
from multistore.errors import (
    ConflictError,
    InvalidValueError,
    MultistoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    UnsupportedError,
    UsageError,
)
from multistore.stores._registry import open_store
from multistore.stores.relational import Connection, Params, RelationalStore, Row
from multistore.urls import StoreURL

__all__ = ["SQLiteParticipant"]

_INTENTS: Final = "multistore_tpc_intents"
_APPLIED: Final = "multistore_tpc_applied"
_CHANGES: Final = "multistore_tpc_changes"
"""The temporary table the capture triggers write (one row per change)."""
_TAKE_CHANGES: Final = f"DELETE FROM temp.{_CHANGES} RETURNING seq, tbl, rid, image"
_TRIGGER: Final = "multistore_tpc_capture"
_INTENT_VERSION: Final = 2

Images = dict[tuple[str, Any], str | None]
"""(table, rowid or primary key) -> the row's values after the branch (None: deleted)."""


def _json_params(name: str, params: Params | None) -> dict[str, Any]:
    values = dict(params or {})
    try:
        json.dumps(values, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(
            f"{name}: SQLite 2PC parameters must be JSON values ({exc})"
        ) from exc
    return values


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _capture_triggers(number: int, table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """The three triggers that record every change to ``table``: its key (``key``
    columns, or the rowid) and the ``quote()`` of each column after the change."""

    def image(row: str) -> str:
        return " || ',' || ".join(f"quote({row}.{_ident(c)})" for c in columns)

    def keyed(row: str) -> str:
        if not key:
            return f"{row}.rowid"
        return " || ',' || ".join(f"quote({row}.{_ident(c)})" for c in key)

    name, on = _literal(table), f"main.{_ident(table)}"
    insert = f"INSERT INTO {_CHANGES} (tbl, rid, image)"  # temp: searched first
    return (
        f"CREATE TEMP TRIGGER {_TRIGGER}{number}i AFTER INSERT ON {on} BEGIN "
        f"{insert} VALUES ({name}, {keyed('new')}, {image('new')}); END;"
        f"CREATE TEMP TRIGGER {_TRIGGER}{number}u AFTER UPDATE ON {on} BEGIN "
        f"{insert} SELECT {name}, {keyed('old')}, NULL "
        f"WHERE {keyed('old')} IS NOT {keyed('new')}; "
        f"{insert} VALUES ({name}, {keyed('new')}, {image('new')}); END;"
        f"CREATE TEMP TRIGGER {_TRIGGER}{number}d AFTER DELETE ON {on} BEGIN "
        f"{insert} VALUES ({name}, {keyed('old')}, NULL); END;"
    )


def _fold(rows: Sequence[Row], after: int) -> Images:
    """The final image of each row changed (changes numbered above ``after``)."""
    images: Images = {}
    for row in sorted(rows, key=lambda r: int(r["seq"])):
        if int(row["seq"]) > after:
            images[(str(row["tbl"]), row["rid"])] = row["image"]
    return images


def _difference(prepared: Images, replayed: Images) -> str | None:
    """The first difference between two sets of row images, in words; None if equal."""
    for key in [*prepared, *(k for k in replayed if k not in prepared)]:
        if prepared.get(key, "-") != replayed.get(key, "-"):
            table, rid = key
            return (
                f"row {rid} of {table} was {_shown(prepared, key)} at prepare, "
                f"but {_shown(replayed, key)} by the replay"
            )
    return None


def _shown(images: Images, key: tuple[str, Any]) -> str:
    if key not in images:
        return "left unchanged"
    value = images[key]
    return "deleted" if value is None else f"({value})"


class SQLiteBranch(SQLBranch):
    participant: SQLiteParticipant

    def __init__(
        self,
        participant: SQLiteParticipant,
        xid: Xid,
        stack: AsyncExitStack,
        conn: Connection,
        changes_before: int,
    ) -> None:
        super().__init__(participant, xid)
        self._stack = stack
        self._conn = conn
        self._changes_before = changes_before
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
        images = _fold(await conn.fetch_all(_TAKE_CHANGES), self._changes_before)
        intent = {
            "v": _INTENT_VERSION,
            "writes": self.writes,
            "rows": [[table, rid, image] for (table, rid), image in images.items()],
        }
        await self.participant.intents.execute(
            f"INSERT INTO {_INTENTS} (gid, writes, created) VALUES (:gid, :writes, :created)",
            {"gid": str(self.xid), "writes": json.dumps(intent), "created": time.time()},
        )
        self.state = "prepared"
        return Vote.YES

    async def commit(self, *, one_phase: bool = False) -> bool:
        if one_phase:
            conn = self._active()
            self.state = "committing"
            try:
                await _commit(conn, f"DELETE FROM temp.{_CHANGES}")
            finally:
                self.state = "done"
            return True
        if self.state != "prepared":
            raise ConflictError(f"branch {self.xid} is {self.state}, not prepared")
        self.state = "committing"
        try:
            # The commit marker and COMMIT in one call: nothing can come between them.
            await _commit(
                self._conn,
                f"INSERT INTO {_APPLIED} (gid, created) VALUES "
                f"({_literal(str(self.xid))}, {time.time()!r}); DELETE FROM temp.{_CHANGES}",
            )
        finally:
            # Committed, or rolled back with its intent left for recovery: either way the
            # main transaction is over.
            self.state = "done"
        await self.participant.forget(self.xid)
        return True

    async def commit_deciding(self, prepared: Sequence[str]) -> NoReturn:
        raise UnsupportedError(f"participant {self.name!r} (SQLite) cannot be a last resource")

    async def rollback(self) -> None:
        was = self.state
        self.state = "done"
        if was in ("active", "prepared"):
            await self._conn.execute("ROLLBACK")
        if was == "prepared":
            await self.participant.forget(self.xid)

    async def release(self) -> None:
        try:
            if self.state == "active":
                with contextlib.suppress(MultistoreError):
                    await self.rollback()
            elif self.state == "prepared":
                # Leave the intent for recovery; the uncommitted work goes.
                self.state = "done"
                with contextlib.suppress(MultistoreError):
                    await self._conn.execute("ROLLBACK")
        finally:
            # The store rolls back whatever is still open when the lease ends.
            await self._stack.aclose()


async def _commit(conn: Connection, statements: str) -> None:
    """Run ``statements`` and COMMIT in one call; if that fails, roll back whatever is
    still open, so the connection never goes back to the store inside a transaction."""
    try:
        await conn.execute_script(f"{statements}; COMMIT")
    except BaseException:
        with contextlib.suppress(MultistoreError):
            await conn.execute("ROLLBACK")  # "no transaction is active" if it committed
        raise


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
        self._captured: int | None = None
        """The schema version the capture triggers were made for."""

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
            await intents.execute(LOGS_SCHEMA)
            await store.execute(
                f"CREATE TABLE IF NOT EXISTS {_APPLIED} "
                "(gid TEXT PRIMARY KEY, created REAL NOT NULL)"
            )
            await store.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {_CHANGES} "
                "(seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL, rid, image TEXT)"
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
        async with self.store.connection() as conn:
            await conn.execute_script(sql)
            await conn.execute(f"DELETE FROM temp.{_CHANGES}")  # setup is no branch's

    async def note_log(self, log_id: str, location: str) -> None:
        await note_log_in(self.intents, log_id, location)

    async def known_logs(self) -> dict[str, str]:
        return await logs_in(self.intents)

    async def _capture(self, conn: Connection) -> None:
        """Make the capture triggers for the tables there are now. Outside any
        transaction: temporary triggers made inside one would go with its rollback."""
        version = int(await conn.fetch_val("PRAGMA schema_version"))
        tables = await conn.fetch_all(
            "SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' "
            "AND name NOT LIKE 'sqlite%' AND name NOT LIKE 'multistore_tpc%' ORDER BY name"
        )
        old = await conn.fetch_all(
            "SELECT name FROM sqlite_temp_master WHERE type = 'trigger' AND name LIKE :pattern",
            {"pattern": f"{_TRIGGER}%"},
        )
        script = [f"DROP TRIGGER temp.{_ident(str(row['name']))}" for row in old]
        for number, table in enumerate(tables):
            columns = await conn.fetch_all(
                "SELECT name, pk FROM pragma_table_xinfo(:t) WHERE hidden = 0 ORDER BY cid",
                {"t": table["name"]},
            )
            names = [str(c["name"]) for c in columns]
            key = (
                [str(c["name"]) for c in sorted(columns, key=lambda c: int(c["pk"])) if c["pk"]]
                if table["wr"]
                else []
            )
            script.append(_capture_triggers(number, str(table["name"]), names, key))
        await conn.execute_script(";".join(script))
        self._captured = version

    async def _begin_captured(self, conn: Connection) -> int:
        """BEGIN IMMEDIATE with the capture triggers current; the last change number
        recorded before (changes above it are this transaction's)."""
        while True:
            if self._captured is None:
                await self._capture(conn)
            await conn.execute("BEGIN IMMEDIATE")
            row = await conn.fetch_one(
                "SELECT (SELECT schema_version FROM pragma_schema_version()), "
                f"(SELECT coalesce(max(seq), 0) FROM temp.{_CHANGES})"
            )
            assert row is not None
            if int(row[0]) == self._captured:  # the triggers fit the schema (we hold the lock)
                return int(row[1])
            await conn.execute("ROLLBACK")  # DDL since: make the triggers again
            self._captured = None

    async def begin(self, xid: Xid) -> SQLiteBranch:
        stack = AsyncExitStack()
        try:
            # In this task (not wait_for's, which on Python 3.11 can swallow a cancel
            # that comes as the lock is granted, and would hold the lease in its task).
            async with asyncio.timeout(self.lock_timeout):
                conn = await stack.enter_async_context(self.store.connection())
        except TimeoutError:
            await stack.aclose()
            raise StoreTimeoutError(
                f"{self.name}: SQLite is held by another transaction for more than "
                f"{self.lock_timeout:g} s"
            ) from None
        try:
            before = await self._begin_captured(conn)
        except BaseException:
            await stack.aclose()
            raise
        return SQLiteBranch(self, xid, stack, conn, before)

    async def in_doubt(self) -> list[Xid]:
        rows = await self.intents.fetch_all(f"SELECT gid FROM {_INTENTS} ORDER BY created")
        found = (Xid.try_parse(row["gid"]) for row in rows)
        return [xid for xid in found if xid is not None and xid.branch == self.name]

    async def commit_prepared(self, xid: Xid) -> bool:
        text = await self.intents.fetch_val(
            f"SELECT writes FROM {_INTENTS} WHERE gid = :gid", {"gid": str(xid)}
        )
        if text is None:
            return False
        intent = json.loads(text)
        async with self.store.connection() as conn:
            before = await self._begin_captured(conn)
            try:
                done = await conn.fetch_val(
                    f"SELECT 1 FROM {_APPLIED} WHERE gid = :gid", {"gid": str(xid)}
                )
                if not done:
                    await self._replay(conn, xid, intent, before)
            except BaseException:
                with contextlib.suppress(MultistoreError):
                    await conn.execute("ROLLBACK")
                raise
            marker = (
                ""
                if done
                else f"INSERT INTO {_APPLIED} (gid, created) VALUES "
                f"({_literal(str(xid))}, {time.time()!r}); "
            )
            await _commit(conn, f"{marker}DELETE FROM temp.{_CHANGES}")
        await self.forget(xid)
        return True

    async def _replay(self, conn: Connection, xid: Xid, intent: Any, before: int) -> None:
        """Re-run the branch's statements; :class:`BranchHazardError` unless they change
        exactly the rows the branch prepared, to exactly the same values."""
        legacy = isinstance(intent, list)  # written before intents had row images
        writes = intent if legacy else intent["writes"]
        where = f"the intent of {xid} is kept in {self.url.path}-2pc ({_INTENTS})"
        for number, (sql, params) in enumerate(writes, 1):
            try:
                await conn.execute(sql, params)
            except (StoreTimeoutError, StoreUnavailableError):
                raise  # the database is busy or gone: try again later
            except MultistoreError as exc:
                raise BranchHazardError(
                    f"{self.name}: statement {number} of the prepared branch fails when "
                    f"replayed ({exc}); {where}"
                ) from exc
        if legacy:
            return
        replayed = _fold(await conn.fetch_all(_TAKE_CHANGES), before)
        prepared: Images = {(str(t), rid): image for t, rid, image in intent["rows"]}
        difference = _difference(prepared, replayed)
        if difference is not None:
            raise BranchHazardError(
                f"{self.name}: the replay does not reproduce the prepared branch: {difference} "
                f"(another writer changed the data after the coordinator's crash); {where}"
            )

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

    async def purge_markers(
        self, older_than: float, keep: Collection[str], owned: Callable[[Xid], bool]
    ) -> int:
        rows = await self.store.fetch_all(
            f"SELECT gid FROM {_APPLIED} WHERE created < :cutoff",
            {"cutoff": time.time() - older_than},
        )
        old = purgeable([str(row["gid"]) for row in rows], keep, owned)
        if old:
            await self.store.executemany(
                f"DELETE FROM {_APPLIED} WHERE gid = :gid", [{"gid": gid} for gid in old]
            )
        return len(old)

    async def intent_count(self) -> int:
        """How many intents are on disk (tests and status reports)."""
        return int(await self.intents.fetch_val(f"SELECT count(*) FROM {_INTENTS}"))
