"""What the two Redis key-value backends (one server, and Redis Cluster) share: every
operation that is one command on one key, sent over the lean RESP client
(:mod:`multistore._resp`), its replies decoded and its errors mapped the same way.
A backend says where a command goes (:meth:`RespKeyValueStore._cmd`) and runs scripts
(:meth:`RespKeyValueStore._eval`); the multi-key operations (``mget``, ``delete``,
``scan``) are its own."""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from multistore._resp import Arg, RespScript
from multistore.errors import (
    InvalidValueError,
    MultistoreError,
    StoreError,
)
from multistore.stores._limits import short_repr
from multistore.stores.kv._api import KeyValueStore, RateLimit, WrongTypeError
from multistore.stores.kv._checks import (
    check_amount,
    check_index,
    check_key,
    check_limit,
    check_member,
    check_score,
    check_ttl,
    check_value,
    ttl_millis,
)
from multistore.stores.kv._redis_lua import (
    COMPARE_AND_SET_LUA,
    RATE_LIMIT_LUA,
    cas_args,
    ttl_from_pttl,
)
from multistore.urls import StoreURL

__all__ = ["RespKeyValueStore", "RespKvScript", "reply_error"]


def _float(raw: object) -> float:
    if isinstance(raw, bytes | str | int | float):
        return float(raw)
    raise StoreError(f"unexpected reply from Redis: {short_repr(raw)}")


def reply_error(text: str, op: str, key: str | None, where: str) -> MultistoreError:
    """The store error for an error reply of Redis."""
    head = text.split(" script:")[0]
    if text.startswith("WRONGTYPE") or "WRONGTYPE" in head:
        return WrongTypeError(
            f"{op} on key {short_repr(key)}, which holds another kind of value (WRONGTYPE)"
        )
    if "not an integer" in text or "overflow" in text:
        return InvalidValueError(
            f"{op}: the value at key {short_repr(key)} is not a 64-bit integer or would "
            f"overflow ({text})"
        )
    if "NaN" in text:
        return InvalidValueError(f"{op} on key {short_repr(key)}: the score would be NaN")
    return StoreError(f"Redis error: {where}: {text}")


