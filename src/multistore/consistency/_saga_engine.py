"""The saga engine: runs sagas step by step against the durable log.

The engine is the thin I/O driver of the pure state machine in
:mod:`multistore.core._saga`: it asks :func:`~multistore.core._saga.next_move`
what to do, writes each transition to the log, and only then acts. Before a step's
action runs, the log records the step as ``started`` (its compensation is now
registered); after it returns, its output. A crash between the two re-runs the
action with the same idempotency key, so actions (and compensations) must be
idempotent under that key — then every effect is applied exactly once.

Each saga is run by the worker that holds its lease (``owner``, ``lease_until`` in
the log); a heartbeat extends the leases of the sagas this engine is running — and of
no other — and every log write is fenced on the owner, so two workers never run one
saga at once. A run that ends without finishing its saga gives the lease back: at
once after a cancellation (any worker may resume the saga), or *blocked* with the
error as its reason after any other error (a worker tries it again after a lease).

Each run is logged with the version of the definition that started it, and only that
version resumes it: a worker keeps old versions registered to finish their runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random as _random
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from multistore._aio import RECANCEL_EVERY, stop_task
from multistore.consistency._etcd_leases import EtcdLeases, WorkerLease, lease_group
from multistore.consistency._log_clock import LogClock
from multistore.consistency._retry import RetryPolicy
from multistore.consistency._saga import (
    JSON,
    ErrorInfo,
    Saga,
    SagaLeaseLostError,
    SagaResult,
    SagaTimeoutError,
    StepContext,
    StepFn,
    StepTimeoutError,
)
from multistore.consistency._saga_log import SagaLog, list_sagas, show_saga
from multistore.core import _saga as sm
from multistore.core._saga import SagaRecord, SagaState, StepState
from multistore.errors import ConflictError, DuplicateKeyError, NotFoundError, UsageError
from multistore.stores.relational import RelationalStore

__all__ = ["DEFAULT_LEASE", "SagaEngine"]

DEFAULT_LEASE = 30.0
"""Seconds a worker holds a saga without renewing; a crashed worker's sagas are
taken over by another worker after this long."""

T = TypeVar("T")

Observer = Callable[[str, str, str | None], None]
"""``observer(event, saga_id, step_name)``, called at each point of a run."""


class SagaEngine:
    """Runs sagas on a log kept in ``log`` (an open relational store).

    ``sagas`` are the definitions this engine can run; register several versions of
    one saga name to finish runs started by older code. ``worker_id`` names this
    worker in the log; a worker restarted with the same id takes its own unfinished
    sagas back at once on :meth:`recover` (never run two live workers with one id).
    Leases and deadlines are on the log database's clock where it has one: on
    PostgreSQL and MariaDB the server computes and compares every lease, and saga
    deadlines use the server's time as last read (at setup and by the heartbeat)
    plus the local monotonic time since, so a worker's wrong wall clock changes
    nothing. An SQLite log is on one machine and uses its clock (``time.time()``),
    which every process on the file shares. A ``clock`` (wall-clock seconds) given
    replaces all of this on every backend; with ``sleep`` (backoff waits) and
    ``random`` (jitter) it lets a test control time.

    ``leases``: hold an etcd lease too (see :class:`EtcdLeases`). The engine's sagas
    are then its only while that lease lives: another engine on the same etcd prefix
    expires them and resumes them as soon as etcd lets the lease go, however long
    ``lease`` is, and this engine writes nothing to the log and starts no step or
    compensation once its etcd lease has run out (those runs end as taken over; it
    takes a new lease, under a new owner name, before it claims again).
    """

    def __init__(
        self,
        log: RelationalStore,
        sagas: Sequence[Saga] = (),
        *,
        worker_id: str | None = None,
        lease: float = DEFAULT_LEASE,
        concurrency: int = 8,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
        observer: Observer | None = None,
        leases: EtcdLeases | None = None,
    ) -> None:
        if lease <= 0:
            raise UsageError(f"lease must be positive, not {lease}")
        if concurrency < 1:
            raise UsageError(f"concurrency must be at least 1, not {concurrency}")
        self.time = LogClock(log, clock)
        self.log = SagaLog(log, self.time)
        self.store = log
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        self.lease = lease
        self.concurrency = concurrency
        self._clock = self.time.now
        self._sleep = sleep
        self._random = random
        self._observer = observer
        self._sagas: dict[tuple[str, str], Saga] = {}
        self._running: set[str] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._ready = False
        self.etcd = (
            None
            if leases is None
            else WorkerLease(leases, lease_group("sagas", log.url), self.worker_id, self._expire)
        )
        for saga in sagas:
            self.register(saga)

    # -- lifetime ----------------------------------------------------------------

    def register(self, saga: Saga) -> None:
        """Make a saga definition known: this engine then starts and resumes the runs
        of its name and version. Register old versions too while their runs last."""
        key = (saga.name, saga.version)
        known = self._sagas.get(key)
        if known is not None and known is not saga:
            raise UsageError(
                f"another definition of saga {saga.name!r} version {saga.version!r} is "
                "registered already; give a changed definition a new version"
            )
        self._sagas[key] = saga

    async def setup(self) -> None:
        """Create the log tables if missing and read the database's clock. Called by
        the first start or recover."""
        if not self._ready:
            await self.log.setup()
            await self.time.sync()
            self._ready = True

    async def close(self) -> None:
        """Stop the heartbeat and give the etcd lease up. (The log store is the
        caller's to close.)"""
        task, self._heartbeat = self._heartbeat, None
        if task is not None:  # cancelled again until it ends: a cancel can be lost
            await stop_task(task, max(self.lease, 4 * RECANCEL_EVERY))
        if self.etcd is not None:
            await self.etcd.close()

    @property
    def owner(self) -> str:
        """The name this engine's leases carry in the log: ``worker_id``, or with
        ``leases`` the worker id and the etcd lease of the current term."""
        return self.worker_id if self.etcd is None else self.etcd.owner

    async def _expire(self, owner: str) -> None:
        await self.log.expire(owner, now=self._clock())

    async def _take_term(self) -> None:
        """With ``leases``: a live etcd lease before this engine claims a saga."""
        if self.etcd is not None:
            await self.etcd.ensure()

    def _check_term(self, saga_id: str) -> None:
        """Refuse to act on a saga once the etcd lease ran out (with ``leases``)."""
        if self.etcd is not None and not self.etcd.valid():
            raise SagaLeaseLostError(
                f"saga {saga_id!r}: the etcd lease of worker {self.owner!r} ran out; "
                "another worker may resume the saga, this one stops"
            )

    async def __aenter__(self) -> Self:
        await self.setup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- starting and recovering -----------------------------------------------------

    async def start(
        self, saga: Saga, input: JSON = None, *, saga_id: str | None = None
    ) -> SagaResult:
        """Run a saga to its end and return the result.

        Idempotent by ``saga_id``: if the log has that id already (same saga, same
        input), nothing new starts — a finished saga returns its recorded result, an
        unfinished one is resumed here if no live worker holds it, and otherwise its
        current state is returned. The same id with another input raises
        :class:`~multistore.errors.ConflictError`.
        """
        record = await self._create(saga, input, saga_id, run_here=True)
        if record is None:
            return await self._existing(saga, input, saga_id)
        return await self._hold(record.saga_id, self._run(saga, record, prestarted=0))

    async def enqueue(self, saga: Saga, input: JSON = None, *, saga_id: str | None = None) -> str:
        """Record a saga as pending without running it; a worker's :meth:`recover`
        runs it. Idempotent by ``saga_id`` as :meth:`start`. Returns the saga id."""
        record = await self._create(saga, input, saga_id, run_here=False)
        if record is None:
            assert saga_id is not None
            await self._check_same(saga, input, saga_id)
            return saga_id
        return record.saga_id

    async def recover(self) -> list[SagaResult]:
        """Resume every unfinished saga (of a registered name and version) that no
        live worker holds, exactly where its log says it stopped; up to
        ``concurrency`` at once. Returns the results of the sagas this call ran:
        finished, stuck, or blocked (``SagaResult.blocked`` says why; one saga that
        cannot run never stops the others)."""
        await self.setup()
        results: list[SagaResult] = []
        tried: set[str] = set()
        while True:
            ids = await self._claim(self.concurrency, exclude=tried)
            if not ids:
                return results
            tried.update(ids)
            batch = await asyncio.gather(*(self._resume_claimed(i) for i in ids))
            results.extend(r for r in batch if r is not None)

    async def _claim(self, limit: int, *, exclude: Collection[str] = ()) -> list[str]:
        """Lease up to ``limit`` resumable sagas of the registered definitions."""
        await self._take_term()
        now = self._clock()
        return await self.log.claim_batch(
            sorted(self._sagas),
            owner=self.owner,
            lease=self.lease,
            now=now,
            limit=limit,
            exclude=sorted({*self._running, *exclude}),
        )

    async def _resume_claimed(self, saga_id: str) -> SagaResult | None:
        """Run a saga this worker has just leased to its end. None if it runs here
        already, another worker took it over, or the log could not be read; a
        blocked result if it could not run (the saga was given back with the
        reason, see :meth:`_hold`)."""
        loaded: list[SagaRecord] = []
        try:
            return await self._resume(saga_id, loaded)
        except SagaLeaseLostError:
            return None
        except Exception as exc:
            if not loaded:
                return None
            return dataclasses.replace(_result(loaded[-1]), blocked=str(ErrorInfo.of(exc)))

    async def result(self, saga_id: str) -> SagaResult:
        """The current result of a saga from the log."""
        record = await self.log.load(saga_id)
        if record is None:
            raise NotFoundError(f"no saga {saga_id!r} in the log")
        blocked = None if record.state.finished else await self.log.blocked(saga_id)
        return dataclasses.replace(_result(record), blocked=blocked)

    # -- operators ---------------------------------------------------------------------

    async def list_sagas(
        self, *, state: str | SagaState | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Sagas in the log (newest first), optionally only those in ``state``."""
        await self.setup()
        return await list_sagas(self.store, state=state, limit=limit)

    async def show(self, saga_id: str) -> dict[str, Any]:
        """One saga with its step history; :class:`NotFoundError` if unknown."""
        await self.setup()
        shown = await show_saga(self.store, saga_id)
        if shown is None:
            raise NotFoundError(f"no saga {saga_id!r} in the log")
        return shown

    async def list_stuck(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """The sagas whose compensation gave up, for an operator."""
        return await self.list_sagas(state=SagaState.STUCK, limit=limit)

    async def retry_stuck(self, saga_id: str) -> SagaResult:
        """Compensate a stuck saga again (fresh retry budgets) and return its result."""
        saga = self._definition(await self._load_stuck(saga_id))
        await self._take_stuck(saga_id)

        async def run() -> SagaResult:
            # The log as it is now that we hold the saga: another operator's retry may
            # have compensated more steps since the read above.
            record = await self._load_stuck(saga_id)
            reopened = sm.reopen_stuck(record)
            await self._save(record, reopened)
            return await self._run(saga, reopened)

        return await self._hold(saga_id, run())

    async def cancel_stuck(self, saga_id: str, reason: str = "") -> SagaResult:
        """Give up on a stuck saga's compensation: it ends ``cancelled`` (nothing runs
        it again; what its steps left is the operator's to undo by hand), with
        ``reason`` logged beside the error that left it stuck. :class:`ConflictError`
        if it is not stuck or another operator or worker holds it."""
        await self._load_stuck(saga_id)
        await self._take_stuck(saga_id)
        try:
            # Read again under our lease: a retry may have moved it on since.
            record = await self._load_stuck(saga_id)
            why = " ".join(reason.split()) or "no reason given"
            before = ErrorInfo.from_json(record.compensation_error)
            message = f"cancelled by an operator: {why}"
            if before is not None:
                message += f" (it was stuck on {before})"
            cancelled = sm.cancel_stuck(record, ErrorInfo("SagaCancelled", message).to_json())
            # A finished state: the fenced write releases the saga as it lands.
            await self._save(record, cancelled)
        except SagaLeaseLostError:
            raise
        except BaseException:
            await self._give_back(saga_id, None)  # still stuck: any operator may act
            raise
        self._emit("saga_cancelled", saga_id, None)
        return _result(cancelled)

    async def _load_stuck(self, saga_id: str) -> SagaRecord:
        record = await self.log.load(saga_id)
        if record is None:
            raise NotFoundError(f"no saga {saga_id!r} in the log")
        if record.state is not SagaState.STUCK:
            raise ConflictError(f"saga {saga_id!r} is {record.state.value}, not stuck")
        return record

    async def _take_stuck(self, saga_id: str) -> None:
        """Lease a stuck saga to this engine (it has no owner, or an operator's lease
        on it ran out) with a fenced write of our own."""
        await self._take_term()
        if not await self.log.take_stuck(saga_id, self.owner, lease=self.lease, now=self._clock()):
            raise ConflictError(f"saga {saga_id!r} was taken by another operator or worker")

    # -- internals ---------------------------------------------------------------------

    def _definition(self, record: SagaRecord) -> Saga:
        """The registered definition that runs ``record``: its name and version, with
        the steps it was logged with (else :class:`ConflictError`)."""
        saga = self._sagas.get((record.name, record.version))
        if saga is None:
            raise NotFoundError(
                f"saga {record.saga_id!r} was started by version {record.version!r} of "
                f"{record.name!r}, which is not registered with this engine"
            )
        logged = [s.name for s in record.steps]
        if logged != saga.step_names:
            raise ConflictError(
                f"saga {record.saga_id!r} was logged with steps {logged} by version "
                f"{record.version!r} of {record.name!r}; the definition registered under "
                f"that version has {saga.step_names}. Register the definition it started "
                "with, and give the changed one a new version"
            )
        return saga

    async def _create(
        self, saga: Saga, input: JSON, saga_id: str | None, *, run_here: bool
    ) -> SagaRecord | None:
        self.register(saga)
        await self.setup()
        text = _dumps(input, what=f"the input of saga {saga.name!r}")
        sid = saga_id if saga_id is not None else uuid.uuid4().hex
        now = self._clock()
        deadline = None if saga.timeout is None else now + saga.timeout
        record = sm.new_saga(sid, saga.name, text, saga.step_names, deadline, saga.version)
        if run_here:
            record = self._start_first(saga, record)
            await self._take_term()
        try:
            await self.log.create(
                record,
                owner=self.owner if run_here else None,
                lease=self.lease if run_here else None,
                now=now,
            )
        except DuplicateKeyError:
            if saga_id is None:
                raise
            return None
        if run_here:
            self._emit("saga_started", sid, None)
        return record

    async def _check_same(self, saga: Saga, input: JSON, saga_id: str) -> SagaRecord:
        record = await self.log.load(saga_id)
        if record is None:
            raise ConflictError(f"saga {saga_id!r} vanished from the log while starting")
        if record.name != saga.name or json.loads(record.input) != json.loads(
            _dumps(input, what="the input")
        ):
            raise ConflictError(
                f"saga id {saga_id!r} was started before as saga {record.name!r} with "
                "another input; a saga id names one run"
            )
        return record

    async def _existing(self, saga: Saga, input: JSON, saga_id: str | None) -> SagaResult:
        assert saga_id is not None
        record = await self._check_same(saga, input, saga_id)
        if (
            record.state.finished
            or saga_id in self._running
            or (record.name, record.version) not in self._sagas
        ):
            return _result(record)  # done, or run here already, or by another version
        await self._take_term()
        now = self._clock()
        if not await self.log.claim(saga_id, owner=self.owner, lease=self.lease, now=now):
            return _result(record)  # a live worker runs it
        try:
            return await self._resume(saga_id) or _result(record)
        except SagaLeaseLostError:
            return _result(record)

    async def _resume(
        self, saga_id: str, loaded: list[SagaRecord] | None = None
    ) -> SagaResult | None:
        """Run a saga this worker holds the lease of, from where its log stands (the
        record read from the log is added to ``loaded``)."""
        if saga_id in self._running:
            return None

        async def run() -> SagaResult | None:
            record = await self.log.load(saga_id)
            if record is None:
                return None
            if loaded is not None:
                loaded.append(record)
            saga = self._definition(record)
            prestarted = None
            if record.state is SagaState.PENDING:
                self._emit("saga_started", saga_id, None)
                started = self._start_first(saga, record)
                await self._save(record, started)
                record, prestarted = started, 0
            else:
                self._emit("saga_resumed", saga_id, None)
            return await self._run(saga, record, prestarted)

        return await self._hold(saga_id, run())

    async def _hold(self, saga_id: str, body: Awaitable[T]) -> T:
        """Await ``body``, which drives saga ``saga_id`` under this worker's lease (the
        heartbeat renews it meanwhile). If it ends with an error the saga is given
        back: released after a cancellation, so that any worker may resume it at
        once; blocked with the error as its reason after any other error, so that a
        worker tries it again only after a lease."""
        self._running.add(saga_id)
        self._ensure_heartbeat()
        try:
            return await body
        except SagaLeaseLostError:
            raise
        except Exception as exc:
            await self._give_back(saga_id, str(ErrorInfo.of(exc)))
            raise
        except BaseException:
            await self._give_back(saga_id, None)
            raise
        finally:
            self._running.discard(saga_id)

    async def _give_back(self, saga_id: str, reason: str | None) -> None:
        """Release (``reason`` None) or block a saga this worker holds; best effort:
        if the log cannot be reached, the lease runs out instead (no heartbeat
        renews it any more)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.lease):
                if reason is None:
                    await self.log.release(saga_id, self.owner)
                else:
                    await self.log.block(
                        saga_id, self.owner, reason, retry_in=self.lease, now=self._clock()
                    )

    async def _run(
        self, saga: Saga, record: SagaRecord, prestarted: int | None = None
    ) -> SagaResult:
        """Drive one saga that this worker holds (inside :meth:`_hold`) until it halts.
        ``prestarted`` is a step whose start this worker has just logged (its action
        has not run)."""
        compensable = [s.compensate is not None for s in saga.flat_steps]
        groups = saga.groups
        while True:
            move = sm.next_move(record, compensable, self._clock(), groups)
            if isinstance(move, sm.Halt):
                return _result(record)
            if isinstance(move, sm.Finish):
                record = await self._save(record, sm.finish(record, move.state))
                self._emit("saga_" + move.state.value, record.saga_id, None)
            elif isinstance(move, sm.Abort):
                error = ErrorInfo.of(SagaTimeoutError(move.reason))
                record = await self._save(record, sm.abort(record, error.to_json()))
            elif isinstance(move, sm.RunStep):
                logged = prestarted == move.index
                record, prestarted = await self._run_step(
                    saga, record, move.index, compensable, groups, logged=logged
                )
            elif isinstance(move, sm.RunGroup):
                record = await self._run_group(saga, record, move, prestarted)
                prestarted = None
            elif isinstance(move, sm.CompensateGroup):
                record = await self._compensate_group(saga, record, move.indices)
            else:
                record = await self._compensate(saga, record, move.index)

    def _start_first(self, saga: Saga, record: SagaRecord) -> SagaRecord:
        """A new saga goes straight to running with its first step started, so its
        creation and the first step's start are one log write."""
        self._emit("step_starting", record.saga_id, saga.flat_steps[0].name)
        return sm.step_started(sm.begin(record), 0)

    async def _run_step(
        self,
        saga: Saga,
        record: SagaRecord,
        index: int,
        compensable: Sequence[bool],
        groups: Sequence[int] | None,
        *,
        logged: bool,
    ) -> tuple[SagaRecord, int | None]:
        step = saga.flat_steps[index]
        sid = record.saga_id
        if not logged:
            self._emit("step_starting", sid, step.name)
            record = await self._save(record, sm.step_started(record, index))
        attempts = record.steps[index].attempts
        self._emit("step_started", sid, step.name)
        ctx = self._context(saga, record, index, attempt=attempts)
        try:
            output = await self._call(step.action, ctx, step.timeout, record.deadline)
            text = _dumps(output, what=f"the output of step {step.name!r}")
        except Exception as exc:
            if self._retrying(step.retry, exc, attempts, record.deadline):
                await self._backoff(step.retry, attempts, "step_retry", sid, step.name)
                return record, None
            self._emit("step_failed", sid, step.name)
            failed = sm.step_failed(record, index, _error_json(exc))
            return await self._save(record, failed), None
        # One log write records this step's output together with the next move:
        # the next step's start, or the saga's completion.
        after = sm.step_completed(record, index, text)
        move = sm.next_move(after, compensable, self._clock(), groups)
        prestarted = None
        if isinstance(move, sm.RunStep):
            self._emit("step_starting", sid, saga.flat_steps[move.index].name)
            after = sm.step_started(after, move.index)
            prestarted = move.index
        elif isinstance(move, sm.Finish):
            after = sm.finish(after, move.state)
        record = await self._save(record, after)
        self._emit("step_completed", sid, step.name)
        if isinstance(move, sm.Finish):
            self._emit("saga_" + move.state.value, sid, None)
        return record, prestarted

    async def _run_group(
        self, saga: Saga, record: SagaRecord, move: sm.RunGroup, prestarted: int | None
    ) -> SagaRecord:
        """Start every member not completed (one log write), run their actions
        concurrently — each with its own retries, timeout and the saga deadline —
        and log all their outcomes in one write. A crash before that write re-runs
        the started members with the same idempotency keys."""
        sid = record.saga_id
        started = record
        for index in move.indices:
            if index != prestarted:
                self._emit("step_starting", sid, saga.flat_steps[index].name)
                started = sm.step_started(started, index)
        if started is not record:
            record = await self._save(record, started)

        async def member(index: int) -> tuple[int, str | None, str | None, int]:
            """(index, output, error, attempts after the first)."""
            step = saga.flat_steps[index]
            first = attempts = record.steps[index].attempts
            self._emit("step_started", sid, step.name)
            while True:
                ctx = self._context(saga, record, index, attempt=attempts, before=move.first)
                try:
                    output = await self._call(step.action, ctx, step.timeout, record.deadline)
                    text = _dumps(output, what=f"the output of step {step.name!r}")
                    return index, text, None, attempts - first
                except Exception as exc:
                    if not self._retrying(step.retry, exc, attempts, record.deadline):
                        self._emit("step_failed", sid, step.name)
                        return index, None, _error_json(exc), attempts - first
                    await self._backoff(step.retry, attempts, "step_retry", sid, step.name)
                    attempts += 1

        ended = await asyncio.gather(*(member(i) for i in move.indices))
        after = record
        for index, _, _, retries in ended:
            for _ in range(retries):  # each retry counts as an attempt, as for one step
                after = sm.step_started(after, index)
        outputs = {i: out for i, out, _, _ in ended if out is not None}
        errors = {i: err for i, _, err, _ in ended if err is not None}
        record = await self._save(record, sm.group_finished(after, outputs, errors))
        for index in sorted(outputs):
            self._emit("step_completed", sid, saga.flat_steps[index].name)
        return record

    async def _compensate_group(
        self, saga: Saga, record: SagaRecord, indices: Sequence[int]
    ) -> SagaRecord:
        """Compensate group members concurrently, each retried under its own policy;
        log the outcomes in one write (any that gave up leaves the saga stuck)."""
        sid = record.saga_id

        async def member(index: int) -> tuple[int, list[str], bool]:
            """(index, the errors of its failed attempts, whether it gave up)."""
            step = saga.flat_steps[index]
            assert step.compensate is not None
            attempts = record.steps[index].compensation_attempts + 1
            errors: list[str] = []
            self._emit("compensation_starting", sid, step.name)
            while True:
                ctx = self._context(saga, record, index, attempt=attempts, compensating=True)
                try:
                    await self._call(step.compensate, ctx, step.timeout, None)
                    return index, errors, False
                except Exception as exc:
                    errors.append(_error_json(exc))
                    policy = step.compensation_retry
                    if not self._retrying(policy, exc, attempts, None):
                        return index, errors, True
                    await self._backoff(policy, attempts, "compensation_retry", sid, step.name)
                    attempts += 1

        ended = await asyncio.gather(*(member(i) for i in indices))
        after = record
        done: list[int] = []
        failed: dict[int, str] = {}
        for index, errors, gave_up in ended:
            # Every failed attempt is counted (the last one of a member that gave up is
            # counted by group_compensated, which marks the saga stuck with it).
            for error in errors[:-1] if gave_up else errors:
                after = sm.compensation_attempted(after, index, error)
            if gave_up:
                failed[index] = errors[-1]
            else:
                done.append(index)
        record = await self._save(record, sm.group_compensated(after, done, failed))
        for index in done:
            self._emit("step_compensated", sid, saga.flat_steps[index].name)
        if failed:
            self._emit("saga_stuck", sid, saga.flat_steps[min(failed)].name)
        return record

    async def _compensate(self, saga: Saga, record: SagaRecord, index: int) -> SagaRecord:
        step = saga.flat_steps[index]
        assert step.compensate is not None
        sid = record.saga_id
        logged = record.steps[index]
        attempts = logged.compensation_attempts + 1
        self._emit("compensation_starting", sid, step.name)
        ctx = self._context(saga, record, index, attempt=attempts, compensating=True)
        try:
            await self._call(step.compensate, ctx, step.timeout, None)
        except Exception as exc:
            error = _error_json(exc)
            policy = step.compensation_retry
            if self._retrying(policy, exc, attempts, None):
                record = await self._save(record, sm.compensation_attempted(record, index, error))
                await self._backoff(policy, attempts, "compensation_retry", sid, step.name)
                return record
            record = await self._save(record, sm.stuck(record, index, error))
            self._emit("saga_stuck", sid, step.name)
            return record
        record = await self._save(record, sm.step_compensated(record, index))
        self._emit("step_compensated", sid, step.name)
        return record

    def _retrying(
        self, policy: RetryPolicy, exc: Exception, attempts: int, deadline: float | None
    ) -> bool:
        """Whether ``exc`` on attempt ``attempts`` is retried: the policy says so and the
        saga deadline (if any) has not passed."""
        if deadline is not None and self._clock() >= deadline:
            return False
        return policy.should_retry(exc, attempts)

    async def _backoff(
        self, policy: RetryPolicy, attempts: int, event: str, saga_id: str, step: str
    ) -> None:
        """Announce a retry and wait out the policy's delay before it."""
        self._emit(event, saga_id, step)
        await self._sleep(policy.delay(attempts, self._random()))

    def _context(
        self,
        saga: Saga,
        record: SagaRecord,
        index: int,
        *,
        attempt: int,
        compensating: bool = False,
        before: int | None = None,
    ) -> StepContext:
        """``results`` are the outputs of the steps before ``before`` (default: this
        step; a group member sees those before its group, whatever siblings did)."""
        logged = record.steps[index]
        results = {
            s.name: json.loads(s.output)
            for s in record.steps[: index if before is None else before]
            if s.output is not None and s.state in (StepState.COMPLETED, StepState.COMPENSATED)
        }
        return StepContext(
            saga_id=record.saga_id,
            saga_name=saga.name,
            step=logged.name,
            idempotency_key=f"{record.saga_id}:{logged.name}",
            input=json.loads(record.input),
            results=results,
            attempt=attempt,
            compensating=compensating,
            output=None if logged.output is None else json.loads(logged.output),
            error=ErrorInfo.from_json(logged.error),
        )

    async def _call(
        self, fn: StepFn, ctx: StepContext, step_timeout: float | None, deadline: float | None
    ) -> JSON:
        self._check_term(ctx.saga_id)
        limit = step_timeout
        if deadline is not None:
            left = max(deadline - self._clock(), 0.0)
            if limit is None or left < limit:
                limit = left
        if limit is None:
            return await fn(ctx)
        # In this task, not wait_for's: on Python 3.11 wait_for returns the step's
        # result when the run is cancelled in the turn the step returns, and the run
        # would go on to the next step after it was cancelled.
        timer = asyncio.timeout(limit)
        try:
            async with timer:
                return await fn(ctx)
        except TimeoutError as exc:
            if not timer.expired():
                raise  # the step's own TimeoutError, not its time running out
            what = "compensation" if ctx.compensating else "action"
            if step_timeout is not None and limit >= step_timeout:
                raise StepTimeoutError(
                    f"the {what} of step {ctx.step!r} of saga {ctx.saga_id!r} ran past "
                    f"its timeout of {step_timeout} s"
                ) from exc
            raise SagaTimeoutError(
                f"step {ctx.step!r} of saga {ctx.saga_id!r} ran past the saga's deadline"
            ) from exc

    async def _save(self, before: SagaRecord, after: SagaRecord) -> SagaRecord:
        self._check_term(after.saga_id)
        now = self._clock()
        await self.log.save(before, after, owner=self.owner, lease=self.lease, now=now)
        return after

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        """Every ``lease / 3`` s, extend the leases of the sagas running here now (and
        read the database's clock again)."""
        me = asyncio.current_task()
        # A beat that lost its cancel still ends once it is no longer the heartbeat.
        while self._heartbeat is me:
            await asyncio.sleep(self.lease / 3)
            if self._heartbeat is not me:
                return
            running = sorted(self._running)
            if self.etcd is not None and not self.etcd.valid():
                continue  # renew nothing once the etcd lease ran out
            with contextlib.suppress(Exception):
                await self.log.renew(self.owner, running, lease=self.lease, now=self._clock())
                await self.time.sync()

    def _emit(self, event: str, saga_id: str, step: str | None) -> None:
        if self._observer is not None:
            self._observer(event, saga_id, step)


def _dumps(value: JSON, *, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(
            f"{what} must be JSON (dicts, lists, str, numbers, bool, None): {exc}"
        ) from exc


def _error_json(exc: BaseException) -> str:
    return ErrorInfo.of(exc).to_json()


def _result(record: SagaRecord) -> SagaResult:
    outputs: Mapping[str, JSON] = {
        s.name: json.loads(s.output)
        for s in record.steps
        if s.output is not None and s.state is StepState.COMPLETED
    }
    return SagaResult(
        saga_id=record.saga_id,
        name=record.name,
        state=record.state,
        outputs=outputs,
        error=ErrorInfo.from_json(record.error),
        compensation_error=ErrorInfo.from_json(record.compensation_error),
        version=record.version,
    )
