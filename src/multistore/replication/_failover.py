"""Failover: fence the old primary, promote the most advanced replica, repoint the rest.

The steps, while writes through the router fail with
:class:`~multistore.replication.FailoverError` (indeterminate):

1. mark the old primary FENCED: the router never sends it anything again, and a write
   that was running on it fails instead of returning success;
2. fence it on the server, before anything is promoted, so that no client can commit
   on it any more (PostgreSQL: demoted and stopped, see ``_postgres.py``). If it cannot
   be reached, the fence stays pending and the monitor retries it with backoff; if it
   is reached but cannot be fenced, nothing is promoted and it stays primary;
3. when the fence told the old primary's last position, wait (bounded) until a
   replica has received up to it, so a planned failover loses no acknowledged write;
4. promote the replica that received the most (``pg_promote()``; for log shipping,
   stop feeding it and start a new timeline), and read the new timeline and its
   history from it;
5. repoint the other replicas at it; one that cannot follow is marked REBUILD.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from multistore.errors import MultistoreError, StoreUnavailableError
from multistore.replication._config import bounded
from multistore.replication._errors import FailoverFailedError
from multistore.replication._nodes import Node, ReplayState, Role

if TYPE_CHECKING:
    from multistore.replication._router import Router

__all__ = ["failover", "retry_fences"]

PROMOTE_TIMEOUT = 90.0
FENCE_TIMEOUT = 30.0
"""How long fencing a reachable old primary may take (it includes its shutdown)."""
CATCH_UP_TIMEOUT = 10.0
"""How long to wait for a replica to receive the fenced primary's last position."""


async def failover(router: Router) -> str:
    """Fence the old primary, then promote the most advanced reachable replica; the
    name of the new primary.

    Raises :class:`FailoverFailedError` when the old primary is reachable but cannot be
    fenced, when no replica is reachable, or when promotion fails (the old primary
    then stays primary if nothing was fenced or promoted, else writes keep failing
    until ``failover()`` succeeds)."""
    async with router.failover_lock:
        old = next((n for n in router.nodes if n.role is Role.PRIMARY), None)
        router.failing_over = True
        try:
            final: int | None = None
            if old is not None and await _replay_states(router) == []:
                # Fencing now would leave the cluster without any primary.
                raise FailoverFailedError(
                    "failover: no replica answered; nothing was fenced or promoted"
                )
            if old is not None:
                old.role = Role.FENCED
                old.fence_pending = True
                try:
                    final = await _fence_first(router, old)
                except FailoverFailedError:
                    old.role = Role.PRIMARY
                    old.fence_pending = False
                    raise
            best = await _most_advanced(router, final)
            if best is None:
                if old is not None and old.fence_pending:
                    old.role = Role.PRIMARY  # never fenced: it may still be the primary
                    old.fence_pending = False
                raise FailoverFailedError("failover: no replica answered; nothing was promoted")
            try:
                await bounded(router.backend.promote(best), PROMOTE_TIMEOUT)
            except (MultistoreError, TimeoutError) as exc:
                best.role = Role.REBUILD
                raise FailoverFailedError(f"failover: promoting {best.name} failed: {exc}") from exc
            best.role = Role.PRIMARY
            best.health.admit()
            router.tracker.reset()
            try:
                router.history = await bounded(router.backend.timeline(best), PROMOTE_TIMEOUT)
            except (MultistoreError, TimeoutError) as exc:
                # Promoted, but tokens cannot be issued or checked without the timeline:
                # writes wait for the monitor to read it.
                router.history_pending = f"reading it from {best.name} failed: {exc}"
            else:
                best.timeline = router.history.id
            router.primary_failures = 0
            for node in router.replicas:
                try:
                    await bounded(
                        router.backend.repoint(node, best), router.config.probe_timeout * 5
                    )
                except (MultistoreError, TimeoutError) as exc:
                    node.role = Role.REBUILD
                    node.health.last_error = f"could not follow {best.name}: {exc}"
                else:
                    # Back in rotation only after it shows it follows the new primary.
                    node.health.suspend()
            return best.name
        finally:
            router.failing_over = False


async def _fence_first(router: Router, old: Node) -> int | None:
    """Fence ``old`` before anything is promoted; its last position if it told it.
    An unreachable old primary leaves the fence pending (retried by the monitor)."""
    try:
        final = await bounded(router.backend.fence(old), FENCE_TIMEOUT)
    except TimeoutError as exc:
        if not router.backend.fence_may_time_out_unreached:
            # A local file that another connection keeps locked: that writer may still
            # commit there, and promoting now would lose what it acknowledges.
            raise FailoverFailedError(
                f"failover: {old.name} could not be fenced within {FENCE_TIMEOUT:g} s "
                "(another transaction holds its write lock), so nothing was promoted"
            ) from exc
        old.health.eject(f"fence pending: {exc or 'timed out'}", time.monotonic())
        return None
    except StoreUnavailableError as exc:
        old.health.eject(f"fence pending: {exc}", time.monotonic())
        return None
    except MultistoreError as exc:
        raise FailoverFailedError(
            f"failover: {old.name} is reachable but could not be fenced, so nothing was "
            f"promoted: {exc}"
        ) from exc
    old.fence_pending = False
    return final


async def _replay_states(router: Router) -> list[tuple[int, int, Node]]:
    """(received, position, node) of each replica that answers (bounded)."""
    candidates = router.replicas
    timeout = router.config.probe_timeout * 2

    async def ask(node: Node) -> ReplayState | None:
        try:
            return await bounded(router.backend.replay_state(node), timeout)
        except (MultistoreError, TimeoutError):
            return None

    states = await asyncio.gather(*(ask(n) for n in candidates))
    return [(s.received, s.position, n) for n, s in zip(candidates, states, strict=True) if s]


async def _most_advanced(router: Router, final: int | None) -> Node | None:
    """The replica that received the most; with ``final``, first wait (bounded) until
    one has received up to it."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT
    delay = 0.01
    while True:
        ranked = await _replay_states(router)
        if not ranked:
            return None
        best = max(ranked, key=lambda r: (r[0], r[1]))
        if final is None or best[0] >= final or time.monotonic() > deadline:
            return best[2]
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


async def _fence(router: Router, node: Node) -> None:
    try:
        await bounded(router.backend.fence(node), FENCE_TIMEOUT)
    except (MultistoreError, TimeoutError) as exc:
        node.health.eject(f"fence pending: {exc}", time.monotonic())
    else:
        node.fence_pending = False


async def retry_fences(router: Router) -> None:
    """Fence former primaries that were unreachable at failover, with backoff."""
    now = time.monotonic()
    for node in router.nodes:
        if node.role is Role.FENCED and node.fence_pending and node.health.should_probe(now):
            await _fence(router, node)
