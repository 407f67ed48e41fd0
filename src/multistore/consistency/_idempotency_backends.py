"""Where idempotency records live: one record per (client scope, key), changed only by
compare-and-swap on its ``version``.

The decision logic (claim, take over, renew, complete) lives in
:mod:`multistore.consistency._idempotency` and is written once; a backend only has to
load a record, create it if absent, replace it if its version is still the expected
one, and reap expired records. Each of those is atomic on the server:

- Redis (key-value): ``SET NX PX`` to create, one Lua script for the compare-and-swap.
- SQLite (key-value): ``set_if_absent`` to create, a ``BEGIN IMMEDIATE`` transaction
  on the store's ``multistore_kv`` table (through ``store.run``) for the swap.
- Relational (SQLite, PostgreSQL, MariaDB): a table with primary key
  ``(scope, idem_key)``; ``INSERT`` to create (a duplicate means someone else did),
  ``UPDATE … WHERE version = :expected`` to swap.

On key-value stores every record carries a TTL (its expiry, or its lease end if
later), so the store drops it by itself; relational records are deleted by
:meth:`RecordBackend.reap`.
"""

from __future__ import annotations

import abc
import contextlib
import json
import re
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from multistore.errors import DuplicateKeyError, InvalidValueError, StoreError, UnsupportedError
from multistore.stores._base import Store
from multistore.stores.kv._api import KeyValueStore
from multistore.stores.relational._api import RelationalStore

if TYPE_CHECKING:
    from multistore.stores.kv._redis import RedisKeyValueStore
    from multistore.stores.kv._sqlite import SQLiteKeyValueStore

__all__ = [
    "IdempotencyRecord",
    "KeyValueRecords",
    "RecordBackend",
    "RedisRecords",
    "RelationalRecords",
    "SQLiteKVRecords",
    "records_for",
]

State = Literal["in_progress", "completed"]


