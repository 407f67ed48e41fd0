"""``replication_status()``: each node's role, position, lag and health, as plain data."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

from multistore.errors import MultistoreError
from multistore.replication._nodes import Role
from multistore.replication._router import Router
from multistore.replication._token import format_lsn
from multistore.urls import parse_url

__all__ = ["replication_status"]


async def replication_status(router: Router, *, refresh: bool = True) -> dict[str, Any]:
    """A JSON-ready report of the router's nodes (``multistore status --json``).

    With ``refresh`` (the default) one probe round runs first, so lag is current.
    Keys: ``backend``, ``timeline``, ``primary``, ``failing_over``,
    ``timeline_pending`` (why the timeline is not known after a promotion, or None) and
    ``nodes``, a
    list of ``{name, url (password hidden), role, health, timeline, position,
    lag_seconds, lag_positions, staleness_bound, in_flight, reads, writes, error}``
    (``lag_seconds`` and ``staleness_bound`` are upper bounds, None while unknown);
    PostgreSQL nodes add ``lsn`` and ``replay_time``.
    """
    if refresh:
        with contextlib.suppress(MultistoreError):
            await router.refresh()
    now = time.monotonic()
    postgres = router.backend.scheme == "postgresql"
    nodes: list[dict[str, Any]] = []
    for node in router.nodes:
        replica = node.role is Role.REPLICA
        entry: dict[str, Any] = {
            "name": node.name,
            "url": parse_url(node.url).render(hide_password=True),
            "role": node.role.value,
            "health": node.health.state.value if node.role is not Role.PRIMARY else "ok",
            "timeline": node.timeline,
            "position": node.position,
            "lag_seconds": _seconds(node.lag_seconds) if replica else 0.0,
            "lag_positions": node.lag_positions if replica else 0,
            "staleness_bound": _seconds(router.staleness_bound(node, now)) if replica else 0.0,
            "in_flight": node.in_flight,
            "reads": node.reads,
            "writes": node.writes,
            "error": node.health.last_error,
        }
        if node.role is Role.PRIMARY and router.primary_failures:
            entry["health"] = "down"
        if node.role is Role.FENCED:
            entry["fence_pending"] = node.fence_pending
        if postgres:
            entry["lsn"] = format_lsn(node.position)
            entry["replay_time"] = node.replay_time.isoformat() if node.replay_time else None
        nodes.append(entry)
    primary = next((n.name for n in router.nodes if n.role is Role.PRIMARY), None)
    return {
        "backend": router.backend.scheme,
        "timeline": router.timeline,
        "primary": primary,
        "failing_over": router.failing_over,
        "timeline_pending": router.history_pending,
        "nodes": nodes,
    }


def _seconds(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 3)
