"""The wide-column interface: Cassandra-style tables of partitions of ordered rows.

A table is declared with a :class:`TableSchema`: a *partition key* (one or more
columns) that picks the partition, *clustering columns* that order the rows
inside a partition (each ascending or descending), and typed columns. Reads
name one whole partition and may restrict the clustering columns; they come back
in clustering order (or its exact reverse). This is the seed's IoT table::

    CREATE TABLE sensor_readings (sensor_id text, timestamp timestamp,
        temperature decimal, humidity decimal,
        PRIMARY KEY (sensor_id, timestamp)) WITH CLUSTERING ORDER BY (timestamp DESC);

    TableSchema(
        "sensor_readings",
        partition_key=("sensor_id",),
        clustering=(ClusteringColumn("timestamp", "desc"),),
        columns={"sensor_id": "text", "timestamp": "timestamp",
                 "temperature": "float", "humidity": "float"},
    )

Rules, as in CQL: a query names the full partition key (no scans across
partitions); only clustering columns may be restricted, and only as a prefix —
``=`` on the first ones, then ``=`` or a range (``<``, ``<=``, ``>``, ``>=``) on
the next, nothing after a range. ``upsert`` writes the whole row (columns left
out become null) and is an insert or an overwrite by primary key, never a
"duplicate key" error. A row written with a TTL disappears from reads when it
expires.

Designed for a second backend, the quorum cluster of Redis nodes: every
operation addresses exactly one partition, so it maps to one replica set chosen
by hashing the partition key; within a partition the restrictions above always
select one contiguous run of rows in clustering order, which a node keeps in one
sorted structure (a Redis sorted set whose members are an order-preserving byte
encoding of the clustering values, read with ``ZRANGEBYLEX``/``ZREVRANGEBYLEX``
and ``LIMIT``). Writes never read first and return nothing (no counts), so a write
needs only W acknowledgements and a delete can be a tombstone; the expiry time
travels with the row, so any replica can hide an expired row by itself. The
pure checks and the query plan that both backends share live in
:mod:`multistore.stores.widecolumn._query`.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, get_args

from multistore.errors import InvalidQueryError
from multistore.stores._base import Store
from multistore.stores._limits import short_repr

__all__ = [
    "COLUMN_TYPES",
    "ClusteringColumn",
    "ColumnType",
    "Condition",
    "Order",
    "TableSchema",
    "WideColumnStore",
]

ColumnType = Literal["text", "int", "float", "bool", "timestamp", "blob"]
"""Column types: ``text`` (str), ``int`` (64-bit), ``float`` (finite), ``bool``,
``timestamp`` (timezone-aware ``datetime``, returned in UTC, microseconds), ``blob`` (bytes)."""
COLUMN_TYPES: Final[frozenset[str]] = frozenset(get_args(ColumnType))

Order = Literal["asc", "desc"]
Condition = tuple[str, str, Any]
"""A restriction on a clustering column: ``(column, operator, value)``, operator one
of ``=``, ``<``, ``<=``, ``>``, ``>=``."""

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: Column names that start with this prefix are reserved for backends.
RESERVED_PREFIX: Final = "_ms_"


def check_identifier(name: object, what: str) -> str:
    """``name`` if it is a plain identifier, else :class:`InvalidQueryError`."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise InvalidQueryError(
            f"{what} {short_repr(name)} is not an identifier: use letters, digits and _, "
            "not starting with a digit, at most 63 characters"
        )
    if name.lower().startswith(RESERVED_PREFIX):
        raise InvalidQueryError(
            f"{what} {short_repr(name)}: names starting {short_repr(RESERVED_PREFIX)} are reserved"
        )
    return name


@dataclass(frozen=True)
class ClusteringColumn:
    """A clustering column and the order rows are kept in by it."""

    name: str
    order: Order = "asc"

    def __post_init__(self) -> None:
        check_identifier(self.name, "clustering column")
        if self.order not in ("asc", "desc"):
            raise InvalidQueryError(
                f"clustering order of {short_repr(self.name)} must be 'asc' or 'desc', not "
                f"{short_repr(self.order)}"
            )


