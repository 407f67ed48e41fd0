"""Hybrid logical clocks: monotonicity, the receive rule, the text form, restarts, the skew guard.

Time is always injected (a list of wall-clock readings or a mutable cell); no test reads the
real clock.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multistore.core import (
    LWW,
    MAX_COUNTER,
    ClockSkewError,
    HLCTimestamp,
    HybridClock,
    SkewPolicy,
    Versioned,
    VersionVector,
)
from multistore.errors import ConflictError, InvalidValueError

SETTINGS = settings(max_examples=100, deadline=None)
MINUTE = 60_000

NODES = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=6
).filter(lambda s: s.isprintable() and not any(c.isspace() for c in s))
TIMESTAMPS = st.builds(HLCTimestamp, st.integers(0, 2**44), st.integers(0, MAX_COUNTER), NODES)


class ManualClock:
    """A wall clock the test sets by hand (trio's MockClock, in one attribute)."""

    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def readings(values: list[int]) -> Callable[[], int]:
    """A wall clock that returns ``values`` in turn, then keeps returning the last."""
    it: Iterator[int] = iter(values)
    last = [values[0] if values else 0]

    def now() -> int:
        last[0] = next(it, last[0])
        return last[0]

    return now


@SETTINGS
@given(
    walls=st.lists(st.integers(0, 10**6), min_size=1, max_size=60),
    ops=st.lists(st.one_of(st.none(), TIMESTAMPS), max_size=60),
)
def test_timestamps_strictly_increase_whatever_the_wall_clock_does(
    walls: list[int], ops: list[HLCTimestamp | None]
) -> None:
    """now() and update() both return strictly increasing timestamps, wall clock going
    backwards included; the physical part never falls behind the wall clock."""
    wall = readings(walls)
    seen: list[int] = []

    def recording() -> int:
        seen.append(wall())
        return seen[-1]

    clock = HybridClock("me", now_ms=recording, max_skew_ms=2**45)
    issued: list[HLCTimestamp] = []
    for op in ops or [None]:
        ts = clock.now() if op is None else clock.update(op)
        assert ts.physical_ms >= seen[-1]
        if op is not None:
            assert ts > op
        if issued:
            assert ts > issued[-1]
        issued.append(ts)
    assert clock.last == issued[-1]
    assert clock.statistics().wall_clock_regressions == sum(
        1 for x, y in itertools.pairwise(seen) if y < x
    )


@SETTINGS
@given(
    local=st.tuples(st.integers(0, 10**6), st.integers(0, 1000)),
    remote=st.tuples(st.integers(0, 10**6), st.integers(0, 1000)),
    wall=st.integers(0, 10**6),
)
def test_update_follows_the_kulkarni_rule(
    local: tuple[int, int], remote: tuple[int, int], wall: int
) -> None:
    clock = HybridClock("b", now_ms=lambda: wall, max_skew_ms=2**45)
    clock.restore(HLCTimestamp(local[0], local[1], "b"))
    got = clock.update(HLCTimestamp(remote[0], remote[1], "a"))
    physical = max(local[0], remote[0], wall)
    if physical == local[0] == remote[0]:
        counter = max(local[1], remote[1]) + 1
    elif physical == local[0]:
        counter = local[1] + 1
    elif physical == remote[0]:
        counter = remote[1] + 1
    else:
        counter = 0
    assert (got.physical_ms, got.counter, got.node) == (physical, counter, "b")


def test_physical_time_moves_on_when_the_wall_clock_does() -> None:
    wall = ManualClock(1_000)
    clock = HybridClock("a", now_ms=wall)
    assert clock.now() == HLCTimestamp(1_000, 0, "a")
    assert clock.now() == HLCTimestamp(1_000, 1, "a")
    wall.now = 900  # NTP stepped the clock back
    assert clock.now() == HLCTimestamp(1_000, 2, "a")
    wall.now = 1_001
    assert clock.now() == HLCTimestamp(1_001, 0, "a")
    assert clock.statistics().wall_clock_regressions == 1
    assert clock.statistics().issued == 4


@SETTINGS
@given(st.lists(TIMESTAMPS, min_size=2, max_size=30))
def test_text_form_sorts_like_the_timestamps_and_round_trips(
    stamps: list[HLCTimestamp],
) -> None:
    assert sorted(stamps, key=str) == sorted(stamps)
    for ts in stamps:
        assert HLCTimestamp.parse(str(ts)) == ts


def test_text_form_is_compact_and_fixed_width() -> None:
    assert str(HLCTimestamp(1_700_000_000_000, 3, "node-1")) == "018bcfe56800-000003-node-1"
    assert HLCTimestamp.parse("018bcfe56800-000003-node-1").node == "node-1"


@pytest.mark.parametrize(
    "text", ["", "xyz", "018bcfe56800-000003-", "018BCFE56800-000003-a", "18bcfe56800-000003-a"]
)
def test_parse_rejects_malformed_text(text: str) -> None:
    with pytest.raises(InvalidValueError, match="not an HLC timestamp"):
        HLCTimestamp.parse(text)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1, 0, "a"), "physical_ms"),
        ((0, -1, "a"), "counter"),
        ((0, 0, ""), "node id"),
        ((0, 0, "a b"), "whitespace"),
        ((1.5, 0, "a"), "physical_ms"),
    ],
)
def test_bad_timestamps_are_refused(args: tuple[object, object, object], match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        HLCTimestamp(*args)  # type: ignore[arg-type]


def test_restore_keeps_timestamps_increasing_across_a_restart() -> None:
    before = HybridClock("a", now_ms=ManualClock(90 * MINUTE))
    last = [before.now() for _ in range(3)][-1]
    # the machine restarts with its wall clock an hour behind
    after = HybridClock("a", now_ms=ManualClock(30 * MINUTE))
    after.restore(last)
    assert after.now() > last
    # restoring an older timestamp never moves the clock back
    newest = after.now()
    after.restore(HLCTimestamp(0, 0, "a"))
    assert after.now() > newest


def test_counter_overflow_borrows_a_millisecond() -> None:
    clock = HybridClock("a", now_ms=ManualClock(10))
    clock.restore(HLCTimestamp(10, MAX_COUNTER, "a"))
    assert clock.now() == HLCTimestamp(11, 0, "a")
    assert clock.statistics().counter_overflows == 1


def test_skew_policy_and_limits_are_validated() -> None:
    with pytest.raises(InvalidValueError, match="unknown skew policy 'ignore'"):
        HybridClock("a", now_ms=ManualClock(), policy="ignore")
    with pytest.raises(InvalidValueError, match="max_skew_ms"):
        HybridClock("a", now_ms=ManualClock(), max_skew_ms=-1)
    assert HybridClock("a", now_ms=ManualClock(), policy="flag").policy is SkewPolicy.FLAG


# The skew guard ------------------------------------------------------------------------------


def _skewed_pair(policy: str) -> tuple[ManualClock, HybridClock, HybridClock]:
    """Node a with a true clock; node b's wall clock runs 10 minutes ahead."""
    true_time = ManualClock()
    a = HybridClock("a", now_ms=true_time, policy=policy)
    b = HybridClock("b", now_ms=lambda: true_time.now + 10 * MINUTE, policy=policy)
    return true_time, a, b


def _version(value: str, clock: HybridClock) -> Versioned[str]:
    node = clock.node_id
    return Versioned(value, clock.now(), VersionVector({node: 1}), node)


def test_without_a_guard_a_clock_running_ahead_wins_every_lww_conflict() -> None:
    true_time = ManualClock()
    a = HybridClock("a", now_ms=true_time, max_skew_ms=24 * 60 * MINUTE)  # guard effectively off
    b = HybridClock("b", now_ms=lambda: true_time.now + 10 * MINUTE)
    from_b = _version("written by b", b)
    true_time.now += 5 * MINUTE  # a writes five real minutes later ...
    from_a = _version("written by a, later", a)
    # ... and still loses: LWW keeps b's older write
    assert LWW().resolve(from_a, from_b).value == "written by b"
    # worse, once a hears from b its own clock is dragged 10 minutes ahead too
    a.update(from_b.hlc)
    assert a.now().physical_ms >= true_time.now + 5 * MINUTE


def test_skew_guard_rejects_a_timestamp_too_far_ahead() -> None:
    true_time, a, b = _skewed_pair("reject")
    from_b = _version("written by b", b)
    before = a.last
    with pytest.raises(ClockSkewError) as info:
        a.update(from_b.hlc)
    assert isinstance(info.value, ConflictError) and info.value.definite
    assert info.value.skew_ms == 10 * MINUTE and info.value.remote == from_b.hlc
    assert "600000 ms ahead" in str(info.value)
    assert a.last == before  # the clock did not move
    assert a.now().physical_ms == true_time.now
    stats = a.statistics()
    assert (stats.skew_rejected, stats.skew_flagged, stats.received) == (1, 0, 0)
    assert stats.max_skew_ms == 10 * MINUTE
    # a replicator at a keeps b's write out, so a's later write is the one that stands
    true_time.now += 5 * MINUTE
    stored = _version("written by a, later", a)
    assert _receive(a, stored, from_b) == stored


def _receive(clock: HybridClock, stored: Versioned[str], remote: Versioned[str]) -> Versioned[str]:
    """What a replicator does with a remote write: check the clock first, then resolve."""
    try:
        clock.update(remote.hlc)
    except ClockSkewError:
        return stored  # quarantined, not applied
    winner = LWW().resolve(stored, remote).winner
    assert winner is not None
    return winner


def test_skew_guard_flag_policy_accepts_but_reports() -> None:
    true_time, a, b = _skewed_pair("flag")
    from_b = _version("written by b", b)
    update = a.observe(from_b.hlc)
    assert update.flagged and update.skew_ms == 10 * MINUTE
    assert update.timestamp > from_b.hlc  # accepted: a's clock moved ahead
    assert a.statistics().skew_flagged == 1 and a.statistics().skew_rejected == 0
    # a timestamp within the bound is neither flagged nor rejected
    near = HLCTimestamp(true_time.now + 30_000, 0, "c")
    assert not a.observe(near).flagged
    assert a.statistics().skew_flagged == 1 and a.statistics().received == 2


def test_skew_of_measures_against_the_wall_clock() -> None:
    wall = ManualClock(1_000)
    clock = HybridClock("a", now_ms=wall)
    assert clock.skew_of(HLCTimestamp(1_500, 0, "b")) == 500
    assert clock.skew_of(HLCTimestamp(500, 0, "b")) == 0
