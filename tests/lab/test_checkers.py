"""The history checkers: hand-written histories with known anomalies, and random
histories drawn from a real sequential register, which must pass every check."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings

from multistore.core._checkers import (
    find_failed_writes_observed,
    find_lost_writes,
    find_monotonic_violations,
    find_phantom_reads,
    find_stale_reads,
    latency_summary,
    staleness_curve,
)
from multistore.core._history import Event, EventType, pair_operations
from multistore.core._history_report import check_history
from multistore.core._linearizability import Verdict, check_linearizable, check_register
from multistore.errors import InvalidValueError
from tests.lab.histories import FRAMED_PLANS, PLANS, history, linearizable_history, r, w


def verdict(*specs: object, bound: int = 100_000) -> Verdict:
    ops = pair_operations(history(*specs))  # type: ignore[arg-type]
    results = check_linearizable(ops, bound=bound)
    assert len(results) == 1
    return results[0].verdict


# -- linearizability --------------------------------------------------------------------


def test_sequential_write_then_read_is_linearizable() -> None:
    assert verdict(w(0, 1, 0, 10), r(1, 1, 20, 30)) is Verdict.LINEARIZABLE


def test_read_of_an_overwritten_value_is_not_linearizable() -> None:
    specs = (w(0, 1, 0, 10), w(0, 2, 20, 30), r(1, 1, 40, 50))
    assert verdict(*specs) is Verdict.NOT_LINEARIZABLE
    result = check_register("x", pair_operations(history(*specs)))
    assert result.culprit is not None and result.culprit.is_read and result.culprit.value == 1
    assert result.value_there == 2


def test_read_before_the_write_may_see_it_only_if_concurrent() -> None:
    # the read completed before the write was invoked: it cannot see the write
    assert verdict(r(1, 1, 0, 5), w(0, 1, 10, 20)) is Verdict.NOT_LINEARIZABLE
    # overlapping: it may
    assert verdict(w(0, 1, 0, 20), r(1, 1, 5, 10)) is Verdict.LINEARIZABLE


def test_new_then_old_value_during_one_write_is_not_linearizable() -> None:
    # the write is in flight; one read sees it, a later read sees the old value again
    specs = (w(0, 1, 0, 100), r(1, 1, 10, 20), r(2, None, 30, 40))
    assert verdict(*specs) is Verdict.NOT_LINEARIZABLE
    # the other way round is fine
    assert verdict(w(0, 1, 0, 100), r(1, None, 10, 20), r(2, 1, 30, 40)) is Verdict.LINEARIZABLE


def test_two_concurrent_writes_must_be_seen_in_one_order() -> None:
    base = (w(0, 1, 0, 50), w(1, 2, 10, 60))
    assert verdict(*base, r(2, 1, 70, 80), r(2, 1, 90, 95)) is Verdict.LINEARIZABLE
    assert verdict(*base, r(2, 2, 70, 80), r(3, 1, 90, 95)) is Verdict.NOT_LINEARIZABLE
    # both orders at once while the writes overlap the reads is fine
    assert verdict(w(0, 1, 0, 100), w(1, 2, 0, 100), r(2, 1, 10, 20), r(3, 2, 30, 40)) is (
        Verdict.LINEARIZABLE
    )


def test_indeterminate_writes_may_or_may_not_happen() -> None:
    # never completed, never read: fine
    assert verdict(w(0, 1, 0, None, "info"), r(1, None, 50, 60)) is Verdict.LINEARIZABLE
    # an info event, then seen much later: fine (it may land at any time)
    assert verdict(w(0, 1, 0, 5, "info"), r(1, None, 50, 60), r(1, 1, 70, 80)) is (
        Verdict.LINEARIZABLE
    )
    # but once seen it cannot vanish
    assert verdict(w(0, 1, 0, 5, "info"), r(1, 1, 50, 60), r(1, None, 70, 80)) is (
        Verdict.NOT_LINEARIZABLE
    )


def test_failed_writes_never_happened() -> None:
    assert verdict(w(0, 1, 0, 10, "fail"), r(1, None, 20, 30)) is Verdict.LINEARIZABLE
    assert verdict(w(0, 1, 0, 10, "fail"), r(1, 1, 20, 30)) is Verdict.NOT_LINEARIZABLE


def test_search_bound_gives_unknown() -> None:
    # many concurrent writes, then a read of a value nobody wrote: the search must try
    # every order of the writes before it can say no
    writes = [w(i, i + 1, 0, 1000) for i in range(10)]
    specs = (*writes, r(20, 99, 2000, 2001))
    assert verdict(*specs, bound=50) is Verdict.UNKNOWN
    assert verdict(*specs) is Verdict.NOT_LINEARIZABLE


def test_keys_are_checked_independently() -> None:
    events = history(
        w(0, 1, 0, 10, key="a"),
        r(1, 1, 20, 30, key="a"),
        w(2, 2, 0, 10, key="b"),
        r(3, None, 20, 30, key="b"),
    )
    results = {res.key: res.verdict for res in check_linearizable(pair_operations(events))}
    assert results == {"a": Verdict.LINEARIZABLE, "b": Verdict.NOT_LINEARIZABLE}


# -- stale, lost, monotonic, phantom -----------------------------------------------------


def test_stale_read_names_the_missed_write_and_its_age() -> None:
    ops = pair_operations(history(w(0, 1, 0, 10), w(0, 2, 20, 30), r(1, 1, 40, 50)))
    [stale] = find_stale_reads(ops)
    assert stale.saw is not None and stale.saw.value == 1
    assert stale.missed.value == 2 and stale.age_ns == 10


def test_initial_value_after_an_acknowledged_write_is_stale() -> None:
    ops = pair_operations(history(w(0, 1, 0, 10), r(1, None, 20, 30)))
    assert len(find_stale_reads(ops)) == 1


def test_concurrent_writes_give_no_stale_read() -> None:
    ops = pair_operations(history(w(0, 1, 0, 50), w(1, 2, 10, 60), r(2, 1, 70, 80)))
    assert find_stale_reads(ops) == []
    ops = pair_operations(history(w(0, 1, 0, 50), r(2, None, 10, 80)))
    assert find_stale_reads(ops) == []  # the write completed after the read began


def test_lost_write_is_one_no_later_read_saw() -> None:
    ops = pair_operations(
        history(w(0, 1, 0, 10), w(0, 2, 20, 30), r(1, 1, 40, 50), r(1, 1, 60, 70))
    )
    lost, unverified = find_lost_writes(ops)
    assert [lw.write.value for lw in lost] == [2] and unverified == 0
    assert lost[0].reads_after == 2


def test_overwritten_write_is_not_lost_and_unread_write_is_unverified() -> None:
    ops = pair_operations(history(w(0, 1, 0, 10), w(0, 2, 20, 30), r(1, 2, 40, 50)))
    assert find_lost_writes(ops) == ([], 0)
    ops = pair_operations(history(w(0, 1, 0, 10), r(1, None, 5, 8)))
    assert find_lost_writes(ops) == ([], 1)


def test_a_write_seen_and_then_gone_is_lost() -> None:
    # the write is seen once, then every later read returns the initial value again
    ops = pair_operations(
        history(w(0, 1, 0, 10), r(1, 1, 20, 30), r(2, None, 40, 50), r(1, None, 60, 70))
    )
    lost, unverified = find_lost_writes(ops)
    assert [lw.write.value for lw in lost] == [1] and unverified == 0
    [gone] = lost
    assert gone.seen_by is not None and gone.seen_by.invoke == 20  # seen ...
    assert gone.last_read.invoke == 60 and gone.last_saw is None  # ... then gone
    assert gone.to_dict()["seen_by"]["value"] == 1
    assert len(find_stale_reads(ops)) == 2  # and the reads that lost it are stale
    # gone to a value written before it: lost too, and the report names that write
    ops = pair_operations(
        history(w(0, 1, 0, 10), w(0, 2, 20, 30), r(1, 2, 40, 50), r(2, 1, 60, 70))
    )
    [gone] = find_lost_writes(ops)[0]
    assert gone.write.value == 2 and gone.last_saw is not None and gone.last_saw.value == 1


def test_a_phantom_last_read_loses_no_write() -> None:
    # the last read returned a value nobody wrote: a phantom, judged apart
    ops = pair_operations(history(w(0, 1, 0, 10), r(1, 1, 20, 30), r(2, 9, 40, 50)))
    assert find_lost_writes(ops) == ([], 0)
    assert [op.value for op in find_phantom_reads(ops)] == [9]


def test_a_write_seen_then_overwritten_is_not_lost() -> None:
    specs = (w(0, 1, 0, 10), r(1, 1, 20, 30), r(2, None, 40, 50), w(0, 2, 60, 70))
    ops = pair_operations(history(*specs, r(1, 2, 80, 90)))
    assert find_lost_writes(ops) == ([], 0)  # the stale read is a stale read, not a loss
    assert len(find_stale_reads(ops)) == 1
    # a last read concurrent with a newer write may return either
    ops = pair_operations(history(w(0, 1, 0, 10), w(3, 2, 20, 100), r(1, 2, 30, 40)))
    assert find_lost_writes(ops)[0] == []


def test_a_failed_write_that_was_read_is_an_indeterminate_write_observed() -> None:
    # the store said the write of 2 failed for good (definite), yet a read returned it
    specs = (w(0, 1, 0, 10), w(1, 2, 20, 30, "fail"), r(2, 2, 40, 50), r(2, 2, 60, 70))
    ops = pair_operations(history(*specs))
    [observed] = find_failed_writes_observed(ops)
    assert observed.write.value == 2 and observed.write.type is EventType.FAIL
    assert observed.read.invoke == 40  # the first read that saw it
    # it is reported as that, and nothing else: not a phantom, not a stale read
    assert find_phantom_reads(ops) == []
    assert find_stale_reads(ops) == []
    report = check_history(history(*specs))
    assert report.to_dict()["counts"]["failed_writes_observed"] == 1
    assert report.non_linearizable_keys == []  # as an indeterminate write, it fits
    assert report.valid is False
    ex = report.to_dict()["examples"]["failed_writes_observed"][0]
    assert ex["write"]["type"] == "fail" and ex["read"]["value"] == 2
    # a failed write nobody read is just a failed write
    quiet = check_history(history(w(0, 1, 0, 10), w(1, 2, 20, 30, "fail"), r(2, 1, 40, 50)))
    assert quiet.failed_writes_observed == () and quiet.valid is True
    # a read that ended before the failed write began did not see it: a phantom
    early = pair_operations(history(r(2, 2, 0, 5), w(1, 2, 20, 30, "fail")))
    assert find_failed_writes_observed(early) == []
    assert [op.value for op in find_phantom_reads(early)] == [2]


def test_monotonic_read_violation_per_process() -> None:
    specs = (w(0, 1, 0, 10), w(0, 2, 20, 30), r(1, 2, 40, 50), r(1, 1, 60, 70))
    [violation] = find_monotonic_violations(pair_operations(history(*specs)))
    assert violation.earlier.value == 2 and violation.later.value == 1
    # the same two reads by two processes are not a monotonic-read violation
    specs = (w(0, 1, 0, 10), w(0, 2, 20, 30), r(1, 2, 40, 50), r(2, 1, 60, 70))
    assert find_monotonic_violations(pair_operations(history(*specs))) == []
    # going back to the initial value is one
    back = (w(0, 1, 0, 10), r(1, 1, 40, 50), r(1, None, 60, 70))
    assert len(find_monotonic_violations(pair_operations(history(*back)))) == 1


def test_phantom_reads() -> None:
    # 7: nobody wrote it; 3: read before its write began (a failed write that was read
    # is not a phantom: see the failed-write test)
    specs = (w(0, 1, 0, 10, "fail"), r(1, 1, 20, 30), r(1, 7, 40, 50), r(2, 3, 0, 5))
    ops = pair_operations(history(*specs, w(0 + 5, 3, 10, 20)))
    assert [op.value for op in find_phantom_reads(ops)] == [3, 7]


# -- the report, PBS curve, latencies, the JSON shape -----------------------------------


def test_check_history_reports_counts_and_examples() -> None:
    events = history(w(0, 1, 0, 10), w(0, 2, 20, 30), r(1, 1, 40, 50), r(1, 1, 60, 70))
    report = check_history(events)
    data = report.to_dict()
    assert data["valid"] is False
    assert data["counts"]["stale_reads"] == 2
    assert data["counts"]["lost_writes"] == 1
    assert data["counts"]["non_linearizable_keys"] == 1
    assert data["examples"]["stale_reads"][0]["missed"]["value"] == 2
    json.dumps(data)  # serialisable
    good = check_history(history(w(0, 1, 0, 10), r(1, 1, 20, 30)))
    assert good.valid is True and good.to_dict()["counts"]["stale_reads"] == 0


def test_staleness_curve_buckets_reads_by_time_since_the_write() -> None:
    ms = 1_000_000
    specs = (
        w(0, 1, 0, 1 * ms),
        r(1, None, int(1.5 * ms), 2 * ms),  # 0.5 ms after: stale
        r(2, 1, int(1.7 * ms), 2 * ms),  # 0.7 ms after: fresh
        r(1, 1, 30 * ms, 31 * ms),  # 29 ms after: fresh
    )
    curve = staleness_curve(pair_operations(history(*specs)), [0.0, 1.0, 20.0])
    assert [(b.from_ms, b.reads, b.stale) for b in curve] == [
        (0.0, 2, 1),
        (1.0, 0, 0),
        (20.0, 1, 0),
    ]
    assert curve[0].p_stale == 0.5 and curve[1].p_stale is None


def test_latency_summary() -> None:
    ms = 1_000_000
    specs = [w(i, i + 1, 0, (i + 1) * ms) for i in range(10)]
    summary = latency_summary(pair_operations(history(*specs, r(20, None, 0, 5, "fail"))))
    assert summary["write"]["ok"] == 10 and summary["write"]["p50_ms"] == 5.0
    assert summary["write"]["p99_ms"] == 10.0
    assert summary["read"] == {"ok": 0, "fail": 1, "info": 0}


def test_events_round_trip_through_json() -> None:
    events = history(w(0, 1, 0, 10), r(1, 1, 20, 30), w(2, 2, 40, None, "info"))
    lines = [json.dumps(e.to_dict()) for e in events]
    assert json.loads(lines[0]) == {
        "index": 0,
        "process": 0,
        "type": "invoke",
        "f": "write",
        "key": "x",
        "value": 1,
        "time": 0,
    }
    assert [Event.from_dict(json.loads(line)) for line in lines] == events
    ops = pair_operations(events)
    assert [op.type for op in ops] == [EventType.OK, EventType.OK, EventType.INFO]


@pytest.mark.parametrize(
    "events",
    [
        [Event(0, 1, EventType.OK, "read", "x", 1, 0)],  # completes nothing
        [
            Event(0, 1, EventType.INVOKE, "read", "x", None, 0),
            Event(1, 1, EventType.INVOKE, "read", "x", None, 1),
        ],
        [
            Event(0, 1, EventType.INVOKE, "write", "x", 1, 0),
            Event(1, 1, EventType.OK, "write", "x", 2, 1),
        ],
        [
            Event(0, 1, EventType.INVOKE, "read", "x", None, 5),
            Event(1, 1, EventType.OK, "read", "x", None, 1),
        ],
        [
            Event(0, 1, EventType.INVOKE, "read", "x", None, 0),
            Event(1, 1, EventType.INFO, "read", "x", None, 1),
            Event(2, 1, EventType.INVOKE, "read", "x", None, 2),
        ],
    ],
    ids=["orphan", "double-invoke", "other-value", "time-backwards", "after-info"],
)
def test_malformed_histories_are_rejected(events: list[Event]) -> None:
    with pytest.raises(InvalidValueError):
        pair_operations(events)


def test_duplicate_write_values_are_rejected() -> None:
    with pytest.raises(InvalidValueError, match="unique"):
        check_history(history(w(0, 1, 0, 10), w(1, 1, 20, 30)))
    with pytest.raises(InvalidValueError):
        Event.from_dict({"index": 0, "process": 0, "type": "cas", "f": "read", "key": "x"})


# -- property: a real register's histories pass every check ------------------------------


@settings(max_examples=300, deadline=None)
@given(PLANS)
def test_histories_of_a_sequential_register_pass_every_check(plan: list) -> None:  # type: ignore[type-arg]
    report = check_history(linearizable_history(plan))
    assert report.non_linearizable_keys == [] and report.unknown_keys == []
    assert report.stale_reads == ()
    assert report.lost_writes == ()
    assert report.monotonic_violations == ()
    assert report.phantom_reads == ()
    assert report.valid is True


@settings(max_examples=200, deadline=None)
@given(FRAMED_PLANS)
def test_a_read_made_stale_is_caught(plan: list) -> None:  # type: ignore[type-arg]
    """Take a real register's history and make one read return a value that had been
    overwritten (in real time) before it began: every checker that should, objects."""
    events = linearizable_history(plan)
    ops = pair_operations(events)
    acked = [op for op in ops if op.is_write and op.ok]
    triple = next(
        (
            (read, old)
            for read in ops
            if read.is_read and read.ok
            for old in acked
            for new in acked
            if old.key == new.key == read.key
            and old.precedes(new)
            and new.precedes(read)
            and read.value != old.value
        ),
        None,
    )
    assume(triple is not None)
    assert triple is not None
    read, old = triple
    done = next(e for e in events if e.process == read.process and e.index > read.index)
    events[done.index] = replace(done, value=old.value)
    report = check_history(events)
    assert [s.read.index for s in report.stale_reads] == [read.index]
    assert report.non_linearizable_keys == [read.key]
    assert report.valid is False
