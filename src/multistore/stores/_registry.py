"""One table maps (data model, URL scheme) to the backend class, imported lazily.

Drivers are optional extras: ``multistore[postgres]`` brings psycopg, and so on.
A backend module is imported only when a URL names it, and a missing driver is
reported as a :class:`~multistore.errors.ConfigError` that says which extra to
install.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Final

from multistore.errors import ConfigError, UnsupportedError
from multistore.stores._base import Store
from multistore.urls import StoreURL, parse_url

__all__ = [
    "BACKENDS",
    "MODELS",
    "backend_class",
    "models_for_scheme",
    "open_store",
    "resolve_model",
]

#: (model, scheme) -> "module:Class", relative to ``multistore.stores`` unless the
#: module path is absolute (starts with ``multistore.``).
BACKENDS: Final[Mapping[tuple[str, str], str]] = {
    ("kv", "sqlite"): "kv._sqlite:SQLiteKeyValueStore",
    ("kv", "redis"): "kv._redis:RedisKeyValueStore",
    ("kv", "redis+cluster"): "kv._redis_cluster:RedisClusterKeyValueStore",
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
    ("widecolumn", "redis+cluster"): "widecolumn._redis_cluster:RedisClusterWideColumnStore",
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
_EXTRAS: Final[Mapping[str, str]] = {
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
        missing = exc.name or "a driver"
        extra = _EXTRAS.get(scheme)
        hint = f"pip install 'multistore[{extra}]'" if extra else "reinstall multistore"
        raise ConfigError(
            f"the {scheme} backend needs {missing}, which is not installed; run: {hint}"
        ) from None
    cls = getattr(module, class_name)
    assert isinstance(cls, type) and issubclass(cls, Store)
    return cls


async def open_store(
    url: str | StoreURL, *, model: str | None = None, **overrides: object
) -> Store:
    """Open the store a URL names. The scheme picks the backend; ``model`` (or
    ``?model=`` in the URL) chooses among the models a scheme serves.

    >>> store = await open_store("sqlite:///.multistore/sessions.db", model="kv")  # doctest: +SKIP
    """
    parsed = parse_url(url, **overrides)
    chosen = resolve_model(parsed, model)
    cls = backend_class(chosen, parsed.scheme)
    return await cls.open(parsed)
