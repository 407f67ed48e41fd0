"""The Redis key-value backend's commands, shared by its async and sync drivers; no
I/O and no driver imported here.

:class:`KeyValueCommands` checks each operation's arguments and returns the Redis
command to send with the function that turns the reply into the interface's
answer (:class:`Command`); scripts come as a :class:`ScriptCall`. The drivers in
:mod:`multistore.stores.kv._redis` send them with ``redis.asyncio`` or ``redis``
and map driver errors with :func:`redis_errors`. Replies are decoded whether or not
redis-py's own response callbacks have already converted them (``ZSCORE`` as a
float or as bytes, ``SET NX`` as ``True`` or ``b"OK"``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from redis import exceptions as rex

from multistore.errors import (
    InvalidValueError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from multistore.stores._limits import short_repr
from multistore.stores.kv._api import RateLimit, WrongTypeError
from multistore.stores.kv._checks import (
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
    ttl_millis,
)
from multistore.stores.kv._redis_lua import (
    COMPARE_AND_SET_LUA,
    RATE_LIMIT_LUA,
    cas_args,
    glob_escape,
    ttl_from_pttl,
)

__all__ = ["Command", "KeyValueCommands", "ScriptCall", "as_bytes", "redis_errors"]

T = TypeVar("T")


class Command(NamedTuple, Generic[T]):
    """One Redis command: ``op`` and ``key`` name it in errors, ``args`` is what to
    send, ``parse`` turns the reply into the answer."""

    op: str
    key: str | None
    args: tuple[Any, ...]
    parse: Callable[[Any], T]


class ScriptCall(NamedTuple, Generic[T]):
    """One Lua script run: the body, its (prefixed) keys and arguments, and the parse
    of its reply."""

    op: str
    key: str
    body: str
    keys: list[str]
    args: list[Any]
    parse: Callable[[Any], T]


def as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise StoreError(f"unexpected reply from Redis: {short_repr(value)}")


def _optional_bytes(value: object) -> bytes | None:
    return None if value is None else as_bytes(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _truth(value: Any) -> bool:
    return bool(value) and value != 0


def _ignore(value: Any) -> None:
    return None


def _pairs(reply: Any) -> list[tuple[str, float]]:
    """``ZRANGE … WITHSCORES``: a flat list (member, score, …) or redis-py's pairs."""
    items = list(reply)
    if items and isinstance(items[0], list | tuple):
        return [(as_bytes(m).decode(), float(s)) for m, s in items]
    return [(as_bytes(items[i]).decode(), float(items[i + 1])) for i in range(0, len(items), 2)]


def _rate_limit(reply: Any) -> RateLimit:
    allowed, remaining, retry = reply
    return RateLimit(
        allowed=bool(allowed), remaining=int(remaining), retry_after=max(0.0, float(retry))
    )


