"""One explored schedule: actors, the steps they take at store calls, and the faults.

An *actor* stands for a process: a coordinator, a recovery run, a worker, a relay, a
client. It runs the real protocol code in tasks of its own. Every call it makes to an
embedded store (through :class:`multistore.stores._worker.Worker`) is a *step*: before
the call the actor waits for the scheduler, which lets one waiting actor go at a time
when nothing else can run, picked by a seeded random choice. At a step the scheduler
may also inject a fault:

* **crash** — the process dies: its SQLite connections are closed without a commit
  (SQLite rolls back what was open, as after a kill), its tasks are cancelled, and any
  store call it still tries raises :class:`ActorCrashed` without running. What it wrote
  durably stays. An actor with a ``restart`` comes back as a new incarnation.
* **cancel** — the actor's main task is cancelled there (a client that disconnects, an
  ``asyncio.timeout`` that fires), before or after the call took effect.
* **error** — the call fails before it runs (a definite store error).
* **lost reply** — the call took effect, the caller gets an indeterminate error; an
  open transaction on that connection is rolled back, as a server does when its
  connection drops.
* **stall** — the whole process is held for up to a minute of virtual time (a GC
  pause, a SIGSTOP): none of its store calls goes through, so its heartbeats stop,
  its leases expire and others move on.
* **clock jump** — the actor's wall clock (``time.time()``) jumps by up to ±30 s.
* **clock leap** (off unless a suite asks for it) — a rare, large jump: by half of
  ``clock_leap_seconds`` up to all of it, either way (past a skew guard of a minute).
* **partition** — the actor is cut off from one store (one node) for up to 10 s: its
  requests there time out, either before they arrive or after they took effect.
* **duplicate** — a message to a node (a worker the scenario names in
  :attr:`Simulation.messages`) is delivered twice.
* **kill**, **interrupt** (never drawn) — a scenario crashes an actor, or cancels what it
  does, at a point of its choosing (:meth:`Simulation.kill`, :meth:`Simulation.interrupt`,
  say from a :attr:`Simulation.watches` callback right after a given store call).
* **lost replies** — from this call on, every reply of one request (the work an actor
  runs with :meth:`Actor.call` or :meth:`Actor.start`) is lost: its calls take effect,
  the caller hears none of them (a connection that drops every answer for the rest of
  one write). Off unless a scenario asks for it (:attr:`Faults.lost_replies`).

Time is virtual (:class:`~multistore.lab.explore._loop.VirtualTimeLoop`); ``time.time``,
``time.monotonic``, ``os.urandom`` (hence ``uuid.uuid4``) and the ``random`` module are
replaced for the duration of a schedule with versions driven by the seed, so that one
seed replays the same schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import functools
import os
import random
import sqlite3
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from multistore.errors import Outcome, StoreTimeoutError, StoreUnavailableError
from multistore.lab.explore._loop import VirtualTimeLoop
from multistore.stores._worker import Worker

__all__ = [
    "Actor",
    "ActorCrashed",
    "ActorState",
    "Faults",
    "InvariantViolation",
    "LivenessError",
    "Simulation",
]

T = TypeVar("T")

#: Virtual wall-clock time at the start of every schedule (2026-01-01T00:00:00Z).
EPOCH: Final = 1_767_225_600.0
#: Virtual time one step may take, at most (drawn uniformly for each step).
STEP_TIME: Final = 0.002
#: SQLite's busy handler waits about this long between tries (seconds), at most.
BUSY_BACKOFF: Final = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1)

#: The real wall clock, taken before a run replaces ``time.time``.
_real_time = time.time

_ACTOR: contextvars.ContextVar[Actor | None] = contextvars.ContextVar(
    "multistore_explore_actor", default=None
)


class ActorCrashed(BaseException):
    """Raised into a crashed actor that still tries a store call: its process is gone,
    so the call never runs. A BaseException, so ``except Exception`` cannot absorb it."""


class InvariantViolation(AssertionError):
    """A protocol invariant did not hold after a schedule."""


class LivenessError(InvariantViolation):
    """Actors did not finish within the virtual time a scenario allows them."""


class ActorState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    CRASHED = "crashed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class _Action(enum.Enum):
    PROCEED = "proceed"
    CRASH = "crash"
    CANCEL = "cancel"
    ERROR = "error"
    LOST = "lost reply"


@dataclass(frozen=True)
class Faults:
    """The most a schedule injects: per-step probabilities of each fault (each
    schedule draws its own rates between 0 and these) and a cap on faults per
    schedule. ``Faults()`` injects none; :meth:`all` is the usual mix."""

    crash: float = 0.0
    cancel: float = 0.0
    error: float = 0.0
    lost_reply: float = 0.0
    stall: float = 0.0
    clock_jump: float = 0.0
    max_faults: int = 4
    stall_seconds: float = 60.0
    clock_jump_seconds: float = 30.0
    partition: float = 0.0
    partition_seconds: float = 10.0
    duplicate: float = 0.0
    clock_leap: float = 0.0
    clock_leap_seconds: float = 180.0
    lost_replies: float = 0.0
    """Per step: every reply of the step's request is lost from there on (0: never,
    and the schedules drawn are those of a scenario that does not know the field)."""

    @classmethod
    def all(cls, rate: float = 0.08, *, max_faults: int = 4) -> Faults:
        return cls(
            rate,
            rate,
            rate,
            rate,
            rate / 2,
            rate / 2,
            max_faults,
            partition=rate / 2,
            duplicate=rate / 2,
        )

    def drawn(self, rng: random.Random) -> Faults:
        """This schedule's rates: each kind off (a third of the time) or up to its cap."""

        def one(cap: float) -> float:
            return 0.0 if cap == 0 or rng.random() < 1 / 3 else rng.uniform(0, cap)

        return Faults(
            one(self.crash),
            one(self.cancel),
            one(self.error),
            one(self.lost_reply),
            one(self.stall),
            one(self.clock_jump),
            rng.randint(0, self.max_faults),
            self.stall_seconds,
            self.clock_jump_seconds,
            one(self.partition),
            self.partition_seconds,
            one(self.duplicate),
            one(self.clock_leap),
            self.clock_leap_seconds,
            one(self.lost_replies),  # draws nothing when the cap is 0
        )


