"""History checkers for a key-value store of registers: what a client could observe.

Every checker takes the :class:`~multistore.core._history.Operation` list of a history
(see :func:`~multistore.core._history.pair_operations`). Writes write unique values, so
a read names the write it saw; ``None`` names the initial value. "``a`` precedes ``b``"
always means real time: ``a`` was acknowledged before ``b`` was invoked. Indeterminate
(``info``) writes never precede anything (they may take effect at any later time);
failed writes never happened — unless a read returned one's value: that is reported
(below), and every other check then treats that write as indeterminate.

- **Stale read**: an ``ok`` read that returned the initial value, or the value of a
  write ``s``, although some write ``w`` acknowledged before the read began had been
  invoked after ``s`` was acknowledged — ``s`` was already overwritten, in real time,
  by a write the store had confirmed. ``missed`` is such a ``w`` (the one invoked
  latest) and ``age_ns`` is how long before the read ``w`` was acknowledged.
- **Lost write**: an acknowledged write ``w`` such that at least one ``ok`` read of its
  key began after ``w`` was acknowledged, and the *last* such read returned the initial
  value or a write that precedes ``w``: in the end, neither ``w`` nor anything that
  could be ordered after it is there. That covers a write no read ever saw and a write
  seen and then gone (``seen_by`` names the first read that saw it). (A write that no
  read followed is not judged; it is counted as ``unverified``.) The lab ends every run
  with a final read of each key after the faults heal, so each write gets judged.
- **Failed write observed**: a write recorded as ``fail`` — the store said it did not
  happen and never will — whose value an ``ok`` read returned. The failure should have
  been indeterminate; the first such read is reported.
- **Monotonic-read violation**: a process read ``a`` and later (same process, same key)
  read ``b`` where ``b`` precedes ``a`` or ``b`` is the initial value and ``a`` is not.
- **Phantom read**: an ``ok`` read that returned a value no write of that key wrote,
  or one whose write was invoked only after the read completed.

Linearizability of each key is in :mod:`multistore.core._linearizability`.
:func:`staleness_curve` gives the probability of a stale read as a function of time
since the write (probabilistically bounded staleness, Bailis et al. 2012) from the
samples of :func:`staleness_samples`, and :func:`latency_summary` the latency
percentiles per function.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from multistore.core._history import NEVER, EventType, Operation

__all__ = [
    "DEFAULT_STALENESS_EDGES_MS",
    "FailedWriteObserved",
    "LostWrite",
    "MonotonicViolation",
    "StaleRead",
    "StalenessBucket",
    "StalenessSample",
    "as_indeterminate",
    "bucket_edges",
    "find_failed_writes_observed",
    "find_lost_writes",
    "find_monotonic_violations",
    "find_phantom_reads",
    "find_stale_reads",
    "latency_summary",
    "staleness_curve",
    "staleness_samples",
]

DEFAULT_STALENESS_EDGES_MS: Final = (
    0.0,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
)
"""Lower edges (ms since the write was acknowledged) of the staleness-curve buckets."""


@dataclass(frozen=True, slots=True)
class StaleRead:
    read: Operation
    saw: Operation | None
    """The write whose value the read returned (``None``: the initial value)."""
    missed: Operation
    age_ns: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read.to_dict(),
            "saw": None if self.saw is None else self.saw.to_dict(),
            "missed": self.missed.to_dict(),
            "age_ms": self.age_ns / 1e6,
        }


@dataclass(frozen=True, slots=True)
class LostWrite:
    write: Operation
    reads_after: int
    """How many ``ok`` reads began after it was acknowledged."""
    last_read: Operation
    """The last of them: it returned an older value."""
    last_saw: Operation | None = None
    """The write whose value the last read returned (``None``: the initial value)."""
    seen_by: Operation | None = None
    """The first read that returned the write's own value, if one did."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "write": self.write.to_dict(),
            "reads_after": self.reads_after,
            "last_read": self.last_read.to_dict(),
            "last_saw": None if self.last_saw is None else self.last_saw.to_dict(),
            "seen_by": None if self.seen_by is None else self.seen_by.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class FailedWriteObserved:
    write: Operation
    """The write recorded as failed (definite)."""
    read: Operation
    """The first ``ok`` read that returned its value."""

    def to_dict(self) -> dict[str, Any]:
        return {"write": self.write.to_dict(), "read": self.read.to_dict()}


@dataclass(frozen=True, slots=True)
class MonotonicViolation:
    earlier: Operation
    later: Operation

    def to_dict(self) -> dict[str, Any]:
        return {"earlier": self.earlier.to_dict(), "later": self.later.to_dict()}


@dataclass(frozen=True, slots=True)
class StalenessBucket:
    from_ms: float
    to_ms: float
    reads: int
    stale: int

    @property
    def p_stale(self) -> float | None:
        return self.stale / self.reads if self.reads else None

    @property
    def p_consistent(self) -> float | None:
        return 1.0 - self.stale / self.reads if self.reads else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "from_ms": self.from_ms,
            "to_ms": None if math.isinf(self.to_ms) else self.to_ms,
            "reads": self.reads,
            "stale": self.stale,
            "p_stale": self.p_stale,
            "p_consistent": self.p_consistent,
        }


