"""Run a conformance suite against both APIs without writing it twice.

The suites are written against the async API (``await store.get(k)``,
``async with store.transaction() as tx``). Under the ``sync`` parameter the store
comes from :func:`multistore.sync.open_store` and is wrapped in
:class:`AwaitableSync`: ``await wrapped.get(k)`` calls ``store.get(k)`` on the test's
thread, ``async with wrapped.transaction()`` enters the sync ``with`` block, and the
connections and transactions it hands out are wrapped the same way. The same bodies
then check the sync backends' behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import Any

from multistore.stores import open_store
from multistore.stores.relational._sync_api import SyncQueries
from multistore.sync import Store as SyncStore
from multistore.sync import open_store as open_sync_store

__all__ = ["APIS", "AwaitableSync", "open_with"]

APIS = ("async", "sync")


def _wrap(value: Any) -> Any:
    if isinstance(value, SyncStore | SyncQueries):
        return AwaitableSync(value)
    return value


class _Call(Coroutine[Any, Any, Any]):
    """A sync call made when awaited (a coroutine), or a sync context manager entered
    by ``async with``."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._cm: Any = None
        self._coro: Coroutine[Any, Any, Any] | None = None

    def _inner(self) -> Coroutine[Any, Any, Any]:
        if self._coro is None:
            self._coro = self._run()
        return self._coro

    def send(self, value: Any) -> Any:
        return self._inner().send(value)

    def throw(self, typ: Any, val: Any = None, tb: TracebackType | None = None) -> Any:
        return self._inner().throw(typ, val, tb)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._inner().__await__()

    async def _run(self) -> Any:
        return _wrap(self._fn(*self._args, **self._kwargs))

    async def __aenter__(self) -> Any:
        self._cm = self._fn(*self._args, **self._kwargs)
        return _wrap(self._cm.__enter__())

    async def __aexit__(self, *exc: Any) -> Any:
        return self._cm.__exit__(*exc)


class AwaitableSync:
    """A sync store (or connection, transaction) seen through the async interface.
    Attributes that are not methods pass through."""

    def __init__(self, target: Any) -> None:
        self.sync_target = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.sync_target, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: _Call(attr, args, kwargs)

    def __repr__(self) -> str:
        return repr(self.sync_target)

    async def __aenter__(self) -> AwaitableSync:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sync_target.close()


def open_with(api: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    """``await open_with(api)(url, model=…)``: a store of the async API, or a sync
    store wrapped in :class:`AwaitableSync`."""

    async def opener(url: str, **kwargs: Any) -> Any:
        if api == "sync":
            return AwaitableSync(open_sync_store(url, **kwargs))
        return await open_store(url, **kwargs)

    return opener
