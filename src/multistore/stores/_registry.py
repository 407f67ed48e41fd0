"""One table maps (data model, URL scheme) to the backend class, imported lazily.

Drivers are optional extras: ``multistore[postgres]`` brings psycopg, and so on.
A backend module is imported only when a URL names it, and a missing driver is
reported as a :class:`~multistore.errors.ConfigError` that says which extra to
install.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Coroutine, Generator, Mapping
from types import TracebackType
from typing import Any, Final

from multistore.errors import ConfigError, UnsupportedError
from multistore.stores._base import Store
from multistore.urls import StoreURL, parse_url

__all__ = [
    "BACKENDS",
    "EXTRAS",
    "MODELS",
    "StoreOpening",
    "backend_class",
    "missing_driver",
    "models_for_scheme",
    "open_store",
    "resolve_model",
]

#: (model, scheme) -> "module:Class", relative to ``multistore.stores`` unless the
#: module path is absolute (starts with ``multistore.``).
BACKENDS: Final[Mapping[tuple[str, str], str]] = {
    ("kv", "sqlite"): "kv._sqlite:SQLiteKeyValueStore",
    ("kv", "redis"): "kv._redis:RedisKeyValueStore",
    ("document", "sqlite"): "document._sqlite:SQLiteDocumentStore",
    ("document", "postgresql"): "document._postgres:PostgresDocumentStore",
    ("search", "tantivy"): "search._tantivy:TantivySearchStore",
    ("search", "postgresql"): "search._postgres:PostgresSearchStore",
    ("relational", "sqlite"): "relational._sqlite:SQLiteRelationalStore",
    ("relational", "postgresql"): "relational._postgres:PostgresRelationalStore",
    ("relational", "mariadb"): "relational._mariadb:MariaDBRelationalStore",
    ("graph", "ladybug"): "graph._ladybug:LadybugGraphStore",
    ("graph", "falkordb"): "graph._falkordb:FalkorDBGraphStore",
    ("widecolumn", "sqlite"): "widecolumn._sqlite:SQLiteWideColumnStore",
    ("timeseries", "duckdb"): "timeseries._duckdb:DuckDBTimeSeriesStore",
    ("timeseries", "influxdb"): "timeseries._influxdb:InfluxDBTimeSeriesStore",
    # The distributed wide-column store lives with the quorum replication it is built on.
    ("widecolumn", "quorum"): "multistore.replication._qwidecolumn:QuorumWideColumnStore",
}

MODELS: Final[tuple[str, ...]] = (
    "kv",
    "document",
    "search",
    "relational",
    "graph",
    "widecolumn",
    "timeseries",
)

#: The pip extra that brings each server scheme's driver.
EXTRAS: Final[Mapping[str, str]] = {
    "postgresql": "postgres",
    "mariadb": "mariadb",
    "redis": "redis",
    "falkordb": "falkordb",
    "influxdb": "influxdb",
    "quorum": "redis",
}


def models_for_scheme(scheme: str) -> list[str]:
    """The data models a URL scheme can serve, in the order of :data:`MODELS`."""
    return [m for m in MODELS if (m, scheme) in BACKENDS]


def resolve_model(url: StoreURL, model: str | None = None) -> str:
    """Decide which data model a URL is opened as, or raise a clear error."""
    asked = model or url.model
    served = models_for_scheme(url.scheme)
    if asked is not None:
        if asked not in MODELS:
            raise UnsupportedError(f"unknown data model {asked!r}; models are {', '.join(MODELS)}")
        if asked not in served:
            raise UnsupportedError(
                f"{url.scheme}:// does not serve the {asked} model; it serves "
                f"{', '.join(served) or 'nothing yet'}. Backends for {asked}: "
                + ", ".join(f"{s}://" for (m, s) in BACKENDS if m == asked)
            )
        return asked
    if len(served) == 1:
        return served[0]
    raise UnsupportedError(
        f"{url.scheme}:// serves several models ({', '.join(served)}); "
        f"say which with ?model=… in the URL or open_store(url, model=…)"
    )


def backend_class(model: str, scheme: str) -> type[Store]:
    """Import and return the backend class for ``(model, scheme)``."""
    target = BACKENDS.get((model, scheme))
    if target is None:
        raise UnsupportedError(f"no {model} backend for {scheme}://")
    module_name, _, class_name = target.partition(":")
    try:
        absolute = module_name.startswith("multistore.")
        module = importlib.import_module(
            module_name if absolute else f"multistore.stores.{module_name}"
        )
    except ImportError as exc:
        raise missing_driver(scheme, exc) from None
    cls = getattr(module, class_name)
    assert isinstance(cls, type) and issubclass(cls, Store)
    return cls


def missing_driver(scheme: str, exc: ImportError) -> ConfigError:
    """The error for a backend whose driver is not installed: it names the extra."""
    missing = exc.name or "a driver"
    extra = EXTRAS.get(scheme)
    hint = f"pip install 'multistore[{extra}]'" if extra else "reinstall multistore"
    return ConfigError(f"the {scheme} backend needs {missing}, which is not installed; run: {hint}")


class StoreOpening(Coroutine[Any, Any, Store]):
    """What :func:`open_store` returns: a coroutine, so ``await open_store(...)`` and
    ``asyncio.run(open_store(...))`` give the store, and also an async context manager,
    so ``async with open_store(...) as store:`` opens it and closes it at the end of
    the block (as ``async with await open_store(...)`` does).

    Nothing runs until it is awaited or entered."""

    __slots__ = ("_coro", "_factory", "_store")

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, Store]]) -> None:
        self._factory = factory
        self._coro: Coroutine[Any, Any, Store] | None = None
        self._store: Store | None = None

    def _inner(self) -> Coroutine[Any, Any, Store]:
        if self._coro is None:
            self._coro = self._factory()
        return self._coro

    def send(self, value: Any) -> Any:
        return self._inner().send(value)

    def throw(
        self,
        typ: type[BaseException] | BaseException,
        val: BaseException | object = None,
        tb: TracebackType | None = None,
    ) -> Any:
        if isinstance(typ, BaseException):
            return self._inner().throw(typ)
        return self._inner().throw(typ, val, tb)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()

    def __await__(self) -> Generator[Any, None, Store]:
        return self._inner().__await__()

    async def __aenter__(self) -> Store:
        self._store = await self._inner()
        return self._store

    async def __aexit__(self, *exc: object) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()


def open_store(
    url: str | StoreURL, *, model: str | None = None, **overrides: object
) -> StoreOpening:
    """Open the store a URL names. The scheme picks the backend; ``model`` (or
    ``?model=`` in the URL) chooses among the models a scheme serves.

    >>> store = await open_store("sqlite:///.multistore/sessions.db", model="kv")  # doctest: +SKIP
    >>> async with open_store("sqlite:///sessions.db", model="kv") as store:  # doctest: +SKIP
    ...     await store.set("k", "v")
    """

    async def opening() -> Store:
        parsed = parse_url(url, **overrides)
        chosen = resolve_model(parsed, model)
        cls = backend_class(chosen, parsed.scheme)
        return await cls.open(parsed)

    return StoreOpening(opening)
