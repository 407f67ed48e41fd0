"""The base every sync store shares: lifetime, the native handle, the backend name.

The sync API (:mod:`multistore.sync`) mirrors the async one: each model has a sync
interface that derives from :class:`SyncStore`, whose backends run the same SQL,
commands and checks as the async backends (they share those modules) but do their
I/O on the calling thread. A sync store is opened with :meth:`SyncStore.open` and
closed with :meth:`SyncStore.close`, or used as a context manager.

Threads: a sync store may be shared by the threads of a process. Each call is
atomic with respect to the store's other calls, as on the async API: embedded
backends take a lock around the one connection, server backends take a connection
of their own from a thread-safe pool for each call.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Any, ClassVar, Self

from multistore.urls import StoreURL

__all__ = ["SyncStore"]


class SyncStore(abc.ABC):
    """A handle on one store, for sync code. Subclasses set ``model`` and implement
    ``open``/``close``."""

    model: ClassVar[str]
    """The data model this store serves (kv, document, relational …)."""

    url: StoreURL

    @classmethod
    @abc.abstractmethod
    def open(cls, url: StoreURL) -> Self:
        """Connect (or open the file) and return a ready store."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections, pools and files. Safe to call twice."""

    @property
    @abc.abstractmethod
    def native(self) -> Any:
        """The underlying driver object (client, pool, connection) for what the
        interface does not cover."""

    @property
    def backend(self) -> str:
        """The backend's name, e.g. ``sqlite`` or ``redis``."""
        return self.url.scheme

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
