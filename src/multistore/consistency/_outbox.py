"""The transactional outbox: events committed in the caller's own transaction.

A write to the system of record and the event that describes it commit together or
not at all: :meth:`Outbox.add` inserts the event with the caller's transaction
(``async with store.transaction() as tx``) on a relational store (SQLite,
PostgreSQL, MariaDB). :class:`~multistore.consistency.OutboxRelay` delivers the
events later, at least once and in order per aggregate.

Each event gets a global id (a time-ordered UUIDv7 string, the key an inbox
deduplicates on) and a sequence number per aggregate: 1, 2, 3 … without gaps. The
number comes from a counter row per aggregate (table ``<table>_seq``) that the
insert increments with an upsert inside the caller's transaction. The upsert locks
that row until the transaction ends, so a second writer of the same aggregate waits
for the first: after a commit it takes the next number, after a rollback the same
one. (On SQLite, where every writer holds the database's write lock from ``BEGIN
IMMEDIATE``, the insert reads the counter and a trigger moves it: one statement.)
The primary key ``(aggregate, seq)`` of the events table is the guarantee behind
the counter: no two committed events of an aggregate can share a number.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from multistore.consistency._log_clock import LogClock
from multistore.consistency._saga import ErrorInfo
from multistore.errors import InvalidValueError, UsageError
from multistore.stores.relational import RelationalStore, Row, Transaction, TransactionStatus

__all__ = [
    "EventInsert",
    "Outbox",
    "OutboxEvent",
    "OutboxRecord",
    "check_outbox",
    "in_marks",
    "insert_sql",
    "setup_statements",
]

PENDING: Final = "pending"
DELIVERED: Final = "delivered"
PARKED: Final = "parked"
STATES: Final = (PENDING, DELIVERED, PARKED)

_TABLE: Final = re.compile(r"[a-z_][a-z0-9_]{0,50}")
_NAME_MAX: Final = 255

EVENT_COLUMNS: Final = "event_id, aggregate, seq, event_type, payload, created_at, attempts"
_RECORD_COLUMNS: Final = (
    f"{EVENT_COLUMNS}, state, next_attempt_at, last_error, owner, lease_until, delivered_at"
)

# Column types that differ: MariaDB's TEXT holds only 64 KiB, and its default
# collations compare case-insensitively and ignore trailing spaces.
_TYPES: Final = {
    "sqlite": ("VARCHAR(255)", "TEXT"),
    "postgresql": ("VARCHAR(255)", "TEXT"),
    "mariadb": ("VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin", "LONGTEXT"),
}


#: PostgreSQL: room left in each page of the events table, so that a claim (which
#: changes only the lease columns, no indexed one) writes the new row versions into
#: the same page: heap-only updates, with no index entry written.
_FILLFACTOR: Final = 50


def _schema(table: str, backend: str) -> list[str]:
    key, text = _TYPES[backend]
    storage = f" WITH (fillfactor = {_FILLFACTOR})" if backend == "postgresql" else ""
    statements = [
        f"""CREATE TABLE IF NOT EXISTS {table} (
            aggregate {key} NOT NULL,
            seq BIGINT NOT NULL,
            event_id VARCHAR(36) NOT NULL,
            event_type VARCHAR(255) NOT NULL,
            payload {text} NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            state VARCHAR(10) NOT NULL,
            attempts INT NOT NULL,
            next_attempt_at DOUBLE PRECISION,
            last_error {text},
            owner VARCHAR(255),
            lease_until DOUBLE PRECISION,
            delivered_at DOUBLE PRECISION,
            PRIMARY KEY (aggregate, seq),
            CONSTRAINT {table}_event_id UNIQUE (event_id)
        ){storage}""",
        *_indexes(table, backend),
        f"""CREATE TABLE IF NOT EXISTS {table}_seq (
            aggregate {key} NOT NULL PRIMARY KEY,
            last_seq BIGINT NOT NULL
        )""",
    ]
    if backend == "sqlite":
        statements.append(
            f"""CREATE TRIGGER IF NOT EXISTS {table}_count AFTER INSERT ON {table} BEGIN
                INSERT INTO {table}_seq (aggregate, last_seq) VALUES (NEW.aggregate, NEW.seq)
                ON CONFLICT (aggregate) DO UPDATE SET last_seq = excluded.last_seq;
            END"""
        )
    return statements


def _indexes(table: str, backend: str) -> list[str]:
    """The indexes the claims read. Where the database has partial indexes
    (PostgreSQL, SQLite) they hold only the events not yet delivered, so the queue
    stays small however much delivered history waits for :meth:`Outbox.purge`, and
    marking an event delivered takes it out of both; the indexes of earlier versions
    (on every event) are dropped."""
    if backend == "mariadb":
        return [
            f"CREATE INDEX IF NOT EXISTS {table}_queue ON {table} (state, event_id)",
            f"CREATE INDEX IF NOT EXISTS {table}_head ON {table} (aggregate, state, seq)",
        ]
    return [
        f"CREATE INDEX IF NOT EXISTS {table}_pending ON {table} (event_id) WHERE state = 'pending'",
        f"CREATE INDEX IF NOT EXISTS {table}_open ON {table} (aggregate, seq) "
        "WHERE state IN ('pending', 'parked')",
        f"DROP INDEX IF EXISTS {table}_queue",
        f"DROP INDEX IF EXISTS {table}_head",
    ]


def insert_sql(table: str, backend: str) -> list[str]:
    """The statements of :meth:`Outbox.add`; the last one returns the event's ``seq``."""
    columns = "aggregate, seq, event_id, event_type, payload, created_at, state, attempts"
    values = ":event_id, :event_type, :payload, :now, 'pending', 0"
    if backend == "postgresql":  # one round trip
        return [
            f"WITH s AS (INSERT INTO {table}_seq AS c (aggregate, last_seq) "
            "VALUES (:aggregate, 1) ON CONFLICT (aggregate) DO UPDATE "
            "SET last_seq = c.last_seq + 1 RETURNING c.last_seq) "
            f"INSERT INTO {table} ({columns}) SELECT :aggregate, s.last_seq, {values} FROM s "
            "RETURNING seq"
        ]
    if backend == "mariadb":
        return [
            f"INSERT INTO {table}_seq (aggregate, last_seq) VALUES (:aggregate, 1) "
            "ON DUPLICATE KEY UPDATE last_seq = last_seq + 1",
            f"INSERT INTO {table} ({columns}) SELECT :aggregate, last_seq, {values} "
            f"FROM {table}_seq WHERE aggregate = :aggregate RETURNING seq",
        ]
    # SQLite: one statement (writers hold the database's write lock from BEGIN
    # IMMEDIATE, so reading the counter cannot race); a trigger moves the counter.
    return [
        f"INSERT INTO {table} ({columns}) VALUES (:aggregate, COALESCE((SELECT last_seq "
        f"FROM {table}_seq WHERE aggregate = :aggregate), 0) + 1, {values}) RETURNING seq"
    ]


