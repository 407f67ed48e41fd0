"""The sync API's opener."""

from __future__ import annotations

from typing import Any

from multistore.stores._sync_base import SyncStore
from multistore.stores._sync_registry import open_sync_store
from multistore.urls import StoreURL

__all__ = ["open_store"]


def open_store(url: str | StoreURL, *, model: str | None = None, **overrides: Any) -> SyncStore:
    """Open the store a URL names, for sync code: the scheme picks the backend;
    ``model`` (or ``?model=`` in the URL) chooses among the models a scheme serves.
    Keyword arguments override URL fields, as for the async
    :func:`multistore.stores.open_store`. The store is a context manager that
    closes it."""
    return open_sync_store(url, model=model, **overrides)
