"""The embedded key-value backend: one SQLite file, Redis semantics.

Two tables hold everything::

    multistore_kv       (key PRIMARY KEY, kind 'string'|'zset', value BLOB, expires_at REAL)
    multistore_kv_zset  (key, member, score)  PRIMARY KEY (key, member), INDEX (key, score, member)

``expires_at`` is wall-clock epoch seconds, so several processes that share the
file agree on it. Expiry is lazy: every read ignores expired rows, every write
removes the expired row it meets, and :meth:`SQLiteKeyValueStore.purge_expired`
sweeps the rest. Each operation that reads then writes (``incr``, ``zadd``,
``rate_limit`` …) runs in one ``BEGIN IMMEDIATE`` transaction, which takes the
write lock first and so cannot interleave with another writer, in this process
or another. The connection lives on a :class:`~multistore.stores._worker.Worker`
thread; WAL journal, ``synchronous=NORMAL`` and ``busy_timeout`` (the URL's
``timeout``, default 5 s) are set on open.

URL: ``sqlite:///path.db`` (``sqlite:///:memory:`` for a private in-memory
store). Options: ``timeout``, ``journal_mode``, ``synchronous``, ``create``
(default true; false refuses to create a missing file) and ``prefix`` (prepended
to every key, as for Redis).
"""

from __future__ import annotations

import math
import sqlite3
import time
import uuid
from collections.abc import Sequence
from typing import Final, Self

from multistore.errors import InvalidValueError
from multistore.stores._limits import short_repr
from multistore.stores._sqlite_common import SQLiteStore, connect, read, start, write
from multistore.stores._worker import Worker
from multistore.stores.kv._api import KeyValueStore, RateLimit, WrongTypeError
from multistore.stores.kv._checks import (
    INT64_MAX,
    INT64_MIN,
    check_amount,
    check_index,
    check_key,
    check_keys,
    check_limit,
    check_member,
    check_prefix,
    check_score,
    check_ttl,
    check_value,
    parse_int,
)
from multistore.urls import StoreURL