_id_lock = threading.Lock()
_id_last = [0, 0]  # the milliseconds and the 12-bit counter of the last id made here


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562) string: 48 bits of Unix milliseconds, a 12-bit counter,
    then 62 random bits. Ids sort by creation time (to the millisecond across
    processes); within one process they are strictly increasing, as the RFC's
    "fixed bit-length dedicated counter" method makes them: the counter starts at a
    random value each millisecond and steps by one (on overflow the time moves on)."""
    rand = int.from_bytes(os.urandom(8), "big")
    with _id_lock:
        millis = time.time_ns() // 1_000_000
        last_millis, counter = _id_last
        if millis > last_millis:
            counter = rand >> 53  # 11 random bits: room to count up within the ms
        else:
            millis, counter = last_millis, counter + 1
            if counter > 0xFFF:
                millis, counter = millis + 1, 0
        _id_last[:] = [millis, counter]
    value = (millis & (2**48 - 1)) << 80 | 0x7 << 76 | counter << 64
    value |= 0b10 << 62 | rand & (2**62 - 1)
    return str(uuid.UUID(int=value))


def in_marks(params: dict[str, Any], prefix: str, values: Sequence[Any]) -> str:
    """``:p0, :p1, …`` for an ``IN (…)`` list; adds the values to ``params``."""
    params.update({f"{prefix}{n}": value for n, value in enumerate(values)})
    return ", ".join(f":{prefix}{n}" for n in range(len(values)))


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _NAME_MAX or "\x00" in value:
        raise InvalidValueError(
            f"an outbox event's {what} must be a string of 1 to {_NAME_MAX} characters "
            f"without NUL, not {value!r:.80}"
        )
    return value


def _encode_payload(payload: Any) -> str:
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(
            f"an outbox event's payload must be JSON (dicts, lists, str, numbers, bool, "
            f"None; no NaN): {exc}"
        ) from None


@dataclass(frozen=True)
class OutboxEvent:
    """One event, as a relay hands it to the handler."""

    event_id: str
    """Global id (UUIDv7): the key to deduplicate on."""
    aggregate: str
    seq: int
    """1, 2, 3 … per aggregate, without gaps."""
    event_type: str
    payload: Any
    """The JSON value given to :meth:`Outbox.add`, decoded."""
    created_at: float
    attempt: int = 1
    """The deliveries recorded before this one, plus one: 1 the first, more after
    failures and interrupted deliveries."""

    @classmethod
    def from_row(cls, row: Row, attempt: int | None = None) -> OutboxEvent:
        return cls(
            event_id=str(row["event_id"]),
            aggregate=str(row["aggregate"]),
            seq=int(row["seq"]),
            event_type=str(row["event_type"]),
            payload=json.loads(row["payload"]),
            created_at=float(row["created_at"]),
            attempt=int(row["attempts"]) if attempt is None else attempt,
        )


@dataclass(frozen=True)
class OutboxRecord:
    """An event with its delivery state, for inspection (:meth:`Outbox.events`)."""

    event: OutboxEvent
    state: str
    """``pending``, ``delivered`` or ``parked``."""
    attempts: int
    """Deliveries recorded so far: failed, cut off, and the successful one (not a
    delivery cut off inside a batch by a relay that died: nothing says where it was)."""
    error: ErrorInfo | None
    """The last failure (kept after a later success or a retry of a parked event)."""
    next_attempt_at: float | None
    owner: str | None
    """The relay holding its lease, if any."""
    lease_until: float | None
    delivered_at: float | None


def check_outbox(table: object, backend: str) -> None:
    """Refuse a table name or a backend the outbox cannot use."""
    if not isinstance(table, str) or not _TABLE.fullmatch(table):
        raise UsageError(
            f"outbox table names are a lower-case letter or _ then up to 50 lower-case "
            f"letters, digits or _, not {table!r}"
        )
    if backend not in _TYPES:
        raise UsageError(f"no outbox on {backend}:// stores")


def setup_statements(table: str, backend: str) -> list[tuple[str, dict[str, Any] | None]]:
    """The statements (with parameters) that create the outbox's tables, in one
    transaction; on PostgreSQL an advisory lock first serialises concurrent setups."""
    statements: list[tuple[str, dict[str, Any] | None]] = []
    if backend == "postgresql":
        key = zlib.crc32(f"multistore-outbox:{table}".encode())
        statements.append(("SELECT pg_advisory_xact_lock(:key)", {"key": key}))
    statements.extend((statement, None) for statement in _schema(table, backend))
    return statements


@dataclass(frozen=True)
class EventInsert:
    """One :meth:`Outbox.add`, checked: the parameters of the insert statements
    (``insert_sql``), and the event once the last statement returned its number."""

    aggregate: str
    event_type: str
    params: dict[str, Any]

    @classmethod
    def of(
        cls,
        outbox: Any,
        dialect: str,
        aggregate: str,
        event_type: str,
        payload: Any,
    ) -> EventInsert:
        """``outbox`` has ``backend`` and ``clock``; ``dialect`` is the transaction's."""
        if dialect != outbox.backend:
            raise UsageError(
                f"this transaction is on {dialect}, the outbox on {outbox.backend}: the "
                "event must be written in the same database as the business data"
            )
        params: dict[str, Any] = {
            "aggregate": _check_name(aggregate, "aggregate"),
            "event_type": _check_name(event_type, "event type"),
            "payload": _encode_payload(payload),
            "event_id": new_event_id(),
            "now": outbox.clock(),
        }
        return cls(aggregate, event_type, params)

    def event(self, row: Row | None) -> OutboxEvent:
        assert row is not None  # the insert returns the new row's number
        return OutboxEvent(
            event_id=self.params["event_id"],
            aggregate=self.aggregate,
            seq=int(row[0]),
            event_type=self.event_type,
            payload=json.loads(self.params["payload"]),
            created_at=self.params["now"],
            attempt=0,
        )


