"""The PBS model: the chance that a read sees the latest write, ``t`` after it.

Probabilistically Bounded Staleness (Bailis, Venkataraman, Franklin, Hellerstein and
Stoica, VLDB 2012) models a Dynamo-style write and read as four kinds of message legs
between the coordinator and each of the N replicas: the write request (W), the write
acknowledgement (A), the read request (R) and the read response (S), each delay
drawn independently from a distribution. The write is acknowledged (committed) when
the W-th fastest replica's ``W + A`` is in; a read that starts ``t`` after that asks
replicas, and sees the write when one of the replicas it hears from had received the
write before the read request got there (``W_i <= commit + t + R_i``).

:func:`pbs_model` runs that race many times (Monte Carlo, seeded) with the lab's own
latency distribution on every leg. Each trial yields the smallest ``t`` from which
that read sees the write, so P(consistent read at ``t``) is the share of trials
whose threshold is at most ``t`` — one set of trials answers every ``t``.

Reads ask R replicas and use their answers (what this quorum store does: it asks R
homes and waits for them), or ask all N and use the first R answers
(``read_all=True``, the original Dynamo read of the paper). With
``speculative_ms``, a read still short of R answers that long after it started (and
again after each such retry) asks one more replica, and uses the first R answers —
the store's speculative retry. With R + W > N every read sees the write (the
replicas overlap), at every ``t``.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

from multistore.errors import InvalidValueError
from multistore.lab._latency import Latency

__all__ = ["PBSModel", "pbs_model"]


@dataclass(frozen=True, slots=True)
class PBSModel:
    """The model's answer for one N, R, W and latency."""

    n: int
    r: int
    w: int
    trials: int
    thresholds_ms: tuple[float, ...]
    """Per trial, the smallest time since the commit (ms) from which the read sees the
    write, ascending (negative: the write was already there when the read began)."""

    def p_consistent(self, t_ms: float) -> float:
        """P(a read that starts ``t_ms`` after the write was acknowledged sees it)."""
        return bisect.bisect_right(self.thresholds_ms, t_ms) / len(self.thresholds_ms)

    def expected(self, times_ms: Sequence[float]) -> float | None:
        """The model's share of consistent reads for reads started at these times."""
        if not times_ms:
            return None
        return sum(self.p_consistent(t) for t in times_ms) / len(times_ms)

    def curve(self, times_ms: Sequence[float]) -> list[tuple[float, float]]:
        return [(t, self.p_consistent(t)) for t in times_ms]


def pbs_model(
    n: int,
    r: int,
    w: int,
    latency: Latency,
    *,
    trials: int = 20_000,
    seed: int = 0,
    read_all: bool = False,
    speculative_ms: float | None = None,
) -> PBSModel:
    """Run ``trials`` write-then-read races (see the module docstring)."""
    if not 1 <= r <= n or not 1 <= w <= n:
        raise InvalidValueError(f"the PBS model needs 1 <= R, W <= N, got N={n} R={r} W={w}")
    if trials < 1:
        raise InvalidValueError(f"trials must be at least 1, got {trials}")
    rng = random.Random(seed)
    sample = latency.sample
    thresholds: list[float] = []
    for _ in range(trials):
        arrive = [sample(rng) for _ in range(n)]  # write request legs
        acked = sorted(a + sample(rng) for a in arrive)  # + acknowledgement legs
        commit = acked[w - 1]
        request = [sample(rng) for _ in range(n)]  # read request legs
        response = [request[i] + sample(rng) for i in range(n)]  # + read response legs
        if read_all:
            sent = dict.fromkeys(range(n), 0.0)
        else:  # replicas are alike: which R are asked first does not matter
            sent = _speculate(
                r, n, response, None if speculative_ms is None else speculative_ms / 1e3
            )
        heard = sorted(sent, key=lambda i: sent[i] + response[i])[:r]
        # replica i has the write when the read request, sent at commit + t + sent[i],
        # arrives: arrive[i] <= commit + t + sent[i] + request[i]
        threshold = min(arrive[i] - commit - sent[i] - request[i] for i in heard)
        thresholds.append(threshold * 1e3)
    thresholds.sort()
    return PBSModel(n, r, w, trials, tuple(thresholds))


def _speculate(r: int, n: int, response: list[float], every: float | None) -> dict[int, float]:
    """When each replica is asked (seconds after the read starts): R at once, then one
    more at each ``every`` while fewer than R answers are in."""
    sent = dict.fromkeys(range(r), 0.0)
    if every is None:
        return sent
    spare, at = r, every
    while spare < n:
        answers = sum(1 for i, t in sent.items() if t + response[i] <= at)
        if answers >= r:
            break
        sent[spare] = at
        spare, at = spare + 1, at + every
    return sent
