"""The inbox: a consumer processes each outbox event once, whatever the redeliveries.

The relay delivers at least once; the inbox turns that into one completed handler run
per event id and consumer. It keeps no table of its own: each event is an
idempotency key (the event id, scoped by the consumer's name) in an
:class:`~multistore.consistency.Idempotency` store, so a redelivered event finds its
key completed and is skipped; an event whose first run is still alive gets
:class:`~multistore.errors.IdempotencyInProgressError` (the relay retries it after
``retry_after``); a failed run stores nothing, so the retry runs the handler again.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from multistore.consistency._idempotency import Idempotency
from multistore.consistency._outbox import OutboxEvent

__all__ = ["Inbox", "deduplicated"]

Handler = Callable[[OutboxEvent], Awaitable[object]]


class Inbox:
    """Deduplicates events for one consumer (``consumer`` is the idempotency client
    scope: two consumers of the same events each process every event once)."""

    def __init__(self, idem: Idempotency, *, consumer: str = "inbox") -> None:
        self.idem = idem
        self.consumer = consumer

    async def process(self, event: OutboxEvent, handler: Handler) -> bool:
        """Run ``handler(event)`` unless this consumer already completed the event;
        True when it ran now, False for a duplicate. An error of the handler is
        raised and not stored (a redelivery runs it again)."""
        fingerprint = {"aggregate": event.aggregate, "seq": event.seq, "type": event.event_type}
        async with self.idem.begin(event.event_id, fingerprint, client=self.consumer) as run:
            if run.replayed:
                return False
            try:
                await handler(event)
            except BaseException:
                run.discard()
                raise
            return True

    def wrap(self, handler: Handler) -> Handler:
        """``handler`` deduplicated: a relay handler that skips events already done."""

        @functools.wraps(handler)
        async def deduplicated_handler(event: OutboxEvent) -> bool:
            return await self.process(event, handler)

        return deduplicated_handler


def deduplicated(handler: Handler, idem: Idempotency, *, consumer: str = "inbox") -> Handler:
    """``Inbox(idem, consumer=consumer).wrap(handler)``."""
    return Inbox(idem, consumer=consumer).wrap(handler)
