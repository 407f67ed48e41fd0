"""Durable idempotency keys: one execution per (client, key), the stored outcome replayed.

Semantics follow the IETF httpapi ``Idempotency-Key`` draft and Stripe:

- A key belongs to a client scope; another client's key is never seen.
- The request payload is fingerprinted (SHA-256 of its canonical JSON); the same key
  with another payload raises :class:`IdempotencyKeyReusedError` (HTTP 422).
- While the first run holds the key, another request raises
  :class:`IdempotencyInProgressError` (HTTP 409); it never runs a second time.
- Once completed, the stored outcome is replayed — a return value, or the error the
  run raised (only errors of the policy's ``retry_on`` classes, none by default, and
  runs that call ``run.discard()`` release the key so that a retry runs again).
- The in-progress holder has a **lease** that a heartbeat renews while it runs, so a
  live holder keeps the key however long it takes; a crashed holder stops renewing
  and after the lease ends a retry takes the key over, resuming from the last
  **recovery point** (``await run.checkpoint("charged", data)``).
- Records expire after :attr:`IdempotencyPolicy.expires_after`; :meth:`Idempotency.reap`
  deletes expired ones.

The decision logic is written once here; :mod:`._idempotency_backends` makes each
step one atomic compare-and-swap on the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import itertools
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn, ParamSpec, TypeVar, cast

from multistore._json import encoder as json_encoder
from multistore.consistency._idempotency_backends import (
    CLAIM_ATTEMPTS,
    IdempotencyRecord,
    RecordBackend,
    ResultNotJSONError,
    records_for,
)
from multistore.errors import (
    IdempotencyInProgressError,
    IdempotencyKeyMissingError,
    IdempotencyKeyReusedError,
    IdempotencyLeaseLostError,
    InvalidIdempotencyKeyError,
    InvalidValueError,
    MultistoreError,
    Outcome,
    ReplayedError,
    UsageError,
)
from multistore.stores._base import Store

__all__ = [
    "DEFAULT_POLICY",
    "Idempotency",
    "IdempotencyInProgressError",
    "IdempotencyKeyMissingError",
    "IdempotencyKeyReusedError",
    "IdempotencyLeaseLostError",
    "IdempotencyPolicy",
    "IdempotentRun",
    "InvalidIdempotencyKeyError",
    "ReplayedError",
    "check_idempotency_key",
    "current_run",
    "fingerprint",
    "idempotent",
]

P = ParamSpec("P")
T = TypeVar("T")

_KEY: Final = re.compile(r"[\x20-\x7e]{1,255}")

# -- errors (to move into multistore.errors with codes of their own) ---------------


@dataclass(frozen=True)
class IdempotencyPolicy:
    """How long keys live and how in-progress leases work. Times in seconds."""

    expires_after: float = 86_400.0
    """A record (completed or not) is forgotten this long after it was created."""
    lease: float = 30.0
    """An in-progress run whose holder stops renewing may be taken over after this."""
    heartbeat: float | None = None
    """How often a live holder renews its lease; default ``lease / 3``."""
    retry_on: tuple[type[BaseException], ...] = ()
    """Errors that are not stored: the key is released and a retry runs again. Every
    other ``Exception`` is stored and re-raised on replay. None by default: an error
    raised after the run's effects (a ``StoreError`` from its last write, say) must not
    let a retry apply them again, so it is stored as Stripe stores a 500. Name here
    only errors your function raises before any effect, or call ``run.discard()``."""

    def __post_init__(self) -> None:
        if not self.expires_after > 0 or not self.lease > 0:
            raise InvalidValueError("expires_after and lease must be positive seconds")
        if self.heartbeat is not None and not 0 < self.heartbeat < self.lease:
            raise InvalidValueError("heartbeat must be positive and shorter than the lease")

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat if self.heartbeat is not None else self.lease / 3


DEFAULT_POLICY: Final = IdempotencyPolicy()


_canonical: Final = json_encoder(sort_keys=True, ensure_ascii=False, allow_nan=False)


def fingerprint(payload: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``payload`` (sorted keys, no spaces)."""
    try:
        text = _canonical(payload)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(
            f"an idempotent request's payload must be JSON to be fingerprinted: {exc}"
        ) from None
    # a lone surrogate is a Python string UTF-8 cannot encode: keep it, distinct
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def check_idempotency_key(key: object) -> str:
    """``key`` when it is 1 to 255 printable ASCII characters (space to ``~``, what an
    RFC 8941 string holds); else raise."""
    if key is None:
        raise IdempotencyKeyMissingError("an idempotency key is required")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidIdempotencyKeyError(
            f"an idempotency key must be 1 to 255 printable ASCII characters, not {key!r:.80}"
        )
    return key


