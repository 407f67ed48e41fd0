"""Where idempotency records live: one record per (client scope, key), changed only by
compare-and-swap on its ``version`` and ``owner``.

The decision logic (claim, take over, renew, complete) lives in
:mod:`multistore.consistency._idempotency` and is written once; a backend offers a
*claim* and an *advance* (the owner's change), each one atomic step. :class:`CasRecords`
builds both from load, create-if-absent and replace-if-unchanged, which the
key-value interface (``set_if_absent``, ``compare_and_set``) and SQL give; Redis
does each in one server-side script (:meth:`RedisKeyValueStore.script`):

- Redis (key-value): Lua scripts, one round trip each, on the server's clock
  (``TIME``): one *claims* a key (creates it, takes it over from a holder whose lease
  ran out, or answers with what is there: the completed outcome, a live lease, another
  fingerprint), one *advances* a record its owner holds (renew, checkpoint, complete,
  release). Records are hashes, so the scripts read only the fields they decide on.
- Any other key-value store (SQLite): a JSON string per record, created with
  ``set_if_absent`` and swapped with ``compare_and_set`` on its exact stored text.
- Relational (SQLite, PostgreSQL, MariaDB): a table with primary key
  ``(scope, idem_key)``; ``INSERT`` to create (a duplicate means someone else did),
  ``UPDATE … WHERE version = :expected AND record = :expected_record`` to swap.

**Time.** Leases and expiry are decided on the database's clock where it has one:
Redis ``TIME`` inside the scripts; PostgreSQL ``now()`` and MariaDB ``NOW(6)``, read
with every load (one query returns the record and the server's time) and carried
forward between loads on the monotonic clock. An embedded SQLite store has no
clock but its machine's: there the ``clock`` given (``time.time``) is used.

On key-value stores every record carries a TTL (its expiry, or its lease end if
later), so the store drops it by itself; relational records are deleted by
:meth:`RecordBackend.reap`.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from multistore._json import encoder as json_encoder
from multistore.errors import (
    DuplicateKeyError,
    InvalidValueError,
    StoreError,
    UnsupportedError,
)
from multistore.stores._base import Store
from multistore.stores.kv._api import KeyValueStore
from multistore.stores.relational._api import RelationalStore

if TYPE_CHECKING:
    from multistore.stores.kv._redis import RedisKeyValueStore
    from multistore.stores.kv._redis_cluster import RedisClusterKeyValueStore

Clock = Callable[[], float]

__all__ = [
    "CasRecords",
    "Claim",
    "IdempotencyRecord",
    "KeyValueRecords",
    "RecordBackend",
    "RedisRecords",
    "RelationalRecords",
    "ResultNotJSONError",
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

    def evolve(self, **changes: Any) -> IdempotencyRecord:
        """A copy with ``changes`` (field names), as ``dataclasses.replace`` without its
        per-call introspection (it is on every request's path)."""
        if not changes.keys() <= _FIELD_SET:
            unknown = sorted(changes.keys() - _FIELD_SET)
            raise TypeError(f"IdempotencyRecord has no fields {unknown}")
        new = object.__new__(IdempotencyRecord)
        object.__setattr__(new, "__dict__", {**self.__dict__, **changes})
        return new

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
_FIELD_SET: Final = frozenset(_FIELDS)


def _record(
    scope: str,
    key: str,
    version: int | bytes,
    state: State,
    fingerprint: str,
    owner: str | None,
    lease_until_ms: int | bytes,
    created_at_ms: int | bytes,
    expires_at_ms: int | bytes,
    recovery_point: str | None,
    recovery_data: Any,
    result: dict[str, Any] | None,
) -> IdempotencyRecord:
    """A record from Redis' fields (times in integer milliseconds), built without the
    frozen dataclass's per-field ``object.__setattr__``."""
    record = object.__new__(IdempotencyRecord)
    record.__dict__.update(
        scope=scope,
        key=key,
        version=int(version),
        state=state,
        fingerprint=fingerprint,
        owner=owner,
        lease_until=int(lease_until_ms) / 1000,
        created_at=int(created_at_ms) / 1000,
        expires_at=int(expires_at_ms) / 1000,
        recovery_point=recovery_point,
        recovery_data=recovery_data,
        result=result,
    )
    return record


class ResultNotJSONError(InvalidValueError):
    """A result or recovery data to store is not JSON (nothing was written)."""


_compact: Final = json_encoder(allow_nan=False)


def _dumps(record: IdempotencyRecord, data: dict[str, Any]) -> str:
    try:
        return _compact(data)
    except (TypeError, ValueError) as exc:
        raise ResultNotJSONError(
            f"idempotency key {record.key!r}: the stored result or recovery data is not JSON: {exc}"
        ) from None


ClaimStatus = Literal["created", "resumed", "completed", "busy", "mismatch", "contended"]


class Claim(NamedTuple):
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
    """Atomic storage for :class:`IdempotencyRecord` values: a claim and the owner's
    changes, each one atomic step on the store, on the store's clock."""

    async def setup(self) -> None:  # noqa: B027 -- optional hook, most backends need none
        """Create tables if needed (called once before first use)."""

    @abc.abstractmethod
    async def load(self, scope: str, key: str) -> IdempotencyRecord | None:
        """The record, or None. An expired record may still be returned."""

    @abc.abstractmethod
    async def load_live(self, scope: str, key: str) -> IdempotencyRecord | None:
        """The record, or None when it is missing or expired (on the store's clock)."""

    @abc.abstractmethod
    async def reap(self) -> int:
        """Delete expired records; the number deleted."""

    @abc.abstractmethod
    async def claim(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        owner: str,
        *,
        lease: float,
        expires_after: float,
    ) -> Claim:
        """Claim ``(scope, key)`` for ``owner``: create the record if there is none (or
        only an expired one), take it over if its holder's lease ran out, else report
        what is there."""

    @abc.abstractmethod
    async def advance(
        self,
        current: IdempotencyRecord,
        changes: Mapping[str, Any],
        *,
        lease: float | None,
        expires_after: float | None = None,
    ) -> IdempotencyRecord | None:
        """Store ``current`` with ``changes`` (of its state, owner, recovery point and
        data, result) if the stored record is still ``current`` (same version and
        owner), and return what was stored; None otherwise. Sets the version and times:
        ``lease_until`` = now + ``lease`` (now when None); ``expires_at`` kept, or now +
        ``expires_after`` if given and passed."""


class CasRecords(RecordBackend, abc.ABC):
    """A backend built from three primitives: load, create if absent, and replace if
    the stored record is still the expected one (its version *and* owner: a record
    reaped and created again restarts at version 1, and only the owner tells a stale
    holder's expected record from the new one). Claim and advance are written here
    once, on the time :meth:`load_at` and :meth:`now` give: ``clock`` unless the
    store has a clock of its own."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    async def load_at(self, scope: str, key: str) -> tuple[IdempotencyRecord | None, float]:
        """The record (as :meth:`load`) and the store's time when it was read."""
        return await self.load(scope, key), self.clock()

    async def now(self) -> float:
        """The store's time now."""
        return self.clock()

    @abc.abstractmethod
    async def create(self, record: IdempotencyRecord, now: float) -> bool:
        """Store ``record`` if no record exists; False when one does."""

    @abc.abstractmethod
    async def replace(
        self, record: IdempotencyRecord, expected: IdempotencyRecord, now: float
    ) -> bool:
        """Store ``record`` if the stored one still has ``expected``'s version and
        owner; False otherwise."""

    async def load_live(self, scope: str, key: str) -> IdempotencyRecord | None:
        record, now = await self.load_at(scope, key)
        return None if record is None or record.expired(now) else record

    async def claim(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        owner: str,
        *,
        lease: float,
        expires_after: float,
    ) -> Claim:
        for _ in range(CLAIM_ATTEMPTS):
            record, now = await self.load_at(scope, key)
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
                    won = await self.replace(fresh, record, now)
                if won:
                    return Claim("created", fresh)
                continue
            if record.fingerprint != fingerprint:
                return Claim("mismatch")
            if record.state == "completed":
                return Claim("completed", record)
            if record.lease_until > now:
                return Claim("busy", record, record.lease_until - now)
            taken = await self._advance_at(record, {"owner": owner}, now, lease=lease)
            if taken is not None:
                return Claim("resumed", taken)
        return Claim("contended")

    async def advance(
        self,
        current: IdempotencyRecord,
        changes: Mapping[str, Any],
        *,
        lease: float | None,
        expires_after: float | None = None,
    ) -> IdempotencyRecord | None:
        return await self._advance_at(
            current, changes, await self.now(), lease=lease, expires_after=expires_after
        )

    async def _advance_at(
        self,
        current: IdempotencyRecord,
        changes: Mapping[str, Any],
        now: float,
        *,
        lease: float | None,
        expires_after: float | None = None,
    ) -> IdempotencyRecord | None:
        expires = current.expires_at
        if expires_after is not None and expires <= now:
            expires = now + expires_after
        record = current.evolve(
            **changes,
            version=current.version + 1,
            lease_until=now if lease is None else now + lease,
            expires_at=expires,
        )
        return record if await self.replace(record, current, now) else None


# -- key-value stores -------------------------------------------------------------


def kv_key(namespace: str, scope: str, key: str) -> str:
    """Where a key-value store keeps the record of ``(scope, key)``; the length prefix
    keeps scope "a:b" + key "c" apart from scope "a" + key "b:c"."""
    return f"{namespace}{len(scope)}:{scope}:{key}"


class KeyValueRecords(CasRecords):
    """Records as JSON strings with a TTL under ``{namespace}{len(scope)}:{scope}:{key}``
    in any key-value store: created with ``set_if_absent``, swapped with
    ``compare_and_set`` on the exact stored text (records are written by
    :meth:`IdempotencyRecord.dumps`, and a loaded record dumps to the same text, so
    the text checks the version and the owner)."""

    def __init__(self, store: KeyValueStore, namespace: str, clock: Clock) -> None:
        super().__init__(clock)
        self.store = store
        self.namespace = namespace

    def kv_key(self, scope: str, key: str) -> str:
        return kv_key(self.namespace, scope, key)

    async def load(self, scope: str, key: str) -> IdempotencyRecord | None:
        raw = await self.store.get(self.kv_key(scope, key))
        return None if raw is None else IdempotencyRecord.loads(raw)

    async def create(self, record: IdempotencyRecord, now: float) -> bool:
        k = self.kv_key(record.scope, record.key)
        return await self.store.set_if_absent(k, record.dumps(), ttl=record.ttl(now))

    async def replace(
        self, record: IdempotencyRecord, expected: IdempotencyRecord, now: float
    ) -> bool:
        k = self.kv_key(record.scope, record.key)
        return await self.store.compare_and_set(
            k, expected.dumps(), record.dumps(), ttl=record.ttl(now)
        )

    async def reap(self) -> int:
        return await self.store.purge_expired(self.namespace)


# Redis keeps a record as a hash on its own clock: the scripts read ``TIME`` and
# write every lease and expiry time themselves, so clients' clocks never enter a lease
# decision. Fields: v (version), st (state), fp (fingerprint), ow (owner, '' for
# none), lu / ea / ca (lease end, expiry, creation: integer epoch milliseconds), rp
# (recovery point, '' for none), rd (recovery data, JSON), rs (the outcome, JSON).
# Scripts read only the fields they decide on (HMGET) and never decode JSON: user data
# is stored as the client encoded it. Times stay integers below 2^53, which Lua's
# doubles hold exactly and Redis turns into strings and replies without rounding.
_REDIS_NOW: Final = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local k = KEYS[1]
"""

# ARGV: fingerprint, lease (ms), expires_after (ms), owner. Replies:
# {'created', version, lease_until, expires_at, created_at};
# {'completed', version, lease_until, expires_at, created_at, outcome};
# {'resumed', version, lease_until, expires_at, created_at, recovery point, recovery
# data} (in progress, the holder's lease ran out: taken over for ARGV[4]);
# {'busy', ms left}; {'mismatch'}; {'corrupt'}.
_REDIS_CLAIM: Final = (
    _REDIS_NOW
    + """
local cur = redis.call('HMGET', k, 'v', 'st', 'fp', 'lu', 'ea')
local version = 1
if cur[1] then
    local v, lu, ea = tonumber(cur[1]), tonumber(cur[4]), tonumber(cur[5])
    if not v or not lu or not ea then return {'corrupt'} end
    local done = cur[2] == 'completed'
    local live = (not done) and lu > now
    if ea > now or live then
        if cur[3] ~= ARGV[1] then return {'mismatch'} end
        if done then
            local rest = redis.call('HMGET', k, 'ca', 'rs')
            return {'completed', v, lu, ea, tonumber(rest[1]) or 0, rest[2]}
        end
        if live then return {'busy', lu - now} end
        v = v + 1
        lu = now + ARGV[2]
        redis.call('HSET', k, 'v', v, 'ow', ARGV[4], 'lu', lu)
        redis.call('PEXPIRE', k, math.max(ea, lu) - now)
        local rest = redis.call('HMGET', k, 'ca', 'rp', 'rd')
        return {'resumed', v, lu, ea, tonumber(rest[1]) or 0, rest[2], rest[3]}
    end
    version = v + 1
    redis.call('DEL', k)
end
local lu, ea = now + ARGV[2], now + ARGV[3]
redis.call('HSET', k, 'v', version, 'st', 'in_progress', 'fp', ARGV[1], 'ow', ARGV[4],
    'lu', lu, 'ea', ea, 'ca', now)
redis.call('PEXPIRE', k, math.max(ea, lu) - now)
return {'created', version, lu, ea, now}
"""
)

# ARGV: expected version, expected owner ('' for none), lease (ms, '' to end it now),
# expires_after (ms, '' to keep the expiry), then the new state, owner, recovery
# point, recovery data and outcome. Changes the record only if it is still the
# expected version of the expected owner (a record that expired and was created again
# restarts at version 1: the owner tells it apart). Replies {version, lease_until,
# expires_at, created_at}, or 0.
_REDIS_ADVANCE: Final = (
    _REDIS_NOW
    + """
local cur = redis.call('HMGET', k, 'v', 'ow', 'ea', 'ca')
if not cur[1] or cur[1] ~= ARGV[1] or (cur[2] or '') ~= ARGV[2] then return 0 end
local lu = now
if ARGV[3] ~= '' then lu = now + ARGV[3] end
local ea = tonumber(cur[3])
if ARGV[4] ~= '' and ea <= now then ea = now + ARGV[4] end
local v = cur[1] + 1
redis.call('HSET', k, 'v', v, 'st', ARGV[5], 'ow', ARGV[6], 'lu', lu, 'ea', ea,
    'rp', ARGV[7], 'rd', ARGV[8], 'rs', ARGV[9])
redis.call('PEXPIRE', k, math.max(1, math.max(ea, lu) - now))
return {v, lu, ea, tonumber(cur[4]) or 0}
"""
)


# The record and the server's time (a record past its TTL is already gone).
_REDIS_LOAD: Final = """
local t = redis.call('TIME')
return {t[1] * 1000 + math.floor(t[2] / 1000), redis.call('HGETALL', KEYS[1])}
"""


@functools.lru_cache(maxsize=64)  # a policy's few durations, on every request's path
def _ms(seconds: float) -> str:
    """A duration for the scripts: whole milliseconds, at least 1."""
    return str(max(1, round(seconds * 1000)))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _json_or_none(raw: object) -> Any:
    """A stored JSON field ('' for none) decoded."""
    return json.loads(raw) if raw else None  # type: ignore[arg-type]


class RedisRecords(RecordBackend):
    """Records in Redis hashes under ``{prefix}{namespace}{len(scope)}:{scope}:{key}``;
    a claim and every change of a record are each one Lua script
    (:meth:`RedisKeyValueStore.script`, on the store's lean connection pool), so one
    round trip, decided on the server's clock (``TIME``). Redis drops expired records
    by itself (every record has a TTL: its expiry, or its lease end if later)."""

    def __init__(
        self, store: RedisKeyValueStore | RedisClusterKeyValueStore, namespace: str
    ) -> None:
        self.store = store
        self.namespace = namespace
        self._claim = store.script(_REDIS_CLAIM, name="idempotency claim")
        self._advance = store.script(_REDIS_ADVANCE, name="idempotency update")
        self._load = store.script(_REDIS_LOAD, name="idempotency load")

    def _key(self, scope: str, key: str) -> str:
        return kv_key(self.namespace, scope, key)

    async def load(self, scope: str, key: str) -> IdempotencyRecord | None:
        return (await self._load_at(scope, key))[0]

    async def load_live(self, scope: str, key: str) -> IdempotencyRecord | None:
        record, now = await self._load_at(scope, key)
        return None if record is None or record.expired(now) else record

    async def _load_at(self, scope: str, key: str) -> tuple[IdempotencyRecord | None, float]:
        k = self._key(scope, key)
        now_ms, reply = await self._load([k])
        now = int(now_ms) / 1000
        if not reply:
            return None, now
        pairs = (  # a flat list in RESP2; redis-py may hand over a dict (RESP3)
            reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
        )
        f = {_text(name): value for name, value in pairs}
        try:
            record = _record(
                scope,
                key,
                f["v"],
                "completed" if f["st"] == b"completed" else "in_progress",
                _text(f["fp"]),
                _text(f.get("ow", b"")) or None,
                f["lu"],
                f["ca"],
                f["ea"],
                _text(f.get("rp", b"")) or None,
                _json_or_none(f.get("rd")),
                _json_or_none(f.get("rs")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"a stored idempotency record is corrupt: {k!r}: {exc}") from None
        return record, now

    async def claim(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        owner: str,
        *,
        lease: float,
        expires_after: float,
    ) -> Claim:
        k = self._key(scope, key)
        reply = await self._claim([k], [fingerprint, _ms(lease), _ms(expires_after), owner])
        status = reply[0]
        try:
            if status == b"created":
                _, version, lease_until, expires_at, created_at = reply
                return Claim(
                    "created",
                    _record(
                        scope,
                        key,
                        version,
                        "in_progress",
                        fingerprint,
                        owner,
                        lease_until,
                        created_at,
                        expires_at,
                        None,
                        None,
                        None,
                    ),
                )
            if status == b"completed":
                _, version, lease_until, expires_at, created_at, outcome = reply
                return Claim(
                    "completed",
                    _record(
                        scope,
                        key,
                        version,
                        "completed",
                        fingerprint,
                        None,
                        lease_until,
                        created_at,
                        expires_at,
                        None,
                        None,
                        _json_or_none(outcome),
                    ),
                )
            if status == b"resumed":
                _, version, lease_until, expires_at, created_at, point, data = reply
                return Claim(
                    "resumed",
                    _record(
                        scope,
                        key,
                        version,
                        "in_progress",
                        fingerprint,
                        owner,
                        lease_until,
                        created_at,
                        expires_at,
                        _text(point or b"") or None,
                        _json_or_none(data),
                        None,
                    ),
                )
        except (ValueError, TypeError) as exc:
            raise StoreError(f"a stored idempotency record is corrupt: {k!r}: {exc}") from None
        if status == b"busy":
            return Claim("busy", None, int(reply[1]) / 1000)
        if status == b"mismatch":
            return Claim("mismatch")
        raise StoreError(f"a stored idempotency record is corrupt: {k!r}")

    async def advance(
        self,
        current: IdempotencyRecord,
        changes: Mapping[str, Any],
        *,
        lease: float | None,
        expires_after: float | None = None,
    ) -> IdempotencyRecord | None:
        fields = {**current.__dict__, **changes}
        recovery_data, result = fields["recovery_data"], fields["result"]
        try:
            rd = "null" if recovery_data is None else _compact(recovery_data)
            rs = "" if result is None else _compact(result)
        except (TypeError, ValueError) as exc:
            raise ResultNotJSONError(
                f"idempotency key {current.key!r}: the stored result or recovery data is "
                f"not JSON: {exc}"
            ) from None
        reply = await self._advance(
            [self._key(current.scope, current.key)],
            [
                str(current.version),
                current.owner or "",
                "" if lease is None else _ms(lease),
                "" if expires_after is None else _ms(expires_after),
                fields["state"],
                fields["owner"] or "",
                fields["recovery_point"] or "",
                rd,
                rs,
            ],
        )
        if not reply:
            return None
        version, lease_until, expires_at, created_at = reply
        fields["version"] = version
        fields["lease_until"] = lease_until / 1000
        fields["expires_at"] = expires_at / 1000
        fields["created_at"] = created_at / 1000
        record = object.__new__(IdempotencyRecord)
        object.__setattr__(record, "__dict__", fields)
        return record

    async def reap(self) -> int:
        return 0  # Redis drops expired keys by itself


# -- relational stores ------------------------------------------------------------

_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


# The server's time in epoch seconds, per backend with a clock of its own.
_SERVER_NOW: Final = {
    "postgresql": "extract(epoch from now())",
    "mariadb": "UNIX_TIMESTAMP(NOW(6))",
}


class RelationalRecords(CasRecords):
    """Records in one table of a relational store (created if missing). On PostgreSQL
    and MariaDB every load reads the server's time with the record (one query);
    between loads the time is carried on ``time.monotonic``, which a change of the
    client's wall clock does not move."""

    def __init__(self, store: RelationalStore, table: str, clock: Clock) -> None:
        if not _IDENT.fullmatch(table):
            raise InvalidValueError(f"idempotency table name {table!r} is not an identifier")
        super().__init__(clock)
        self.store = store
        self.table = table
        self._server_now = _SERVER_NOW.get(store.backend)
        self._offset: float | None = None
        """The server's time minus ``time.monotonic()``, from the last load."""

    async def setup(self) -> None:
        mariadb = self.store.backend == "mariadb"
        text = "MEDIUMTEXT" if mariadb else "TEXT"
        # MariaDB's default collations fold case and ignore trailing spaces: keys
        # "order-1" and "Order-1" must stay two keys.
        name = "VARCHAR(255)" + (
            " CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin" if mariadb else ""
        )
        t = self.table
        # DuplicateKeyError: another process created it at the same moment (PostgreSQL).
        with contextlib.suppress(DuplicateKeyError):
            await self.store.execute_script(
                f"""
                CREATE TABLE IF NOT EXISTS {t} (
                    scope {name} NOT NULL,
                    idem_key {name} NOT NULL,
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

    async def load_at(self, scope: str, key: str) -> tuple[IdempotencyRecord | None, float]:
        if self._server_now is None:
            return await super().load_at(scope, key)
        row = await self.store.fetch_one(
            f"SELECT (SELECT record FROM {self.table} WHERE scope = :scope "
            f"AND idem_key = :key), {self._server_now}",
            {"scope": scope, "key": key},
        )
        assert row is not None  # a SELECT without FROM has its one row
        now = float(row[1])
        self._offset = now - time.monotonic()
        return (None if row[0] is None else IdempotencyRecord.loads(row[0])), now

    async def now(self) -> float:
        if self._server_now is None:
            return self.clock()
        if self._offset is None:
            now = float(await self.store.fetch_val(f"SELECT {self._server_now}"))
            self._offset = now - time.monotonic()
        # The server's time when the last load was answered, plus what the monotonic
        # clock counted since: behind the server by at most that answer's trip back,
        # so a lease written from it ends no later than meant.
        return time.monotonic() + self._offset

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

    async def replace(
        self, record: IdempotencyRecord, expected: IdempotencyRecord, now: float
    ) -> bool:
        # The stored text is what ``expected.dumps()`` gives (records are written by
        # dumps and JSON round-trips), so comparing it checks the owner as well as the
        # version; MariaDB compares text case-insensitively unless told BINARY.
        binary = "BINARY " if self.store.backend == "mariadb" else ""
        changed = await self.store.execute(
            f"UPDATE {self.table} SET version = :version, state = :state, "
            "lease_until = :lease, expires_at = :expires, record = :record "
            "WHERE scope = :scope AND idem_key = :key AND version = :expected "
            f"AND record = {binary}:expected_record",
            {
                **self._params(record),
                "expected": expected.version,
                "expected_record": expected.dumps(),
            },
        )
        return changed == 1

    async def reap(self) -> int:
        if self._server_now is None:
            return await self.store.execute(
                f"DELETE FROM {self.table} WHERE expires_at <= :now "
                "AND (state = 'completed' OR lease_until <= :now)",
                {"now": self.clock()},
            )
        now = self._server_now
        return await self.store.execute(
            f"DELETE FROM {self.table} WHERE expires_at <= {now} "
            f"AND (state = 'completed' OR lease_until <= {now})"
        )


def records_for(
    store: Store, *, namespace: str, table: str, clock: Clock = time.time
) -> RecordBackend:
    """The record backend for an opened key-value or relational store; ``clock`` is
    the time of stores without a clock of their own (embedded SQLite)."""
    if isinstance(store, RelationalStore):
        return RelationalRecords(store, table, clock)
    if isinstance(store, KeyValueStore):
        if store.backend == "redis":
            # Imported here: redis-py is an optional dependency.
            from multistore.stores.kv._redis import RedisKeyValueStore

            if isinstance(store, RedisKeyValueStore):
                return RedisRecords(store, namespace)
        if store.backend == "redis+cluster":
            # A record is one key, so each claim script runs on one slot's primary.
            from multistore.stores.kv._redis_cluster import RedisClusterKeyValueStore

            if isinstance(store, RedisClusterKeyValueStore):
                return RedisRecords(store, namespace)
        return KeyValueRecords(store, namespace, clock)
    raise UnsupportedError(
        f"idempotency keys need a key-value (sqlite, redis) or relational store, "
        f"not the {store.model} store {store.url}"
    )
