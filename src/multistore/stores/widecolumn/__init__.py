"""The wide-column model: Cassandra-style tables, partitions of rows kept in clustering
order, range reads inside a partition, per-row TTL.

Backends: ``sqlite:///path.db?model=widecolumn`` (embedded,
:class:`SQLiteWideColumnStore` in ``_sqlite``), Redis Cluster
(``redis+cluster://h1:7000,h2:7001/?model=widecolumn``, a partition per hash slot, in
``_redis_cluster``); the quorum cluster of Redis nodes implements the same interface
(see the docstring of ``_api``).
"""

from multistore.stores.widecolumn._api import (
    COLUMN_TYPES,
    ClusteringColumn,
    ColumnType,
    Condition,
    Order,
    TableSchema,
    WideColumnStore,
)

__all__ = [
    "COLUMN_TYPES",
    "ClusteringColumn",
    "ColumnType",
    "Condition",
    "Order",
    "TableSchema",
    "WideColumnStore",
]
