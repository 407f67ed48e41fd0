"""The fan-out of one quorum request: concurrent calls, early return, retries.

A write goes to every home replica that is not known to be down, and a stand-in
(the next node on the ring: a sloppy quorum) replaces each home that is down or
fails. A read asks R homes first; when one fails, or when no answer came within
``speculative_after`` seconds, the next home is asked too (a speculative retry),
then fallbacks. The fan-out returns as soon as ``need`` answers (``pneed`` of
them from homes) are in; calls still running are handed back in
:attr:`Fanout.pending` so the coordinator lets them finish in the background.

Answers from a fallback to a *read* count only when it holds something: a node
that is not a replica of the key saying "nothing here" proves nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Fanout", "fan_out"]


@dataclass
class Fanout:
    """What one fan-out heard."""

    homes: tuple[str, ...]
    results: dict[str, Any] = field(default_factory=dict)
    """Node name -> answer, for the calls that succeeded before the fan-out returned."""
    failed_homes: list[str] = field(default_factory=list)
    stand_in: dict[str, str] = field(default_factory=dict)
    """Fallback node -> the home it stands in for (``""``: an extra read replica)."""
    errors: list[str] = field(default_factory=list)
    pending: dict[asyncio.Task[Any], str] = field(default_factory=dict)
    """Calls still running (task -> node name) when the fan-out returned."""
    speculative: int = 0

    def counts(self, *, write: bool) -> tuple[int, int]:
        """(answers that count, of which from homes)."""
        total = primary = 0
        for name, result in self.results.items():
            if name in self.stand_in and not write and not result:
                continue  # an empty answer from a fallback says nothing
            total += 1
            primary += name not in self.stand_in
        return total, primary

    def describe_errors(self) -> str:
        return "; ".join(self.errors) or "no answer"


async def fan_out(
    call: Callable[[str], Awaitable[Any]],
    homes: Sequence[str],
    fallbacks: Sequence[str],
    *,
    available: Callable[[str], bool],
    need: int,
    pneed: int,
    write: bool,
    speculative_after: float | None,
) -> Fanout:
    """Run ``call(node)`` on replicas until ``need`` answers; see the module docstring."""
    fan = Fanout(tuple(homes))
    pending = fan.pending
    spares: list[str] = []
    others = list(fallbacks)

    def launch(name: str) -> None:
        pending[asyncio.ensure_future(call(name))] = name

    def next_fallback() -> str | None:
        while others:
            name = others.pop(0)
            if available(name):
                return name
        return None

    def stand_in_for(home: str) -> None:
        fallback = next_fallback()
        if fallback is not None:
            fan.stand_in[fallback] = home
            launch(fallback)

    up = [home for home in homes if available(home)]
    for home in homes:
        if home not in up:
            fan.failed_homes.append(home)
            fan.errors.append(f"{home}: marked down")
    if write:
        for home in up:
            launch(home)
        for home in list(fan.failed_homes):
            stand_in_for(home)
    else:
        for home in up[:need]:
            launch(home)
        spares = up[need:]
        for _ in range(need - len(up)):  # too few homes up: ask fallbacks at once
            fallback = next_fallback()
            if fallback is not None:
                fan.stand_in[fallback] = ""
                launch(fallback)

    while True:
        total, primary = fan.counts(write=write)
        if total >= need and primary >= pneed:
            break
        if not pending:
            if write:
                break
            if spares:
                launch(spares.pop(0))
                continue
            fallback = next_fallback()
            if fallback is None:
                break
            fan.stand_in[fallback] = ""
            launch(fallback)
            continue
        speculate = not write and speculative_after is not None and bool(spares)
        done, _ = await asyncio.wait(
            pending,
            timeout=speculative_after if speculate else None,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not done:
            fan.speculative += 1
            launch(spares.pop(0))
            continue
        for task in done:
            name = pending.pop(task)
            error = task.exception()
            if error is None:
                fan.results[name] = task.result()
                continue
            fan.errors.append(f"{name}: {error}")
            if write and name in homes:
                fan.failed_homes.append(name)
                stand_in_for(name)
            elif not write and spares:
                launch(spares.pop(0))
    return fan