def _check_scope(client: object) -> str:
    if not isinstance(client, str) or not 0 < len(client) <= 255:
        raise InvalidValueError(
            f"a client scope must be a string of 1 to 255 characters, not {client!r:.80}"
        )
    return client


def _json_args(args: tuple[Any, ...]) -> list[Any]:
    try:
        json.dumps(args, allow_nan=False)
    except (TypeError, ValueError):
        return [str(a) for a in args]
    return list(args)


def _encode_error(exc: Exception) -> dict[str, Any]:
    cls = type(exc)
    data: dict[str, Any] = {
        "type": f"{cls.__module__}:{cls.__qualname__}",
        "args": _json_args(exc.args),
        "message": str(exc),
    }
    if isinstance(exc, MultistoreError):
        data["outcome"] = exc.outcome.value
    return data


def _decode_error(data: dict[str, Any]) -> Exception:
    module, _, qualname = str(data.get("type", "")).partition(":")
    # Only classes of modules already imported: a stored record never triggers an import.
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if isinstance(found, type) and issubclass(found, Exception):
        try:
            exc = found(*data.get("args", []))
        except Exception:  # the class wants other arguments: fall through
            pass
        else:
            if isinstance(exc, MultistoreError) and "outcome" in data:
                exc.outcome = Outcome(data["outcome"])
            return exc
    return ReplayedError(str(data.get("type")), str(data.get("message")))


# -- runs ----------------------------------------------------------------------------

_owner_prefix = ""
_owner_serial = itertools.count()


def _reset_owner_prefix() -> None:
    global _owner_prefix, _owner_serial
    _owner_prefix = os.urandom(12).hex()
    _owner_serial = itertools.count()


_reset_owner_prefix()
os.register_at_fork(after_in_child=_reset_owner_prefix)  # a child never reuses ours


def _new_owner() -> str:
    """A token no other run shares: 96 random bits per process (drawn again in a forked
    child) and a counter; cheaper than a uuid4 per request."""
    return f"{_owner_prefix}{next(_owner_serial):x}"


_current: contextvars.ContextVar[IdempotentRun | None] = contextvars.ContextVar(
    "multistore_idempotent_run", default=None
)


def current_run() -> IdempotentRun | None:
    """The run of the innermost ``idem.begin`` (or ``@idempotent`` function) around
    the caller, to read ``recovery_point`` or call ``checkpoint``; None outside one."""
    return _current.get()


_RELEASED: Final[dict[str, Any]] = {"owner": None}


