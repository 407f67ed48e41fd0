"""The sync API's table of backends, (data model, URL scheme) -> "module:Class", and
its opener. The backends live beside their async twins and share their SQL and
commands; a pair without a sync backend is refused with a clear error.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Final

from multistore.errors import UnsupportedError
from multistore.stores._registry import BACKENDS, missing_driver, resolve_model
from multistore.stores._sync_base import SyncStore
from multistore.urls import StoreURL, parse_url

__all__ = ["SYNC_BACKENDS", "open_sync_store", "sync_backend_class"]

#: (model, scheme) -> "module:Class", relative to ``multistore.stores``.
SYNC_BACKENDS: Final[Mapping[tuple[str, str], str]] = {
    ("kv", "sqlite"): "kv._sqlite:SyncSQLiteKeyValueStore",
    ("kv", "redis"): "kv._redis_sync:SyncRedisKeyValueStore",
    ("document", "sqlite"): "document._sqlite:SyncSQLiteDocumentStore",
    ("relational", "sqlite"): "relational._sqlite:SyncSQLiteRelationalStore",
    ("relational", "postgresql"): "relational._postgres_sync:SyncPostgresRelationalStore",
    ("relational", "mariadb"): "relational._mariadb_sync:SyncMariaDBRelationalStore",
    ("widecolumn", "sqlite"): "widecolumn._sqlite:SyncSQLiteWideColumnStore",
    ("timeseries", "duckdb"): "timeseries._duckdb_sync:SyncDuckDBTimeSeriesStore",
}


def sync_backend_class(model: str, scheme: str) -> type[SyncStore]:
    """Import and return the sync backend class for ``(model, scheme)``."""
    target = SYNC_BACKENDS.get((model, scheme))
    if target is None:
        if (model, scheme) in BACKENDS:
            raise UnsupportedError(
                f"the {model} model on {scheme}:// has no sync backend yet; use the async "
                f"API (multistore.stores.open_store). Sync backends: "
                + ", ".join(f"{m} on {s}://" for (m, s) in SYNC_BACKENDS)
            )
        raise UnsupportedError(f"no {model} backend for {scheme}://")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(f"multistore.stores.{module_name}")
    except ImportError as exc:
        raise missing_driver(scheme, exc) from None
    cls = getattr(module, class_name)
    assert isinstance(cls, type) and issubclass(cls, SyncStore)
    return cls


def open_sync_store(
    url: str | StoreURL, *, model: str | None = None, **overrides: object
) -> SyncStore:
    """Open the store a URL names, for sync code; see :func:`multistore.sync.open_store`."""
    parsed = parse_url(url, **overrides)
    chosen = resolve_model(parsed, model)
    return sync_backend_class(chosen, parsed.scheme).open(parsed)
