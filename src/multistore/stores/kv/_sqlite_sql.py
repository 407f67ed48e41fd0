"""The embedded key-value backend's SQL, shared by its async and sync drivers.

Two tables hold everything::

    multistore_kv       (key PRIMARY KEY, kind 'string'|'zset', value BLOB, expires_at REAL)
    multistore_kv_zset  (key, member, score)  PRIMARY KEY (key, member), INDEX (key, score, member)

``expires_at`` is wall-clock epoch seconds, so several processes that share the
file agree on it. Expiry is lazy: every read ignores expired rows, every write
removes the expired row it meets, and ``purge_expired`` sweeps the rest. Each
operation that reads then writes (``incr``, ``zadd``, ``rate_limit`` …) runs in one
``BEGIN IMMEDIATE`` transaction, which takes the write lock first and so cannot
interleave with another writer, in this process or another.

:class:`KeyValueSteps` is the I/O-free part of each operation: it checks the
arguments and returns the *step*, a function of the connection that does the
operation's work there. The async driver runs a step on the store's worker thread,
the sync driver on the caller's thread (:mod:`multistore.stores.kv._sqlite`).
"""

from __future__ import annotations

import math
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from multistore.errors import InvalidValueError
from multistore.stores._limits import short_repr
from multistore.stores._sqlite_common import read, write
from multistore.stores.kv._api import RateLimit, WrongTypeError
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

__all__ = ["KeyValueSteps", "Step", "prepare"]

T = TypeVar("T")
Step = Callable[[sqlite3.Connection], T]
"""One operation's work on the connection."""


def _const(value: T) -> Step[T]:
    return lambda conn: value


def _seconds(ttl: float | None) -> float | None:
    return check_ttl(ttl) if ttl is not None else None


class KeyValueSteps:
    """The checks and the step of each key-value operation, for a key ``prefix``."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _k(self, key: object) -> str:
        return self.prefix + check_key(key)

    def get(self, key: str) -> Step[bytes | None]:
        k = self.prefix + check_key(key)
        return lambda conn: _get(conn, k)

    def set(self, key: str, value: bytes | str, ttl: float | None) -> Step[None]:
        k, data, seconds = self._k(key), check_value(value), _seconds(ttl)
        return lambda conn: write(conn, _set, k, data, seconds)

    def set_if_absent(self, key: str, value: bytes | str, ttl: float | None) -> Step[bool]:
        k, data, seconds = self._k(key), check_value(value), _seconds(ttl)
        return lambda conn: write(conn, _set_if_absent, k, data, seconds)

    def compare_and_set(
        self, key: str, expected: bytes | str | None, value: bytes | str, ttl: float | None
    ) -> Step[bool]:
        k, data = self._k(key), check_value(value)
        old = None if expected is None else check_value(expected)
        seconds = _seconds(ttl)
        return lambda conn: write(conn, _compare_and_set, k, old, data, seconds)

    def delete(self, keys: Sequence[str]) -> Step[int]:
        ks = [self.prefix + k for k in check_keys(keys)]
        if not ks:
            return _const(0)
        return lambda conn: write(conn, _delete, ks)

    def expire(self, key: str, ttl: float) -> Step[bool]:
        k, seconds = self._k(key), check_ttl(ttl)
        return lambda conn: write(conn, _expire, k, seconds)

    def ttl(self, key: str) -> Step[float | None]:
        k = self._k(key)
        return lambda conn: _ttl(conn, k)

    def incr(self, key: str, amount: int) -> Step[int]:
        k, step = self._k(key), check_amount(amount)
        return lambda conn: write(conn, _incr, k, step)

    def mget(self, keys: Sequence[str]) -> Step[list[bytes | None]]:
        ks = [self.prefix + k for k in check_keys(keys)]
        if not ks:
            return _const([])
        return lambda conn: _mget(conn, ks)

    def scan(self, prefix: str) -> Step[list[str]]:
        check_prefix(prefix)
        full, cut = self.prefix + prefix, len(self.prefix)
        return lambda conn: [k[cut:] for k in _scan(conn, full)]

    def zadd(self, key: str, mapping: dict[str, float]) -> Step[int]:
        k = self._k(key)
        if not isinstance(mapping, dict):
            raise InvalidValueError(
                f"zadd takes a dict of member -> score, not {short_repr(mapping)}"
            )
        pairs = [(check_member(m), check_score(s)) for m, s in mapping.items()]
        if not pairs:
            return _const(0)
        return lambda conn: write(conn, _zadd, k, pairs)

    def zscore(self, key: str, member: str) -> Step[float | None]:
        k, m = self._k(key), check_member(member)
        return lambda conn: _zscore(conn, k, m)

    def zincrby(self, key: str, member: str, amount: float) -> Step[float]:
        k, m = self._k(key), check_member(member)
        step = check_score(amount, "increment")
        return lambda conn: write(conn, _zincrby, k, m, step)

    def zrange(self, key: str, start: int, stop: int, desc: bool) -> Step[list[tuple[str, float]]]:
        k = self._k(key)
        first, last = check_index(start, "start"), check_index(stop, "stop")
        way = bool(desc)
        return lambda conn: read(conn, _zrange, k, first, last, way)

    def zrank(self, key: str, member: str, desc: bool) -> Step[int | None]:
        k, m, way = self._k(key), check_member(member), bool(desc)
        return lambda conn: read(conn, _zrank, k, m, way)

    def zrem(self, key: str, members: Sequence[str]) -> Step[int]:
        k = self._k(key)
        ms = [check_member(m) for m in members]
        if not ms:
            return _const(0)
        return lambda conn: write(conn, _zrem, k, ms)

    def rate_limit(self, key: str, limit: int, window: float) -> Step[RateLimit]:
        k = self._k(key)
        most, seconds = check_limit(limit, window)
        token = uuid.uuid4().hex

        def step(conn: sqlite3.Connection) -> RateLimit:
            allowed, remaining, retry = write(conn, _rate_limit, k, most, seconds, token)
            return RateLimit(allowed=allowed, remaining=remaining, retry_after=retry)

        return step

    def purge_expired(self, prefix: str) -> Step[int]:
        if not isinstance(prefix, str):
            raise InvalidValueError(f"a purge prefix must be a string, not {prefix!r}")
        full = self.prefix + prefix
        return lambda conn: write(conn, _purge, full)


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


# -- the steps' work: each function gets the connection first -----------------------


def prepare(conn: sqlite3.Connection) -> None:
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
    # The expiry is checked here rather than in SQL: a key without a TTL (the common
    # case) then costs no clock read and no second parameter.
    row = conn.execute(
        "SELECT value, kind, expires_at FROM multistore_kv WHERE key = ?", (key,)
    ).fetchone()
    if row is None or (row[2] is not None and row[2] <= time.time()):
        return None
    if row[1] != "string":
        raise _wrong_type(key, row[1], "get")
    return bytes(row[0])


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