class KeyValueCommands:
    """The checks and the Redis command of each key-value operation, for a key
    ``prefix``."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def key(self, key: object) -> str:
        return self.prefix + check_key(key)

    def get(self, key: str) -> Command[bytes | None]:
        return Command("get", key, ("GET", self.key(key)), _optional_bytes)

    def set(self, key: str, value: bytes | str, ttl: float | None) -> Command[None]:
        k, data = self.key(key), check_value(value)
        px = ("PX", ttl_millis(check_ttl(ttl))) if ttl is not None else ()
        return Command("set", key, ("SET", k, data, *px), _ignore)

    def set_if_absent(self, key: str, value: bytes | str, ttl: float | None) -> Command[bool]:
        k, data = self.key(key), check_value(value)
        px = ("PX", ttl_millis(check_ttl(ttl))) if ttl is not None else ()
        return Command("set_if_absent", key, ("SET", k, data, *px, "NX"), _truth)

    def compare_and_set(
        self, key: str, expected: bytes | str | None, value: bytes | str, ttl: float | None
    ) -> ScriptCall[bool]:
        args = cas_args(expected, value, ttl)
        return ScriptCall(
            "compare_and_set", key, COMPARE_AND_SET_LUA, [self.key(key)], list(args), _truth
        )

    def delete(self, keys: Sequence[str]) -> Command[int] | None:
        """None: nothing to send (no keys); the answer is 0."""
        ks = [self.prefix + k for k in dict.fromkeys(check_keys(keys))]
        return Command("delete", None, ("DEL", *ks), int) if ks else None

    def expire(self, key: str, ttl: float) -> Command[bool]:
        k, ms = self.key(key), ttl_millis(check_ttl(ttl))
        return Command("expire", key, ("PEXPIRE", k, ms), _truth)

    def ttl(self, key: str) -> Command[float | None]:
        return Command("ttl", key, ("PTTL", self.key(key)), lambda ms: ttl_from_pttl(int(ms)))

    def incr(self, key: str, amount: int) -> Command[int]:
        k, step = self.key(key), check_amount(amount)
        return Command("incr", key, ("INCRBY", k, step), int)

    def mget(self, keys: Sequence[str]) -> Command[list[bytes | None]] | None:
        """None: nothing to send (no keys); the answer is []."""
        ks = [self.prefix + k for k in check_keys(keys)]
        if not ks:
            return None
        return Command("mget", None, ("MGET", *ks), lambda vs: [_optional_bytes(v) for v in vs])

    def scan(self, prefix: str) -> tuple[str, Callable[[Collection[bytes]], list[str]]]:
        """The ``SCAN MATCH`` pattern, and what turns the keys found into the answer."""
        check_prefix(prefix)
        pattern = glob_escape(self.prefix + prefix) + "*"
        cut = len(self.prefix.encode())

        def answer(found: Collection[bytes]) -> list[str]:
            return sorted({raw[cut:].decode("utf-8", errors="surrogateescape") for raw in found})

        return pattern, answer

    def zadd(self, key: str, mapping: dict[str, float]) -> Command[int] | None:
        """None: nothing to send (an empty mapping); the answer is 0."""
        k = self.key(key)
        if not isinstance(mapping, dict):
            raise InvalidValueError(
                f"zadd takes a dict of member -> score, not {short_repr(mapping)}"
            )
        pairs = {check_member(m): check_score(s) for m, s in mapping.items()}
        if not pairs:
            return None
        flat = [x for m, s in pairs.items() for x in (s, m)]
        return Command("zadd", key, ("ZADD", k, *flat), int)

    def zscore(self, key: str, member: str) -> Command[float | None]:
        k, m = self.key(key), check_member(member)
        return Command("zscore", key, ("ZSCORE", k, m), _optional_float)

    def zincrby(self, key: str, member: str, amount: float) -> Command[float]:
        k, m = self.key(key), check_member(member)
        step = check_score(amount, "increment")

        def parse(score: Any) -> float:
            if score is None:
                raise StoreError(f"zincrby returned no score for key {short_repr(key)}")
            return float(score)

        return Command("zincrby", key, ("ZINCRBY", k, step, m), parse)

    def zrange(
        self, key: str, start: int, stop: int, desc: bool
    ) -> Command[list[tuple[str, float]]]:
        k = self.key(key)
        first, last = check_index(start, "start"), check_index(stop, "stop")
        name = "ZREVRANGE" if desc else "ZRANGE"
        return Command("zrange", key, (name, k, first, last, "WITHSCORES"), _pairs)

    def zrank(self, key: str, member: str, desc: bool) -> Command[int | None]:
        k, m = self.key(key), check_member(member)
        return Command("zrank", key, ("ZREVRANK" if desc else "ZRANK", k, m), _optional_int)

    def zrem(self, key: str, members: Sequence[str]) -> Command[int] | None:
        """None: nothing to send (no members); the answer is 0."""
        k = self.key(key)
        ms = [check_member(m) for m in members]
        return Command("zrem", key, ("ZREM", k, *ms), int) if ms else None

    def rate_limit(self, key: str, limit: int, window: float) -> ScriptCall[RateLimit]:
        k = self.key(key)
        most, seconds = check_limit(limit, window)
        args = [most, repr(seconds), uuid.uuid4().hex]
        return ScriptCall("rate_limit", key, RATE_LIMIT_LUA, [k], args, _rate_limit)


@contextlib.contextmanager
def redis_errors(url: object, op: str, key: str | None = None) -> Iterator[None]:
    """Map redis-py's errors (async or sync client) in the block to the error tree."""
    where = f"{op} on {url}" + (f" (key {short_repr(key)})" if key is not None else "")
    try:
        yield
    except rex.TimeoutError as exc:
        raise StoreTimeoutError(f"Redis did not answer in time: {where}") from exc
    except rex.ConnectionError as exc:
        raise StoreUnavailableError(f"Redis unreachable: {where}: {exc}") from exc
    except rex.ResponseError as exc:
        text = str(exc)
        if text.startswith("WRONGTYPE") or "WRONGTYPE" in text.split(" script:")[0]:
            raise WrongTypeError(
                f"{op} on key {short_repr(key)}, which holds another kind of value (WRONGTYPE)"
            ) from None
        if "not an integer" in text or "overflow" in text:
            raise InvalidValueError(
                f"{op}: the value at key {short_repr(key)} is not a 64-bit integer or would "
                f"overflow ({text})"
            ) from None
        if "NaN" in text:
            raise InvalidValueError(
                f"{op} on key {short_repr(key)}: the score would be NaN"
            ) from None
        raise StoreError(f"Redis error: {where}: {text}") from exc
    except rex.RedisError as exc:
        raise StoreError(f"Redis error: {where}: {exc}") from exc