class Actor:
    """One simulated process (see the module docstring)."""

    def __init__(
        self,
        sim: Simulation,
        name: str,
        main: Callable[[Actor], Awaitable[None]],
        *,
        restart: Callable[[Actor], Awaitable[None]] | None,
        crashable: bool,
        incarnation: int = 1,
        cancellable: bool = True,
    ) -> None:
        self.sim = sim
        self.name = name
        self.main = main
        self.restart = restart
        self.crashable = crashable
        self.cancellable = cancellable
        """Whether a cancel fault outside a request may cancel the main task (no for
        a server process: only its requests are cancelled)."""
        self.incarnation = incarnation
        self.state = ActorState.RUNNING
        self.error: BaseException | None = None
        self.clock_offset = 0.0
        self.priority = sim.rng.random()
        self.task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.connections: list[sqlite3.Connection] = []
        self.on_crash: list[Callable[[], None]] = []
        self.on_stall: list[Callable[[float], None]] = []
        """Called with the seconds the process is held (a SIGSTOP, a long GC pause)."""
        self.stalled_until = 0.0
        self.successor: Actor | None = None
        self.finished: asyncio.Future[None] = sim.loop.create_future()

    @property
    def label(self) -> str:
        return f"{self.name}#{self.incarnation}"

    @property
    def alive(self) -> bool:
        return self.state is ActorState.RUNNING

    def wall_clock(self) -> float:
        """This actor's ``time.time()`` (virtual, with its clock jumps)."""
        return self.sim.wall_time(self)

    def start(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``work`` as a request another actor sends this process: its store calls
        are this actor's steps, it dies with this actor, and a cancel fault at one of
        its steps cancels the request (a client that went away), not the process."""
        context = contextvars.copy_context()
        context.run(_ACTOR.set, self)
        task = self.sim.loop.create_task(_as_request(work), context=context)
        return task

    async def call(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` as one request of this process: a cancel fault cancels the
        request (its caller sees ``CancelledError``), and the process goes on."""
        return await self.sim.loop.create_task(_as_request(work))

    def last(self) -> Actor:
        """The latest incarnation of this process."""
        actor = self
        while actor.successor is not None:
            actor = actor.successor
        return actor

    def _cancel(self, request: asyncio.Task[Any] | None = None) -> None:
        """Cancel the request the step belongs to, else the main task."""
        target = request or _REQUEST.get() or (self.task if self.cancellable else None)
        if target is not None:
            target.cancel()

    def __repr__(self) -> str:
        return f"<Actor {self.label} {self.state.value}>"


@dataclass
class _Waiter:
    actor: Actor
    future: asyncio.Future[_Action]
    what: str
    ready_at: float
    faults: bool = True
    request: asyncio.Task[Any] | None = None

    @property
    def due(self) -> float:
        """When it may go: its own time, and not while its process is stalled."""
        return max(self.ready_at, self.actor.stalled_until)


class _SQLiteConnection(sqlite3.Connection):
    """A connection that belongs to the actor that opened it (closed when it crashes)
    and never sleeps in SQLite's busy handler: a ``PRAGMA busy_timeout`` is recorded
    (the explorer waits that long on virtual time, see :meth:`_Hook._invoke`) and set
    to 0."""

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self.file = Path(str(database)).name
        self._sim = _CURRENT.get()
        if self._sim is not None:
            self._sim._adopt(self)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self._sim is not None and sql.startswith("PRAGMA busy_timeout"):
            _, _, value = sql.partition("=")
            if value.strip():
                self._sim._busy_timeouts[id(self)] = int(value) / 1000
                sql = "PRAGMA busy_timeout = 0"
        return super().execute(sql, *args)


_REQUEST: contextvars.ContextVar[asyncio.Task[Any] | None] = contextvars.ContextVar(
    "multistore_explore_request", default=None
)


async def _as_request(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` with its own task marked as the request a cancel fault cancels."""
    _REQUEST.set(asyncio.current_task())
    return await work


_CURRENT: contextvars.ContextVar[Simulation | None] = contextvars.ContextVar(
    "multistore_explore_sim", default=None
)


class _Hook:
    """Runs one worker's calls inline, each a step of the actor that owns the worker."""

    def __init__(self, sim: Simulation, name: str, actor: Actor | None) -> None:
        self.sim = sim
        self.name = name
        self.actor = actor
        self.connections: list[sqlite3.Connection] = []

    def close(self) -> None:
        pass

    def run_sync(self, call: Callable[[], T]) -> T:
        with self.sim._calling(self):
            return call()

    @property
    def target(self) -> str:
        """What a partition cuts this actor off from: the store's file, else the worker."""
        if self.connections:
            return str(getattr(self.connections[0], "file", self.name))
        return self.name

    def describe(self, call: Callable[[], Any]) -> str:
        """``file: SQL`` for the trace: the store's file and the statement's first words."""
        where = getattr(self.connections[0], "file", self.name) if self.connections else self.name
        args = getattr(call, "args", ())
        for arg in args:
            if isinstance(arg, str) and arg[:1].isalpha() and arg.split(None, 1)[0].isupper():
                words = " ".join(arg.split()[:4])
                return f"{where}: {words[:48]}"
        inner = args[0] if args and isinstance(args[0], types.FunctionType) else None
        inner = inner or getattr(call, "func", None)
        return f"{where}: {getattr(inner, '__name__', 'call')}"

    async def run(self, call: Callable[[], T]) -> T:
        actor = self.actor
        what = self.name
        cut: str | None = None
        if actor is not None:
            what = self.describe(call)
            if not actor.alive:
                raise ActorCrashed(f"{actor.label} crashed; its call to {what} never ran")
            closing = what.endswith(": close")  # closing a file does not fail
            action = await self.sim._step(actor, what, faults=not closing, target=self.target)
            if action is _Action.ERROR:
                self._drop_transactions()
                raise StoreUnavailableError(
                    f"explorer: {what} failed before the call ran",
                    outcome=Outcome.DEFINITE,
                )
            cut = None if closing else self.sim._partitioned(actor, self.target)
            if cut == "request":
                self._drop_transactions()  # the connection is gone with its transaction
                raise StoreTimeoutError(f"explorer: {what} timed out (partitioned)")
        result = await self._invoke(call)
        if cut == "reply":
            self._drop_transactions()
            raise StoreTimeoutError(
                f"explorer: {what} timed out after it took effect (partitioned)"
            )
        if actor is not None and self.sim._duplicates(self.name):
            self.sim._trace(f"{actor.label} {what}: delivered twice")
            with contextlib.suppress(Exception):
                await self._invoke(call)
        if actor is not None and not what.endswith(": close"):
            if self.sim.watches:
                await self.sim._watch(actor, what)
            action = self.sim._after(actor, what)
            if action is _Action.LOST:
                self._drop_transactions()
                raise StoreTimeoutError(
                    f"explorer: the reply of {what} was lost (the call took effect)"
                )
            if action is _Action.CRASH:
                raise ActorCrashed(f"{actor.label} crashed after its call to {what}")
            if action is _Action.CANCEL:
                # Delivered at this await if this is the main task, else at the main
                # task's own await: the call took effect either way.
                await asyncio.sleep(0)
        return result

    async def _invoke(self, call: Callable[[], T]) -> T:
        """Run the call; SQLite's busy wait (a lock another actor holds) becomes a
        backoff on virtual time, bounded by the connection's busy timeout."""
        waited = 0.0
        tries = 0
        while True:
            try:
                with self.sim._calling(self):
                    return call()
            except BaseException as exc:
                timeout = self._busy_timeout()
                if not _busy(exc) or self._in_transaction() or waited >= timeout:
                    raise
            pause = BUSY_BACKOFF[min(tries, len(BUSY_BACKOFF) - 1)]
            tries += 1
            waited += pause
            await asyncio.sleep(pause)

    def _busy_timeout(self) -> float:
        timeouts = [self.sim._busy_timeouts.get(id(c), 5.0) for c in self.connections]
        return max(timeouts, default=5.0)

    def _in_transaction(self) -> bool:
        return any(_safe_in_transaction(c) for c in self.connections)

    def _drop_transactions(self) -> None:
        for conn in self.connections:
            if _safe_in_transaction(conn):
                with contextlib.suppress(sqlite3.Error):
                    conn.rollback()


def _safe_in_transaction(conn: sqlite3.Connection) -> bool:
    try:
        return conn.in_transaction
    except sqlite3.ProgrammingError:  # closed
        return False


def _busy(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is SQLite's "database is locked"."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, sqlite3.OperationalError):
            name = getattr(exc, "sqlite_errorname", "") or ""
            if name in ("SQLITE_BUSY", "SQLITE_LOCKED") or (
                not name and "database is locked" in str(exc)
            ):
                return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class Simulation:
    """The world of one schedule: its loop, actors, scheduler and faults.

    A scenario (``async def scenario(sim)``) sets up its stores under
    :attr:`directory`, :meth:`spawn`\\ s actors, :meth:`join`\\ s them, calls
    :meth:`quiesce` and checks its invariants (raising :class:`InvariantViolation`).
    Code the scenario runs itself (not in an actor) takes no steps and meets no faults.
    """

    def __init__(self, seed: int, faults: Faults, directory: Path, *, virtual: bool = True) -> None:
        self.seed = seed
        self.virtual = virtual
        self.rng = random.Random(seed)
        """The scheduler's choices."""
        self.choices = random.Random(seed * 7919 + 1)
        """For the scenario's own choices (what to run, with which numbers)."""
        self.directory = directory
        self.loop = VirtualTimeLoop(self._on_idle, virtual=virtual)
        self.faults = faults.drawn(self.rng)
        self.faults_on = True
        self.fault_count = 0
        self.pct = self.rng.random() < 0.5
        """Pick by actor priority (PCT) rather than uniformly, this schedule."""
        self._pct_changes = sorted(self.rng.sample(range(1, 200), 3))
        self.steps = 0
        self.actors: list[Actor] = []
        self.trace: list[str] = []
        self._waiting: list[_Waiter] = []
        self._calling_hook: _Hook | None = None
        self._busy_timeouts: dict[int, float] = {}
        self._all_connections: list[sqlite3.Connection] = []
        self._gates: list[tuple[int, asyncio.Future[None]]] = []
        self._dying: list[Actor] = []
        self._restore: list[tuple[type, str, Any]] = []
        self._partitions: list[tuple[str, str, float, str]] = []
        self._deaf: set[asyncio.Task[Any]] = set()
        """Requests whose every reply is lost (the ``lost_replies`` fault)."""
        self.messages: tuple[str, ...] = ()
        """Worker name prefixes whose calls are messages to another node (quorum
        nodes, say): only those may be delivered twice (the ``duplicate`` fault)."""
        self._background: set[asyncio.Task[Any]] = set()
        self.watches: list[Callable[[Actor, str], None]] = []
        """Called with the actor and the call's description after each store call of an
        actor took effect (before the faults drawn there): a scenario's way to
        :meth:`kill` or :meth:`interrupt` an actor at a point of its choosing."""
        self._interrupting = False
        self.loop.set_task_factory(self._task_factory)  # type: ignore[arg-type]
        self.loop.set_exception_handler(self._exception_handler)

    # -- what scenarios call --

    def spawn(
        self,
        name: str,
        main: Callable[[Actor], Awaitable[None]],
        *,
        restart: Callable[[Actor], Awaitable[None]] | None = None,
        crashable: bool = True,
        cancellable: bool = True,
        after_steps: int = 0,
    ) -> Actor:
        """Start an actor running ``main(actor)``; after a crash, ``restart(actor)``
        runs as its next incarnation (none: it stays down). ``after_steps``: it starts
        once that many steps have been taken in the schedule. ``cancellable=False``:
        cancel faults reach only its requests (:meth:`Actor.start`, :meth:`Actor.call`)."""
        actor = Actor(
            self, name, main, restart=restart, crashable=crashable, cancellable=cancellable
        )
        self._start(actor, main, after_steps)
        return actor

    def wall_time(self, actor: Actor | None = None) -> float:
        offset = actor.clock_offset if actor is not None else 0.0
        if not self.virtual:
            return _real_time() + offset
        return EPOCH + self.loop.time() + offset

    async def join(self, *actors: Actor, within: float = 3600.0) -> None:
        """Wait until every actor (and its restarts) has finished; :class:`LivenessError`
        if that takes more than ``within`` seconds of virtual time."""
        futures = [actor.finished for actor in actors]
        try:
            async with asyncio.timeout(within):
                await asyncio.gather(*(asyncio.shield(f) for f in futures))
        except TimeoutError:
            stuck = [a.last() for a in actors if not a.finished.done()]
            raise LivenessError(
                f"actors still running after {within:g} s of virtual time: "
                + "; ".join(f"{a!r} waiting in {self.where(a)}" for a in stuck)
            ) from None

    def where(self, actor: Actor) -> str:
        """Where each of the actor's tasks is suspended (innermost frame first)."""
        places = []
        for task in actor.tasks:
            frames = task.get_stack()
            if frames:
                inner = frames[-1]
                places.append(
                    f"{inner.f_code.co_name} ({Path(inner.f_code.co_filename).name}:"
                    f"{inner.f_lineno}) <- "
                    + " <- ".join(f.f_code.co_name for f in reversed(frames[:-1]))
                )
        return " | ".join(places) or "no task"

    def quiesce(self) -> None:
        """No more faults from here on (the final phase: recovery and checks)."""
        self.faults_on = False
        for actor in self.actors:
            actor.clock_offset = 0.0

    def note(self, text: str) -> None:
        """Add a line to the schedule's trace (printed when the schedule fails)."""
        self._trace(f"note {text}")

    async def hold(self, steps: int) -> None:
        """Let the other actors take ``steps`` steps before the caller goes on: a
        process descheduled at a chosen point of its work (a scenario asks for this
        where a slow step matters, say between a read and the write that relies on it).
        The hold ends sooner when no other actor has a step to take, and at once once
        the faults are off. Draws nothing from the scheduler's random choices."""
        if steps <= 0 or not self.faults_on:
            return
        gate: asyncio.Future[None] = self.loop.create_future()
        self._gates.append((self.steps + steps, gate))
        self._trace(f"{_label()} held for {steps} steps")
        await gate

    def kill(self, actor: Actor) -> None:
        """Crash ``actor`` now, at a point the scenario chose (as a crash test kills a
        real process right after a given write): the same as a crash fault there, but
        not counted among the schedule's faults and drawing nothing from the
        scheduler's random choices. Called from the actor's own code, it raises
        :class:`ActorCrashed` there. Does nothing once the faults are off or when the
        actor is not running."""
        if not self.faults_on or not actor.alive:
            return
        self._trace(f"{actor.label} killed by the scenario")
        self._crash(actor, counted=False)
        if asyncio.current_task() in actor.tasks:
            raise ActorCrashed(f"{actor.label} killed by the scenario")

    def interrupt(self, actor: Actor) -> None:
        """Cancel what ``actor`` does now (the request the current call belongs to, else
        its main task), as a cancel fault right after a call would: called from a
        :attr:`watches` callback, the cancellation lands right after that call took
        effect. Not counted among the faults; draws nothing from the scheduler's
        random choices. Does nothing once the faults are off."""
        if not self.faults_on or not actor.alive:
            return
        self._trace(f"{actor.label} interrupted by the scenario")
        actor._cancel()
        self._interrupting = True

    async def _watch(self, actor: Actor, what: str) -> None:
        for watch in list(self.watches):
            watch(actor, what)
        if self._interrupting:
            self._interrupting = False
            await asyncio.sleep(0)  # delivered here if this is the cancelled task

    def stop(self, actor: Actor) -> None:
        """Cancel an actor that runs until told to stop (a worker, a relay)."""
        last = actor.last()
        if last.task is not None and last.alive:
            last.task.cancel()

    # -- actors --

    def _start(
        self, actor: Actor, main: Callable[[Actor], Awaitable[None]], after_steps: int = 0
    ) -> None:
        self.actors.append(actor)
        context = contextvars.copy_context()
        context.run(_ACTOR.set, actor)
        actor.task = self.loop.create_task(
            self._run_actor(actor, main, after_steps), context=context
        )

    async def _run_actor(
        self, actor: Actor, main: Callable[[Actor], Awaitable[None]], after_steps: int
    ) -> None:
        try:
            if after_steps > self.steps:
                gate: asyncio.Future[None] = self.loop.create_future()
                self._gates.append((after_steps, gate))
                await gate
            self._trace(f"{actor.label} starts")
            await main(actor)
            if actor.state is ActorState.RUNNING:
                actor.state = ActorState.DONE
        except ActorCrashed:
            actor.state = ActorState.CRASHED
        except asyncio.CancelledError:
            if actor.state is ActorState.RUNNING:
                actor.state = ActorState.CANCELLED
        except BaseException as exc:
            if actor.state is ActorState.RUNNING:
                actor.state = ActorState.FAILED
                actor.error = exc
        finally:
            self._trace(f"{actor.label} ends {actor.state.value}")
            self._finish(actor)

    def _finish(self, actor: Actor) -> None:
        if actor.state is ActorState.CRASHED and actor.restart is not None:
            successor = Actor(
                self,
                actor.name,
                actor.restart,
                restart=actor.restart,
                crashable=actor.crashable,
                incarnation=actor.incarnation + 1,
                cancellable=actor.cancellable,
            )
            successor.finished = actor.finished
            actor.successor = successor
            self._start(successor, actor.restart)
            return
        if not actor.finished.done():
            actor.finished.set_result(None)

    def _crash(self, actor: Actor, *, counted: bool = True) -> None:
        if counted:
            self.fault_count += 1
        actor.state = ActorState.CRASHED
        for conn in actor.connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()  # what was not committed is rolled back, as after a kill
        for callback in actor.on_crash:
            callback()
        current = asyncio.current_task()
        for task in list(actor.tasks):
            if task is not current:
                task.cancel()
        self._dying.append(actor)

    def _kill_dying(self) -> bool:
        """Cancel again whatever a crashed actor's tasks wait for (a lock its dead
        connection holds, a timer): a killed process runs no cleanup to its end."""
        killed = False
        still = []
        for actor in self._dying:
            live = [task for task in actor.tasks if not task.done()]
            for task in live:
                task.cancel()
                killed = True
            if live:
                still.append(actor)
        self._dying = still
        return killed

    # -- steps and faults --

    async def _step(
        self, actor: Actor, what: str, *, faults: bool = True, target: str = ""
    ) -> _Action:
        ready_at = self.loop.time()
        if faults and target and self._fault(self.faults.partition):
            held = self.rng.uniform(0.2, self.faults.partition_seconds)
            mode = "request" if self.rng.random() < 0.5 else "reply"
            self._partitions.append((actor.name, target, ready_at + held, mode))
            lost = "requests" if mode == "request" else "replies"
            self._trace(f"{actor.label} cut off from {target} for {held:.1f} s ({lost} lost)")
        if self._fault(self.faults.stall):
            held = self.rng.uniform(0.5, self.faults.stall_seconds)
            actor.stalled_until = max(actor.stalled_until, ready_at + held)
            self._trace(f"{actor.label} stalls {held:.1f} s before {what}")
            for callback in actor.on_stall:
                callback(held)
        waiter = _Waiter(actor, self.loop.create_future(), what, ready_at, faults, _REQUEST.get())
        self._waiting.append(waiter)
        try:
            action = await waiter.future
        except asyncio.CancelledError:
            if not actor.alive:
                raise ActorCrashed(f"{actor.label} crashed before its call to {what}") from None
            raise
        if action is _Action.CRASH:
            raise ActorCrashed(f"{actor.label} crashed before its call to {what}")
        return action

    def _after(self, actor: Actor, what: str) -> _Action:
        """A fault right after a call took effect (no scheduling point here)."""
        if not actor.alive:
            return _Action.CRASH
        if self._deafened(actor, what):
            return _Action.LOST
        action = self._draw(actor, after=True)
        if action is not _Action.PROCEED:
            self._trace(f"{actor.label} after {what}: {action.value}")
        if action is _Action.CRASH:
            self._crash(actor)
        elif action is _Action.CANCEL:
            actor._cancel()
        return action

    def _deafened(self, actor: Actor, what: str) -> bool:
        """Whether the reply of this call is lost with every other reply of its request."""
        request = _REQUEST.get()
        if request is None or not self.faults_on:
            return False
        if request in self._deaf:
            self._trace(f"{actor.label} after {what}: lost reply (its request hears nothing)")
            return True
        if self._fault(self.faults.lost_replies):
            self._deaf.add(request)
            request.add_done_callback(self._deaf.discard)
            self._trace(f"{actor.label} after {what}: every reply of its request lost from here")
            return True
        return False

    def _partitioned(self, actor: Actor, target: str) -> str | None:
        """``request`` or ``reply`` while a partition cuts ``actor`` off from ``target``."""
        now = self.loop.time()
        for name, cut, until, mode in self._partitions:
            if name == actor.name and cut == target and now < until and self.faults_on:
                return mode
        return None

    def _duplicates(self, worker: str) -> bool:
        """Whether this message (a call to a worker the scenario marked as a message
        link) is delivered a second time."""
        return any(worker.startswith(p) for p in self.messages) and self._fault(
            self.faults.duplicate
        )

    def _fault(self, rate: float) -> bool:
        if not self.faults_on or self.fault_count >= self.faults.max_faults or rate <= 0:
            return False
        if self.rng.random() < rate:
            self.fault_count += 1
            return True
        return False

    def _draw(self, actor: Actor, *, after: bool) -> _Action:
        faults = self.faults
        if actor.crashable and self._fault(faults.crash):
            return _Action.CRASH
        if self._fault(faults.cancel):
            return _Action.CANCEL
        if self._fault(faults.lost_reply if after else faults.error):
            return _Action.LOST if after else _Action.ERROR
        if self._fault(faults.clock_jump):
            jump = self.rng.uniform(-faults.clock_jump_seconds, faults.clock_jump_seconds)
            actor.clock_offset += jump
            self._trace(f"{actor.label} clock jumps {jump:+.1f} s")
        if self._fault(faults.clock_leap):
            leap = self.rng.uniform(faults.clock_leap_seconds / 2, faults.clock_leap_seconds)
            leap = leap if self.rng.random() < 0.5 else -leap
            actor.clock_offset += leap
            self._trace(f"{actor.label} clock leaps {leap:+.1f} s")
        return _Action.PROCEED

    def _on_idle(self, timeout: float | None) -> bool:
        """The loop has nothing to run: let one waiting actor take its step."""
        if self._dying and self._kill_dying():
            return True
        waiting = [w for w in self._waiting if not w.future.done()]
        self._waiting = waiting
        if not waiting:
            return self._open_next_gate()
        now = self.loop.time()
        ready = [w for w in waiting if w.due <= now]
        if not ready:
            soonest = min(w.due for w in waiting)
            due = self.loop.next_timer()
            if due is not None and due <= soonest:
                return False  # a timer fires first
            self.loop.advance(soonest - now)
            ready = [w for w in waiting if w.due <= soonest]
        waiter = self._pick(ready)
        waiting.remove(waiter)
        self.steps += 1
        self.loop.advance(self.rng.uniform(0, STEP_TIME))
        action = self._draw(waiter.actor, after=False) if waiter.faults else _Action.PROCEED
        self._trace(
            f"{waiter.actor.label} {waiter.what}"
            + ("" if action is _Action.PROCEED else f": {action.value}")
        )
        if action is _Action.CRASH:
            self._crash(waiter.actor)
        elif action is _Action.CANCEL:
            waiter.actor._cancel(waiter.request)
            action = _Action.PROCEED
        if not waiter.future.done():
            waiter.future.set_result(action)
        self._open_gates()
        return True

    def _pick(self, ready: list[_Waiter]) -> _Waiter:
        if not self.pct:
            return ready[self.rng.randrange(len(ready))]
        if self._pct_changes and self.steps >= self._pct_changes[0]:
            self._pct_changes.pop(0)
            top = max(ready, key=lambda w: w.actor.priority)
            top.actor.priority = -self.rng.random()  # demoted below everyone
        return max(ready, key=lambda w: w.actor.priority)

    def _open_gates(self) -> None:
        if not self._gates:
            return
        still = []
        for steps, gate in self._gates:
            if self.steps >= steps or not self.faults_on:
                if not gate.done():
                    gate.set_result(None)
            else:
                still.append((steps, gate))
        self._gates = still

    def _open_next_gate(self) -> bool:
        """Nobody waits at a step: start the next actor that waits for its turn."""
        if not self._gates:
            return False
        self._gates.sort(key=lambda gate: gate[0])
        _, gate = self._gates.pop(0)
        if not gate.done():
            gate.set_result(None)
        return True

    def _trace(self, text: str) -> None:
        self.trace.append(f"{self.loop.time():9.3f} {text}")

    # -- plumbing --

    def _task_factory(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, context=context)
        actor = context.get(_ACTOR) if context is not None else _ACTOR.get()
        if actor is not None:
            actor.tasks.add(task)
            task.add_done_callback(actor.tasks.discard)
        return task

    def _exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # A crashed actor's tasks end with whatever they were doing: not the code's fault.
        self._trace(f"loop: {context.get('message')}: {context.get('exception')!r}")

    def _adopt(self, conn: sqlite3.Connection) -> None:
        self._all_connections.append(conn)
        hook = self._calling_hook
        if hook is not None:
            hook.connections.append(conn)
        actor = _ACTOR.get()
        if actor is not None:
            actor.connections.append(conn)

    @contextlib.contextmanager
    def _calling(self, hook: _Hook) -> Iterator[None]:
        previous, self._calling_hook = self._calling_hook, hook
        try:
            yield
        finally:
            self._calling_hook = previous

    def _make_hook(self, name: str) -> _Hook | None:
        if not self.virtual and not name.startswith(("sqlite", "quorum")):
            return None  # a server's driver thread: its calls are steps where instrumented
        return _Hook(self, name, _ACTOR.get())

    def instrument(self, cls: type, *names: str) -> None:
        """Make calls of ``cls``'s async methods ``names`` steps of the calling actor,
        with the same faults as store calls (for interfaces whose stores are servers:
        2PC participants and branches on PostgreSQL or MariaDB). Undone at the end
        of the run."""
        for name in names:
            original = cls.__dict__.get(name)
            if original is None:
                continue  # inherited: instrument the class that defines it
            self._restore.append((cls, name, original))
            setattr(cls, name, self._stepped(original, name))

    def _stepped(
        self, original: Callable[..., Awaitable[Any]], name: str
    ) -> Callable[..., Awaitable[Any]]:
        sim = self

        @functools.wraps(original)
        async def stepped(obj: Any, *args: Any, **kwargs: Any) -> Any:
            actor = _ACTOR.get()
            if actor is None:
                return await original(obj, *args, **kwargs)
            what = f"{getattr(obj, 'name', type(obj).__name__)}.{name}"
            if not actor.alive:
                raise ActorCrashed(f"{actor.label} crashed; its call {what} never ran")
            action = await sim._step(actor, what)
            if action is _Action.ERROR:
                raise StoreUnavailableError(
                    f"explorer: {what} failed before it ran", outcome=Outcome.DEFINITE
                )
            result = await original(obj, *args, **kwargs)
            if sim.watches:
                await sim._watch(actor, what)
            action = sim._after(actor, what)
            if action is _Action.LOST:
                raise StoreTimeoutError(f"explorer: the reply of {what} was lost (it took effect)")
            if action is _Action.CRASH:
                raise ActorCrashed(f"{actor.label} crashed after {what}")
            if action is _Action.CANCEL:
                await asyncio.sleep(0)
            return result

        return stepped

    def background(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` outside every actor (cleanup after a crash, say)."""
        context = contextvars.copy_context()
        context.run(_ACTOR.set, None)
        task = self.loop.create_task(work, context=context)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """Replace the clocks, the random sources and ``sqlite3.connect`` for the run."""
        saved_time, saved_mono, saved_urandom = time.time, time.monotonic, os.urandom
        saved_time_ns = time.time_ns
        saved_connect = sqlite3.connect
        saved_random = random.getstate()
        saved_hooks = Worker.hooks
        bytes_source = random.Random(self.seed * 104729 + 3)
        busy_timeouts = self._busy_timeouts

        def connect(database: Any, timeout: float = 5.0, **kwargs: Any) -> sqlite3.Connection:
            kwargs.setdefault("factory", _SQLiteConnection)
            conn: sqlite3.Connection = saved_connect(database, timeout=0, **kwargs)
            busy_timeouts[id(conn)] = float(timeout)
            return conn

        token = _CURRENT.set(self)
        if self.virtual:
            time.time = lambda: self.wall_time(_ACTOR.get())
            time.time_ns = lambda: int(self.wall_time(_ACTOR.get()) * 1e9)
            time.monotonic = lambda: 1000.0 + self.loop.time()
            os.urandom = bytes_source.randbytes
        sqlite3.connect = connect  # type: ignore[assignment]
        random.seed(self.seed)
        Worker.hooks = self._make_hook
        try:
            yield
        finally:
            for cls, name, original in reversed(self._restore):
                setattr(cls, name, original)
            self._restore.clear()
            Worker.hooks = saved_hooks
            time.time, time.monotonic, os.urandom = saved_time, saved_mono, saved_urandom
            time.time_ns = saved_time_ns
            sqlite3.connect = saved_connect
            random.setstate(saved_random)
            _CURRENT.reset(token)
            for conn in self._all_connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()


def _label() -> str:
    """The calling actor's label, for the trace."""
    actor = _ACTOR.get()
    return actor.label if actor is not None else "scenario"
