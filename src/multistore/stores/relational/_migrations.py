"""Schema migrations: versioned SQL applied once, in order, recorded with a checksum.

Each migration runs in its own transaction together with the row that records it in
``multistore_migrations``, so a migration that fails leaves no record and is tried
again next time (on MariaDB, DDL commits implicitly: see docs/stores/relational.md).
A recorded migration whose SQL has changed since is refused with
:class:`~multistore.errors.ConflictError`, as is a new migration older than one
already applied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from multistore.errors import ConflictError, InvalidValueError, NotFoundError, UnsupportedError
from multistore.stores._limits import short_repr

if TYPE_CHECKING:
    from multistore.stores.relational._api import Connection, Transaction
    from multistore.stores.relational._rows import Row
    from multistore.stores.relational._sync_api import SyncConnection, SyncTransaction

__all__ = [
    "MIGRATIONS_TABLE",
    "AppliedMigration",
    "Migration",
    "read_applied",
    "read_applied_sync",
    "run_migrations",
    "run_migrations_sync",
]

MIGRATIONS_TABLE = "multistore_migrations"

_CREATE = f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    version BIGINT NOT NULL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    checksum CHAR(64) NOT NULL,
    applied_at VARCHAR(40) NOT NULL
)"""
_SELECT = f"SELECT version, name, checksum, applied_at FROM {MIGRATIONS_TABLE} ORDER BY version"
_INSERT = (
    f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum, applied_at) "
    "VALUES (:version, :name, :checksum, :applied_at)"
)


@dataclass(frozen=True)
class Migration:
    """One schema change. ``sql`` is one script for every backend, or a mapping from
    backend name (``sqlite``, ``postgresql``, ``mariadb``) to that backend's script;
    an empty script records the version without running anything."""

    version: int
    name: str
    sql: str | Mapping[str, str]

    def sql_for(self, backend: str) -> str:
        if isinstance(self.sql, str):
            return self.sql
        try:
            return self.sql[backend]
        except KeyError:
            given = ", ".join(sorted(self.sql)) or "none"
            raise UnsupportedError(
                f"migration {self.version} {self.name!r} has no SQL for {backend} (it has: {given})"
            ) from None

    def checksum(self, backend: str) -> str:
        """SHA-256 of this backend's script, ignoring trailing whitespace on lines."""
        text = "\n".join(line.rstrip() for line in self.sql_for(backend).strip().splitlines())
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class AppliedMigration:
    """A row of ``multistore_migrations``."""

    version: int
    name: str
    checksum: str
    applied_at: datetime


@dataclass(frozen=True)
class _Step:
    version: int
    name: str
    sql: str
    checksum: str


LockHook = Callable[["Transaction"], Awaitable[None]]


async def run_migrations(
    conn: Connection, migrations: Sequence[Migration], backend: str, lock: LockHook
) -> list[int]:
    """Apply what is pending on ``conn``; return the versions applied by this call."""
    plan = _plan(migrations, backend)
    async with conn.transaction() as tx:
        await lock(tx)
        await tx.execute(_CREATE)
        _check(plan, await _applied(tx))
    done: list[int] = []
    for step in plan:
        async with conn.transaction() as tx:
            await lock(tx)
            applied = await _applied(tx)
            _check(plan, applied)  # another migrator may have run meanwhile
            if step.version in applied:
                continue
            if step.sql.strip():
                await tx.execute_script(step.sql)
            await tx.execute(_INSERT, _record(step))
        done.append(step.version)
    return done


def run_migrations_sync(
    conn: SyncConnection,
    migrations: Sequence[Migration],
    backend: str,
    lock: Callable[[SyncTransaction], None],
) -> list[int]:
    """:func:`run_migrations` on a sync connection, step for step."""
    plan = _plan(migrations, backend)
    with conn.transaction() as tx:
        lock(tx)
        tx.execute(_CREATE)
        _check(plan, _versions(tx.fetch_all(_APPLIED)))
    done: list[int] = []
    for step in plan:
        with conn.transaction() as tx:
            lock(tx)
            applied = _versions(tx.fetch_all(_APPLIED))
            _check(plan, applied)  # another migrator may have run meanwhile
            if step.version in applied:
                continue
            if step.sql.strip():
                tx.execute_script(step.sql)
            tx.execute(_INSERT, _record(step))
        done.append(step.version)
    return done


def _record(step: _Step) -> dict[str, object]:
    return {
        "version": step.version,
        "name": step.name,
        "checksum": step.checksum,
        "applied_at": datetime.now(UTC).isoformat(),
    }


async def read_applied(conn: Connection) -> list[AppliedMigration]:
    """The recorded migrations by version; none when the table does not exist yet."""
    try:
        rows = await conn.fetch_all(_SELECT)
    except NotFoundError:
        return []
    return _applied_list(rows)


def read_applied_sync(conn: SyncConnection) -> list[AppliedMigration]:
    """:func:`read_applied` on a sync connection."""
    try:
        rows = conn.fetch_all(_SELECT)
    except NotFoundError:
        return []
    return _applied_list(rows)


def _applied_list(rows: list[Row]) -> list[AppliedMigration]:
    return [
        AppliedMigration(
            version=int(row["version"]),
            name=str(row["name"]),
            checksum=str(row["checksum"]).strip(),
            applied_at=datetime.fromisoformat(str(row["applied_at"])),
        )
        for row in rows
    ]


def _plan(migrations: Sequence[Migration], backend: str) -> list[_Step]:
    steps: dict[int, _Step] = {}
    for m in migrations:
        if not isinstance(m, Migration):
            raise InvalidValueError(f"expected Migration objects, got {type(m).__name__}")
        if isinstance(m.version, bool) or not isinstance(m.version, int) or m.version < 1:
            raise InvalidValueError(
                f"migration version must be a positive integer, got {short_repr(m.version)} "
                f"({m.name!r})"
            )
        if m.version in steps:
            raise InvalidValueError(
                f"migration version {m.version} given twice "
                f"({steps[m.version].name!r} and {m.name!r})"
            )
        if len(m.name) > 255:
            raise InvalidValueError(f"migration {m.version} name is longer than 255 characters")
        steps[m.version] = _Step(m.version, m.name, m.sql_for(backend), m.checksum(backend))
    return [steps[v] for v in sorted(steps)]


_APPLIED = f"SELECT version, checksum FROM {MIGRATIONS_TABLE}"


async def _applied(tx: Transaction) -> dict[int, str]:
    return _versions(await tx.fetch_all(_APPLIED))


def _versions(rows: list[Row]) -> dict[int, str]:
    return {int(row["version"]): str(row["checksum"]).strip() for row in rows}


def _check(plan: list[_Step], applied: dict[int, str]) -> None:
    for step in plan:
        recorded = applied.get(step.version)
        if recorded is not None and recorded != step.checksum:
            raise ConflictError(
                f"migration {step.version} {step.name!r} was changed after it was applied "
                f"(recorded checksum {recorded[:12]}…, now {step.checksum[:12]}…); "
                "add a new migration instead of editing an applied one"
            )
    newest = max(applied, default=0)
    for step in plan:
        if step.version not in applied and step.version < newest:
            raise ConflictError(
                f"migration {step.version} {step.name!r} is older than the newest applied "
                f"migration {newest}; give it a version above {newest}"
            )
