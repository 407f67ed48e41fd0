"""NATS JetStream as the outbox's destination, and a durable consumer feeding an inbox.

:class:`JetStreamDestination` is a relay handler (``OutboxRelay(outbox,
destination)``): it publishes each event to JetStream and returns once the stream
acknowledged it (stored on a majority of the stream's replicas):

- the subject is ``{prefix}.{aggregate type}``, the aggregate type being the part of
  the aggregate id before its first ``:`` (``order:17`` → ``outbox.order``);
- the event id goes in the ``Nats-Msg-Id`` header, so a publish the relay repeats
  (its acknowledgement was lost, the relay restarted) is dropped by JetStream as a
  duplicate within the stream's ``duplicate_window`` — and counted as delivered;
- the aggregate, sequence number, type and creation time travel as headers
  (``Multistore-Aggregate`` …), the payload as JSON.

The relay hands one aggregate's events in order and waits for each acknowledgement,
so JetStream stores them in order per aggregate.

:func:`consume_jetstream` is the other side: a durable pull consumer on the stream;
each message becomes an :class:`~multistore.consistency.OutboxEvent` again and goes
through :meth:`Inbox.process` (the idempotency store remembers the event id per
consumer), then is acknowledged. A redelivery after a crash between the effect and the
acknowledgement finds the event done and is only acknowledged, so the effect happens
once. A handler that fails is negatively acknowledged and redelivered later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Self

from multistore.consistency._inbox import Inbox
from multistore.consistency._outbox import OutboxEvent
from multistore.errors import (
    ConfigError,
    Outcome,
    StoreTimeoutError,
    StoreUnavailableError,
    UsageError,
)
from multistore.urls import StoreURL, parse_url

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

__all__ = ["JetStreamDestination", "consume_jetstream", "subject_for"]

_HEADERS: Final = (
    "Multistore-Aggregate",
    "Multistore-Seq",
    "Multistore-Type",
    "Multistore-Created",
)


def subject_for(prefix: str, event: OutboxEvent) -> str:
    """``{prefix}.{aggregate type}``: the aggregate id up to its first ``:``, with the
    characters NATS gives a meaning to (``.``, ``*``, ``>``, spaces) replaced by ``_``."""
    kind = event.aggregate.split(":", 1)[0] or "default"
    for special in ".*> \t":
        kind = kind.replace(special, "_")
    return f"{prefix}.{kind}"


def _servers(url: StoreURL) -> list[str]:
    if url.scheme != "nats":
        raise ConfigError(f"JetStream needs a nats:// URL, not {url.render()}")
    auth = ""
    if url.username is not None:
        from urllib.parse import quote

        auth = quote(url.username, safe="")
        if url.password is not None:
            auth += ":" + quote(url.password, safe="")
        auth += "@"
    return [f"nats://{auth}{h}:{p}" for h, p in url.hosts]


async def _connect(url: StoreURL) -> Client:
    try:
        import nats
    except ImportError:
        raise ConfigError(
            "the NATS JetStream destination needs nats-py; run: pip install 'multistore[nats]'"
        ) from None
    try:
        return await nats.connect(
            servers=_servers(url),
            connect_timeout=url.float_option("connect_timeout", 2.0),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            allow_reconnect=True,
        )
    except Exception as exc:  # nats-py raises its own and OSError variants
        raise StoreUnavailableError(
            f"cannot connect to NATS at {url}: {exc}", outcome=Outcome.DEFINITE
        ) from exc


class JetStreamDestination:
    """An outbox relay handler publishing to a JetStream stream. Open with :meth:`open`."""

    def __init__(
        self, client: Client, js: JetStreamContext, *, stream: str, prefix: str, timeout: float
    ) -> None:
        self.client = client
        self.js = js
        self.stream = stream
        self.prefix = prefix
        self.timeout = timeout
        self.published = 0
        self.duplicates = 0
        """Publishes JetStream dropped as repeats of an event id it had stored."""

    @classmethod
    async def open(
        cls,
        url: str | StoreURL,
        *,
        stream: str = "OUTBOX",
        prefix: str = "outbox",
        replicas: int = 3,
        duplicate_window: float = 120.0,
    ) -> Self:
        """Connect to ``nats://h1:4222,h2:4222,h3:4222`` and make sure ``stream``
        exists (subjects ``{prefix}.>``, ``replicas`` copies, file storage, the
        deduplication window in seconds; an existing stream is left as it is)."""
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        parsed = parse_url(url)
        client = await _connect(parsed)
        js = client.jetstream()
        timeout = parsed.float_option("timeout", 5.0)
        try:
            try:
                await js.stream_info(stream)
            except NotFoundError:
                await js.add_stream(
                    StreamConfig(
                        name=stream,
                        subjects=[f"{prefix}.>"],
                        num_replicas=replicas,
                        storage=StorageType.FILE,
                        duplicate_window=duplicate_window,
                    )
                )
        except BaseException:
            await client.close()
            raise
        return cls(client, js, stream=stream, prefix=prefix, timeout=timeout)

    async def close(self) -> None:
        await self.client.close()

    async def __call__(self, event: OutboxEvent) -> None:
        """Publish ``event`` and wait for the stream's acknowledgement. A timeout or a
        lost connection is indeterminate (the relay retries; JetStream drops the
        repeat by its event id)."""
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        headers = {
            "Nats-Msg-Id": event.event_id,
            "Multistore-Aggregate": event.aggregate,
            "Multistore-Seq": str(event.seq),
            "Multistore-Type": event.event_type,
            "Multistore-Created": repr(event.created_at),
        }
        data = json.dumps(event.payload).encode()
        subject = subject_for(self.prefix, event)
        try:
            ack = await self.js.publish(
                subject, data, timeout=self.timeout, stream=self.stream, headers=headers
            )
        except (TimeoutError, NatsTimeout) as exc:
            raise StoreTimeoutError(
                f"JetStream did not acknowledge event {event.event_id} on {subject} "
                f"within {self.timeout:g} s"
            ) from exc
        except NoRespondersError as exc:  # no JetStream leader for the stream right now
            raise StoreUnavailableError(
                f"no JetStream server took event {event.event_id} on {subject}",
                outcome=Outcome.DEFINITE,
            ) from exc
        except Exception as exc:
            raise StoreUnavailableError(
                f"publishing event {event.event_id} to JetStream failed: {exc}"
            ) from exc
        self.published += 1
        if ack.duplicate:
            self.duplicates += 1


def event_from_message(data: bytes, headers: dict[str, str] | None) -> OutboxEvent:
    """The outbox event a :class:`JetStreamDestination` published."""
    h = headers or {}
    missing = [name for name in ("Nats-Msg-Id", *_HEADERS) if name not in h]
    if missing:
        raise UsageError(f"not an outbox event: headers {missing} are missing")
    return OutboxEvent(
        event_id=h["Nats-Msg-Id"],
        aggregate=h["Multistore-Aggregate"],
        seq=int(h["Multistore-Seq"]),
        event_type=h["Multistore-Type"],
        payload=json.loads(data),
        created_at=float(h["Multistore-Created"]),
    )


async def consume_jetstream(
    destination: JetStreamDestination,
    inbox: Inbox,
    handler: Callable[[OutboxEvent], Awaitable[object]],
    stop: asyncio.Event,
    *,
    durable: str = "inbox",
    batch: int = 32,
    idle: float = 0.5,
) -> int:
    """Feed the stream's events through ``inbox`` into ``handler`` until ``stop`` is
    set, with a durable pull consumer named ``durable`` (its position survives
    restarts). Returns how many messages this call acknowledged."""
    from nats.errors import TimeoutError as NatsTimeout

    acknowledged = 0
    subscription: Any = None
    try:
        while not stop.is_set():
            try:
                if subscription is None:  # (again) after a server of the cluster went away
                    subscription = await destination.js.pull_subscribe(
                        f"{destination.prefix}.>", durable=durable, stream=destination.stream
                    )
                messages = await subscription.fetch(batch, timeout=idle)
            except (TimeoutError, NatsTimeout):
                continue
            except Exception:
                subscription = None
                await asyncio.sleep(idle)
                continue
            for message in messages:
                event = event_from_message(message.data, _headers(message))
                try:
                    await inbox.process(event, handler)
                except Exception:  # failed or still running elsewhere: redeliver later
                    with contextlib.suppress(Exception):
                        await message.nak(delay=idle)
                    continue
                try:
                    await message.ack_sync()
                except Exception:  # lost: JetStream redelivers, the inbox skips it
                    continue
                acknowledged += 1
    finally:
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
    return acknowledged


def _headers(message: Any) -> dict[str, str] | None:
    headers = message.headers
    return dict(headers) if headers else None
