"""Failover: promote the most advanced replica, repoint the rest, fence the old primary.

The steps, while writes through the router fail with
:class:`~multistore.replication.FailoverError` (indeterminate):

1. bump the router's generation and mark the old primary FENCED: the router never
   sends it anything again, and a write that was running on it fails instead of
   returning success;
2. ask every replica how far it has received and replayed; promote the one furthest
   ahead (``pg_promote()``; for log shipping, stop feeding it);
3. repoint the other replicas at it; one that cannot follow is marked REBUILD;
4. fence the old primary on the server too (read-only, sessions terminated) if it is
   reachable, else keep retrying from the monitor with backoff once it comes back.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from multistore.errors import MultistoreError
from multistore.replication._config import bounded
from multistore.replication._errors import FailoverFailedError
from multistore.replication._nodes import Node, ReplayState, Role

if TYPE_CHECKING:
    from multistore.replication._router import Router

__all__ = ["failover", "retry_fences"]

PROMOTE_TIMEOUT = 90.0


async def failover(router: Router) -> str:
    """Promote the most advanced reachable replica; the name of the new primary.

    Raises :class:`FailoverFailedError` when no replica is reachable or promotion
    fails (the old primary then stays primary if the failover never started a
    promotion, else writes keep failing until ``failover()`` succeeds)."""
    async with router.failover_lock:
        old = next((n for n in router.nodes if n.role is Role.PRIMARY), None)
        router.failing_over = True
        router.generation += 1
        try:
            if old is not None:
                old.role = Role.FENCED
                old.fence_pending = True
            best = await _most_advanced(router)
            if best is None:
                if old is not None:
                    old.role = Role.PRIMARY
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
            if old is not None:
                await _fence(router, old)
            return best.name
        finally:
            router.failing_over = False


async def _most_advanced(router: Router) -> Node | None:
    candidates = router.replicas
    timeout = router.config.probe_timeout * 2

    async def ask(node: Node) -> ReplayState | None:
        try:
            return await bounded(router.backend.replay_state(node), timeout)
        except (MultistoreError, TimeoutError):
            return None

    states = await asyncio.gather(*(ask(n) for n in candidates))
    ranked = [(s.received, s.position, n) for n, s in zip(candidates, states, strict=True) if s]
    if not ranked:
        return None
    return max(ranked, key=lambda r: (r[0], r[1]))[2]


async def _fence(router: Router, node: Node) -> None:
    try:
        await bounded(router.backend.fence(node), router.config.probe_timeout)
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
