"""The fan-out of one quorum request: concurrent calls, early return, retries.

A write goes to every home replica that is not known to be down, and in a sloppy
quorum a stand-in (the next node on the ring) replaces each home that is down or
fails; a strict quorum has no fallbacks to give it. When too few replicas are up to
meet the level, nothing is sent at all. A read asks R of the homes first, in the
coordinator's order (random by default, so no home is every read's first stop);
when one fails, or when the read is still short of R answers ``speculative_after``
seconds after it started (or after its last speculative retry), the next home is
asked too (a speculative retry), then fallbacks (sloppy quorums only). The fan-out returns as
soon as ``need`` answers (``pneed`` of them from homes) are in; calls still running
are handed back in :attr:`Fanout.pending` so the coordinator lets them finish in
the background.

Answers from a fallback to a *read* count only when it holds something: a node
that is not a replica of the key saying "nothing here" proves nothing.

This is the coordinator's hot path, so it is a small state machine rather than a
loop around :func:`asyncio.wait`: a replica call is a :class:`~._qnodes.Reply` (the
Redis node's: no task per replica, and its answer is recorded from the reply's own
I/O callback, not one event-loop turn later) or any other awaitable, run as a
future with a done-callback; the caller wakes up once, when the quorum is in (or
cannot be), and the speculative-retry timer is one ``loop.call_later`` handle per
request, not a sleeping task. A call that fails after the fan-out returned fails
its future as usual, so the coordinator's callbacks (late hints, background
tracking) see the failure.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from multistore.errors import MultistoreError
from multistore.replication._qnodes import when_done

__all__ = ["Fanout", "fan_out"]


@dataclass(slots=True)
class Fanout:
    """What one fan-out heard."""

    homes: tuple[str, ...]
    results: dict[str, Any] = field(default_factory=dict)
    """Node name -> answer, for the calls that succeeded before the fan-out returned."""
    failed_homes: list[str] = field(default_factory=list)
    stand_in: dict[str, str] = field(default_factory=dict)
    """Fallback node -> the home it stands in for (``""``: an extra read replica)."""
    errors: list[str] = field(default_factory=list)
    pending: dict[asyncio.Future[Any], str] = field(default_factory=dict)
    """Calls still running (their future -> node name) when the fan-out returned."""
    speculative: int = 0
    unavailable: bool = False
    """Too few replicas were up to meet the level: nothing was sent."""
    maybe_applied: bool = False
    """Some call failed in a way that leaves open whether it took effect (a timeout, a
    connection lost after sending): only calls that were all refused definitely, or
    never sent, make a failed write definite."""

    def counts(self, *, write: bool) -> tuple[int, int]:
        """(answers that count, of which from homes)."""
        stand_in = self.stand_in
        if not stand_in:
            n = len(self.results)
            return n, n
        total = primary = 0
        for name, result in self.results.items():
            if name in stand_in and not write and not result:
                continue  # an empty answer from a fallback says nothing
            total += 1
            primary += name not in stand_in
        return total, primary

    def describe_errors(self) -> str:
        return "; ".join(self.errors) or "no answer"


class _Run:
    """The state machine of one fan-out (see :func:`fan_out`)."""

    __slots__ = (
        "available",
        "call",
        "calls",
        "fan",
        "finished",
        "loop",
        "need",
        "order",
        "others",
        "pneed",
        "spares",
        "speculative_after",
        "timer",
        "write",
    )

    def __init__(
        self,
        call: Callable[[str], Awaitable[Any]],
        homes: Sequence[str],
        fallbacks: Sequence[str],
        available: Callable[[str], bool],
        need: int,
        pneed: int,
        write: bool,
        speculative_after: float | None,
        order: Callable[[list[str]], list[str]] | None,
    ) -> None:
        self.call = call
        self.order = order
        self.available = available
        self.need = need
        self.pneed = pneed
        self.write = write
        self.speculative_after = speculative_after
        self.fan = Fanout(tuple(homes))
        self.spares: list[str] = []
        self.others = list(fallbacks)
        self.loop = asyncio.get_running_loop()
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self.timer: asyncio.TimerHandle | None = None
        self.calls: dict[str, asyncio.Future[Any]] = {}
        """Node -> its call (a node is asked at most once per fan-out)."""

    def launch(self, name: str) -> None:
        future = self.call(name)
        if not isinstance(future, asyncio.Future):
            future = asyncio.ensure_future(future, loop=self.loop)
        self.fan.pending[future] = name
        self.calls[name] = future
        when_done(future, functools.partial(self._answered, name))

    def _answered(self, name: str, future: asyncio.Future[Any]) -> None:
        if self.finished.done():
            return  # a straggler: the coordinator's own callbacks see how it ended
        if future.cancelled():
            self._heard(name, None, asyncio.CancelledError())
            return
        error = future.exception()
        self._heard(name, None if error is not None else future.result(), error)

    def next_fallback(self) -> str | None:
        others = self.others
        while others:
            name = others.pop(0)
            if self.available(name):
                return name
        return None

    def stand_in_for(self, home: str) -> None:
        fallback = self.next_fallback()
        if fallback is not None:
            self.fan.stand_in[fallback] = home
            self.launch(fallback)

    def start(self) -> None:
        fan = self.fan
        homes = fan.homes
        available = self.available
        up = [home for home in homes if available(home)]
        if len(up) < len(homes):
            for home in homes:
                if home not in up:
                    fan.failed_homes.append(home)
                    fan.errors.append(f"{home}: marked down")
            spare = sum(1 for name in self.others if available(name))
            if len(up) + spare < self.need or len(up) < self.pneed:
                fan.unavailable = True  # cannot succeed: send nothing (Cassandra's Unavailable)
                self.finished.set_result(None)
                return
        if self.write:
            for home in up:
                self.launch(home)
            for home in list(fan.failed_homes):
                self.stand_in_for(home)
        else:
            need = self.need
            if self.order is not None and len(up) > 1:
                up = self.order(up)
            for home in up[:need]:
                self.launch(home)
            self.spares = up[need:]
            for _ in range(need - len(up)):  # too few homes up: ask fallbacks at once
                fallback = self.next_fallback()
                if fallback is not None:
                    fan.stand_in[fallback] = ""
                    self.launch(fallback)
        self.step()

    def step(self) -> None:
        """Finish when the quorum is in (or cannot be); otherwise ask more or keep waiting."""
        fan = self.fan
        while True:
            total, primary = fan.counts(write=self.write)
            if total >= self.need and primary >= self.pneed:
                break
            if fan.pending:
                if (
                    self.timer is None
                    and self.spares
                    and not self.write
                    and self.speculative_after is not None
                ):
                    self.timer = self.loop.call_later(self.speculative_after, self._speculate)
                return
            if self.write:
                break
            if self.spares:
                self.launch(self.spares.pop(0))
                continue
            fallback = self.next_fallback()
            if fallback is None:
                break
            fan.stand_in[fallback] = ""
            self.launch(fallback)
        if not self.finished.done():
            self.finished.set_result(None)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _speculate(self) -> None:
        self.timer = None
        if self.finished.done() or not self.spares:
            return
        self.fan.speculative += 1
        self.launch(self.spares.pop(0))
        self._guarded_step()

    def _heard(self, name: str, result: Any, error: BaseException | None) -> None:
        """One call's answer (or failure), recorded before the caller can see it."""
        fan = self.fan
        del fan.pending[self.calls[name]]
        if error is None:
            fan.results[name] = result
        else:
            fan.errors.append(f"{name}: {error}")
            if not (isinstance(error, MultistoreError) and error.definite):
                fan.maybe_applied = True
            if self.write and name in fan.homes:
                fan.failed_homes.append(name)
                self.stand_in_for(name)
            elif not self.write and self.spares:
                self.launch(self.spares.pop(0))
        self._guarded_step()

    def _guarded_step(self) -> None:
        try:
            self.step()
        except BaseException as exc:  # never leave the caller waiting on a broken fan-out
            if not self.finished.done():
                self.finished.set_exception(exc)

    async def wait(self) -> Fanout:
        try:
            if not self.finished.done():
                await self.finished
            else:
                self.finished.result()
        except BaseException:
            # the caller gave up (cancelled): its calls run on, nobody awaits them
            for future in self.fan.pending:
                future.add_done_callback(_retrieve)
            raise
        finally:
            self._cancel_timer()
        return self.fan


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def fan_out(
    call: Callable[[str], Awaitable[Any]],
    homes: Sequence[str],
    fallbacks: Sequence[str],
    *,
    available: Callable[[str], bool],
    need: int,
    pneed: int,
    write: bool,
    speculative_after: float | None,
    order: Callable[[list[str]], list[str]] | None = None,
) -> Coroutine[Any, Any, Fanout]:
    """Start ``call(node)`` on replicas now; await the result for the fan-out once
    ``need`` answers are in (see the module docstring). ``order`` puts the homes that
    are up in the order a read asks them."""
    run = _Run(call, homes, fallbacks, available, need, pneed, write, speculative_after, order)
    run.start()
    return run.wait()
