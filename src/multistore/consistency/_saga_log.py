"""The durable saga log in a relational store (SQLite, PostgreSQL or MariaDB).

Two tables: ``multistore_sagas`` (one row per saga: name, definition version, state,
input, errors, deadline, the lease — ``owner`` and ``lease_until`` — and ``blocked``,
why the last worker could not run it) and ``multistore_saga_steps`` (one row per
step: state, attempts, output, errors).

Every write of a running saga is one transaction that first updates the saga row
``WHERE owner = <this worker>`` (the fence: a worker whose lease was taken over
cannot write) and then the step rows that changed.

Leases are written and compared on the database's clock where it has one
(PostgreSQL, MariaDB: ``lease_until = now() + lease`` inside the statement); on SQLite
on the caller's ``now`` (see :mod:`multistore.consistency._log_clock`). A test that
controls time passes a :class:`LogClock` with its own clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from multistore.consistency._log_clock import LogClock
from multistore.consistency._saga import SagaLeaseLostError
from multistore.core._saga import (
    UNFINISHED_STATES,
    SagaRecord,
    SagaState,
    StepRecord,
    StepState,
)
from multistore.stores.relational import RelationalStore, Row, Transaction

__all__ = ["SAGA_TABLES", "SagaLog", "list_sagas", "show_saga"]

SAGA_TABLES = ("multistore_sagas", "multistore_saga_steps")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS multistore_sagas (
        saga_id VARCHAR(255) PRIMARY KEY,
        name VARCHAR(255) NOT NULL,
        version VARCHAR(64) NOT NULL DEFAULT '1',
        state VARCHAR(20) NOT NULL,
        input TEXT NOT NULL,
        error TEXT,
        compensation_error TEXT,
        deadline DOUBLE PRECISION,
        owner VARCHAR(255),
        lease_until DOUBLE PRECISION,
        blocked TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS multistore_sagas_state ON multistore_sagas (state, created_at)",
    """CREATE TABLE IF NOT EXISTS multistore_saga_steps (
        saga_id VARCHAR(255) NOT NULL,
        idx INT NOT NULL,
        name VARCHAR(255) NOT NULL,
        state VARCHAR(20) NOT NULL,
        attempts INT NOT NULL,
        output TEXT,
        error TEXT,
        compensation_attempts INT NOT NULL,
        compensation_error TEXT,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (saga_id, idx)
    )""",
)

# Columns added since the first release: a log created before them gets them at setup.
_ADDED_COLUMNS = (
    ("version", "VARCHAR(64) NOT NULL DEFAULT '1'"),
    ("blocked", "TEXT"),
)

_UNFINISHED_SQL = ", ".join(f"'{s.value}'" for s in UNFINISHED_STATES)

_INSERT_SAGA = (
    "INSERT INTO multistore_sagas (saga_id, name, version, state, input, error, "
    "compensation_error, deadline, owner, lease_until, created_at, updated_at) VALUES "
    "(:saga_id, :name, :version, :state, :input, NULL, NULL, :deadline, :owner, "
    "{now} + :lease, :now, :now)"
)
_INSERT_STEP = (
    "INSERT INTO multistore_saga_steps (saga_id, idx, name, state, attempts, output, error, "
    "compensation_attempts, compensation_error, updated_at) VALUES (:saga_id, :idx, :name, "
    ":state, :attempts, :output, :error, :compensation_attempts, :compensation_error, :now)"
)
_UPDATE_SAGA = (
    "UPDATE multistore_sagas SET state = :state, error = :error, "
    "compensation_error = :compensation_error, owner = :new_owner, "
    "lease_until = {now} + :lease, blocked = NULL, updated_at = :now "
    "WHERE saga_id = :saga_id AND owner = :owner"
)
_UPDATE_STEP = (
    "UPDATE multistore_saga_steps SET state = :state, attempts = :attempts, output = :output, "
    "error = :error, compensation_attempts = :compensation_attempts, "
    "compensation_error = :compensation_error, updated_at = :now "
    "WHERE saga_id = :saga_id AND idx = :idx"
)
# Free (never leased, released, or blocked and due again), expired, or ours.
_CLAIMABLE = (
    f"state IN ({_UNFINISHED_SQL}) "
    "AND (lease_until IS NULL OR lease_until < {now} OR owner = :owner)"
)


class SagaLog:
    """Reads and writes saga records in one relational store."""

    def __init__(self, store: RelationalStore, clock: LogClock | None = None) -> None:
        self.store = store
        self.time = clock or LogClock(store)
        """Where the leases take their time from (the database's clock by default)."""
        self._skip_locked = store.backend in ("postgresql", "mariadb")
        self._postgres = store.backend == "postgresql"
        self._now = now = self.time.sql
        self._insert_saga = _INSERT_SAGA.format(now=now)
        self._update_saga = _UPDATE_SAGA.format(now=now)
        self._claimable = _CLAIMABLE.format(now=now)

    async def setup(self) -> None:
        """Create the tables if they are missing, and add the columns a log made by
        an earlier release lacks (safe to run from several workers)."""
        async with self.store.transaction() as tx:
            if self.store.backend == "postgresql":
                await tx.execute("SELECT pg_advisory_xact_lock(7311975041)")
            for statement in _SCHEMA:
                await tx.execute(statement)
            have = await _columns(tx, self.store.backend, "multistore_sagas")
            for column, definition in _ADDED_COLUMNS:
                if column not in have:
                    await tx.execute(
                        f"ALTER TABLE multistore_sagas ADD COLUMN {column} {definition}"
                    )

    async def create(
        self, record: SagaRecord, *, owner: str | None, lease: float | None, now: float
    ) -> None:
        """Insert a new saga and its steps, leased to ``owner`` for ``lease`` seconds
        (or free: both None). A saga id that exists raises
        :class:`~multistore.errors.DuplicateKeyError` and changes nothing. ``now``
        stamps the rows (and is the lease clock on SQLite)."""
        if self._postgres:
            await self._create_pg(record, owner=owner, lease=lease, now=now)
            return
        async with self.store.transaction() as tx:
            await tx.execute(
                self._insert_saga,
                {
                    "saga_id": record.saga_id,
                    "name": record.name,
                    "version": record.version,
                    "state": record.state.value,
                    "input": record.input,
                    "deadline": record.deadline,
                    "owner": owner,
                    "lease": lease,
                    "now": now,
                },
            )
            await tx.executemany(
                _INSERT_STEP,
                [_step_params(record.saga_id, i, s, now) for i, s in enumerate(record.steps)],
            )

    async def _create_pg(
        self, record: SagaRecord, *, owner: str | None, lease: float | None, now: float
    ) -> None:
        params: dict[str, Any] = {
            "saga_id": record.saga_id,
            "name": record.name,
            "version": record.version,
            "state": record.state.value,
            "input": record.input,
            "deadline": record.deadline,
            "owner": owner,
            "lease": lease,
            "now": now,
        }
        steps = [_step_params(record.saga_id, i, s, now) for i, s in enumerate(record.steps)]
        values = _pg_step_values(params, steps)
        await self.store.execute(
            f"WITH saga AS ({self._insert_saga} RETURNING saga_id) "
            "INSERT INTO multistore_saga_steps (saga_id, idx, name, state, attempts, output, "
            "error, compensation_attempts, compensation_error, updated_at) "
            "SELECT saga.saga_id, v.idx, v.name, v.state, v.attempts, v.output, v.error, "
            f"v.compensation_attempts, v.compensation_error, :now FROM saga, (VALUES {values}) "
            "AS v(idx, name, state, attempts, output, error, compensation_attempts, "
            "compensation_error)",
            params,
        )

    async def load(self, saga_id: str) -> SagaRecord | None:
        async with self.store.connection() as conn:
            row = await conn.fetch_one(
                "SELECT saga_id, name, version, state, input, error, compensation_error, "
                "deadline FROM multistore_sagas WHERE saga_id = :id",
                {"id": saga_id},
            )
            if row is None:
                return None
            steps = await conn.fetch_all(
                "SELECT name, state, attempts, output, error, compensation_attempts, "
                "compensation_error FROM multistore_saga_steps WHERE saga_id = :id ORDER BY idx",
                {"id": saga_id},
            )
        return SagaRecord(
            saga_id=row["saga_id"],
            name=row["name"],
            input=row["input"],
            state=SagaState(row["state"]),
            steps=tuple(
                StepRecord(
                    name=s["name"],
                    state=StepState(s["state"]),
                    attempts=int(s["attempts"]),
                    output=s["output"],
                    error=s["error"],
                    compensation_attempts=int(s["compensation_attempts"]),
                    compensation_error=s["compensation_error"],
                )
                for s in steps
            ),
            error=row["error"],
            compensation_error=row["compensation_error"],
            deadline=None if row["deadline"] is None else float(row["deadline"]),
            version=str(row["version"]),
        )

    async def blocked(self, saga_id: str) -> str | None:
        """Why the last worker that took the saga could not run it (None: nothing)."""
        reason = await self.store.fetch_val(
            "SELECT blocked FROM multistore_sagas WHERE saga_id = :id", {"id": saga_id}
        )
        return None if reason is None else str(reason)

    async def save(
        self,
        before: SagaRecord,
        after: SagaRecord,
        *,
        owner: str,
        lease: float,
        now: float,
    ) -> None:
        """Write the transition ``before -> after`` if ``owner`` still holds the
        saga, and extend its lease to ``lease`` seconds from now; a finished saga is
        released. Raises :class:`SagaLeaseLostError` otherwise."""
        release = after.state.finished
        saga_params = {
            "state": after.state.value,
            "error": after.error,
            "compensation_error": after.compensation_error,
            "new_owner": None if release else owner,
            "lease": None if release else lease,
            "now": now,
            "saga_id": after.saga_id,
            "owner": owner,
        }
        changed = [
            _step_params(after.saga_id, i, step, now)
            for i, (old, step) in enumerate(zip(before.steps, after.steps, strict=True))
            if old != step
        ]
        if self._postgres and changed:
            # One statement (one round trip, atomic in autocommit): the fenced saga
            # update feeds the step updates, which match nothing if the fence failed.
            params = dict(saga_params)
            values = _pg_step_values(params, changed)
            updated = await self.store.execute(
                f"WITH fence AS ({self._update_saga} RETURNING saga_id) "
                "UPDATE multistore_saga_steps AS t SET state = v.state, attempts = v.attempts, "
                "output = v.output, error = v.error, "
                "compensation_attempts = v.compensation_attempts, "
                "compensation_error = v.compensation_error, updated_at = :now "
                f"FROM fence, (VALUES {values}) AS v(idx, name, state, attempts, output, error, "
                "compensation_attempts, compensation_error) "
                "WHERE t.saga_id = fence.saga_id AND t.idx = v.idx",
                params,
            )
            if updated != len(changed):
                raise _lease_lost(after.saga_id, owner)
            return
        async with self.store.transaction() as tx:
            fenced = await tx.execute(self._update_saga, saga_params)
            if fenced != 1:
                raise _lease_lost(after.saga_id, owner)
            if len(changed) == 1:
                await tx.execute(_UPDATE_STEP, changed[0])
            elif changed:
                await tx.executemany(_UPDATE_STEP, changed)

    async def claim(self, saga_id: str, *, owner: str, lease: float, now: float) -> bool:
        """Take the lease of one unfinished saga if it is free, expired or ours."""
        claimed = await self.store.execute(
            f"UPDATE multistore_sagas SET owner = :owner, lease_until = {self._now} + :lease "
            f"WHERE saga_id = :saga_id AND {self._claimable}",
            {"owner": owner, "lease": lease, "now": now, "saga_id": saga_id},
        )
        return claimed == 1

    async def claim_batch(
        self,
        definitions: Sequence[tuple[str, str]],
        *,
        owner: str,
        lease: float,
        now: float,
        limit: int,
        exclude: Sequence[str] = (),
    ) -> list[str]:
        """Take the leases of up to ``limit`` unfinished sagas logged with one of the
        ``(name, version)`` pairs in ``definitions`` that are free, expired or ours
        (oldest first). On PostgreSQL and MariaDB rows locked by a concurrent claimer
        are skipped (``FOR UPDATE SKIP LOCKED``)."""
        if not definitions:
            return []
        params: dict[str, Any] = {"owner": owner, "now": now, "limit": limit}
        pairs = []
        for n, (name, version) in enumerate(definitions):
            params[f"n{n}"], params[f"v{n}"] = name, version
            pairs.append(f"(name = :n{n} AND version = :v{n})")
        not_in = ""
        if exclude:
            not_in = f" AND saga_id NOT IN ({_marks(params, 'x', exclude)})"
        lock = " FOR UPDATE SKIP LOCKED" if self._skip_locked else ""
        async with self.store.transaction() as tx:
            rows = await tx.fetch_all(
                f"SELECT saga_id FROM multistore_sagas WHERE {self._claimable} "
                f"AND ({' OR '.join(pairs)}){not_in} ORDER BY created_at LIMIT :limit{lock}",
                params,
            )
            ids = [str(r["saga_id"]) for r in rows]
            if ids:
                update: dict[str, Any] = {"owner": owner, "lease": lease, "now": now}
                id_marks = _marks(update, "i", ids)
                await tx.execute(
                    f"UPDATE multistore_sagas SET owner = :owner, "
                    f"lease_until = {self._now} + :lease WHERE saga_id IN ({id_marks})",
                    update,
                )
        return ids

    async def renew(self, owner: str, saga_ids: Sequence[str], *, lease: float, now: float) -> int:
        """Extend to ``lease`` seconds from now the leases of ``saga_ids`` that
        ``owner`` still holds (the heartbeat of the sagas a worker is running, and of
        no other); how many it extended."""
        if not saga_ids:
            return 0
        params: dict[str, Any] = {"owner": owner, "lease": lease, "now": now}
        return await self.store.execute(
            f"UPDATE multistore_sagas SET lease_until = {self._now} + :lease "
            f"WHERE owner = :owner AND saga_id IN ({_marks(params, 'i', saga_ids)})",
            params,
        )

    async def expire(self, owner: str, *, now: float) -> int:
        """End the leases of every saga ``owner`` holds (a worker whose etcd lease ran
        out): any worker may claim them at once."""
        return await self.store.execute(
            f"UPDATE multistore_sagas SET lease_until = {self._now} - 1 WHERE owner = :dead",
            {"dead": owner, "now": now},
        )

    async def release(self, saga_id: str, owner: str) -> None:
        """Give a saga's lease back (this worker stops running it)."""
        await self.store.execute(
            "UPDATE multistore_sagas SET owner = NULL, lease_until = NULL "
            "WHERE saga_id = :saga_id AND owner = :owner",
            {"saga_id": saga_id, "owner": owner},
        )

    async def block(
        self, saga_id: str, owner: str, reason: str, *, retry_in: float, now: float
    ) -> bool:
        """Give a saga back that ``owner`` cannot run, with the reason: no worker
        takes it for ``retry_in`` seconds. False if ``owner`` no longer held it."""
        blocked = await self.store.execute(
            f"UPDATE multistore_sagas SET owner = NULL, lease_until = {self._now} + :retry_in, "
            "blocked = :reason WHERE saga_id = :saga_id AND owner = :owner",
            {
                "saga_id": saga_id,
                "owner": owner,
                "reason": reason,
                "retry_in": retry_in,
                "now": now,
            },
        )
        return blocked == 1

    async def take_stuck(self, saga_id: str, owner: str, *, lease: float, now: float) -> bool:
        """Lease a stuck saga to an operator's ``owner``: one that no worker holds, or
        whose operator's lease ran out (it stopped between taking the saga and writing
        the retry or the cancel; its late write is fenced)."""
        taken = await self.store.execute(
            f"UPDATE multistore_sagas SET owner = :owner, lease_until = {self._now} + :lease "
            "WHERE saga_id = :saga_id AND state = 'stuck' "
            f"AND (owner IS NULL OR lease_until < {self._now})",
            {"owner": owner, "lease": lease, "now": now, "saga_id": saga_id},
        )
        return taken == 1


async def _columns(tx: Transaction, backend: str, table: str) -> set[str]:
    """The column names of ``table``."""
    if backend == "sqlite":
        rows = await tx.fetch_all(f"PRAGMA table_info({table})")
        return {str(r["name"]) for r in rows}
    schema = "current_schema()" if backend == "postgresql" else "DATABASE()"
    rows = await tx.fetch_all(
        "SELECT column_name AS name FROM information_schema.columns "
        f"WHERE table_schema = {schema} AND table_name = :table",
        {"table": table},
    )
    return {str(r["name"]).lower() for r in rows}


def _lease_lost(saga_id: str, owner: str) -> SagaLeaseLostError:
    return SagaLeaseLostError(
        f"saga {saga_id!r}: worker {owner!r} no longer holds its lease; another worker took it over"
    )


_PG_STEP_COLUMNS = (
    ("idx", "int"),
    ("name", "text"),
    ("state", "text"),
    ("attempts", "int"),
    ("output", "text"),
    ("error", "text"),
    ("compensation_attempts", "int"),
    ("compensation_error", "text"),
)


def _pg_step_values(params: dict[str, Any], steps: Sequence[dict[str, Any]]) -> str:
    """A typed ``VALUES`` list of step rows for PostgreSQL; adds their parameters."""
    rows = []
    for n, step in enumerate(steps):
        cells = []
        for column, sql_type in _PG_STEP_COLUMNS:
            key = f"s{n}_{column}"
            params[key] = step[column]
            cells.append(f":{key}::{sql_type}")
        rows.append("(" + ", ".join(cells) + ")")
    return ", ".join(rows)


def _marks(params: dict[str, Any], prefix: str, values: Sequence[str]) -> str:
    marks = []
    for i, value in enumerate(values):
        params[f"{prefix}{i}"] = value
        marks.append(f":{prefix}{i}")
    return ", ".join(marks)


def _step_params(saga_id: str, idx: int, step: StepRecord, now: float) -> dict[str, Any]:
    return {
        "saga_id": saga_id,
        "idx": idx,
        "name": step.name,
        "state": step.state.value,
        "attempts": step.attempts,
        "output": step.output,
        "error": step.error,
        "compensation_attempts": step.compensation_attempts,
        "compensation_error": step.compensation_error,
        "now": now,
    }


# -- inspection (for operators and the CLI) --------------------------------------

_SAGA_COLUMNS = (
    "saga_id, name, version, state, error, compensation_error, deadline, owner, "
    "lease_until, blocked, created_at, updated_at"
)


def _saga_dict(row: Row) -> dict[str, Any]:
    return {column: row[column] for column in row.columns}


async def list_sagas(
    store: RelationalStore, *, state: str | SagaState | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The sagas in the log, newest first, optionally only those in ``state``; each a
    dict with ``saga_id, name, version, state, error, compensation_error, deadline,
    owner, lease_until, blocked, created_at, updated_at`` (errors are JSON text
    ``{"type", "message"}``; ``blocked`` is why the last worker could not run it)."""
    if state is None:
        rows = await store.fetch_all(
            f"SELECT {_SAGA_COLUMNS} FROM multistore_sagas "
            "ORDER BY created_at DESC, saga_id LIMIT :limit",
            {"limit": limit},
        )
    else:
        value = SagaState(state).value if isinstance(state, str) else state.value
        rows = await store.fetch_all(
            f"SELECT {_SAGA_COLUMNS} FROM multistore_sagas WHERE state = :state "
            "ORDER BY created_at DESC, saga_id LIMIT :limit",
            {"state": value, "limit": limit},
        )
    return [_saga_dict(r) for r in rows]


async def show_saga(store: RelationalStore, saga_id: str) -> dict[str, Any] | None:
    """One saga with its input and its steps (state, attempts, output, errors), or
    None when the log has no saga with that id."""
    row = await store.fetch_one(
        f"SELECT {_SAGA_COLUMNS}, input FROM multistore_sagas WHERE saga_id = :id",
        {"id": saga_id},
    )
    if row is None:
        return None
    steps = await store.fetch_all(
        "SELECT idx, name, state, attempts, output, error, compensation_attempts, "
        "compensation_error, updated_at FROM multistore_saga_steps "
        "WHERE saga_id = :id ORDER BY idx",
        {"id": saga_id},
    )
    shown = _saga_dict(row)
    shown["steps"] = [_saga_dict(s) for s in steps]
    return shown
