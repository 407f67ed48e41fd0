"""The Redis key-value backend, for async code (``redis.asyncio`` with a blocking
connection pool, :class:`RedisKeyValueStore`) and sync code (``redis`` with a
thread-safe blocking pool, :class:`SyncRedisKeyValueStore`). Both send the commands
of :mod:`multistore.stores.kv._redis_commands` and map errors the same way.

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
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self, TypeVar

import redis
import redis.asyncio as aioredis
from redis import exceptions as rex
from redis._parsers.base import BaseParser
from redis.asyncio.connection import BlockingConnectionPool, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from multistore._resp import (
    Arg,
    RespConnectionError,
    RespError,
    RespPool,
    RespScript,
    RespTimeoutError,
)
from multistore.errors import (
    MultistoreError,
    Outcome,
    StoreTimeoutError,
    StoreUnavailableError,
    UsageError,
)
from multistore.stores.kv._api import KeyValueStore, RateLimit
from multistore.stores.kv._redis_commands import (
    Command,
    KeyValueCommands,
    ScriptCall,
    as_bytes,
    redis_errors,
)
from multistore.stores.kv._sync_api import SyncKeyValueStore
from multistore.urls import StoreURL

T = TypeVar("T")

__all__ = ["RedisKeyValueStore", "RedisScript", "SyncRedisKeyValueStore", "SyncRedisScript"]


class RedisKeyValueStore(KeyValueStore):
    """Key-value store on a Redis server. See the module docstring."""

    def __init__(self, url: StoreURL, client: aioredis.Redis, prefix: str) -> None:
        self.url = url
        self._client = client
        self._commands = KeyValueCommands(prefix)
        self._closed = False
        self._close_callbacks: list[Callable[[], None]] = []
        self._lean = None if url.option("ssl", False) else _lean_pool(url)
        self._scripts: dict[str, RespScript] = {}

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        pool = BlockingConnectionPool(
            connection_class=SSLConnection if url.option("ssl", False) else Connection,
            retry=Retry(NoBackoff(), 0),
            **_pool_options(url),
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
        ks = [self._commands.key(k) for k in keys]
        return await self._eval_keys(script, name, ks, args, keys[0] if keys else None)

    async def _eval_keys(
        self,
        script: RespScript,
        name: str,
        ks: Sequence[str],
        args: Sequence[Arg],
        key: str | None,
    ) -> Any:
        """The script with keys already prefixed; ``key`` names it in errors."""
        if self._closed:
            raise UsageError(f"the key-value store {self.url} is closed")
        command, fallback = script.pack(ks, args)
        lean = self._lean
        if lean is None:
            return await self._eval_on_pool(command, fallback, name, key)
        try:
            return await lean.call(command, fallback)
        except RespError as exc:  # an error reply: mapped as redis-py's exception would be
            parser: Any = BaseParser  # untyped
            reply = parser.parse_error(exc.message)
            with self._errors(name, key):
                raise reply from None
            raise  # pragma: no cover -- _errors maps every redis-py error
        except RespConnectionError as exc:
            # Sent: the script may have run (indeterminate); not sent: it did not.
            outcome = Outcome.INDETERMINATE if exc.sent else Outcome.DEFINITE
            where = f"{name} on {self.url}" + (f" (key {key!r})" if key is not None else "")
            if isinstance(exc, RespTimeoutError):
                raise StoreTimeoutError(
                    f"Redis did not answer in time: {where}", outcome=outcome
                ) from exc
            raise StoreUnavailableError(
                f"Redis unreachable: {where}: {exc}", outcome=outcome
            ) from exc

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
        with redis_errors(self.url, op, key):
            yield

    async def _do(self, command: Command[T]) -> T:
        with self._errors(command.op, command.key):
            reply = await self._client.execute_command(*command.args)  # type: ignore[no-untyped-call]
        return command.parse(reply)

    async def _run_script(self, call: ScriptCall[T]) -> T:
        script = self._scripts.get(call.body)
        if script is None:
            script = self._scripts[call.body] = RespScript(call.body)
        return call.parse(await self._eval_keys(script, call.op, call.keys, call.args, call.key))

    # -- the interface ---------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        return await self._do(self._commands.get(key))

    async def set(self, key: str, value: bytes | str, *, ttl: float | None = None) -> None:
        await self._do(self._commands.set(key, value, ttl))

    async def set_if_absent(
        self, key: str, value: bytes | str, *, ttl: float | None = None
    ) -> bool:
        return await self._do(self._commands.set_if_absent(key, value, ttl))

    async def compare_and_set(
        self,
        key: str,
        expected: bytes | str | None,
        value: bytes | str,
        *,
        ttl: float | None = None,
    ) -> bool:
        return await self._run_script(self._commands.compare_and_set(key, expected, value, ttl))

    async def delete(self, *keys: str) -> int:
        command = self._commands.delete(keys)
        return 0 if command is None else await self._do(command)

    async def expire(self, key: str, ttl: float) -> bool:
        return await self._do(self._commands.expire(key, ttl))

    async def ttl(self, key: str) -> float | None:
        return await self._do(self._commands.ttl(key))

    async def incr(self, key: str, amount: int = 1) -> int:
        return await self._do(self._commands.incr(key, amount))

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        command = self._commands.mget(keys)
        return [] if command is None else await self._do(command)

    async def scan(self, prefix: str = "") -> list[str]:
        pattern, answer = self._commands.scan(prefix)
        found: set[bytes] = set()
        with self._errors("scan"):
            async for raw in self._client.scan_iter(match=pattern, count=1000):
                found.add(as_bytes(raw))
        return answer(found)

    async def zadd(self, key: str, mapping: dict[str, float]) -> int:
        command = self._commands.zadd(key, mapping)
        return 0 if command is None else await self._do(command)

    async def zscore(self, key: str, member: str) -> float | None:
        return await self._do(self._commands.zscore(key, member))

    async def zincrby(self, key: str, member: str, amount: float) -> float:
        return await self._do(self._commands.zincrby(key, member, amount))

    async def zrange(
        self, key: str, start: int, stop: int, *, desc: bool = False
    ) -> list[tuple[str, float]]:
        return await self._do(self._commands.zrange(key, start, stop, desc))

    async def zrank(self, key: str, member: str, *, desc: bool = False) -> int | None:
        return await self._do(self._commands.zrank(key, member, desc))

    async def zrem(self, key: str, *members: str) -> int:
        command = self._commands.zrem(key, members)
        return 0 if command is None else await self._do(command)

    async def rate_limit(self, key: str, limit: int, window: float) -> RateLimit:
        return await self._run_script(self._commands.rate_limit(key, limit, window))


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
        return await self._store._eval(self._script, self.name, keys, args)


class SyncRedisKeyValueStore(SyncKeyValueStore):
    """Key-value store on a Redis server, for sync code: redis-py's sync client on a
    blocking connection pool, which threads may share (each call takes a connection
    of its own). Same URL options, commands and errors as
    :class:`RedisKeyValueStore`."""

    def __init__(self, url: StoreURL, client: redis.Redis, prefix: str) -> None:
        self.url = url
        self._client = client
        self._commands = KeyValueCommands(prefix)
        self._closed = False
        self._scripts: dict[str, Any] = {}

    @classmethod
    def open(cls, url: StoreURL) -> Self:
        pool = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
            connection_class=redis.SSLConnection if url.option("ssl", False) else redis.Connection,
            retry=SyncRetry(NoBackoff(), 0),
            **_pool_options(url),
        )
        client = redis.Redis.from_pool(pool)
        store = cls(url, client, url.str_option("prefix", ""))
        try:
            with store._errors("connect"):
                client.ping()
        except MultistoreError as exc:
            client.close()
            exc.outcome = Outcome.DEFINITE
            raise
        return store

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    @property
    def native(self) -> redis.Redis:
        """The ``redis.Redis`` client (keys are not prefixed for you)."""
        return self._client

    def script(self, body: str, *, name: str = "script") -> SyncRedisScript:
        """A Lua script to run on this store's server: ``script(keys, args)`` sends it
        (``EVALSHA``, loading it when the server does not have it) and returns the raw
        reply. ``keys`` get the URL's ``prefix``; errors are mapped as for every
        operation, with ``name`` in the message."""
        return SyncRedisScript(self, body, name)

    @contextlib.contextmanager
    def _errors(self, op: str, key: str | None = None) -> Iterator[None]:
        if self._closed:
            raise UsageError(f"the key-value store {self.url} is closed")
        with redis_errors(self.url, op, key):
            yield

    def _do(self, command: Command[T]) -> T:
        with self._errors(command.op, command.key):
            reply = self._client.execute_command(*command.args)  # type: ignore[no-untyped-call]
        return command.parse(reply)

    def _eval_keys(
        self, body: str, name: str, ks: Sequence[str], args: Sequence[Arg], key: str | None
    ) -> Any:
        script = self._scripts.get(body)
        if script is None:
            script = self._scripts[body] = self._client.register_script(body)
        with self._errors(name, key):
            return script(keys=list(ks), args=list(args))

    def _run_script(self, call: ScriptCall[T]) -> T:
        return call.parse(self._eval_keys(call.body, call.op, call.keys, call.args, call.key))

    def get(self, key: str) -> bytes | None:
        return self._do(self._commands.get(key))

    def set(self, key: str, value: bytes | str, *, ttl: float | None = None) -> None:
        self._do(self._commands.set(key, value, ttl))

    def set_if_absent(self, key: str, value: bytes | str, *, ttl: float | None = None) -> bool:
        return self._do(self._commands.set_if_absent(key, value, ttl))

    def compare_and_set(
        self,
        key: str,
        expected: bytes | str | None,
        value: bytes | str,
        *,
        ttl: float | None = None,
    ) -> bool:
        return self._run_script(self._commands.compare_and_set(key, expected, value, ttl))

    def delete(self, *keys: str) -> int:
        command = self._commands.delete(keys)
        return 0 if command is None else self._do(command)

    def expire(self, key: str, ttl: float) -> bool:
        return self._do(self._commands.expire(key, ttl))

    def ttl(self, key: str) -> float | None:
        return self._do(self._commands.ttl(key))

    def incr(self, key: str, amount: int = 1) -> int:
        return self._do(self._commands.incr(key, amount))

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        command = self._commands.mget(keys)
        return [] if command is None else self._do(command)

    def scan(self, prefix: str = "") -> list[str]:
        pattern, answer = self._commands.scan(prefix)
        with self._errors("scan"):
            found = {as_bytes(raw) for raw in self._client.scan_iter(match=pattern, count=1000)}
        return answer(found)

    def zadd(self, key: str, mapping: dict[str, float]) -> int:
        command = self._commands.zadd(key, mapping)
        return 0 if command is None else self._do(command)

    def zscore(self, key: str, member: str) -> float | None:
        return self._do(self._commands.zscore(key, member))

    def zincrby(self, key: str, member: str, amount: float) -> float:
        return self._do(self._commands.zincrby(key, member, amount))

    def zrange(
        self, key: str, start: int, stop: int, *, desc: bool = False
    ) -> list[tuple[str, float]]:
        return self._do(self._commands.zrange(key, start, stop, desc))

    def zrank(self, key: str, member: str, *, desc: bool = False) -> int | None:
        return self._do(self._commands.zrank(key, member, desc))

    def zrem(self, key: str, *members: str) -> int:
        command = self._commands.zrem(key, members)
        return 0 if command is None else self._do(command)

    def rate_limit(self, key: str, limit: int, window: float) -> RateLimit:
        return self._run_script(self._commands.rate_limit(key, limit, window))


class SyncRedisScript:
    """A Lua script bound to one :class:`SyncRedisKeyValueStore` (from its
    :meth:`~SyncRedisKeyValueStore.script`); call it with keys and arguments."""

    __slots__ = ("_body", "_store", "name")

    def __init__(self, store: SyncRedisKeyValueStore, body: str, name: str) -> None:
        self._store = store
        self._body = body
        self.name = name

    def __call__(self, keys: Sequence[str], args: Sequence[Arg] = ()) -> Any:
        ks = [self._store._commands.key(k) for k in keys]
        return self._store._eval_keys(self._body, self.name, ks, args, keys[0] if keys else None)


def _pool_options(url: StoreURL) -> dict[str, Any]:
    """The options of a redis-py connection pool (async or sync) for the URL."""
    timeout = url.float_option("timeout", 5.0)
    return {
        "max_connections": url.int_option("pool_max", 10),
        "timeout": timeout,
        "host": url.host or "127.0.0.1",
        "port": url.port or 6379,
        "db": int(url.database or 0),
        "username": url.username,
        "password": url.password,
        "socket_timeout": timeout,
        "socket_connect_timeout": url.float_option("connect_timeout", timeout),
    }


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
