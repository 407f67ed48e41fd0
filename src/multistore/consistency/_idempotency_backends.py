"""Where idempotency records live: one record per (client scope, key), changed only by
compare-and-swap on its ``version``.

The decision logic (claim, take over, renew, complete) lives in
:mod:`multistore.consistency._idempotency` and is written once; a backend only has to
load a record, create it if absent, replace it if its version is still the expected
one, and reap expired records. :meth:`RecordBackend.claim` and
:meth:`RecordBackend.advance` build the claim and the owner's changes from those;
Redis replaces both by server-side scripts. Each step is atomic on the server:

- Redis (key-value): Lua scripts, one round trip each, on the server's clock
  (``TIME``): one *claims* a key (creates it, or answers with the record already
  there: completed, in progress under a live lease, or free to take over), one
  *advances* a record its owner holds (renew, checkpoint, complete, release).
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
import dataclasses
import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn

from multistore._resp import (
    RespConnectionError,
    RespError,
    RespPool,
    RespTimeoutError,
    bulk,
)
from multistore.errors import (
    DuplicateKeyError,
    InvalidValueError,
    Outcome,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    UnsupportedError,
    UsageError,
)
from multistore.stores._base import Store
from multistore.stores.kv._api import KeyValueStore
from multistore.stores.relational._api import RelationalStore

if TYPE_CHECKING:
    from multistore.stores.kv._redis import RedisKeyValueStore
    from multistore.stores.kv._sqlite import SQLiteKeyValueStore

__all__ = [
    "Claim",
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
        # The fields in declaration order, without asdict's deep copy of the result.
        return _dumps(self, {f: getattr(self, f) for f in _FIELDS})

    def dumps_tail(self) -> str:
        """The JSON of every field but the server-set ones (version and times), without
        the opening brace: a Redis script puts its own ``{"version":…,…,`` in front."""
        data = {
            "scope": self.scope,
            "key": self.key,
            "state": self.state,
            "fingerprint": self.fingerprint,
            "owner": self.owner,
            "recovery_point": self.recovery_point,
            "recovery_data": self.recovery_data,
            "result": self.result,
        }
        return _dumps(self, data)[1:]

    @classmethod
    def loads(cls, raw: bytes | str) -> IdempotencyRecord:
        try:
            data = json.loads(raw)
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise StoreError(f"a stored idempotency record is corrupt: {exc}") from None


_FIELDS: Final = tuple(f.name for f in dataclasses.fields(IdempotencyRecord))


def _dumps(record: IdempotencyRecord, data: dict[str, Any]) -> str:
    try:
        return json.dumps(data, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(
            f"idempotency key {record.key!r}: the stored result or recovery data is not JSON: {exc}"
        ) from None


ClaimStatus = Literal["created", "resumed", "completed", "busy", "mismatch", "contended"]


@dataclass(frozen=True, slots=True)
class Claim:
    """What :meth:`RecordBackend.claim` found: ``created`` (a fresh record, ours),
    ``resumed`` (taken over from a holder whose lease ran out, ours), ``completed``
    (the stored record, to replay), ``busy`` (a live holder; ``retry_after``
    seconds of lease left), ``mismatch`` (another fingerprint) or ``contended`` (the
    record changed under every attempt)."""

    status: ClaimStatus
    record: IdempotencyRecord | None = None
    retry_after: float = 0.0


CLAIM_ATTEMPTS: Final = 20


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

    async def claim(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        owner: str,
        *,
        lease: float,
        expires_after: float,
        clock: Callable[[], float],
    ) -> Claim:
        """Claim ``(scope, key)`` for ``owner``: create the record if there is none (or
        only an expired one), take it over if its holder's lease ran out, else report
        what is there. Built from load/create/replace on the ``clock``; a backend may
        do it in one step on the server."""
        for _ in range(CLAIM_ATTEMPTS):
            record = await self.load(scope, key)
            now = clock()
            if record is None or record.expired(now):
                fresh = IdempotencyRecord(
                    scope=scope,
                    key=key,
                    version=1 if record is None else record.version + 1,
                    state="in_progress",
                    fingerprint=fingerprint,
                    owner=owner,
                    lease_until=now + lease,
                    created_at=now,
                    expires_at=now + expires_after,
                )
                if record is None:
                    won = await self.create(fresh, now)
                else:
                    won = await self.replace(fresh, record.version, now)
                if won:
                    return Claim("created", fresh)
                continue
            if record.fingerprint != fingerprint:
                return Claim("mismatch")
            if record.state == "completed":
                return Claim("completed", record)
            if record.lease_until > now:
                return Claim("busy", record, record.lease_until - now)
            taken = await self.advance(
                dataclasses.replace(record, owner=owner), record, now, lease=lease
            )
            if taken is not None:
                return Claim("resumed", taken)
        return Claim("contended")

    async def advance(
        self,
        new: IdempotencyRecord,
        current: IdempotencyRecord,
        now: float,
        *,
        lease: float | None,
        expires_after: float | None = None,
    ) -> IdempotencyRecord | None:
        """Store ``new`` (state, owner, recovery point, result) in place of ``current``
        if the stored record is still ``current`` (same version); None otherwise.
        Sets the version and times: ``lease_until`` = now + ``lease`` (now when
        None); ``expires_at`` kept, or now + ``expires_after`` if given and passed."""
        expires = new.expires_at
        if expires_after is not None and expires <= now:
            expires = now + expires_after
        record = dataclasses.replace(
            new,
            version=current.version + 1,
            lease_until=now if lease is None else now + lease,
            expires_at=expires,
        )
        return record if await self.replace(record, current.version, now) else None


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


# Redis keeps records on its own clock: the scripts read ``TIME`` and write every
# lease and expiry time themselves, so clients' clocks never enter a lease decision.
# A record is written as the script's head ``{"version":…,"lease_until":…,
# "expires_at":…,"created_at":…,`` followed by the client's JSON of the other fields
# (``IdempotencyRecord.dumps_tail``): user data (results, recovery data) is never
# re-encoded by Lua's cjson, which would round numbers and turn [] into {}.
_REDIS_LIB: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function f6(x) return string.format('%.6f', x) end
local function store(k, version, lease_until, expires_at, created_at, tail)
    local head = string.format(
        '{"version":%d,"lease_until":%s,"expires_at":%s,"created_at":%s,',
        version, f6(lease_until), f6(expires_at), f6(created_at))
    local ttl = math.max(1, math.ceil((math.max(expires_at, lease_until) - now) * 1000))
    redis.call('SET', k, head .. tail, 'PX', ttl)
    return {tostring(version), f6(lease_until), f6(expires_at), f6(created_at)}
end
local function decode(raw)
    local ok, rec = pcall(cjson.decode, raw)
    if not ok or type(rec) ~= 'table' or type(rec['version']) ~= 'number'
        or type(rec['lease_until']) ~= 'number' or type(rec['expires_at']) ~= 'number' then
        return nil
    end
    return rec
end
"""

# KEYS[1] the record; ARGV: fingerprint, lease (s), expires_after (s), the fresh
# record's tail. Replies: {'created', version, lease_until, expires_at, created_at},
# the completed record itself (a bare string), {'busy', seconds left}, {'mismatch'},
# {'expired', record} (in progress, the holder's lease ran out: the client takes it
# over with ADVANCE), {'corrupt'}.
_REDIS_CLAIM: Final = (
    _REDIS_LIB
    + """
local cur = redis.call('GET', KEYS[1])
local version = 1
if cur then
    local rec = decode(cur)
    if not rec then return {'corrupt'} end
    local done = rec['state'] == 'completed'
    local live = (not done) and rec['lease_until'] > now
    if rec['expires_at'] > now or live then
        if rec['fingerprint'] ~= ARGV[1] then return {'mismatch'} end
        if done then return cur end
        if live then return {'busy', f6(rec['lease_until'] - now)} end
        return {'expired', cur}
    end
    version = rec['version'] + 1
end
local reply = store(KEYS[1], version, now + tonumber(ARGV[2]), now + tonumber(ARGV[3]), now,
    ARGV[4])
table.insert(reply, 1, 'created')
return reply
"""
)

# KEYS[1] the record; ARGV: expected version, expected owner ('' for none), lease (s,
# '' to end it now), expires_after (s, '' to keep the expiry), the new record's tail.
# Changes the record only if it is still the expected version of the expected owner
# (a record that expired and was created again restarts at version 1: the owner tells
# it apart). Replies {version, lease_until, expires_at, created_at}, or 0.
_REDIS_ADVANCE: Final = (
    _REDIS_LIB
    + """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local rec = decode(cur)
if not rec or rec['version'] ~= tonumber(ARGV[1]) then return 0 end
local owner = rec['owner']
if type(owner) ~= 'string' then owner = '' end
if owner ~= ARGV[2] then return 0 end
local lease_until = now
if ARGV[3] ~= '' then lease_until = now + tonumber(ARGV[3]) end
local expires_at = rec['expires_at']
if ARGV[4] ~= '' and expires_at <= now then expires_at = now + tonumber(ARGV[4]) end
local created_at = rec['created_at']
if type(created_at) ~= 'number' then created_at = now end
return store(KEYS[1], rec['version'] + 1, lease_until, expires_at, created_at, ARGV[5])
"""
)


_bulk: Final = bulk


class _Script:
    """A Lua script run with ``EVALSHA`` (``EVAL`` when the server does not have it);
    the command is packed here, its constant head once."""

    def __init__(self, name: str, body: str, argc: int) -> None:
        self.name = name
        self.body = body
        sha = hashlib.sha1(body.encode()).hexdigest()
        self.argc = argc
        self.head = b"*%d\r\n" % (argc + 4) + _bulk("EVALSHA") + _bulk(sha) + _bulk(1)
        self.eval_head = b"*%d\r\n" % (argc + 4) + _bulk("EVAL") + _bulk(body) + _bulk(1)

    def pack(self, head: bytes, key: str, args: tuple[str | int | float, ...]) -> bytes:
        if len(args) != self.argc:
            raise TypeError(f"{self.name} takes {self.argc} arguments, not {len(args)}")
        return head + _bulk(key) + b"".join([_bulk(a) for a in args])


# KEYS[1] the record; ARGV: expected version, new record JSON, TTL in ms.
_REDIS_CAS: Final = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local ok, rec = pcall(cjson.decode, cur)
if not ok or type(rec) ~= 'table' or rec['version'] ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

_CAS_SCRIPT: Final = _Script("idempotency compare-and-swap", _REDIS_CAS, 3)
_CLAIM_SCRIPT: Final = _Script("idempotency claim", _REDIS_CLAIM, 4)
_ADVANCE_SCRIPT: Final = _Script("idempotency update", _REDIS_ADVANCE, 5)


_json_str: Final = json.JSONEncoder().encode  # a str's JSON literal


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _lean_pool(store: RedisKeyValueStore) -> RespPool:
    """A :class:`RespPool` to the store's server and database, closed with the store."""
    url = store.url
    timeout = url.float_option("timeout", 5.0)
    lean = RespPool(
        url.host or "127.0.0.1",
        url.port or 6379,
        db=int(url.database or 0),
        username=url.username or None,
        password=url.password or None,
        timeout=timeout,
        connect_timeout=url.float_option("connect_timeout", timeout),
        max_connections=url.int_option("pool_max", 10),
    )
    store.on_close(lean.close)
    return lean


class RedisRecords(KeyValueRecords):
    """Records in Redis; a claim and every change of a record are each one Lua script,
    so one round trip, decided on the server's clock (``TIME``).

    The scripts run on a lean RESP2 client (:mod:`multistore._resp`, its
    own small pool of connections to the store's server and database): a redis-py
    asyncio round trip costs 165-183 us here, a bare asyncio protocol about 35 us.
    With ``ssl`` (not supported there) they run on a connection of the store's own
    redis-py pool, sent and read directly, skipping ``Redis.execute_command``'s
    ~50 us of client work (observability hooks, retry wrapper, response callbacks).
    """

    def __init__(self, store: RedisKeyValueStore, namespace: str) -> None:
        super().__init__(store, namespace)
        from redis import exceptions as rex
        from redis._parsers.base import BaseParser

        parser: Any = BaseParser  # untyped
        self._parse_error: Callable[[str], BaseException] = parser.parse_error
        self._redis = store
        self._prefix = store.url.str_option("prefix", "")
        self._pool: Any = store.native.connection_pool  # redis-py: partly untyped
        self._noscript = rex.NoScriptError
        self._redis_error = rex.RedisError
        self._lean = None if store.url.option("ssl", False) else _lean_pool(store)

    async def _run(self, script: _Script, key: str, *args: str | int | float) -> Any:
        store = self._redis
        if store._closed:
            raise UsageError(f"the key-value store {store.url} is closed")
        lean = self._lean
        if lean is not None:
            return await self._run_lean(lean, script, key, args)
        pool = self._pool
        try:
            conn = await pool.get_connection()
            try:
                # As redis-py does: on any failure but an error reply the connection
                # disconnects itself, so the pool never hands out a half-read one.
                await conn.send_packed_command(script.pack(script.head, key, args), False)
                try:
                    return await conn.read_response()
                except self._noscript:  # a restarted or flushed server: send the body
                    await conn.send_packed_command(script.pack(script.eval_head, key, args), False)
                    return await conn.read_response()
            finally:
                await pool.release(conn)
        except self._redis_error as exc:
            self._raise_mapped(script.name, key, exc)

    async def _run_lean(
        self, lean: RespPool, script: _Script, key: str, args: tuple[str | int | float, ...]
    ) -> Any:
        try:
            return await lean.call(
                script.pack(script.head, key, args),
                lambda: script.pack(script.eval_head, key, args),
            )
        except RespError as exc:  # an error reply: the exception redis-py would raise
            self._raise_mapped(script.name, key, self._parse_error(exc.message))
        except RespConnectionError as exc:
            # Sent: the script may have run (indeterminate); not sent: it did not.
            outcome = Outcome.INDETERMINATE if exc.sent else Outcome.DEFINITE
            where = f"{script.name} on {self._redis.url} (key {key!r})"
            if isinstance(exc, RespTimeoutError):
                raise StoreTimeoutError(
                    f"Redis did not answer in time: {where}", outcome=outcome
                ) from exc
            raise StoreUnavailableError(
                f"Redis unreachable: {where}: {exc}", outcome=outcome
            ) from exc

    def _raise_mapped(self, op: str, key: str, exc: BaseException) -> NoReturn:
        with self._redis._errors(op, key):  # the store's mapping of redis-py errors
            raise exc
        raise StoreError(f"Redis error: {op} (key {key!r}): {exc}") from exc

    def _key(self, scope: str, key: str) -> str:
        return f"{self._prefix}{self.namespace}{len(scope)}:{scope}:{key}"

    async def claim(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        owner: str,
        *,
        lease: float,
        expires_after: float,
        clock: Callable[[], float],
    ) -> Claim:
        k = self._key(scope, key)
        # The fresh record's dumps_tail(), written out: fingerprint and owner are hex.
        tail = (
            f'"scope":{_json_str(scope)},"key":{_json_str(key)},"state":"in_progress",'
            f'"fingerprint":{_json_str(fingerprint)},"owner":{_json_str(owner)},'
            '"recovery_point":null,"recovery_data":null,"result":null}'
        )
        for _ in range(CLAIM_ATTEMPTS):
            reply = await self._run(_CLAIM_SCRIPT, k, fingerprint, lease, expires_after, tail)
            if isinstance(reply, (bytes, str)):  # the completed record, to replay
                return Claim("completed", IdempotencyRecord.loads(reply))
            status = _text(reply[0])
            if status == "created":
                version, lease_until, expires_at, created_at = (_text(x) for x in reply[1:5])
                fresh = IdempotencyRecord(
                    scope=scope,
                    key=key,
                    version=int(version),
                    state="in_progress",
                    fingerprint=fingerprint,
                    owner=owner,
                    lease_until=float(lease_until),
                    created_at=float(created_at),
                    expires_at=float(expires_at),
                )
                return Claim("created", fresh)
            if status == "busy":
                return Claim("busy", None, float(_text(reply[1])))
            if status == "mismatch":
                return Claim("mismatch")
            if status == "expired":
                record = IdempotencyRecord.loads(reply[1])
                taken = await self.advance(
                    dataclasses.replace(record, owner=owner), record, 0.0, lease=lease
                )
                if taken is not None:
                    return Claim("resumed", taken)
                continue
            raise StoreError(f"a stored idempotency record is corrupt: {k!r}")
        return Claim("contended")

    async def advance(
        self,
        new: IdempotencyRecord,
        current: IdempotencyRecord,
        now: float,
        *,
        lease: float | None,
        expires_after: float | None = None,
    ) -> IdempotencyRecord | None:
        reply = await self._run(
            _ADVANCE_SCRIPT,
            self._key(new.scope, new.key),
            current.version,
            current.owner or "",
            "" if lease is None else lease,
            "" if expires_after is None else expires_after,
            new.dumps_tail(),
        )
        if not reply:
            return None
        version, lease_until, expires_at, created_at = (_text(x) for x in reply[:4])
        return dataclasses.replace(
            new,
            version=int(version),
            lease_until=float(lease_until),
            expires_at=float(expires_at),
            created_at=float(created_at),
        )

    async def replace(self, record: IdempotencyRecord, expected_version: int, now: float) -> bool:
        """A plain compare-and-swap of the whole record, times as given (the claim and
        the owner's changes use :meth:`claim` and :meth:`advance`, on Redis' clock)."""
        k = self._key(record.scope, record.key)
        ttl_ms = max(1, int(record.ttl(now) * 1000))
        return bool(await self._run(_CAS_SCRIPT, k, expected_version, record.dumps(), ttl_ms))

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
