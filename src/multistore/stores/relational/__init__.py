"""The relational data model: SQL tables, transactions and migrations.

Backends: SQLite (embedded default), PostgreSQL (psycopg 3, async pool) and MariaDB
(PyMySQL on worker threads). Every backend takes the same ``:name`` placeholders.
"""

from multistore.stores.relational._api import (
    Connection,
    Params,
    Queries,
    RelationalStore,
    Transaction,
    TransactionStatus,
)
from multistore.stores.relational._migrations import AppliedMigration, Migration
from multistore.stores.relational._rows import Row

__all__ = [
    "AppliedMigration",
    "Connection",
    "Migration",
    "Params",
    "Queries",
    "RelationalStore",
    "Row",
    "Transaction",
    "TransactionStatus",
]