__all__ = ["SQLiteKeyValueStore"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS multistore_kv (
    key TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    value BLOB,
    expires_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS multistore_kv_expires
    ON multistore_kv (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS multistore_kv_zset (
    key TEXT NOT NULL,
    member TEXT NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (key, member)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS multistore_kv_zset_rank
    ON multistore_kv_zset (key, score, member);
"""

_LIVE: Final = "(expires_at IS NULL OR expires_at > ?)"
_CHUNK: Final = 500  # keys per IN (...) list, well under SQLite's variable limit


class SQLiteKeyValueStore(SQLiteStore, KeyValueStore):
    """Key-value store in one SQLite file. See the module docstring for the layout."""

    _noun = "key-value store"

    def __init__(
        self, url: StoreURL, worker: Worker, conn: sqlite3.Connection, prefix: str
    ) -> None:
        super().__init__(url, worker, conn)
        self._prefix = prefix

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        worker, conn = await start("sqlite-kv", connect, url, "a key-value store", _prepare)
        return cls(url, worker, conn, url.str_option("prefix", ""))

    # -- plumbing --------------------------------------------------------------

    def _k(self, key: object) -> str:
        return self._prefix + check_key(key)

    # -- strings ---------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        return await self._call(_get, self._k(key))

    async def set(self, key: str, value: bytes | str, *, ttl: float | None = None) -> None:
        k, data = self._k(key), check_value(value)
        seconds = check_ttl(ttl) if ttl is not None else None
        await self._call(write, _set, k, data, seconds)

    async def set_if_absent(
        self, key: str, value: bytes | str, *, ttl: float | None = None
    ) -> bool:
        k, data = self._k(key), check_value(value)
        seconds = check_ttl(ttl) if ttl is not None else None
        return await self._call(write, _set_if_absent, k, data, seconds)

    async def compare_and_set(
        self,
        key: str,
        expected: bytes | str | None,
        value: bytes | str,
        *,
        ttl: float | None = None,
    ) -> bool:
        k, data = self._k(key), check_value(value)
        old = None if expected is None else check_value(expected)
        seconds = check_ttl(ttl) if ttl is not None else None
        return await self._call(write, _compare_and_set, k, old, data, seconds)

    async def delete(self, *keys: str) -> int:
        ks = [self._prefix + k for k in check_keys(keys)]
        if not ks:
            return 0
        return await self._call(write, _delete, ks)

    async def expire(self, key: str, ttl: float) -> bool:
        k, seconds = self._k(key), check_ttl(ttl)
        return await self._call(write, _expire, k, seconds)

    async def ttl(self, key: str) -> float | None:
        return await self._call(_ttl, self._k(key))

    async def incr(self, key: str, amount: int = 1) -> int:
        k, step = self._k(key), check_amount(amount)
        return await self._call(write, _incr, k, step)

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        ks = [self._prefix + k for k in check_keys(keys)]
        if not ks:
            return []
        return await self._call(_mget, ks)

    async def scan(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        found = await self._call(_scan, self._prefix + prefix)
        cut = len(self._prefix)
        return [k[cut:] for k in found]

    # -- sorted sets -----------------------------------------------------------

    async def zadd(self, key: str, mapping: dict[str, float]) -> int:
        k = self._k(key)
        if not isinstance(mapping, dict):
            raise InvalidValueError(
                f"zadd takes a dict of member -> score, not {short_repr(mapping)}"
            )
        pairs = [(check_member(m), check_score(s)) for m, s in mapping.items()]
        if not pairs:
            return 0
        return await self._call(write, _zadd, k, pairs)

    async def zscore(self, key: str, member: str) -> float | None:
        return await self._call(_zscore, self._k(key), check_member(member))

    async def zincrby(self, key: str, member: str, amount: float) -> float:
        k, m = self._k(key), check_member(member)
        step = check_score(amount, "increment")
        return await self._call(write, _zincrby, k, m, step)

    async def zrange(
        self, key: str, start: int, stop: int, *, desc: bool = False
    ) -> list[tuple[str, float]]:
        k = self._k(key)
        first, last = check_index(start, "start"), check_index(stop, "stop")
        return await self._call(read, _zrange, k, first, last, bool(desc))

    async def zrank(self, key: str, member: str, *, desc: bool = False) -> int | None:
        k, m = self._k(key), check_member(member)
        return await self._call(read, _zrank, k, m, bool(desc))

    async def zrem(self, key: str, *members: str) -> int:
        k = self._k(key)
        ms = [check_member(m) for m in members]
        if not ms:
            return 0
        return await self._call(write, _zrem, k, ms)

    # -- rate limiting ---------------------------------------------------------

    async def rate_limit(self, key: str, limit: int, window: float) -> RateLimit:
        k = self._k(key)
        most, seconds = check_limit(limit, window)
        allowed, remaining, retry = await self._call(
            write, _rate_limit, k, most, seconds, uuid.uuid4().hex
        )
        return RateLimit(allowed=allowed, remaining=remaining, retry_after=retry)

    async def purge_expired(self, prefix: str = "") -> int:
        if not isinstance(prefix, str):
            raise InvalidValueError(f"a purge prefix must be a string, not {prefix!r}")
        return await self._call(write, _purge, self._prefix + prefix)


# -- worker-thread functions: each gets the connection first ----------------------


def _prepare(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)


def _live_kind(conn: sqlite3.Connection, now: float, key: str) -> str | None:
    """The kind of ``key`` in a write transaction, removing it first if expired."""
    row = conn.execute(
        "SELECT kind, expires_at FROM multistore_kv WHERE key = ?", (key,)
    ).fetchone()
    if row is None:
        return None
    kind, expires_at = row
    if expires_at is not None and expires_at <= now:
        _drop(conn, key)
        return None
    return str(kind)


def _read_kind(conn: sqlite3.Connection, now: float, key: str) -> str | None:
    row = conn.execute(
        f"SELECT kind FROM multistore_kv WHERE key = ? AND {_LIVE}", (key, now)
    ).fetchone()
    return None if row is None else str(row[0])


def _drop(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("DELETE FROM multistore_kv WHERE key = ?", (key,))
    conn.execute("DELETE FROM multistore_kv_zset WHERE key = ?", (key,))


def _wrong_type(key: str, kind: str, operation: str) -> WrongTypeError:
    held = "a sorted set" if kind == "zset" else "a string"
    return WrongTypeError(f"{operation} on key {short_repr(key)}, which holds {held}")


def _expiry(now: float, ttl: float | None) -> float | None:
    return None if ttl is None else now + ttl


def _get(conn: sqlite3.Connection, key: str) -> bytes | None:
    row = conn.execute(
        f"SELECT kind, value FROM multistore_kv WHERE key = ? AND {_LIVE}", (key, time.time())
    ).fetchone()
    if row is None:
        return None
    if row[0] != "string":
        raise _wrong_type(key, row[0], "get")
    return bytes(row[1])


def _set(conn: sqlite3.Connection, now: float, key: str, value: bytes, ttl: float | None) -> None:
    conn.execute("DELETE FROM multistore_kv_zset WHERE key = ?", (key,))
    conn.execute(
        "INSERT INTO multistore_kv (key, kind, value, expires_at) VALUES (?, 'string', ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET kind = 'string', value = excluded.value, "
        "expires_at = excluded.expires_at",
        (key, value, _expiry(now, ttl)),
    )


def _set_if_absent(
    conn: sqlite3.Connection, now: float, key: str, value: bytes, ttl: float | None
) -> bool:
    if _live_kind(conn, now, key) is not None:
        return False
    conn.execute(
        "INSERT INTO multistore_kv (key, kind, value, expires_at) VALUES (?, 'string', ?, ?)",
        (key, value, _expiry(now, ttl)),
    )
    return True


def _compare_and_set(
    conn: sqlite3.Connection,
    now: float,
    key: str,
    expected: bytes | None,
    value: bytes,
    ttl: float | None,
) -> bool:
    kind = _live_kind(conn, now, key)
    if kind is None:
        current = None
    elif kind != "string":
        raise _wrong_type(key, kind, "compare_and_set")
    else:
        (raw,) = conn.execute("SELECT value FROM multistore_kv WHERE key = ?", (key,)).fetchone()
        current = bytes(raw)
    if current != expected:
        return False
    _set(conn, now, key, value, ttl)
    return True


def _delete(conn: sqlite3.Connection, now: float, keys: list[str]) -> int:
    count = 0
    for key in dict.fromkeys(keys):
        if _live_kind(conn, now, key) is not None:
            count += 1
            _drop(conn, key)
    return count


def _expire(conn: sqlite3.Connection, now: float, key: str, ttl: float) -> bool:
    if _live_kind(conn, now, key) is None:
        return False
    conn.execute("UPDATE multistore_kv SET expires_at = ? WHERE key = ?", (now + ttl, key))
    return True


def _ttl(conn: sqlite3.Connection, key: str) -> float | None:
    now = time.time()
    row = conn.execute(
        f"SELECT expires_at FROM multistore_kv WHERE key = ? AND {_LIVE}", (key, now)
    ).fetchone()
    if row is None:
        return None
    if row[0] is None:
        return math.inf
    return max(0.0, float(row[0]) - now)


def _incr(conn: sqlite3.Connection, now: float, key: str, amount: int) -> int:
    kind = _live_kind(conn, now, key)
    if kind is None:
        conn.execute(
            "INSERT INTO multistore_kv (key, kind, value) VALUES (?, 'string', ?)",
            (key, str(amount).encode()),
        )
        return amount
    if kind != "string":
        raise _wrong_type(key, kind, "incr")
    (raw,) = conn.execute("SELECT value FROM multistore_kv WHERE key = ?", (key,)).fetchone()
    current = parse_int(bytes(raw))
    if current is None:
        raise InvalidValueError(f"incr: the value at key {short_repr(key)} is not a 64-bit integer")
    result = current + amount
    if not INT64_MIN <= result <= INT64_MAX:
        raise InvalidValueError(f"incr: key {short_repr(key)} would overflow a 64-bit integer")
    conn.execute("UPDATE multistore_kv SET value = ? WHERE key = ?", (str(result).encode(), key))
    return result


def _mget(conn: sqlite3.Connection, keys: list[str]) -> list[bytes | None]:
    now = time.time()
    found: dict[str, bytes] = {}
    unique = list(dict.fromkeys(keys))
    for i in range(0, len(unique), _CHUNK):
        chunk = unique[i : i + _CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT key, value FROM multistore_kv WHERE key IN ({marks}) "
            f"AND kind = 'string' AND {_LIVE}",
            (*chunk, now),
        )
        found.update((k, bytes(v)) for k, v in rows)
    return [found.get(k) for k in keys]


def _scan(conn: sqlite3.Connection, prefix: str) -> list[str]:
    # Keys that start with ``prefix`` form one contiguous run in code-point order,
    # which is SQLite's BINARY (UTF-8 memcmp) order: walk the index from ``prefix``
    # and stop at the first key outside it. No LIKE/GLOB, so no escaping.
    keys: list[str] = []
    rows = conn.execute(
        f"SELECT key FROM multistore_kv WHERE key >= ? AND {_LIVE} ORDER BY key",
        (prefix, time.time()),
    )
    for (key,) in rows:
        if not key.startswith(prefix):
            break
        keys.append(key)
    return keys


def _zset_kind(conn: sqlite3.Connection, now: float, key: str, op: str, write: bool) -> bool:
    """True when ``key`` is a live sorted set, False when missing; WrongTypeError else."""
    kind = _live_kind(conn, now, key) if write else _read_kind(conn, now, key)
    if kind is None:
        return False
    if kind != "zset":
        raise _wrong_type(key, kind, op)
    return True


def _ensure_zset(conn: sqlite3.Connection, now: float, key: str, op: str) -> None:
    if not _zset_kind(conn, now, key, op, write=True):
        conn.execute(
            "INSERT INTO multistore_kv (key, kind) VALUES (?, 'zset')",
            (key,),
        )


def _zadd(conn: sqlite3.Connection, now: float, key: str, pairs: list[tuple[str, float]]) -> int:
    _ensure_zset(conn, now, key, "zadd")
    added = 0
    for member, score in pairs:
        exists = conn.execute(
            "SELECT 1 FROM multistore_kv_zset WHERE key = ? AND member = ?", (key, member)
        ).fetchone()
        if exists is None:
            added += 1
        conn.execute(
            "INSERT INTO multistore_kv_zset (key, member, score) VALUES (?, ?, ?) "
            "ON CONFLICT (key, member) DO UPDATE SET score = excluded.score",
            (key, member, score),
        )
    return added


def _zscore(conn: sqlite3.Connection, key: str, member: str) -> float | None:
    if not _zset_kind(conn, time.time(), key, "zscore", write=False):
        return None
    row = conn.execute(
        "SELECT score FROM multistore_kv_zset WHERE key = ? AND member = ?", (key, member)
    ).fetchone()
    return None if row is None else float(row[0])


def _zincrby(conn: sqlite3.Connection, now: float, key: str, member: str, amount: float) -> float:
    _ensure_zset(conn, now, key, "zincrby")
    row = conn.execute(
        "SELECT score FROM multistore_kv_zset WHERE key = ? AND member = ?", (key, member)
    ).fetchone()
    score = (0.0 if row is None else float(row[0])) + amount
    if math.isnan(score):
        raise InvalidValueError(
            f"zincrby: the score of {short_repr(member)} in {short_repr(key)} would be NaN"
        )
    conn.execute(
        "INSERT INTO multistore_kv_zset (key, member, score) VALUES (?, ?, ?) "
        "ON CONFLICT (key, member) DO UPDATE SET score = excluded.score",
        (key, member, score),
    )
    return score


def _zrange(
    conn: sqlite3.Connection, now: float, key: str, start: int, stop: int, desc: bool
) -> list[tuple[str, float]]:
    if not _zset_kind(conn, now, key, "zrange", write=False):
        return []
    (size,) = conn.execute(
        "SELECT count(*) FROM multistore_kv_zset WHERE key = ?", (key,)
    ).fetchone()
    if start < 0:
        start = max(0, start + size)
    if stop < 0:
        stop += size
    stop = min(stop, size - 1)
    if start > stop:
        return []
    way = "DESC" if desc else "ASC"
    rows = conn.execute(
        "SELECT member, score FROM multistore_kv_zset WHERE key = ? "
        f"ORDER BY score {way}, member {way} LIMIT ? OFFSET ?",
        (key, stop - start + 1, start),
    )
    return [(str(m), float(s)) for m, s in rows]


def _zrank(conn: sqlite3.Connection, now: float, key: str, member: str, desc: bool) -> int | None:
    if not _zset_kind(conn, now, key, "zrank", write=False):
        return None
    row = conn.execute(
        "SELECT score FROM multistore_kv_zset WHERE key = ? AND member = ?", (key, member)
    ).fetchone()
    if row is None:
        return None
    cmp = ">" if desc else "<"
    (rank,) = conn.execute(
        "SELECT count(*) FROM multistore_kv_zset WHERE key = ? "
        f"AND (score {cmp} ? OR (score = ? AND member {cmp} ?))",
        (key, row[0], row[0], member),
    ).fetchone()
    return int(rank)


def _zrem(conn: sqlite3.Connection, now: float, key: str, members: list[str]) -> int:
    if not _zset_kind(conn, now, key, "zrem", write=True):
        return 0
    removed = 0
    for member in dict.fromkeys(members):
        cur = conn.execute(
            "DELETE FROM multistore_kv_zset WHERE key = ? AND member = ?", (key, member)
        )
        removed += cur.rowcount
    left = conn.execute("SELECT 1 FROM multistore_kv_zset WHERE key = ? LIMIT 1", (key,))
    if left.fetchone() is None:
        conn.execute("DELETE FROM multistore_kv WHERE key = ?", (key,))
    return removed


def _rate_limit(
    conn: sqlite3.Connection, now: float, key: str, limit: int, window: float, token: str
) -> tuple[bool, int, float]:
    _ensure_zset(conn, now, key, "rate_limit")
    conn.execute("DELETE FROM multistore_kv_zset WHERE key = ? AND score <= ?", (key, now - window))
    (count,) = conn.execute(
        "SELECT count(*) FROM multistore_kv_zset WHERE key = ?", (key,)
    ).fetchone()
    if count < limit:
        conn.execute(
            "INSERT INTO multistore_kv_zset (key, member, score) VALUES (?, ?, ?)",
            (key, token, now),
        )
        conn.execute("UPDATE multistore_kv SET expires_at = ? WHERE key = ?", (now + window, key))
        return True, limit - count - 1, 0.0
    (oldest,) = conn.execute(
        "SELECT min(score) FROM multistore_kv_zset WHERE key = ?", (key,)
    ).fetchone()
    return False, 0, max(0.0, float(oldest) + window - now)


def _purge(conn: sqlite3.Connection, now: float, prefix: str) -> int:
    # substr counts characters, so this is "starts with", taken literally (no LIKE).
    match = "expires_at <= ? AND key >= ? AND substr(key, 1, ?) = ?"
    args = (now, prefix, len(prefix), prefix)
    expired = f"SELECT key FROM multistore_kv WHERE {match}"
    conn.execute(f"DELETE FROM multistore_kv_zset WHERE key IN ({expired})", args)
    return conn.execute(f"DELETE FROM multistore_kv WHERE {match}", args).rowcount