class RespKeyValueStore(KeyValueStore):
    """The single-key operations of a Redis key-value backend (see the module docstring)."""

    url: StoreURL
    _prefix: str
    _close_callbacks: list[Callable[[], None]]

    def _setup(self, url: StoreURL) -> None:
        self.url = url
        self._prefix = url.str_option("prefix", "")
        self._closed = False
        self._close_callbacks = []
        self._limiter = self.script(RATE_LIMIT_LUA, name="rate_limit")
        self._compare_and_set = self.script(COMPARE_AND_SET_LUA, name="compare_and_set")

    def _k(self, key: object) -> str:
        return self._prefix + check_key(key)

    @abc.abstractmethod
    async def _cmd(self, key: str, op: str, name: str, k: str, *rest: Arg) -> Any:
        """Command ``name`` on the prefixed key ``k`` (of the caller's ``key``); the
        reply, or the error mapped for ``op``."""

    @abc.abstractmethod
    async def _eval(
        self, script: RespScript, name: str, keys: Sequence[str], args: Sequence[Arg]
    ) -> Any:
        """Run ``script`` with the (unprefixed) ``keys``; the raw reply."""

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the store closes (for helpers that hold resources tied
        to this store, such as the idempotency layer's own Redis connections)."""
        self._close_callbacks.append(callback)

    def _run_close_callbacks(self) -> None:
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            callback()

    def script(self, body: str, *, name: str = "script") -> RespKvScript:
        """A Lua script to run on this store's server: ``await script(keys, args)``
        sends it with ``EVALSHA`` (``EVAL`` when the server does not have it yet, as
        after a restart) in one round trip and returns the raw reply (bytes, integers,
        lists). ``keys`` get the URL's ``prefix``; errors are mapped as for every
        operation (a timeout or a connection lost after sending is indeterminate),
        with ``name`` in the message."""
        return RespKvScript(self, RespScript(body), name)

    # -- strings ---------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        value = await self._cmd(key, "get", "GET", self._k(key))
        return None if value is None else bytes(value)

    async def set(self, key: str, value: bytes | str, *, ttl: float | None = None) -> None:
        k, data = self._k(key), check_value(value)
        if ttl is None:
            await self._cmd(key, "set", "SET", k, data)
        else:
            await self._cmd(key, "set", "SET", k, data, "PX", ttl_millis(check_ttl(ttl)))

    async def set_if_absent(
        self, key: str, value: bytes | str, *, ttl: float | None = None
    ) -> bool:
        k, data = self._k(key), check_value(value)
        extra: list[Arg] = [] if ttl is None else ["PX", ttl_millis(check_ttl(ttl))]
        return await self._cmd(key, "set_if_absent", "SET", k, data, "NX", *extra) is not None

    async def compare_and_set(
        self,
        key: str,
        expected: bytes | str | None,
        value: bytes | str,
        *,
        ttl: float | None = None,
    ) -> bool:
        return bool(await self._compare_and_set([key], cas_args(expected, value, ttl)))

    async def expire(self, key: str, ttl: float) -> bool:
        ms = ttl_millis(check_ttl(ttl))
        return bool(await self._cmd(key, "expire", "PEXPIRE", self._k(key), ms))

    async def ttl(self, key: str) -> float | None:
        ms = int(await self._cmd(key, "ttl", "PTTL", self._k(key)))
        return ttl_from_pttl(ms)

    async def incr(self, key: str, amount: int = 1) -> int:
        step = check_amount(amount)
        return int(await self._cmd(key, "incr", "INCRBY", self._k(key), step))

    # -- sorted sets -----------------------------------------------------------------

    async def zadd(self, key: str, mapping: dict[str, float]) -> int:
        k = self._k(key)
        if not isinstance(mapping, dict):
            raise InvalidValueError(
                f"zadd takes a dict of member -> score, not {short_repr(mapping)}"
            )
        pairs = {check_member(m): check_score(s) for m, s in mapping.items()}
        if not pairs:
            return 0
        flat: list[Arg] = []
        for member, score in pairs.items():
            flat += [score, member]
        return int(await self._cmd(key, "zadd", "ZADD", k, *flat))

    async def zscore(self, key: str, member: str) -> float | None:
        m = check_member(member)
        score = await self._cmd(key, "zscore", "ZSCORE", self._k(key), m)
        return None if score is None else _float(score)

    async def zincrby(self, key: str, member: str, amount: float) -> float:
        m, step = check_member(member), check_score(amount, "increment")
        return _float(await self._cmd(key, "zincrby", "ZINCRBY", self._k(key), step, m))

    async def zrange(
        self, key: str, start: int, stop: int, *, desc: bool = False
    ) -> list[tuple[str, float]]:
        first, last = check_index(start, "start"), check_index(stop, "stop")
        extra: list[Arg] = ["REV"] if desc else []
        rows = await self._cmd(
            key, "zrange", "ZRANGE", self._k(key), first, last, *extra, "WITHSCORES"
        )
        return [(bytes(rows[i]).decode(), _float(rows[i + 1])) for i in range(0, len(rows), 2)]

    async def zrank(self, key: str, member: str, *, desc: bool = False) -> int | None:
        m = check_member(member)
        rank = await self._cmd(key, "zrank", "ZREVRANK" if desc else "ZRANK", self._k(key), m)
        return None if rank is None else int(rank)

    async def zrem(self, key: str, *members: str) -> int:
        k = self._k(key)
        ms = [check_member(m) for m in members]
        if not ms:
            return 0
        return int(await self._cmd(key, "zrem", "ZREM", k, *ms))

    # -- rate limiting ---------------------------------------------------------------

    async def rate_limit(self, key: str, limit: int, window: float) -> RateLimit:
        most, seconds = check_limit(limit, window)
        allowed, remaining, retry = await self._limiter(
            [key], [most, repr(seconds), uuid.uuid4().hex]
        )
        return RateLimit(
            allowed=bool(allowed), remaining=int(remaining), retry_after=max(0.0, _float(retry))
        )


class RespKvScript:
    """A Lua script bound to one Redis key-value store (from its ``script()``); call it
    with keys and arguments."""

    __slots__ = ("_script", "_store", "name")

    def __init__(self, store: RespKeyValueStore, script: RespScript, name: str) -> None:
        self._store = store
        self._script = script
        self.name = name

    @property
    def sha(self) -> str:
        """The script's SHA-1, as ``EVALSHA`` names it."""
        return self._script.sha

    async def __call__(self, keys: Sequence[str], args: Sequence[Arg] = ()) -> Any:
        return await self._store._eval(self._script, self.name, keys, args)
