"""The Redis key-value backend (``redis.asyncio`` with a blocking connection pool).

Every interface operation is one Redis command, except :meth:`rate_limit`, which
is one Lua script (so atomic on the server). Keys get the URL's ``prefix``
option in front (``redis://host:6379/0?prefix=shop:``), so several stores can
share one Redis database; :meth:`scan` matches the prefix literally (``*``, ``?``,
``[`` and ``\\`` are escaped for ``SCAN MATCH``) and strips it again.

Errors: a refused or dropped connection is :class:`StoreUnavailableError`, no
answer within the URL's ``timeout`` (default 5 s) is :class:`StoreTimeoutError`,
``WRONGTYPE`` is :class:`~multistore.stores.kv.WrongTypeError`, and a value
``INCRBY`` cannot add to is :class:`InvalidValueError`. redis-py's own retries
are switched off: a command is sent once, so a non-idempotent ``incr`` is never
applied twice behind the caller's back. A connection the server closed (after a
restart) is noticed and replaced when the pool hands it out, so the store works
again as soon as the server is back.

URL options: ``timeout``, ``connect_timeout`` (default: ``timeout``), ``pool_max``
(default 10), ``ssl``, ``prefix``.

Lua scripts of a caller's own (:meth:`RedisKeyValueStore.script`; the idempotency
records use them) run on a lean RESP2 connection pool (:mod:`multistore._resp`, a
second small pool to the same server and database, closed with the store): a
redis-py asyncio round trip costs 165-183 us on the development machine, the lean
one about 35 us. With ``ssl`` (which the lean pool lacks) they run on a connection
of the redis-py pool, sent and read directly.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, Self, cast

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis._parsers.base import BaseParser
from redis.asyncio.connection import BlockingConnectionPool, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from multistore._resp import (
    Arg,
    RespConnectionError,
    RespError,
    RespPool,
    RespScript,
    RespTimeoutError,
)
from multistore.errors import (
    InvalidValueError,
    MultistoreError,
    Outcome,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    UsageError,
)
from multistore.stores._limits import short_repr
from multistore.stores.kv._api import KeyValueStore, RateLimit, WrongTypeError
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
from multistore.urls import StoreURL

__all__ = ["RedisKeyValueStore", "RedisScript"]


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise StoreError(f"unexpected reply from Redis: {short_repr(value)}")


class RedisKeyValueStore(KeyValueStore):
    """Key-value store on a Redis server. See the module docstring."""

    def __init__(self, url: StoreURL, client: aioredis.Redis, prefix: str) -> None:
        self.url = url
        self._client = client
        self._prefix = prefix
        self._closed = False
        self._close_callbacks: list[Callable[[], None]] = []
        self._limiter = client.register_script(RATE_LIMIT_LUA)
        self._lean = None if url.option("ssl", False) else _lean_pool(url)
        self._compare_and_set = self.script(COMPARE_AND_SET_LUA, name="compare_and_set")

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        timeout = url.float_option("timeout", 5.0)
        pool = BlockingConnectionPool(
            max_connections=url.int_option("pool_max", 10),
            timeout=timeout,
            connection_class=SSLConnection if url.option("ssl", False) else Connection,
            host=url.host or "127.0.0.1",
            port=url.port or 6379,
            db=int(url.database or 0),
            username=url.username,
            password=url.password,
            socket_timeout=timeout,
            socket_connect_timeout=url.float_option("connect_timeout", timeout),
            retry=Retry(NoBackoff(), 0),
        )
        client = aioredis.Redis.from_pool(pool)
        store = cls(url, client, url.str_option("prefix", ""))
        try:
            with store._errors("connect"):
                await client.ping()
        except MultistoreError as exc:
            await client.aclose()
            exc.outcome = Outcome.DEFINITE
            raise
        return store

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            callbacks, self._close_callbacks = self._close_callbacks, []
            try:
                for callback in callbacks:
                    callback()
            finally:
                if self._lean is not None:
                    self._lean.close()
                await self._client.aclose()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the store closes (for helpers that hold resources tied
        to this store, such as the idempotency layer's own Redis connections)."""
        self._close_callbacks.append(callback)

    @property
    def native(self) -> aioredis.Redis:
        """The ``redis.asyncio.Redis`` client (keys are not prefixed for you)."""
        return self._client

    def script(self, body: str, *, name: str = "script") -> RedisScript:
        """A Lua script to run on this store's server: ``await script(keys, args)``
        sends it with ``EVALSHA`` (``EVAL`` when the server does not have it yet, as
        after a restart) in one round trip and returns the raw reply (bytes, integers,
        lists). ``keys`` get the URL's ``prefix``; errors are mapped as for every
        operation (a timeout or a connection lost after sending is indeterminate),
        with ``name`` in the message."""
        return RedisScript(self, RespScript(body), name)

    async def _eval(
        self, script: RespScript, name: str, keys: Sequence[str], args: Sequence[Arg]
    ) -> Any:
        ks = [self._k(k) for k in keys]
        key = keys[0] if keys else None
        if self._closed:
            raise UsageError(f"the key-value store {self.url} is closed")
        command, fallback = script.pack(ks, args)
        lean = self._lean
        if lean is None:
            return await self._eval_on_pool(command, fallback, name, key)
        try:
            return await lean.call(command, fallback)
        except (RespError, RespConnectionError) as exc:
            self._raise_lean_error(exc, name, key)

    def _raise_lean_error(self, exc: Exception, name: str, key: str | None) -> NoReturn:
        """Raise what a failure of a script on the lean pool means (called in the
        ``except`` block that caught ``exc``)."""
        if isinstance(exc, RespError):  # an error reply: mapped as redis-py's would be
            parser: Any = BaseParser  # untyped
            reply = parser.parse_error(exc.message)
            with self._errors(name, key):
                raise reply from None
            raise AssertionError("_errors maps every redis-py error")  # pragma: no cover
        assert isinstance(exc, RespConnectionError)
        # Sent: the script may have run (indeterminate); not sent: it did not.
        outcome = Outcome.INDETERMINATE if exc.sent else Outcome.DEFINITE
        where = f"{name} on {self.url}" + (f" (key {key!r})" if key is not None else "")
        if isinstance(exc, RespTimeoutError):
            raise StoreTimeoutError(
                f"Redis did not answer in time: {where}", outcome=outcome
            ) from exc
        raise StoreUnavailableError(f"Redis unreachable: {where}: {exc}", outcome=outcome) from exc

    async def _eval_on_pool(
        self, command: bytes, fallback: Callable[[], bytes], name: str, key: str | None
    ) -> Any:
        """The script on a connection of the redis-py pool (TLS URLs), sent and read
        directly, skipping ``execute_command``'s hooks and retry wrapper."""
        pool: Any = self._client.connection_pool  # redis-py: partly untyped
        with self._errors(name, key):
            conn = await pool.get_connection()
            try:
                # As redis-py does: on any failure but an error reply the connection
                # disconnects itself, so the pool never hands out a half-read one.
                await conn.send_packed_command(command, False)
                try:
                    return await conn.read_response()
                except rex.NoScriptError:  # a restarted or flushed server: send the body
                    await conn.send_packed_command(fallback(), False)
                    return await conn.read_response()
            finally:
                await pool.release(conn)

    # -- plumbing --------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, op: str, key: str | None = None) -> Iterator[None]:
        if self._closed:
            raise UsageError(f"the key-value store {self.url} is closed")
        where = f"{op} on {self.url}" + (f" (key {short_repr(key)})" if key is not None else "")
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

    def _k(self, key: object) -> str:
        return self._prefix + check_key(key)

    # -- strings ---------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        k = self._k(key)
        with self._errors("get", key):
            value = await self._client.get(k)
        return None if value is None else _bytes(value)

    async def set(self, key: str, value: bytes | str, *, ttl: float | None = None) -> None:
        k, data = self._k(key), check_value(value)
        px = ttl_millis(check_ttl(ttl)) if ttl is not None else None
        with self._errors("set", key):
            await self._client.set(k, data, px=px)

    async def set_if_absent(
        self, key: str, value: bytes | str, *, ttl: float | None = None
    ) -> bool:
        k, data = self._k(key), check_value(value)
        px = ttl_millis(check_ttl(ttl)) if ttl is not None else None
        with self._errors("set_if_absent", key):
            return bool(await self._client.set(k, data, px=px, nx=True))

    async def compare_and_set(
        self,
        key: str,
        expected: bytes | str | None,
        value: bytes | str,
        *,
        ttl: float | None = None,
    ) -> bool:
        return bool(await self._compare_and_set([key], cas_args(expected, value, ttl)))

    async def delete(self, *keys: str) -> int:
        ks = [self._prefix + k for k in dict.fromkeys(check_keys(keys))]
        if not ks:
            return 0
        with self._errors("delete"):
            return int(await self._client.delete(*ks))

    async def expire(self, key: str, ttl: float) -> bool:
        k, ms = self._k(key), ttl_millis(check_ttl(ttl))
        with self._errors("expire", key):
            return bool(await self._client.pexpire(k, ms))

    async def ttl(self, key: str) -> float | None:
        k = self._k(key)
        with self._errors("ttl", key):
            ms = int(await self._client.pttl(k))
        return ttl_from_pttl(ms)

    async def incr(self, key: str, amount: int = 1) -> int:
        k, step = self._k(key), check_amount(amount)
        with self._errors("incr", key):
            return int(await self._client.incrby(k, step))

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        ks = [self._prefix + k for k in check_keys(keys)]
        if not ks:
            return []
        with self._errors("mget"):
            values = await self._client.mget(ks)
        return [None if v is None else _bytes(v) for v in values]

    async def scan(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        pattern = glob_escape(self._prefix + prefix) + "*"
        cut = len(self._prefix.encode())
        found: set[str] = set()
        with self._errors("scan"):
            async for raw in self._client.scan_iter(match=pattern, count=1000):
                found.add(bytes(raw)[cut:].decode("utf-8", errors="surrogateescape"))
        return sorted(found)

    # -- sorted sets -----------------------------------------------------------

    async def zadd(self, key: str, mapping: dict[str, float]) -> int:
        k = self._k(key)
        if not isinstance(mapping, dict):
            raise InvalidValueError(
                f"zadd takes a dict of member -> score, not {short_repr(mapping)}"
            )
        pairs = {check_member(m): check_score(s) for m, s in mapping.items()}
        if not pairs:
            return 0
        with self._errors("zadd", key):
            return int(await self._client.zadd(k, pairs))  # type: ignore[arg-type]

    async def zscore(self, key: str, member: str) -> float | None:
        k, m = self._k(key), check_member(member)
        with self._errors("zscore", key):
            score = await self._client.zscore(k, m)
        return None if score is None else float(score)

    async def zincrby(self, key: str, member: str, amount: float) -> float:
        k, m = self._k(key), check_member(member)
        step = check_score(amount, "increment")
        with self._errors("zincrby", key):
            score = await self._client.zincrby(k, step, m)
        if score is None:  # only with RESP3 "NX"-style options, which we never send
            raise StoreError(f"zincrby on {self.url} returned no score for key {short_repr(key)}")
        return float(score)

    async def zrange(
        self, key: str, start: int, stop: int, *, desc: bool = False
    ) -> list[tuple[str, float]]:
        k = self._k(key)
        first, last = check_index(start, "start"), check_index(stop, "stop")
        with self._errors("zrange", key):
            rows = await self._client.zrange(k, first, last, desc=bool(desc), withscores=True)
        pairs = cast("list[tuple[bytes, float]]", rows)
        return [(_bytes(m).decode(), float(s)) for m, s in pairs]

    async def zrank(self, key: str, member: str, *, desc: bool = False) -> int | None:
        k, m = self._k(key), check_member(member)
        with self._errors("zrank", key):
            rank = await (self._client.zrevrank(k, m) if desc else self._client.zrank(k, m))
        return None if rank is None else int(cast(int, rank))

    async def zrem(self, key: str, *members: str) -> int:
        k = self._k(key)
        ms = [check_member(m) for m in members]
        if not ms:
            return 0
        with self._errors("zrem", key):
            return int(await self._client.zrem(k, *ms))

    # -- rate limiting ---------------------------------------------------------

    async def rate_limit(self, key: str, limit: int, window: float) -> RateLimit:
        k = self._k(key)
        most, seconds = check_limit(limit, window)
        with self._errors("rate_limit", key):
            allowed, remaining, retry = await self._limiter(
                keys=[k], args=[most, repr(seconds), uuid.uuid4().hex]
            )
        return RateLimit(
            allowed=bool(allowed), remaining=int(remaining), retry_after=max(0.0, float(retry))
        )


class RedisScript:
    """A Lua script bound to one :class:`RedisKeyValueStore` (from its
    :meth:`~RedisKeyValueStore.script`); call it with keys and arguments."""

    __slots__ = ("_script", "_store", "name")

    def __init__(self, store: RedisKeyValueStore, script: RespScript, name: str) -> None:
        self._store = store
        self._script = script
        self.name = name

    @property
    def sha(self) -> str:
        """The script's SHA-1, as ``EVALSHA`` names it."""
        return self._script.sha

    async def __call__(self, keys: Sequence[str], args: Sequence[Arg] = ()) -> Any:
        store = self._store
        lean = store._lean
        if lean is None or store._closed:
            return await store._eval(self._script, self.name, keys, args)
        # The store's ``_eval`` written out: this is every idempotent request's path.
        command, fallback = self._script.pack([store._k(k) for k in keys], args)
        try:
            return await lean.call(command, fallback)
        except (RespError, RespConnectionError) as exc:
            store._raise_lean_error(exc, self.name, keys[0] if keys else None)


def _lean_pool(url: StoreURL) -> RespPool:
    timeout = url.float_option("timeout", 5.0)
    return RespPool(
        url.host or "127.0.0.1",
        url.port or 6379,
        db=int(url.database or 0),
        username=url.username or None,
        password=url.password or None,
        timeout=timeout,
        connect_timeout=url.float_option("connect_timeout", timeout),
        max_connections=url.int_option("pool_max", 10),
    )
