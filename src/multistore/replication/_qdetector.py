"""Failure detection for quorum nodes: a threshold detector with probing.

Each request a coordinator sends is reported as a success (with its latency) or a
failure. After ``threshold`` failures in a row a node is *down*: requests skip it
(a write goes to a fallback at once instead of waiting for a timeout) until
``probe_after`` seconds have passed, when the next request probes it again. One
failure short of the threshold it is *suspect*. Any success makes it *up*.
Latency is an exponentially weighted moving average, shown in the status view.
Nodes join and leave with the ring (:meth:`ThresholdDetector.add`, ``remove``);
reports about a node that left are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["NodeHealth", "ThresholdDetector"]

State = Literal["up", "suspect", "down"]


@dataclass
class NodeHealth:
    failures: int = 0
    """Consecutive failures."""
    total_failures: int = 0
    successes: int = 0
    down_since: float | None = None
    last_failure: float | None = None
    latency_ms: float | None = None


class ThresholdDetector:
    """Marks a node down after ``threshold`` consecutive failures; see the module docstring."""

    def __init__(
        self,
        nodes: Iterable[str],
        *,
        threshold: int = 3,
        probe_after: float = 1.0,
        clock: Callable[[], float],
    ) -> None:
        self.threshold = threshold
        self.probe_after = probe_after
        self._clock = clock
        self._health = {name: NodeHealth() for name in nodes}

    def add(self, node: str) -> None:
        """Start watching a node that joined (as up)."""
        self._health.setdefault(node, NodeHealth())

    def remove(self, node: str) -> None:
        """Forget a node that left."""
        self._health.pop(node, None)

    def state(self, node: str) -> State:
        health = self._health.get(node) or NodeHealth()
        if health.failures >= self.threshold:
            return "down"
        if health.failures:
            return "suspect"
        return "up"

    def available(self, node: str) -> bool:
        """False while a down node is not yet due for a probe."""
        health = self._health.get(node)
        if health is None:  # a node that left: still asked by requests begun before
            return True
        if health.failures < self.threshold:
            return True
        last = health.last_failure or 0.0
        return self._clock() - last >= self.probe_after

    def down_for(self, node: str) -> float:
        """Seconds since the node's current run of failures began (0 when it answers)."""
        health = self._health.get(node)
        since = None if health is None else health.down_since
        return 0.0 if since is None else max(0.0, self._clock() - since)

    def success(self, node: str, seconds: float) -> None:
        health = self._health.get(node)
        if health is None:
            return
        health.failures = 0
        health.down_since = None
        health.successes += 1
        ms = seconds * 1000
        health.latency_ms = ms if health.latency_ms is None else 0.8 * health.latency_ms + 0.2 * ms

    def failure(self, node: str) -> None:
        health = self._health.get(node)
        if health is None:
            return
        now = self._clock()
        health.failures += 1
        health.total_failures += 1
        health.last_failure = now
        if health.down_since is None:
            health.down_since = now  # the start of this run of failures

    def fastest_first(self, nodes: list[str]) -> list[str]:
        """``nodes`` by their latency average, lowest first (a node not heard from yet
        first, so that it gets measured)."""
        health = self._health

        def latency(name: str) -> float:
            known = health.get(name)
            return 0.0 if known is None or known.latency_ms is None else known.latency_ms

        return sorted(nodes, key=latency)

    def view(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "state": self.state(name),
                "failures": health.total_failures,
                "consecutive_failures": health.failures,
                "latency_ms": None if health.latency_ms is None else round(health.latency_ms, 3),
            }
            for name, health in sorted(self._health.items())
        ]