@dataclass(frozen=True)
class IdempotencyRecord:
    """One idempotency key's stored state. Times are epoch seconds."""

    scope: str
    """The client the key belongs to; keys of other clients are never visible."""
    key: str
    version: int
    """Incremented by every change; the compare-and-swap token."""
    state: State
    fingerprint: str
    """SHA-256 (hex) of the canonical JSON of the request payload."""
    owner: str | None
    """The run holding the in-progress lease (None once completed or released)."""
    lease_until: float
    """An in-progress record whose lease ended may be taken over by a retry."""
    created_at: float
    expires_at: float
    recovery_point: str | None = None
    recovery_data: Any = None
    result: dict[str, Any] | None = None
    """The stored outcome once completed: ``{"value": …}`` or ``{"error": …}``."""

    def expired(self, now: float) -> bool:
        """True when the record no longer counts (a live lease keeps it alive)."""
        return self.expires_at <= now and (self.state == "completed" or self.lease_until <= now)

    def ttl(self, now: float) -> float:
        """Seconds a key-value store should keep it."""
        return max(0.001, max(self.expires_at, self.lease_until) - now)

    def dumps(self) -> str:
        try:
            return json.dumps(asdict(self), separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidValueError(
                f"idempotency key {self.key!r}: the stored result or recovery data is not "
                f"JSON: {exc}"
            ) from None

    @classmethod
    def loads(cls, raw: bytes | str) -> IdempotencyRecord:
        try:
            data = json.loads(raw)
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise StoreError(f"a stored idempotency record is corrupt: {exc}") from None


class RecordBackend(abc.ABC):
    """Atomic storage for :class:`IdempotencyRecord` values."""

    async def setup(self) -> None:  # noqa: B027 -- optional hook, most backends need none
        """Create tables if needed (called once before first use)."""

    @abc.abstractmethod
    async def load(self, scope: str, key: str) -> IdempotencyRecord | None:
        """The record, or None. An expired record may still be returned."""

    @abc.abstractmethod
    async def create(self, record: IdempotencyRecord, now: float) -> bool:
        """Store ``record`` if no record exists; False when one does."""

    @abc.abstractmethod
    async def replace(self, record: IdempotencyRecord, expected_version: int, now: float) -> bool:
        """Store ``record`` if the stored one has ``expected_version``; False otherwise."""

    @abc.abstractmethod
    async def reap(self, now: float) -> int:
        """Delete expired records; the number deleted."""


# -- key-value stores -------------------------------------------------------------


class KeyValueRecords(RecordBackend, abc.ABC):
    """Records as JSON strings with a TTL under ``{namespace}{len(scope)}:{scope}:{key}``."""

    def __init__(self, store: KeyValueStore, namespace: str) -> None:
        self.store = store
        self.namespace = namespace

    def kv_key(self, scope: str, key: str) -> str:
        # The length prefix keeps scope "a:b" + key "c" apart from scope "a" + key "b:c".
        return f"{self.namespace}{len(scope)}:{scope}:{key}"

    async def load(self, scope: str, key: str) -> IdempotencyRecord | None:
        raw = await self.store.get(self.kv_key(scope, key))
        return None if raw is None else IdempotencyRecord.loads(raw)

    async def create(self, record: IdempotencyRecord, now: float) -> bool:
        k = self.kv_key(record.scope, record.key)
        return await self.store.set_if_absent(k, record.dumps(), ttl=record.ttl(now))


# KEYS[1] the record; ARGV: expected version, new record JSON, TTL in ms.
_REDIS_CAS: Final = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local ok, rec = pcall(cjson.decode, cur)
if not ok or rec['version'] ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


class RedisRecords(KeyValueRecords):
    """Records in Redis; the swap is one Lua script run on ``store.native``."""

    def __init__(self, store: RedisKeyValueStore, namespace: str) -> None:
        super().__init__(store, namespace)
        self._prefix = store.url.str_option("prefix", "")
        self._cas = store.native.register_script(_REDIS_CAS)
        self._errors = store._errors  # the backend's own mapping of redis-py errors

    async def replace(self, record: IdempotencyRecord, expected_version: int, now: float) -> bool:
        k = self._prefix + self.kv_key(record.scope, record.key)
        ttl_ms = max(1, int(record.ttl(now) * 1000))
        with self._errors("idempotency compare-and-swap", k):
            done = await self._cas(keys=[k], args=[expected_version, record.dumps(), ttl_ms])
        return bool(done)

    async def reap(self, now: float) -> int:
        return 0  # Redis drops expired keys by itself


class SQLiteKVRecords(KeyValueRecords):
    """Records in a SQLite key-value store; the swap is one ``BEGIN IMMEDIATE``
    transaction on its ``multistore_kv`` table, run on the store's worker thread."""

    def __init__(self, store: SQLiteKeyValueStore, namespace: str) -> None:
        super().__init__(store, namespace)
        self._sqlite = store
        self._prefix = store.url.str_option("prefix", "")

    async def replace(self, record: IdempotencyRecord, expected_version: int, now: float) -> bool:
        k = self._prefix + self.kv_key(record.scope, record.key)
        raw, expires = record.dumps().encode(), now + record.ttl(now)

        def swap(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT value FROM multistore_kv WHERE key = ? AND kind = 'string' "
                    "AND (expires_at IS NULL OR expires_at > ?)",
                    (k, time.time()),
                ).fetchone()
                if row is None or IdempotencyRecord.loads(row[0]).version != expected_version:
                    conn.execute("ROLLBACK")
                    return False
                conn.execute(
                    "UPDATE multistore_kv SET value = ?, expires_at = ? WHERE key = ?",
                    (raw, expires, k),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return True

        return await self._sqlite.run(swap)

    async def reap(self, now: float) -> int:
        low = self._prefix + self.namespace
        high = low + "\U0010ffff"

        def purge(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM multistore_kv WHERE key >= ? AND key < ? AND expires_at <= ?",
                (low, high, time.time()),
            )
            return cur.rowcount

        return await self._sqlite.run(purge)


# -- relational stores ------------------------------------------------------------

_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class RelationalRecords(RecordBackend):
    """Records in one table of a relational store (created if missing)."""

    def __init__(self, store: RelationalStore, table: str) -> None:
        if not _IDENT.fullmatch(table):
            raise InvalidValueError(f"idempotency table name {table!r} is not an identifier")
        self.store = store
        self.table = table

    async def setup(self) -> None:
        text = "MEDIUMTEXT" if self.store.backend == "mariadb" else "TEXT"
        t = self.table
        # DuplicateKeyError: another process created it at the same moment (PostgreSQL).
        with contextlib.suppress(DuplicateKeyError):
            await self.store.execute_script(
                f"""
                CREATE TABLE IF NOT EXISTS {t} (
                    scope VARCHAR(255) NOT NULL,
                    idem_key VARCHAR(255) NOT NULL,
                    version BIGINT NOT NULL,
                    state VARCHAR(16) NOT NULL,
                    lease_until DOUBLE PRECISION NOT NULL,
                    expires_at DOUBLE PRECISION NOT NULL,
                    record {text} NOT NULL,
                    PRIMARY KEY (scope, idem_key)
                );
                CREATE INDEX IF NOT EXISTS {t}_expires ON {t} (expires_at);
                """
            )

    async def load(self, scope: str, key: str) -> IdempotencyRecord | None:
        raw = await self.store.fetch_val(
            f"SELECT record FROM {self.table} WHERE scope = :scope AND idem_key = :key",
            {"scope": scope, "key": key},
        )
        return None if raw is None else IdempotencyRecord.loads(raw)

    def _params(self, record: IdempotencyRecord) -> dict[str, Any]:
        return {
            "scope": record.scope,
            "key": record.key,
            "version": record.version,
            "state": record.state,
            "lease": record.lease_until,
            "expires": record.expires_at,
            "record": record.dumps(),
        }

    async def create(self, record: IdempotencyRecord, now: float) -> bool:
        try:
            await self.store.execute(
                f"INSERT INTO {self.table} "
                "(scope, idem_key, version, state, lease_until, expires_at, record) "
                "VALUES (:scope, :key, :version, :state, :lease, :expires, :record)",
                self._params(record),
            )
        except DuplicateKeyError:
            return False
        return True

    async def replace(self, record: IdempotencyRecord, expected_version: int, now: float) -> bool:
        changed = await self.store.execute(
            f"UPDATE {self.table} SET version = :version, state = :state, "
            "lease_until = :lease, expires_at = :expires, record = :record "
            "WHERE scope = :scope AND idem_key = :key AND version = :expected",
            {**self._params(record), "expected": expected_version},
        )
        return changed == 1

    async def reap(self, now: float) -> int:
        return await self.store.execute(
            f"DELETE FROM {self.table} WHERE expires_at <= :now "
            "AND (state = 'completed' OR lease_until <= :now)",
            {"now": now},
        )


def records_for(store: Store, *, namespace: str, table: str) -> RecordBackend:
    """The record backend for an opened key-value or relational store."""
    if isinstance(store, RelationalStore):
        return RelationalRecords(store, table)
    if isinstance(store, KeyValueStore):
        # Imported here: each backend's driver is an optional dependency.
        from multistore.stores.kv._sqlite import SQLiteKeyValueStore

        if isinstance(store, SQLiteKeyValueStore):
            return SQLiteKVRecords(store, namespace)
        from multistore.stores.kv._redis import RedisKeyValueStore

        if isinstance(store, RedisKeyValueStore):
            return RedisRecords(store, namespace)
    raise UnsupportedError(
        f"idempotency keys need a key-value (sqlite, redis) or relational store, "
        f"not the {store.model} store {store.url}"
    )
