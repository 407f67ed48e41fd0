"""Pure parts of the router: tokens, statement classification, policies, lag and health."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

import multistore.replication as replication
from multistore.errors import InvalidValueError
from multistore.replication import (
    Backoff,
    CausalToken,
    ForkedTokenError,
    Health,
    InvalidTokenError,
    LeastLagPolicy,
    RandomPolicy,
    RoundRobinPolicy,
    RouterConfig,
    Timeline,
    TokenSigner,
    is_read,
)
from multistore.replication._lag import LagTracker, ReplicaHealth
from multistore.replication._postgres import parse_history
from multistore.replication._token import format_lsn, parse_lsn


def test_router_names_are_exported() -> None:
    for name in (
        "Router",
        "Session",
        "CausalToken",
        "TokenSigner",
        "replication_status",
        "FailoverError",
        "ForkedTokenError",
        "InvalidTokenError",
    ):
        assert name in replication.__all__


def test_token_round_trips_through_a_string() -> None:
    token = CausalToken(3, parse_lsn("16/B374D848"))
    assert str(token) == "3:16B374D848"
    assert CausalToken.parse(str(token)) == token
    assert format_lsn(token.position) == "16/B374D848"
    assert CausalToken(1, 5).later(CausalToken(1, 9)) == CausalToken(1, 9)
    assert CausalToken(2, 1).later(CausalToken(1, 9)) == CausalToken(2, 1)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "12",
        "x:1",
        "1:zz",
        "-1:5",
        "1:-5",
        "\uff11:5",  # a full-width digit one
        "1:\uff15",
        "\u0661:5",  # an Arabic-Indic digit one
        "1_0:5",
        "+1:5",
        "1:0x5",
        "1 :5",
        "0:5",  # timelines start at 1
        "4294967296:5",  # past a 32-bit timeline
        "1:" + "F" * 17,  # past a 64-bit position
        "1:5.abc",  # a malformed signature
    ],
)
def test_bad_token_strings_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidValueError):
        CausalToken.parse(bad)


def test_signed_tokens_verify_only_with_the_key() -> None:
    signer = TokenSigner(b"k" * 32, previous=[b"old-key-" * 4])
    token = signer.sign(CausalToken(2, 0x3000060))
    assert token.signature is not None and str(token).startswith("2:3000060.")
    parsed = CausalToken.parse(str(token))
    assert parsed == token and signer.verify(parsed)
    assert not signer.verify(CausalToken(2, 0x3000060))  # unsigned
    forged = CausalToken.parse(f"2:3000061.{token.signature}")  # another position
    assert not signer.verify(forged)
    assert not TokenSigner(b"x" * 32).verify(token)  # another key
    assert signer.verify(TokenSigner(b"old-key-" * 4).sign(CausalToken(1, 5)))  # rotated out
    assert "k" * 16 not in repr(signer)
    with pytest.raises(InvalidValueError):
        TokenSigner(b"short")


def test_timeline_history_decides_which_tokens_survive_a_failover() -> None:
    history = Timeline(3, {1: 0x100, 2: 0x300}, lsn=True)
    history.check(CausalToken(3, 0x999))
    history.check(CausalToken(1, 0x100))  # at the fork: kept
    history.check(CausalToken(2, 0x300))
    with pytest.raises(ForkedTokenError, match="may have been lost in a failover") as lost:
        history.check(CausalToken(1, 0x101))
    assert lost.value.definite and "0/100" in str(lost.value)
    with pytest.raises(ForkedTokenError):
        history.check(CausalToken(2, 0x301))
    with pytest.raises(InvalidTokenError, match="timeline 4"):
        history.check(CausalToken(4, 1))
    assert not Timeline(2, {}).contains(1, 0)  # an ancestor it does not know


def test_postgres_history_file_is_parsed() -> None:
    text = "1\t0/4015FB0\tno recovery target specified\n\n2\t1/A0\tbefore 2000-01-01\n"
    assert parse_history(text) == {1: 0x4015FB0, 2: (1 << 32) | 0xA0}


@pytest.mark.parametrize(
    ("sql", "read"),
    [
        ("SELECT * FROM t", True),
        ("  (select 1)", True),
        ("WITH x AS (SELECT 1) SELECT * FROM x", True),
        ("EXPLAIN SELECT 1", True),
        ("EXPLAIN ANALYZE DELETE FROM t", False),
        ("SELECT * FROM t WHERE id = 1 FOR UPDATE", False),
        ("select * from t for  share", False),
        ("SELECT * FROM t FOR NO KEY UPDATE", False),
        ("SELECT nextval('s')", False),
        ("SELECT pg_advisory_lock(1)", False),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", False),
        ("INSERT INTO t VALUES (1)", False),
        ("UPDATE t SET a = 1", False),
        ("CREATE TABLE t (a int)", False),
    ],
)
def test_statement_classification(sql: str, read: bool) -> None:
    assert is_read(sql) is read


@dataclass
class _R:
    name: str
    lag_seconds: float = 0.0
    in_flight: int = 0


def test_policies() -> None:
    replicas = [_R("a", 0.5), _R("b", 0.1), _R("c", 0.1, in_flight=2)]
    rr = RoundRobinPolicy()
    assert [rr.choose(replicas) for _ in range(4)] == [0, 1, 2, 0]
    assert {LeastLagPolicy().choose(replicas) for _ in range(5)} == {1}
    rnd = RandomPolicy(seed=7)
    assert {rnd.choose(replicas) for _ in range(50)} == {0, 1, 2}


def test_staleness_is_an_upper_bound_from_the_last_sample_at_or_below_the_replica() -> None:
    # The primary was at 100 at t=0 and at 200 at t=0.5; a replica at 150 may miss a
    # write committed right after t=0, so at t=0.6 it may be 0.6 s stale, not 0.1 s.
    tracker = LagTracker()
    tracker.observe(100, now=0.0)
    tracker.observe(200, now=0.5)
    assert tracker.lag_seconds(150, now=0.6) == pytest.approx(0.6)
    assert tracker.lag_seconds(200, now=0.6) == pytest.approx(0.1)
    assert tracker.lag_seconds(250, now=0.6) == pytest.approx(0.1)


def test_staleness_grows_with_the_age_of_the_last_primary_sample() -> None:
    # The primary stops answering probes after t=1: a caught-up replica's bound keeps
    # growing, it never sticks at 0.
    tracker = LagTracker()
    tracker.observe(100, now=0.0)
    tracker.observe(200, now=1.0)
    assert tracker.lag_seconds(200, now=10.0) == pytest.approx(9.0)
    # an idle primary still probed: the same position, a newer time
    tracker.observe(200, now=9.5)
    assert tracker.lag_seconds(200, now=10.0) == pytest.approx(0.5)
    assert tracker.lag_seconds(150, now=10.0) == pytest.approx(10.0)


def test_staleness_is_unknown_behind_every_sample() -> None:
    tracker = LagTracker()
    assert tracker.lag_seconds(0, now=1.0) == math.inf  # no sample yet
    tracker.observe(100, now=10.0)
    assert tracker.lag_seconds(50, now=20.0) == math.inf


def test_samples_taken_out_of_order_keep_the_bound_valid() -> None:
    tracker = LagTracker()
    tracker.observe(100, now=1.0)
    tracker.observe(300, now=3.0)
    tracker.observe(200, now=2.0)  # a write's sample, stamped before the probe's
    assert tracker.latest == 300
    assert tracker.lag_seconds(250, now=4.0) == pytest.approx(2.0)
    tracker.observe(250, now=1.5)  # says less than (200, 2.0) for every replica
    assert tracker.lag_seconds(260, now=4.0) == pytest.approx(2.0)
    tracker.observe(150, now=3.5)  # a later time at a lower position wins
    assert tracker.lag_seconds(150, now=4.0) == pytest.approx(0.5)
    assert tracker.lag_seconds(300, now=4.0) == pytest.approx(0.5)
    assert tracker.latest == 300


CONFIG = RouterConfig(
    max_lag=1.0, readmit_after=2.0, failures_to_eject=3, retry=Backoff(1.0, 2.0, 4.0)
)


def test_lagging_replica_comes_back_only_after_staying_under_the_bound() -> None:
    health = ReplicaHealth(CONFIG)
    health.admit()
    health.probe_ok(1.5, now=0.0)
    assert health.state is Health.LAGGING
    health.probe_ok(0.2, now=1.0)
    health.probe_ok(0.2, now=2.5)
    assert not health.in_rotation  # under the bound for 1.5 s < 2 s
    health.probe_ok(1.2, now=2.8)  # over again: the window restarts
    health.probe_ok(0.2, now=3.0)
    health.probe_ok(0.2, now=4.9)
    assert not health.in_rotation
    health.probe_ok(0.2, now=5.0)
    assert health.in_rotation


def test_a_probe_that_times_out_does_not_flap_a_replica() -> None:
    health = ReplicaHealth(CONFIG)
    health.admit()
    health.probe_failed("timed out", now=0.0)
    health.probe_failed("timed out", now=0.5)
    assert health.in_rotation
    health.probe_ok(0.1, now=1.0)  # resets the count
    health.probe_failed("timed out", now=1.5)
    health.probe_failed("timed out", now=2.0)
    assert health.in_rotation
    health.probe_failed("timed out", now=2.5)
    assert health.state is Health.DOWN


def test_an_ejected_replica_is_retried_with_backoff() -> None:
    health = ReplicaHealth(CONFIG)
    health.admit()
    health.eject("connection refused", now=0.0)
    assert not health.should_probe(0.5) and health.should_probe(1.0)
    health.probe_failed("refused", now=1.0)  # next retry 2 s later
    assert not health.should_probe(2.5) and health.should_probe(3.0)
    health.probe_failed("refused", now=3.0)
    health.probe_failed("refused", now=7.0)
    assert health.retry_at == 11.0  # capped at 4 s
    health.probe_ok(0.0, now=11.0)
    assert health.state is Health.LAGGING  # back only after readmit_after under the bound
    health.probe_ok(0.0, now=13.0)
    assert health.in_rotation


def test_a_replica_of_unknown_lag_leaves_rotation_and_a_blind_probe_changes_nothing() -> None:
    health = ReplicaHealth(CONFIG)
    health.admit()
    health.probe_reachable()  # the primary did not answer: no lag measured
    assert health.in_rotation
    health.probe_ok(math.inf, now=0.0)
    assert health.state is Health.LAGGING
    health.probe_reachable()
    assert health.state is Health.LAGGING
    health.eject("refused", now=1.0)
    health.probe_reachable()  # reachable again, lag still unmeasured: not back yet
    assert health.state is Health.LAGGING
