"""Pure parts of the router: tokens, statement classification, policies, lag and health."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import multistore.replication as replication
from multistore.errors import InvalidValueError
from multistore.replication import (
    Backoff,
    CausalToken,
    Health,
    LeastLagPolicy,
    RandomPolicy,
    RoundRobinPolicy,
    RouterConfig,
    is_read,
)
from multistore.replication._lag import LagTracker, ReplicaHealth
from multistore.replication._token import format_lsn, parse_lsn


def test_router_names_are_exported() -> None:
    for name in ("Router", "Session", "CausalToken", "replication_status", "FailoverError"):
        assert name in replication.__all__


def test_token_round_trips_through_a_string() -> None:
    token = CausalToken(3, parse_lsn("16/B374D848"))
    assert str(token) == "3:16B374D848"
    assert CausalToken.parse(str(token)) == token
    assert format_lsn(token.position) == "16/B374D848"
    assert CausalToken(1, 5).later(CausalToken(1, 9)) == CausalToken(1, 9)
    assert CausalToken(2, 1).later(CausalToken(1, 9)) == CausalToken(2, 1)


@pytest.mark.parametrize("bad", ["", "12", "x:1", "1:zz", "-1:5", "1:-5"])
def test_bad_token_strings_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidValueError):
        CausalToken.parse(bad)


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


def test_lag_is_the_age_of_the_oldest_write_not_replayed() -> None:
    tracker = LagTracker()
    tracker.observe(100, now=10.0)
    tracker.observe(200, now=11.0)
    tracker.observe(150, now=12.0)  # positions only go forward
    assert tracker.latest == 200
    assert tracker.lag_seconds(200, now=20.0) == 0.0  # caught up: no lag, even when idle
    assert tracker.lag_seconds(150, now=20.0) == 9.0  # 200 was reached at 11.0
    assert tracker.lag_seconds(50, now=20.0) == 10.0


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