class _LeaseKeeper:
    """Renews the leases of the runs in progress on one event loop, with one timer for
    them all: a run joins when it starts (a dict insertion) and leaves when it ends,
    so a run that ends before its first renewal is due costs no timer and no task.
    Runs join in the order their renewals fall due (one interval after joining, on the
    loop's monotonic clock), so the timer is armed for the first of them only."""

    __slots__ = ("_due", "_timer", "interval", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self._due: dict[IdempotentRun, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, run: IdempotentRun) -> None:
        due = self.loop.time() + self.interval
        self._due[run] = due
        if self._timer is None:
            self._timer = self.loop.call_at(due, self._fire)

    def discard(self, run: IdempotentRun) -> None:
        self._due.pop(run, None)

    def _fire(self) -> None:
        """Start the renewals that are due; arm the timer for the next one."""
        self._timer = None
        due = self._due
        # A timer may fire a hair early (the loop's clock resolution): a renewal due
        # within a millisecond is due now.
        now = self.loop.time() + 0.001
        while due:
            run, when = next(iter(due.items()))
            if when > now:
                self._timer = self.loop.call_at(when, self._fire)
                return
            del due[run]
            run._beat_due()


class IdempotentRun:
    """One claim on an idempotency key, from ``async with idem.begin(...) as run``.

    ``run.replayed`` is True when the key was already completed: call
    ``run.result()`` to get the stored value (or have the stored error raised) and do
    not do the work again. Otherwise the block is the one execution: it may record
    progress with ``await run.checkpoint(point, data)``, sets what to store with
    ``run.set_result(value)``, and an error it raises is stored (see the policy).
    ``run.resumed`` is True when this run took the key over from a holder whose
    lease ran out; ``run.recovery_point`` is then the holder's last checkpoint.
    """

    __slots__ = (
        "_beat",
        "_discard",
        "_idem",
        "_keeper",
        "_lock",
        "_lost",
        "_owner",
        "_record",
        "_stopped",
        "_value",
        "replayed",
        "resumed",
    )

    def __init__(
        self,
        idem: Idempotency,
        record: IdempotencyRecord,
        owner: str | None,
        *,
        replayed: bool = False,
        resumed: bool = False,
    ) -> None:
        self._idem = idem
        self._record = record
        self._owner = owner
        self.replayed = replayed
        self.resumed = resumed
        self._value: Any = None
        self._lock: asyncio.Lock | None = None
        """Serializes the record's changes once a checkpoint or a renewal has begun;
        made then (a run that has neither completes without one)."""
        self._keeper: _LeaseKeeper | None = None
        self._beat: asyncio.Task[None] | None = None
        self._stopped = False
        self._lost = False
        self._discard = False

    @property
    def key(self) -> str:
        return self._record.key

    @property
    def client(self) -> str:
        return self._record.scope

    @property
    def record(self) -> IdempotencyRecord:
        return self._record

    @property
    def recovery_point(self) -> str | None:
        """The last checkpoint's name (None before the first)."""
        return self._record.recovery_point

    @property
    def recovery_data(self) -> Any:
        """The data stored with the last checkpoint."""
        return self._record.recovery_data

    def result(self) -> Any:
        """The stored value of a replayed run; raises the stored error if it failed."""
        outcome = self._record.result
        if not self.replayed or outcome is None:
            raise UsageError("result() is for replayed runs; this run is the execution")
        if "error" in outcome:
            raise _decode_error(outcome["error"])
        return outcome.get("value")

    def set_result(self, value: Any) -> None:
        """What to store (JSON) when the block ends normally; ``None`` by default."""
        self._value = value

    def discard(self) -> None:
        """Store no outcome: when the block ends (normally or by an error) the key is
        released, and a retry runs again from the last checkpoint."""
        self._discard = True

    async def checkpoint(self, point: str, data: Any = None) -> None:
        """Record that the work reached ``point`` (with JSON ``data``), durably: a
        retry after a crash starts with ``run.recovery_point == point``."""
        if self.replayed:
            raise UsageError("checkpoint() on a replayed run: the work is already done")
        if not isinstance(point, str) or not point:
            raise InvalidValueError("a recovery point is a non-empty string")
        if self._stopped:
            raise UsageError("checkpoint() after the run's block ended: its outcome is stored")
        async with self._changing():
            ok = await self._swap(
                {"recovery_point": point, "recovery_data": data},
                lease=self._idem.policy.lease,
            )
        if not ok:
            raise IdempotencyLeaseLostError(
                f"idempotency key {self.key!r}: the lease was taken over before checkpoint "
                f"{point!r} was stored"
            )

    # -- internals --

    async def _swap(
        self,
        changes: Mapping[str, Any],
        *,
        lease: float | None,
        expires_after: float | None = None,
    ) -> bool:
        """Apply ``changes`` to our record by compare-and-swap (the backend sets the
        version and the lease and expiry times); False once the record is not ours."""
        backend = self._idem.backend
        for _ in range(3):
            new = await backend.advance(
                self._record, changes, lease=lease, expires_after=expires_after
            )
            if new is not None:
                self._record = new
                return True
            # A swap whose answer was lost may have applied: it is ours if the owner is us.
            current = await backend.load(self._record.scope, self._record.key)
            if current is None or current.owner != self._owner or current.state != "in_progress":
                self._lost = True
                return False
            self._record = current
        return False

    def _changing(self) -> asyncio.Lock:
        lock = self._lock
        if lock is None:
            lock = self._lock = asyncio.Lock()
        return lock

    def _start_heartbeat(self) -> None:
        """Have the first renewal due one heartbeat from now: the run joins its
        :class:`Idempotency`'s lease keeper (no timer or task of its own)."""
        self._keeper = self._idem._lease_keeper()
        self._keeper.add(self)

    def _beat_due(self) -> None:
        if not self._stopped:
            self._beat = asyncio.create_task(self._renew(), name=f"idempotency lease {self.key}")

    async def _renew(self) -> None:
        lease = self._idem.policy.lease
        async with self._changing():
            if self._stopped:
                return
            try:
                ok = await self._swap({}, lease=lease)
            except MultistoreError:
                ok = True  # the store hiccuped: the lease still runs, try next beat
        if ok and not self._stopped:
            self._beat = None
            self._start_heartbeat()

    def _stop_heartbeat(self) -> asyncio.Task[None] | None:
        """Stop renewing the lease; the renewal in flight, if any, to wait for."""
        self._stopped = True
        keeper = self._keeper
        if keeper is not None:
            keeper.discard(self)
        beat, self._beat = self._beat, None
        return beat

    @staticmethod
    async def _wait_renewal(beat: asyncio.Task[None]) -> bool:
        """Cancel the renewal in flight and wait for it to end. True when the caller
        was cancelled meanwhile: :meth:`_finish` stores the outcome, then raises that
        cancellation (the renewal's own cancellation is not the caller's)."""
        beat.cancel()
        cancelled = False
        while not beat.done():
            try:
                await asyncio.wait((beat,))
            except asyncio.CancelledError:
                cancelled = True
        if not beat.cancelled():
            beat.exception()  # retrieved: a renewal's failure only ends the renewals
        return cancelled

    async def _complete(self, outcome: dict[str, Any]) -> None:
        # The run's last change ends the lease. Without the lock when no checkpoint or
        # renewal ever began: none can begin once the run has stopped.
        lock = self._lock
        expires_after = self._idem.policy.expires_after
        changes = {"state": "completed", "owner": None, "result": outcome}
        if lock is None:
            ok = await self._swap(changes, lease=None, expires_after=expires_after)
        else:
            async with lock:
                ok = await self._swap(changes, lease=None, expires_after=expires_after)
        if not ok:
            raise IdempotencyLeaseLostError(
                f"idempotency key {self.key!r}: another run took the key over after this "
                "run's lease ran out; this run's outcome was not stored"
            )

    async def _release(self) -> None:
        """Give the key up without an outcome: a retry may run (from the last checkpoint)."""
        async with self._changing():
            await self._swap(_RELEASED, lease=None)

    async def _finish(self, exc: BaseException | None) -> None:
        """End the execution: store the outcome (the value set, or ``exc`` when it is
        storable) or release the key. Raises what the caller must raise instead —
        a cancellation of the caller that landed while the lease renewal stopped, once
        the outcome is stored."""
        beat = self._stop_heartbeat()
        cancelled = False if beat is None else await self._wait_renewal(beat)
        if exc is None and not self._discard:  # the common case, one coroutine less
            try:
                await self._complete({"value": self._value})
            except ResultNotJSONError as bad:
                await self._complete_not_json(bad)
        else:
            await self._settle(exc)
        if cancelled:
            raise asyncio.CancelledError

    async def _settle(self, exc: BaseException | None) -> None:
        if exc is not None:
            storable = not isinstance(exc, self._idem.policy.retry_on) and not self._discard
            if isinstance(exc, Exception) and storable:
                await self._complete({"error": _encode_error(exc)})
            else:
                await self._release()
            return
        if self._discard:
            await self._release()
            return
        try:
            await self._complete({"value": self._value})
        except ResultNotJSONError as bad:
            await self._complete_not_json(bad)

    async def _complete_not_json(self, bad: ResultNotJSONError) -> NoReturn:
        """The result could not be stored (nothing was written): store that error instead."""
        error = InvalidValueError(
            f"idempotency key {self.key!r}: the result is not JSON and cannot be "
            f"stored for replay: {bad}"
        )
        await self._complete({"error": _encode_error(error)})
        raise error from None


# -- the store-facing object -----------------------------------------------------------


class Idempotency:
    """Idempotency keys kept in a key-value or relational store.

    Leases and expiry are decided on the store's clock (Redis ``TIME``, PostgreSQL and
    MariaDB ``now()``); ``clock`` is the time of an embedded SQLite store, which has
    no clock but its machine's.

    >>> idem = Idempotency(store, policy=IdempotencyPolicy(expires_after=3600))  # doctest: +SKIP
    >>> async with idem.begin("order-42", {"amount": 10}, client="alice") as run:  # doctest: +SKIP
    ...     if run.replayed:
    ...         return run.result()
    ...     run.set_result(await charge(10))
    """

    def __init__(
        self,
        store: Store,
        *,
        policy: IdempotencyPolicy = DEFAULT_POLICY,
        namespace: str = "idem:",
        table: str = "multistore_idempotency",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.backend: RecordBackend = records_for(
            store, namespace=namespace, table=table, clock=clock
        )
        self._ready = False
        self._setup_lock = asyncio.Lock()
        self._keeper: _LeaseKeeper | None = None

    def _lease_keeper(self) -> _LeaseKeeper:
        """The keeper of this event loop's runs (made again if the loop or the policy
        changed: the runs that joined the earlier one stay with it)."""
        loop = asyncio.get_running_loop()
        keeper = self._keeper
        interval = self.policy.heartbeat_interval
        if keeper is None or keeper.loop is not loop or keeper.interval != interval:
            keeper = self._keeper = _LeaseKeeper(loop, interval)
        return keeper

    async def _setup(self) -> None:
        if self._ready:
            return
        async with self._setup_lock:
            if not self._ready:
                await self.backend.setup()
                self._ready = True

    @contextlib.asynccontextmanager
    async def begin(
        self, key: str | None, payload: Any, *, client: str = "default"
    ) -> AsyncIterator[IdempotentRun]:
        """Claim ``key`` for ``client`` with ``payload``; see :class:`IdempotentRun`.

        Raises :class:`IdempotencyKeyReusedError` (another payload),
        :class:`IdempotencyInProgressError` (a live run holds the key), or the key
        errors (missing, malformed) before anything runs.
        """
        run = await self._claim(_check_scope(client), check_idempotency_key(key), payload)
        if run.replayed:
            yield run
            return
        token = _current.set(run)
        run._start_heartbeat()
        try:
            yield run
        except BaseException as exc:
            await run._finish(exc)
            raise
        else:
            await run._finish(None)
        finally:
            _current.reset(token)

    async def _claim(self, scope: str, key: str, payload: Any) -> IdempotentRun:
        fp = fingerprint(payload)
        if not self._ready:
            await self._setup()
        policy = self.policy
        owner = _new_owner()
        claim = await self.backend.claim(
            scope,
            key,
            fp,
            owner,
            lease=policy.lease,
            expires_after=policy.expires_after,
        )
        status, record = claim.status, claim.record
        if status == "completed" and record is not None:
            return IdempotentRun(self, record, None, replayed=True)
        if status == "created" and record is not None:
            return IdempotentRun(self, record, owner)
        if status == "resumed" and record is not None:
            return IdempotentRun(self, record, owner, resumed=True)
        if status == "mismatch":
            raise IdempotencyKeyReusedError(
                f"idempotency key {key!r} was already used with a different payload"
            )
        if status == "busy":
            wait = claim.retry_after
            raise IdempotencyInProgressError(
                f"idempotency key {key!r}: the first request is still in progress; "
                f"retry in {wait:.1f} s",
                retry_after=wait,
            )
        raise IdempotencyInProgressError(
            f"idempotency key {key!r} changed under every one of {CLAIM_ATTEMPTS} attempts "
            "to claim it; retry later"
        )

    async def get(self, key: str, *, client: str = "default") -> IdempotencyRecord | None:
        """The live record of ``key`` (None when missing or expired)."""
        await self._setup()
        return await self.backend.load_live(_check_scope(client), check_idempotency_key(key))

    async def reap(self) -> int:
        """Delete expired records now; the number deleted (Redis expires its own: 0)."""
        await self._setup()
        return await self.backend.reap()


def idempotent(
    idem: Idempotency,
    *,
    key: Callable[..., str | None],
    client: str | Callable[..., str] = "default",
    payload: Callable[..., Any] | None = None,
    required: bool = True,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Make an async function idempotent: ``key(*args, **kwargs)`` names the call,
    ``client`` (a string, or a function of the arguments) scopes it, and the
    fingerprinted payload is ``payload(*args, **kwargs)`` (default: the arguments,
    which must then be JSON) together with the function's name. The return value
    must be JSON; on replay it comes back as JSON decodes it (a tuple as a list).
    With ``required=False`` a call whose key is None runs without protection.
    """

    def wrap(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        name = f"{fn.__module__}.{fn.__qualname__}"

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            k = key(*args, **kwargs)
            if k is None and not required:
                return await fn(*args, **kwargs)
            scope = client(*args, **kwargs) if callable(client) else client
            body = payload(*args, **kwargs) if payload is not None else [args, kwargs]
            # ``idem.begin`` without the context manager's generator (the hot path).
            run = await idem._claim(
                _check_scope(scope),
                check_idempotency_key(k),
                {"function": name, "payload": body},
            )
            if run.replayed:
                return cast(T, run.result())
            token = _current.set(run)
            run._start_heartbeat()
            try:
                value = await fn(*args, **kwargs)
                run.set_result(value)
            except BaseException as exc:
                await run._finish(exc)
                raise
            else:
                await run._finish(None)
            finally:
                _current.reset(token)
            return value

        return wrapper

    return wrap