@dataclass(frozen=True)
class TableSchema:
    """A table: name, partition key, clustering columns and the type of every column
    (key columns included). Invalid schemas raise :class:`InvalidQueryError`."""

    name: str
    partition_key: tuple[str, ...]
    clustering: tuple[ClusteringColumn, ...] = ()
    columns: Mapping[str, ColumnType] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_identifier(self.name, "table name")
        if isinstance(self.partition_key, str):
            object.__setattr__(self, "partition_key", (self.partition_key,))
        object.__setattr__(self, "partition_key", tuple(self.partition_key))
        object.__setattr__(
            self,
            "clustering",
            tuple(ClusteringColumn(c) if isinstance(c, str) else c for c in self.clustering),
        )
        if not isinstance(self.columns, Mapping):
            raise InvalidQueryError(
                f"columns of table {short_repr(self.name)} must be a dict name -> type"
            )
        object.__setattr__(self, "columns", dict(self.columns))
        seen: set[str] = set()
        for column, kind in self.columns.items():
            check_identifier(column, f"column of table {short_repr(self.name)}")
            if column.lower() in seen:
                raise InvalidQueryError(
                    f"table {short_repr(self.name)} declares column {short_repr(column)} twice "
                    "(names are compared without case)"
                )
            seen.add(column.lower())
            if kind not in COLUMN_TYPES:
                raise InvalidQueryError(
                    f"column {short_repr(column)} of table {short_repr(self.name)} has "
                    f"unknown type {short_repr(kind)}; "
                    f"types are {', '.join(sorted(COLUMN_TYPES))}"
                )
        if not self.partition_key:
            raise InvalidQueryError(
                f"table {short_repr(self.name)} needs at least one partition key column"
            )
        keys = [*self.partition_key, *(c.name for c in self.clustering)]
        for column in keys:
            if not isinstance(column, str) or column not in self.columns:
                raise InvalidQueryError(
                    f"key column {short_repr(column)} of table {short_repr(self.name)} is "
                    "not among its columns"
                )
        if len(set(keys)) != len(keys):
            raise InvalidQueryError(
                f"table {short_repr(self.name)} names a key column twice: {keys}"
            )

    @property
    def clustering_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.clustering)

    @property
    def primary_key(self) -> tuple[str, ...]:
        """Partition key columns, then clustering columns."""
        return (*self.partition_key, *self.clustering_names)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "partition_key": list(self.partition_key),
            "clustering": [[c.name, c.order] for c in self.clustering],
            "columns": dict(self.columns),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TableSchema:
        return cls(
            name=data["name"],
            partition_key=tuple(data["partition_key"]),
            clustering=tuple(ClusteringColumn(n, o) for n, o in data["clustering"]),
            columns=dict(data["columns"]),
        )


class WideColumnStore(Store, abc.ABC):
    """Tables of partitions, rows ordered by clustering columns, per-row TTL."""

    model: ClassVar[str] = "widecolumn"

    @abc.abstractmethod
    async def create_table(self, schema: TableSchema, *, if_not_exists: bool = True) -> None:
        """Create a table. An existing table with the same schema is fine when
        ``if_not_exists``; one with another schema is a ConflictError."""

    @abc.abstractmethod
    async def drop_table(self, name: str, *, if_exists: bool = False) -> None:
        """Remove a table and its rows (NotFoundError when missing, unless ``if_exists``)."""

    @abc.abstractmethod
    async def schema(self, name: str) -> TableSchema:
        """The schema of table ``name`` (NotFoundError when missing)."""

    @abc.abstractmethod
    async def tables(self) -> list[str]:
        """The names of all tables, sorted."""

    @abc.abstractmethod
    async def upsert(self, table: str, row: Mapping[str, Any], *, ttl: float | None = None) -> None:
        """Insert or overwrite the row with this primary key; with ``ttl`` (seconds)
        it expires. Values are checked against the schema (InvalidValueError)."""

    @abc.abstractmethod
    async def upsert_many(
        self, table: str, rows: Sequence[Mapping[str, Any]], *, ttl: float | None = None
    ) -> None:
        """Upsert several rows; all are checked before any is written, and they are
        written together (all or none)."""

    @abc.abstractmethod
    async def select(
        self,
        table: str,
        partition: Mapping[str, Any],
        *,
        where: Sequence[Condition] = (),
        order: Order | None = None,
        limit: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of one partition (``partition`` names every partition key column).

        ``where`` restricts clustering columns (see the module docstring);
        ``order`` is the direction of the first clustering column — ``None`` keeps
        the declared clustering order, the other direction reverses it for all
        clustering columns; ``limit`` caps the rows; ``columns`` picks the columns
        (default: all, in schema order)."""

    @abc.abstractmethod
    async def delete(
        self,
        table: str,
        partition: Mapping[str, Any],
        clustering: Mapping[str, Any] | None = None,
    ) -> None:
        """Delete a whole partition, or the rows whose leading clustering columns
        equal ``clustering`` (a prefix of the clustering columns: one row when all
        are given)."""

    @abc.abstractmethod
    async def purge_expired(self) -> int:
        """Remove expired rows for good; the number removed (reads already hide them)."""
