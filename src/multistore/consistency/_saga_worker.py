"""A saga worker: a long-running loop that runs the sagas nobody else runs.

It polls the log for the runs of its engine's registered definitions that are free —
enqueued ones, those a dead worker's expired lease left behind, those a cancelled
start gave back, blocked ones whose retry time came — leases them, and runs each to
its end, up to the engine's ``concurrency`` at once, as DBOS's queue workers and
Temporal's workers do. The engine's heartbeat renews the leases of the sagas it runs.
A stop lets the running sagas finish for ``grace`` seconds, then cancels the rest,
which gives their leases back at once so that another worker resumes them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from multistore._aio import RECANCEL_EVERY, stop_task
from multistore.consistency._saga import ErrorInfo, SagaResult
from multistore.consistency._saga_engine import SagaEngine
from multistore.core._saga import SagaState
from multistore.errors import ConflictError, StoreError, UsageError

__all__ = ["SagaWorker", "WorkerStatistics"]


@dataclass(frozen=True)
class WorkerStatistics:
    """What a worker did since it was made."""

    claimed: int = 0
    """Sagas it leased and started running."""
    completed: int = 0
    compensated: int = 0
    stuck: int = 0
    blocked: int = 0
    """Sagas it gave back because it could not run them (``SagaResult.blocked``)."""
    given_up: int = 0
    """Sagas that ended without a result here: another worker took the lease over,
    or the stop cancelled them (their leases were given back)."""
    store_errors: int = 0
    """Polls that failed on the store (the loop goes on)."""
    last_error: ErrorInfo | None = None

    @property
    def finished(self) -> int:
        return self.completed + self.compensated + self.stuck


class SagaWorker:
    """Runs the sagas of ``engine``'s registered definitions until stopped.

    ``poll_interval`` doubles up to ``max_poll_interval`` while a poll finds nothing;
    ``grace`` is how long a stop waits for the running sagas before it cancels them.
    """

    def __init__(
        self,
        engine: SagaEngine,
        *,
        poll_interval: float = 0.1,
        max_poll_interval: float = 2.0,
        grace: float = 30.0,
    ) -> None:
        if not 0 < poll_interval <= max_poll_interval:
            raise UsageError("poll intervals must be positive, the first not above the maximum")
        if grace < 0:
            raise UsageError(f"grace must be seconds >= 0, not {grace}")
        self.engine = engine
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.grace = grace
        self._stats = WorkerStatistics()
        self._tasks: set[asyncio.Task[SagaResult | None]] = set()
        self._ids: set[str] = set()  # the sagas claimed and not ended yet

    def statistics(self) -> WorkerStatistics:
        return self._stats

    @property
    def running(self) -> int:
        """How many sagas run here now."""
        return len(self._tasks)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and run sagas until ``stop`` is set, then stop gracefully (see the
        class). A store that fails or times out ends a poll, not the loop; it is
        counted in :meth:`statistics`. Cancelling ``run`` cancels the running sagas
        (their leases are given back) and waits for them."""
        await self.engine.setup()
        stopping = asyncio.create_task(stop.wait())
        wait = self.poll_interval
        try:
            while not stop.is_set():
                free = self.engine.concurrency - len(self._tasks)
                claimed = await self._poll(free) if free > 0 else 0
                if claimed:
                    wait = self.poll_interval
                    continue
                waiting: set[asyncio.Future[Any]] = {stopping, *self._tasks}
                done, _ = await asyncio.wait(
                    waiting, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if done and free > 0 and not stop.is_set():
                    wait = self.poll_interval  # a saga ended: there may be more to do
                else:
                    wait = min(wait * 2, self.max_poll_interval)
            await self._drain()
        finally:
            stopping.cancel()
            await self._cancel_all()

    async def _poll(self, limit: int) -> int:
        """Lease up to ``limit`` sagas and start running them; how many."""
        try:
            ids = await self.engine._claim(limit, exclude=self._ids)
        except (StoreError, ConflictError) as exc:  # down, timed out, deadlocked
            self._count(store_errors=1, error=ErrorInfo.of(exc))
            return 0
        for saga_id in ids:
            task = asyncio.create_task(self.engine._resume_claimed(saga_id))
            self._tasks.add(task)
            self._ids.add(saga_id)
            task.add_done_callback(functools.partial(self._ended, saga_id=saga_id))
        self._count(claimed=len(ids))
        return len(ids)

    def _ended(self, task: asyncio.Task[SagaResult | None], *, saga_id: str) -> None:
        self._tasks.discard(task)
        self._ids.discard(saga_id)
        if task.cancelled():
            self._count(given_up=1)
            return
        exc = task.exception()
        if exc is not None:
            self._count(given_up=1, error=ErrorInfo.of(exc))
            return
        result = task.result()
        if result is None:
            self._count(given_up=1)
        elif result.blocked is not None:
            self._count(blocked=1)
        elif result.state is SagaState.COMPLETED:
            self._count(completed=1)
        elif result.state is SagaState.COMPENSATED:
            self._count(compensated=1)
        elif result.state is SagaState.STUCK:
            self._count(stuck=1)
        else:
            self._count(given_up=1)

    async def _drain(self) -> None:
        """Wait up to ``grace`` seconds for the running sagas."""
        if self._tasks and self.grace > 0:
            await asyncio.wait(set(self._tasks), timeout=self.grace)

    async def _cancel_all(self) -> None:
        """Cancel the running sagas and wait for them, cancelling again those that lost
        the cancel, for at most a lease (past it another worker may take them over, and
        a straggler's log writes are fenced)."""
        bound = max(self.engine.lease, 4 * RECANCEL_EVERY)
        stops = [stop_task(task, bound) for task in set(self._tasks)]
        await asyncio.gather(*stops, return_exceptions=True)

    def _count(self, *, error: ErrorInfo | None = None, **more: int) -> None:
        stats = self._stats
        changes: dict[str, Any] = {name: getattr(stats, name) + n for name, n in more.items()}
        if error is not None:
            changes["last_error"] = error
        self._stats = dataclasses.replace(stats, **changes)