def _indeterminate(write: Operation) -> Operation:
    """A failed write taken as indeterminate: it may have taken effect at any time."""
    return replace(write, type=EventType.INFO, complete=NEVER)


class _Key:
    """One key's writes, indexed for the questions the checkers ask. A failed write
    whose value some read returned counts as indeterminate here."""

    def __init__(self, ops: Sequence[Operation]) -> None:
        last_seen: dict[object, int] = {}  # value -> latest completion of a read of it
        for op in ops:
            if op.is_read and op.ok:
                last_seen[op.value] = max(last_seen.get(op.value, -1), op.complete)
        self.failed_seen = {
            op.value: op
            for op in ops
            if op.is_write
            and op.type is EventType.FAIL
            and last_seen.get(op.value, -1) >= op.invoke
        }
        self.by_value = {
            op.value: op for op in ops if op.is_write and op.type in (EventType.OK, EventType.INFO)
        }
        for value, op in self.failed_seen.items():
            self.by_value.setdefault(value, _indeterminate(op))
        acked = sorted((op for op in ops if op.is_write and op.ok), key=lambda op: op.complete)
        self.acked = acked
        self.acked_complete = [op.complete for op in acked]
        # latest_invoked[i]: among acked[0..i], the write invoked latest
        self.latest_invoked: list[Operation] = []
        for op in acked:
            prev = self.latest_invoked[-1] if self.latest_invoked else None
            self.latest_invoked.append(op if prev is None or op.invoke > prev.invoke else prev)
        self.reads = sorted((op for op in ops if op.is_read and op.ok), key=lambda op: op.invoke)

    def saw(self, read: Operation) -> Operation | None:
        return None if read.value is None else self.by_value.get(read.value)

    def acked_before(self, time: int) -> int:
        """How many acknowledged writes completed strictly before ``time``."""
        return bisect.bisect_left(self.acked_complete, time)

    def judged_reads(self) -> Iterator[tuple[Operation, int]]:
        """Each non-phantom ``ok`` read that began after an acknowledged write, with how
        many acknowledged writes completed before it began."""
        for read in self.reads:
            if self.is_phantom(read):
                continue
            n = self.acked_before(read.invoke)
            if n:
                yield read, n

    def is_phantom(self, read: Operation) -> bool:
        if read.value is None:
            return False
        write = self.by_value.get(read.value)
        return write is None or read.complete < write.invoke


def _by_key(operations: Sequence[Operation]) -> dict[str, _Key]:
    grouped: dict[str, list[Operation]] = {}
    for op in operations:
        grouped.setdefault(op.key, []).append(op)
    return {key: _Key(ops) for key, ops in sorted(grouped.items())}


def _ack_time(write: Operation | None) -> int:
    """When the value a read returned was certainly in place (-1: the initial value)."""
    return -1 if write is None else write.complete


def find_stale_reads(operations: Sequence[Operation]) -> list[StaleRead]:
    found: list[StaleRead] = []
    for key in _by_key(operations).values():
        for read, n in key.judged_reads():
            newest = key.latest_invoked[n - 1]
            saw = key.saw(read)
            if saw is not None and saw.complete == NEVER:
                continue  # an indeterminate write may have landed at any time
            if newest.invoke > _ack_time(saw):
                found.append(StaleRead(read, saw, newest, read.invoke - newest.complete))
    found.sort(key=lambda s: s.read.index)
    return found


def find_lost_writes(operations: Sequence[Operation]) -> tuple[list[LostWrite], int]:
    """The lost acknowledged writes, and how many acknowledged writes no read followed."""
    lost: list[LostWrite] = []
    unverified = 0
    for key in _by_key(operations).values():
        reads = [read for read in key.reads if not key.is_phantom(read)]  # judged apart
        invokes = [read.invoke for read in reads]
        for write in key.acked:
            start = bisect.bisect_right(invokes, write.complete)
            after = reads[start:]
            if not after:
                unverified += 1
                continue
            last = after[-1]  # reads are in invocation order: the last one begun
            saw = key.saw(last)
            if saw is not None and not saw.precedes(write):
                continue  # the write, or one that may be ordered after it, is there
            seen_by = next((read for read in key.reads if read.value == write.value), None)
            lost.append(LostWrite(write, len(after), last, saw, seen_by))
    lost.sort(key=lambda lw: lw.write.index)
    return lost, unverified


def find_failed_writes_observed(operations: Sequence[Operation]) -> list[FailedWriteObserved]:
    """Failed writes whose value a read returned, each with the first such read."""
    found: list[FailedWriteObserved] = []
    for key in _by_key(operations).values():
        for value, write in key.failed_seen.items():
            first = min(
                (r for r in key.reads if r.value == value and r.complete >= write.invoke),
                key=lambda r: r.complete,
            )
            found.append(FailedWriteObserved(write, first))
    found.sort(key=lambda fw: fw.write.index)
    return found


