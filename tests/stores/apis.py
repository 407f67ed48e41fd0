"""Run a conformance suite against both APIs without writing it twice.

The suites are written against the async API (``await store.get(k)``). Under the
``sync`` parameter the store comes from :func:`multistore.sync.open_store` and is
wrapped in :class:`AwaitableSync`, whose methods make the sync call on the test's
thread when awaited: the same bodies then check the sync backends' behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from multistore.stores import open_store
from multistore.sync import Store as SyncStore
from multistore.sync import open_store as open_sync_store

__all__ = ["APIS", "AwaitableSync", "open_with"]

APIS = ("async", "sync")


class AwaitableSync:
    """A sync store seen through the async interface: ``await wrapped.get(k)`` calls
    ``store.get(k)`` (on this thread, when awaited). Attributes that are not methods
    pass through."""

    def __init__(self, store: SyncStore) -> None:
        self.sync_store = store

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.sync_store, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return attr(*args, **kwargs)

        return call

    async def __aenter__(self) -> AwaitableSync:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sync_store.close()


def open_with(api: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    """``await open_with(api)(url, model=…)``: a store of the async API, or a sync
    store wrapped in :class:`AwaitableSync`."""

    async def opener(url: str, **kwargs: Any) -> Any:
        if api == "sync":
            return AwaitableSync(open_sync_store(url, **kwargs))
        return await open_store(url, **kwargs)

    return opener
