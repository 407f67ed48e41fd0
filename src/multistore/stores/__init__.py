"""Polyglot persistence: one interface per data model, backends picked by URL scheme.

Model packages (``kv``, ``document``, ``search``, ``relational``, ``graph``,
``widecolumn``, ``timeseries``) each hold their interface and their backends;
backends are imported lazily through :mod:`multistore.stores._registry`.
"""

from multistore.stores._base import Store
from multistore.stores._registry import (
    BACKENDS,
    EXTRAS,
    MODELS,
    StoreOpening,
    missing_driver,
    open_store,
)

__all__ = ["BACKENDS", "EXTRAS", "MODELS", "Store", "StoreOpening", "missing_driver", "open_store"]
