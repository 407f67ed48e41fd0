"""multistore: data management in distributed systems.

Polyglot stores chosen by URL (key-value, document, search, relational, graph,
wide-column, time series), consistency across stores, and replication — on
real databases, with an embedded default for each.
"""

from multistore.config import ROLES, Config, RoleSpec, load_config
from multistore.errors import (
    BenchmarkError,
    ConfigError,
    ConflictError,
    DuplicateKeyError,
    ErrorCode,
    InvalidQueryError,
    InvalidURLError,
    InvalidValueError,
    MultistoreError,
    NotFoundError,
    Outcome,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    UnsupportedError,
    UsageError,
)
from multistore.stores import Store, open_store
from multistore.urls import StoreURL, parse_url

__version__ = "0.1.0"

__all__ = [
    "ROLES",
    "BenchmarkError",
    "Config",
    "ConfigError",
    "ConflictError",
    "DuplicateKeyError",
    "ErrorCode",
    "InvalidQueryError",
    "InvalidURLError",
    "InvalidValueError",
    "MultistoreError",
    "NotFoundError",
    "Outcome",
    "RoleSpec",
    "Store",
    "StoreError",
    "StoreTimeoutError",
    "StoreURL",
    "StoreUnavailableError",
    "UnsupportedError",
    "UsageError",
    "__version__",
    "load_config",
    "open_store",
    "parse_url",
]
