"""The Redis key-value backend for sync code (:class:`SyncRedisKeyValueStore`):
redis-py's sync client on a thread-safe blocking connection pool. It sends the
commands of :mod:`multistore.stores.kv._redis_commands` and maps errors the same way
as the async store (:mod:`multistore.stores.kv._redis`): same URL options
(``timeout``, ``connect_timeout``, ``pool_max``, ``ssl``, ``prefix``), the same
errors, and redis-py's own retries off (a command is sent once).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Self, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from multistore._resp import Arg
from multistore.errors import MultistoreError, Outcome, UsageError
from multistore.stores.kv._api import RateLimit
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

__all__ = ["SyncRedisKeyValueStore", "SyncRedisScript"]


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