class Outbox:
    """Events in a table of a relational store, written inside the caller's transaction.

    ``table`` names the events table (``<table>_seq`` holds the counters). Leases and
    retry times are on the database's clock where it has one (PostgreSQL, MariaDB:
    the server computes and compares them), on SQLite on the machine's; the time
    stamps people read (``created_at``, ``delivered_at``, and :meth:`purge`'s cut-off)
    on this machine's wall clock. A ``clock`` (wall-clock seconds) given replaces
    both, on every backend: tests pass one to control time.
    """

    def __init__(
        self,
        store: RelationalStore,
        *,
        table: str = "multistore_outbox",
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(store, RelationalStore):
            raise UsageError(
                f"an outbox lives in a relational store (SQLite, PostgreSQL, MariaDB), "
                f"not {store!r}"
            )
        check_outbox(table, store.backend)
        self.store = store
        self.table = table
        self.time = LogClock(store, clock)
        self.clock = self.time.wall
        self.backend = store.backend
        self._insert = insert_sql(table, self.backend)

    async def setup(self) -> None:
        """Create the tables if they are missing (safe to run from several processes)."""
        async with self.store.transaction() as tx:
            for statement, params in setup_statements(self.table, self.backend):
                await tx.execute(statement, params)

    async def add(
        self, tx: Transaction, aggregate: str, event_type: str, payload: Any
    ) -> OutboxEvent:
        """Insert an event with the caller's transaction ``tx``: it commits with the
        business write, or not at all. Returns the event with its id and number.

        Bad input (a payload that is not JSON, an empty aggregate or type) raises
        :class:`~multistore.errors.InvalidValueError` before anything is sent.
        """
        if not isinstance(tx, Transaction) or tx.status is not TransactionStatus.ACTIVE:
            raise UsageError(
                "outbox.add() takes the caller's open transaction "
                "(async with store.transaction() as tx: ... outbox.add(tx, ...)), "
                f"not {tx!r}"
            )
        add = EventInsert.of(self, tx.connection.dialect, aggregate, event_type, payload)
        *first, last = self._insert
        for sql in first:
            await tx.execute(sql, add.params)
        return add.event(await tx.fetch_one(last, add.params))

    # -- inspection and operations -------------------------------------------------

    async def counts(self) -> dict[str, int]:
        """How many events are ``pending``, ``delivered`` and ``parked``."""
        rows = await self.store.fetch_all(
            f"SELECT state, COUNT(*) AS n FROM {self.table} GROUP BY state"
        )
        counts = dict.fromkeys(STATES, 0)
        counts.update({str(r["state"]): int(r["n"]) for r in rows})
        return counts

    async def events(
        self, *, state: str | None = None, aggregate: str | None = None, limit: int = 100
    ) -> list[OutboxRecord]:
        """Events with their delivery state: of one aggregate by number, else oldest
        first; optionally only those in ``state``."""
        where: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            if state not in STATES:
                raise InvalidValueError(f"outbox states are {', '.join(STATES)}, not {state!r}")
            where.append("state = :state")
            params["state"] = state
        if aggregate is not None:
            where.append("aggregate = :aggregate")
            params["aggregate"] = aggregate
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        order = "seq" if aggregate is not None else "event_id"
        rows = await self.store.fetch_all(
            f"SELECT {_RECORD_COLUMNS} FROM {self.table} {clause}ORDER BY {order} LIMIT :limit",
            params,
        )
        return [_record(r) for r in rows]

    async def parked(self, *, limit: int = 100) -> list[OutboxRecord]:
        """The parked events (their relay gave up; each blocks its aggregate)."""
        return await self.events(state=PARKED, limit=limit)

    async def retry_parked(
        self, *, aggregate: str | None = None, event_id: str | None = None
    ) -> int:
        """Put parked events back in the queue with a fresh retry budget (all of them,
        or those of one aggregate, or one event); the number put back."""
        where = "state = 'parked'"
        params: dict[str, Any] = {}
        if aggregate is not None:
            where += " AND aggregate = :aggregate"
            params["aggregate"] = aggregate
        if event_id is not None:
            where += " AND event_id = :event_id"
            params["event_id"] = event_id
        return await self.store.execute(
            f"UPDATE {self.table} SET state = 'pending', attempts = 0, next_attempt_at = NULL, "
            f"owner = NULL, lease_until = NULL WHERE {where}",
            params,
        )

    async def purge(self, older_than: float) -> int:
        """Delete the events delivered more than ``older_than`` seconds ago; the number
        deleted. Numbering goes on where it was (the counters are kept)."""
        if not older_than >= 0:
            raise InvalidValueError(f"older_than must be seconds >= 0, not {older_than!r}")
        return await self.store.execute(
            f"DELETE FROM {self.table} WHERE state = 'delivered' AND delivered_at < :cutoff",
            {"cutoff": self.clock() - older_than},
        )


def _record(row: Row) -> OutboxRecord:
    def number(column: str) -> float | None:
        value = row[column]
        return None if value is None else float(value)

    return OutboxRecord(
        event=OutboxEvent.from_row(row),
        state=str(row["state"]),
        attempts=int(row["attempts"]),
        error=ErrorInfo.from_json(row["last_error"]),
        next_attempt_at=number("next_attempt_at"),
        owner=row["owner"],
        lease_until=number("lease_until"),
        delivered_at=number("delivered_at"),
    )