def as_indeterminate(
    operations: Sequence[Operation], failed: Iterable[FailedWriteObserved]
) -> list[Operation]:
    """The operations with each observed failed write turned indeterminate (``info``),
    for checks such as linearizability that take outcomes at their word."""
    turned = {fw.write.index for fw in failed}
    return [_indeterminate(op) if op.index in turned else op for op in operations]


def find_monotonic_violations(operations: Sequence[Operation]) -> list[MonotonicViolation]:
    found: list[MonotonicViolation] = []
    keys = _by_key(operations)
    for key in keys.values():
        per_process: dict[int, list[Operation]] = {}
        for read in key.reads:
            per_process.setdefault(read.process, []).append(read)
        for reads in per_process.values():
            # the earlier read whose write was invoked latest: the strongest lower bound
            floor: Operation | None = None
            floor_invoke = -1
            for read in reads:  # one process: sequential, in invocation order
                saw = key.saw(read)
                if key.is_phantom(read):
                    continue
                if floor is not None:
                    went_back = (saw is None and floor_invoke >= 0) or (
                        saw is not None and saw.complete < floor_invoke
                    )
                    if went_back:
                        found.append(MonotonicViolation(floor, read))
                if saw is not None and saw.invoke > floor_invoke:
                    floor, floor_invoke = read, saw.invoke
                elif floor is None:
                    floor = read
    found.sort(key=lambda v: v.later.index)
    return found


def find_phantom_reads(operations: Sequence[Operation]) -> list[Operation]:
    found: list[Operation] = []
    for key in _by_key(operations).values():
        found.extend(read for read in key.reads if key.is_phantom(read))
    found.sort(key=lambda op: op.index)
    return found


@dataclass(frozen=True, slots=True)
class StalenessSample:
    """One read that began after an acknowledged write of its key."""

    t_ms: float
    """Time from the latest acknowledged write's acknowledgement to the read's start."""
    stale: bool
    """The read returned the initial value or a write that precedes that write."""


def staleness_samples(operations: Sequence[Operation]) -> list[StalenessSample]:
    """PBS *t-visibility* samples of a history (see :func:`staleness_curve`)."""
    samples: list[StalenessSample] = []
    for key in _by_key(operations).values():
        for read, n in key.judged_reads():
            last = key.acked[n - 1]
            saw = key.saw(read)
            stale = saw is None or saw.precedes(last)
            samples.append(StalenessSample((read.invoke - last.complete) / 1e6, stale))
    return samples


def staleness_curve(
    operations: Sequence[Operation], edges_ms: Sequence[float] = DEFAULT_STALENESS_EDGES_MS
) -> list[StalenessBucket]:
    """P(stale read) by time since the write, PBS *t-visibility* measured on a history.

    Each ``ok`` read that began after at least one acknowledged write of its key is one
    sample: ``t`` is the time from the *latest acknowledged* write ``w`` (the one
    acknowledged last before the read began) to the read's invocation, and the sample
    is stale when the read returned the initial value or a write that precedes ``w``.
    Samples are counted in buckets ``[edges[i], edges[i+1])``, the last one open-ended.
    """
    lower = bucket_edges(edges_ms)
    reads = [0] * len(lower)
    stale = [0] * len(lower)
    for sample in staleness_samples(operations):
        bucket = bisect.bisect_right(lower, sample.t_ms) - 1
        reads[bucket] += 1
        stale[bucket] += sample.stale
    uppers = [*lower[1:], math.inf]
    return [
        StalenessBucket(lo, hi, r, s)
        for lo, hi, r, s in zip(lower, uppers, reads, stale, strict=True)
    ]


def bucket_edges(edges_ms: Sequence[float]) -> list[float]:
    """The lower bucket edges, sorted, starting at 0."""
    lower = sorted(edges_ms)
    if not lower or lower[0] != 0.0:
        lower = [0.0, *lower]
    return lower


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(operations: Sequence[Operation]) -> dict[str, dict[str, Any]]:
    """Per function: outcome counts and latency percentiles (ms) of ``ok`` operations."""
    summary: dict[str, dict[str, Any]] = {}
    for f in sorted({op.f for op in operations}):
        ops = [op for op in operations if op.f == f]
        latencies = sorted((op.complete - op.invoke) / 1e6 for op in ops if op.ok)
        row: dict[str, Any] = {
            "ok": len(latencies),
            "fail": sum(op.type is EventType.FAIL for op in ops),
            "info": sum(op.type is EventType.INFO for op in ops),
        }
        if latencies:
            for q in (50, 90, 99):
                row[f"p{q}_ms"] = round(_percentile(latencies, q), 3)
            row["max_ms"] = round(latencies[-1], 3)
        summary[f] = row
    return summary
