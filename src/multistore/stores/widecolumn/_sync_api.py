"""The wide-column interface for sync code: the operations and semantics of
:class:`multistore.stores.widecolumn.WideColumnStore`, as plain methods."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from multistore.stores._sync_base import SyncStore
from multistore.stores.widecolumn._api import Condition, Order, TableSchema

__all__ = ["SyncWideColumnStore"]


class SyncWideColumnStore(SyncStore, abc.ABC):
    """Tables of partitions, rows ordered by clustering columns, per-row TTL, for sync
    code; see :class:`multistore.stores.widecolumn.WideColumnStore`."""

    model: ClassVar[str] = "widecolumn"

    @abc.abstractmethod
    def create_table(self, schema: TableSchema, *, if_not_exists: bool = True) -> None:
        """Create a table (an existing one with the same schema is fine)."""

    @abc.abstractmethod
    def drop_table(self, name: str, *, if_exists: bool = False) -> None:
        """Remove a table and its rows."""

    @abc.abstractmethod
    def schema(self, name: str) -> TableSchema:
        """The schema of table ``name``."""

    @abc.abstractmethod
    def tables(self) -> list[str]:
        """The names of all tables, sorted."""

    def upsert(self, table: str, row: Mapping[str, Any], *, ttl: float | None = None) -> None:
        """Insert or overwrite the row with this primary key."""
        self.upsert_many(table, [row], ttl=ttl)

    @abc.abstractmethod
    def upsert_many(
        self, table: str, rows: Sequence[Mapping[str, Any]], *, ttl: float | None = None
    ) -> None:
        """Upsert several rows, all or none."""

    @abc.abstractmethod
    def select(
        self,
        table: str,
        partition: Mapping[str, Any],
        *,
        where: Sequence[Condition] = (),
        order: Order | None = None,
        limit: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of one partition, in clustering order (or reversed)."""

    @abc.abstractmethod
    def delete(
        self,
        table: str,
        partition: Mapping[str, Any],
        clustering: Mapping[str, Any] | None = None,
    ) -> None:
        """Delete a partition, or the rows under a clustering prefix."""

    @abc.abstractmethod
    def purge_expired(self) -> int:
        """Remove expired rows for good; the number removed."""
