"""The transactional outbox for sync code: :meth:`SyncOutbox.add` writes an event with
the caller's sync transaction (``with store.transaction() as tx``), so it commits with
the business write or not at all.

The checks, the tables and the insert statements are the async outbox's
(:mod:`._outbox`); the relay that delivers the events stays async
(:class:`~multistore.consistency.OutboxRelay` on the same table), as do the
inspection and operations methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from multistore.consistency._outbox import (
    EventInsert,
    OutboxEvent,
    check_outbox,
    insert_sql,
    setup_statements,
)
from multistore.errors import UsageError
from multistore.stores.relational import TransactionStatus
from multistore.stores.relational._sync_api import SyncRelationalStore, SyncTransaction

__all__ = ["SyncOutbox"]


class SyncOutbox:
    """Events in a table of a sync relational store; see
    :class:`multistore.consistency.Outbox`. ``clock`` (wall-clock seconds) stamps
    ``created_at``."""

    def __init__(
        self,
        store: SyncRelationalStore,
        *,
        table: str = "multistore_outbox",
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(store, SyncRelationalStore):
            raise UsageError(
                "a sync outbox lives in a sync relational store (multistore.sync.open_store "
                f"of a sqlite:// or postgresql:// URL), not {store!r}"
            )
        check_outbox(table, store.backend)
        self.store = store
        self.table = table
        self.backend = store.backend
        self.clock = clock or time.time
        self._insert = insert_sql(table, self.backend)

    def setup(self) -> None:
        """Create the tables if they are missing (safe to run from several processes)."""
        with self.store.transaction() as tx:
            for statement, params in setup_statements(self.table, self.backend):
                tx.execute(statement, params)

    def add(
        self, tx: SyncTransaction, aggregate: str, event_type: str, payload: Any
    ) -> OutboxEvent:
        """Insert an event with the caller's transaction ``tx``; the event with its id
        and number. Bad input raises :class:`~multistore.errors.InvalidValueError`
        before anything is sent."""
        if not isinstance(tx, SyncTransaction) or tx.status is not TransactionStatus.ACTIVE:
            raise UsageError(
                "outbox.add() takes the caller's open transaction "
                "(with store.transaction() as tx: ... outbox.add(tx, ...)), "
                f"not {tx!r}"
            )
        add = EventInsert.of(self, tx.connection.dialect, aggregate, event_type, payload)
        *first, last = self._insert
        for sql in first:
            tx.execute(sql, add.params)
        return add.event(tx.fetch_one(last, add.params))
