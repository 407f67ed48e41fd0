"""The base every store backend shares: lifetime, the native handle, statistics.

A backend is opened from a :class:`~multistore.urls.StoreURL` with the class
method :meth:`Store.open` and closed with :meth:`Store.close`, or used as an
async context manager. Each model's interface (``kv``, ``document`` …) is an
ABC that derives from :class:`Store`.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Any, ClassVar, Self

from multistore.urls import StoreURL

__all__ = ["Store"]


class Store(abc.ABC):
    """A handle on one store. Subclasses set ``model`` and implement ``open``/``close``."""

    model: ClassVar[str]
    """The data model this store serves: kv, document, search, relational, graph,
    widecolumn or timeseries."""

    url: StoreURL

    @classmethod
    @abc.abstractmethod
    async def open(cls, url: StoreURL) -> Self:
        """Connect (or open the file) and return a ready store."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections, pools and files. Safe to call twice."""

    @property
    @abc.abstractmethod
    def native(self) -> Any:
        """The underlying driver object (client, pool, connection, index) for what
        the interface does not cover."""

    @property
    def backend(self) -> str:
        """The backend's name, e.g. ``sqlite`` or ``postgresql``."""
        return self.url.scheme

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
