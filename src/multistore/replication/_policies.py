"""Read policies: which of the eligible replicas serves a read.

A policy is a small strategy object with one method, :meth:`ReadPolicy.choose`. The
router hands it only replicas that may serve the read (in rotation, fresh enough for
the read's token or staleness bound), never an empty list.
"""

from __future__ import annotations

import abc
import itertools
import random
from collections.abc import Sequence
from typing import Protocol

__all__ = ["LeastLagPolicy", "RandomPolicy", "ReadPolicy", "ReplicaView", "RoundRobinPolicy"]


class ReplicaView(Protocol):
    """What a policy may look at on a replica."""

    @property
    def name(self) -> str: ...

    @property
    def lag_seconds(self) -> float: ...

    @property
    def in_flight(self) -> int: ...


class ReadPolicy(abc.ABC):
    """Picks one replica out of a non-empty sequence of eligible ones."""

    @abc.abstractmethod
    def choose(self, replicas: Sequence[ReplicaView]) -> int:
        """The index in ``replicas`` of the replica that serves the read."""


class RandomPolicy(ReadPolicy):
    """Uniformly at random (``seed`` makes it repeatable)."""

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def choose(self, replicas: Sequence[ReplicaView]) -> int:
        return self._random.randrange(len(replicas))


class RoundRobinPolicy(ReadPolicy):
    """Each eligible replica in turn (in the router's node order)."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(self, replicas: Sequence[ReplicaView]) -> int:
        return next(self._counter) % len(replicas)


class LeastLagPolicy(ReadPolicy):
    """The replica with the least measured lag; ties go to the one with fewer reads
    in flight, then round robin."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(self, replicas: Sequence[ReplicaView]) -> int:
        best = min((r.lag_seconds, r.in_flight) for r in replicas)
        tied = [i for i, r in enumerate(replicas) if (r.lag_seconds, r.in_flight) == best]
        return tied[next(self._counter) % len(tied)]
