"""Every history check at once: :func:`check_history` returns a :class:`HistoryReport`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from multistore.core._checkers import (
    DEFAULT_STALENESS_EDGES_MS,
    FailedWriteObserved,
    LostWrite,
    MonotonicViolation,
    StalenessBucket,
    StalenessSample,
    StaleRead,
    as_indeterminate,
    find_failed_writes_observed,
    find_lost_writes,
    find_monotonic_violations,
    find_phantom_reads,
    find_stale_reads,
    latency_summary,
    staleness_curve,
    staleness_samples,
)
from multistore.core._history import Event, Operation, check_unique_writes, pair_operations
from multistore.core._linearizability import (
    DEFAULT_SEARCH_BOUND,
    LinearizabilityResult,
    Verdict,
    check_linearizable,
)

__all__ = ["HistoryReport", "check_history"]


@dataclass(frozen=True, slots=True)
class HistoryReport:
    operations: tuple[Operation, ...]
    stale_reads: tuple[StaleRead, ...]
    lost_writes: tuple[LostWrite, ...]
    unverified_writes: int
    failed_writes_observed: tuple[FailedWriteObserved, ...]
    monotonic_violations: tuple[MonotonicViolation, ...]
    phantom_reads: tuple[Operation, ...]
    linearizability: tuple[LinearizabilityResult, ...]
    staleness: tuple[StalenessBucket, ...]
    latency: dict[str, dict[str, Any]]
    samples: tuple[StalenessSample, ...] = ()
    """The staleness samples the buckets count (for a model to be set beside them)."""

    @property
    def non_linearizable_keys(self) -> list[str]:
        return [r.key for r in self.linearizability if r.verdict is Verdict.NOT_LINEARIZABLE]

    @property
    def unknown_keys(self) -> list[str]:
        return [r.key for r in self.linearizability if r.verdict is Verdict.UNKNOWN]

    @property
    def valid(self) -> bool | None:
        """False on any anomaly; None when nothing was found but some key is unknown."""
        if (
            self.stale_reads
            or self.lost_writes
            or self.failed_writes_observed
            or self.monotonic_violations
            or self.phantom_reads
            or self.non_linearizable_keys
        ):
            return False
        return None if self.unknown_keys else True

    def to_dict(self, *, max_examples: int = 3) -> dict[str, Any]:
        def examples(items: Sequence[Any]) -> list[Any]:
            return [item.to_dict() for item in items[:max_examples]]

        counts = {
            "operations": len(self.operations),
            "ok": sum(op.ok for op in self.operations),
            "stale_reads": len(self.stale_reads),
            "lost_writes": len(self.lost_writes),
            "failed_writes_observed": len(self.failed_writes_observed),
            "unverified_writes": self.unverified_writes,
            "monotonic_violations": len(self.monotonic_violations),
            "phantom_reads": len(self.phantom_reads),
            "non_linearizable_keys": len(self.non_linearizable_keys),
            "unknown_keys": len(self.unknown_keys),
        }
        bad_keys = [r for r in self.linearizability if not r.linearizable]
        return {
            "valid": self.valid,
            "counts": counts,
            "examples": {
                "stale_reads": examples(self.stale_reads),
                "lost_writes": examples(self.lost_writes),
                "failed_writes_observed": examples(self.failed_writes_observed),
                "monotonic_violations": examples(self.monotonic_violations),
                "phantom_reads": examples(self.phantom_reads),
                "linearizability": examples(bad_keys),
            },
            "linearizability": {r.key: r.verdict.value for r in self.linearizability},
            "staleness": [b.to_dict() for b in self.staleness],
            "latency": self.latency,
        }


def check_history(
    events: Iterable[Event],
    *,
    bound: int = DEFAULT_SEARCH_BOUND,
    edges_ms: Sequence[float] = DEFAULT_STALENESS_EDGES_MS,
) -> HistoryReport:
    """Pair the events and run every checker (``bound``: per-key linearizability budget).

    A failed write that a read observed is reported once, as such; the linearizability
    check then takes it as indeterminate, so it judges the rest of the key's history.
    """
    ops = pair_operations(events)
    check_unique_writes(ops)
    lost, unverified = find_lost_writes(ops)
    failed = find_failed_writes_observed(ops)
    return HistoryReport(
        operations=tuple(ops),
        stale_reads=tuple(find_stale_reads(ops)),
        lost_writes=tuple(lost),
        unverified_writes=unverified,
        failed_writes_observed=tuple(failed),
        monotonic_violations=tuple(find_monotonic_violations(ops)),
        phantom_reads=tuple(find_phantom_reads(ops)),
        linearizability=tuple(check_linearizable(as_indeterminate(ops, failed), bound=bound)),
        staleness=tuple(staleness_curve(ops, edges_ms)),
        latency=latency_summary(ops),
        samples=tuple(staleness_samples(ops)),
    )
