"""Idempotency keys for sync code: :class:`SyncIdempotency` and the :func:`idempotent`
decorator for plain functions, with the semantics of
:class:`~multistore.consistency.Idempotency` (one execution per key, replay, 422 on
a reused key, 409 while in flight, leases, recovery points).

The protocol is the async one, not a copy: a :class:`SyncIdempotency` runs it on an
event loop of its own, on a daemon thread, with an async store opened from the
URL of the store it is given. The loop is needed anyway: the lease of a run in
progress is renewed by a heartbeat *while* the caller's function runs on the
caller's thread. Each claim and each outcome is one hop to that loop (and the
store's round trips); the function itself runs on the calling thread. Threads may
share one :class:`SyncIdempotency`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, ParamSpec, TypeVar, cast

from multistore.consistency._idempotency import (
    DEFAULT_POLICY,
    Idempotency,
    IdempotencyPolicy,
    IdempotentRun,
    _check_scope,
    check_idempotency_key,
)
from multistore.consistency._idempotency_backends import IdempotencyRecord
from multistore.errors import UsageError
from multistore.stores import open_store
from multistore.stores._base import Store
from multistore.stores._sync_base import SyncStore
from multistore.urls import StoreURL, parse_url

__all__ = ["SyncIdempotency", "SyncIdempotentRun", "idempotent"]

P = ParamSpec("P")
T = TypeVar("T")


class _Loop:
    """An event loop running on a daemon thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="multistore-idempotency", daemon=True
        )
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncIdempotentRun:
    """One claim on an idempotency key, from ``with idem.begin(...) as run``; see
    :class:`~multistore.consistency.IdempotentRun`."""

    def __init__(self, run: IdempotentRun, loop: _Loop) -> None:
        self._run = run
        self._loop = loop

    @property
    def replayed(self) -> bool:
        return self._run.replayed

    @property
    def resumed(self) -> bool:
        return self._run.resumed

    @property
    def key(self) -> str:
        return self._run.key

    @property
    def client(self) -> str:
        return self._run.client

    @property
    def record(self) -> IdempotencyRecord:
        return self._run.record

    @property
    def recovery_point(self) -> str | None:
        return self._run.recovery_point

    @property
    def recovery_data(self) -> Any:
        return self._run.recovery_data

    def result(self) -> Any:
        """The stored value of a replayed run; raises the stored error if it failed."""
        return self._run.result()

    def set_result(self, value: Any) -> None:
        """What to store (JSON) when the block ends normally."""
        self._run.set_result(value)

    def discard(self) -> None:
        """Store no outcome: the key is released when the block ends."""
        self._run.discard()

    def checkpoint(self, point: str, data: Any = None) -> None:
        """Record a recovery point (see the async ``checkpoint``)."""
        self._loop.call(self._run.checkpoint(point, data))


class SyncIdempotency:
    """Idempotency keys kept in a key-value or relational store, for sync code.

    ``store`` is a sync store (or its URL); the records go to the same database
    through an async store opened from that URL on this object's event loop thread.
    Close it (or use it as a context manager) to stop the thread and the store.

    >>> with SyncIdempotency(store) as idem:  # doctest: +SKIP
    ...     with idem.begin("order-42", {"amount": 10}, client="alice") as run:
    ...         if run.replayed:
    ...             return run.result()
    ...         run.set_result(charge(10))
    """

    def __init__(
        self,
        store: SyncStore | str | StoreURL,
        *,
        policy: IdempotencyPolicy = DEFAULT_POLICY,
        namespace: str = "idem:",
        table: str = "multistore_idempotency",
    ) -> None:
        given = store if isinstance(store, SyncStore) else None
        url = given.url if given is not None else parse_url(cast("str | StoreURL", store))
        if url.is_file and url.path == ":memory:":
            raise UsageError(
                "sync idempotency opens its own connection to the store: an in-memory "
                "SQLite database (sqlite:///:memory:) would be a different one; use a file"
            )
        self._loop = _Loop()
        try:
            model = given.model if given is not None else None
            self._store: Store = self._loop.call(_open(url, model))
        except BaseException:
            self._loop.close()
            raise
        self.idem = Idempotency(self._store, policy=policy, namespace=namespace, table=table)
        """The async :class:`~multistore.consistency.Idempotency` doing the work."""
        self._closed = False

    def close(self) -> None:
        """Close the store and stop the event loop thread. Safe to call twice."""
        if not self._closed:
            self._closed = True
            try:
                self._loop.call(self._store.close())
            finally:
                self._loop.close()

    def __enter__(self) -> SyncIdempotency:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def begin(
        self, key: str | None, payload: Any, *, client: str = "default"
    ) -> Iterator[SyncIdempotentRun]:
        """Claim ``key`` for ``client`` with ``payload``; see the async ``begin``."""
        scope, checked = _check_scope(client), check_idempotency_key(key)
        run = self._call(self._claim(scope, checked, payload))
        if run.replayed:
            yield SyncIdempotentRun(run, self._loop)
            return
        try:
            yield SyncIdempotentRun(run, self._loop)
        except BaseException as exc:
            self._loop.call(run._finish(exc))
            raise
        self._loop.call(run._finish(None))

    async def _claim(self, scope: str, key: str, payload: Any) -> IdempotentRun:
        run = await self.idem._claim(scope, key, payload)
        if not run.replayed:
            run._start_heartbeat()  # renews the lease on this loop while the caller runs
        return run

    def get(self, key: str, *, client: str = "default") -> IdempotencyRecord | None:
        """The live record of ``key`` (None when missing or expired)."""
        return self._call(self.idem.get(key, client=client))

    def reap(self) -> int:
        """Delete expired records now; the number deleted."""
        return self._call(self.idem.reap())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise UsageError("this SyncIdempotency is closed")
        return self._loop.call(coro)


async def _open(url: StoreURL, model: str | None) -> Store:
    return await open_store(url, model=model)


def idempotent(
    idem: SyncIdempotency,
    *,
    key: Callable[..., str | None],
    client: str | Callable[..., str] = "default",
    payload: Callable[..., Any] | None = None,
    required: bool = True,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Make a plain function idempotent; the arguments are those of the async
    :func:`~multistore.consistency.idempotent`. The function runs on the calling
    thread; its return value must be JSON."""

    def wrap(fn: Callable[P, T]) -> Callable[P, T]:
        name = f"{fn.__module__}.{fn.__qualname__}"

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            k = key(*args, **kwargs)
            if k is None and not required:
                return fn(*args, **kwargs)
            scope = client(*args, **kwargs) if callable(client) else client
            body = payload(*args, **kwargs) if payload is not None else [args, kwargs]
            with idem.begin(k, {"function": name, "payload": body}, client=scope) as run:
                if run.replayed:
                    return cast(T, run.result())
                value = fn(*args, **kwargs)
                run.set_result(value)
            return value

        return wrapper

    return wrap
