"""Latency distributions as text, and the PBS model computed from them."""

from __future__ import annotations

import math
import random

import pytest

from multistore.errors import InvalidValueError
from multistore.lab._latency import (
    Exponential,
    Fixed,
    LogNormal,
    Pareto,
    Uniform,
    parse_duration,
    parse_latency,
)
from multistore.lab._pbs import pbs_model


def test_specs_parse_to_distributions() -> None:
    assert parse_latency("none") is None and parse_latency("0") is None
    assert parse_latency("fixed:2ms") == Fixed(0.002, "fixed:2ms")
    assert parse_latency("uniform:1ms..5ms") == Uniform(0.001, 0.005, "uniform:1ms..5ms")
    assert parse_latency("exp:1ms") == Exponential(0.001, "exp:1ms")
    assert parse_latency("exponential:250us") == Exponential(0.00025, "exponential:250us")
    assert parse_latency("pareto:1ms,2") == Pareto(0.001, 2.0, "pareto:1ms,2")
    assert parse_latency("lognormal:1ms,0.5") == LogNormal(0.001, 0.5, "lognormal:1ms,0.5")
    assert parse_duration("0.1s") == 0.1


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("exp:1", "unit"),
        ("exp:1parsec", "unit"),
        ("gauss:1ms", "unknown latency distribution"),
        ("1ms", "names no distribution"),
        ("uniform:5ms..1ms", "upper bound"),
        ("uniform:1ms", "uniform:LOW..HIGH"),
        ("pareto:1ms", "pareto:SCALE,SHAPE"),
        ("pareto:1ms,-2", "above 0"),
        ("lognormal:1ms,x", "not a number"),
        ("exp:0ms", "above 0"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(InvalidValueError, match=says) as caught:
        parse_latency(spec)
    assert "(" not in caught.value.message.split(":", 1)[0]  # no Python tuple up front


def test_samples_follow_the_distribution() -> None:
    rng = random.Random(1)
    for spec in ("fixed:2ms", "uniform:1ms..3ms", "exp:2ms", "lognormal:2ms,0.3"):
        latency = parse_latency(spec)
        assert latency is not None
        draws = [latency.sample(rng) for _ in range(20_000)]
        assert min(draws) >= 0
        assert sum(draws) / len(draws) == pytest.approx(latency.mean, rel=0.05), spec
    pareto = parse_latency("pareto:1ms,3")
    assert pareto is not None and pareto.mean == pytest.approx(0.0015)
    assert min(pareto.sample(rng) for _ in range(1000)) >= 0.001
    assert Pareto(0.001, 1.0).mean == math.inf


def test_overlapping_quorums_always_see_the_write_in_the_model() -> None:
    for spec in ("exp:1ms", "pareto:1ms,1.5", "uniform:0ms..10ms"):
        latency = parse_latency(spec)
        assert latency is not None
        for n, r, w in ((3, 2, 2), (3, 1, 3), (5, 3, 3), (5, 2, 4)):
            model = pbs_model(n, r, w, latency, trials=2000)
            assert model.p_consistent(0.0) == 1.0, (spec, n, r, w)


def test_the_model_matches_a_closed_form() -> None:
    """N=2, R=W=1, every leg exponential with mean 1: the read (sent to replica 0) misses
    the write only when replica 1 acknowledged first and the write reaches replica 0
    after the read request: W0 > W1 + A1 + R0 + t. With X = W1 + A1 + R0 ~ Gamma(3, 1),
    P(miss at t) = E[exp(-(X + t))] = exp(-t) / 8."""
    model = pbs_model(2, 1, 1, Exponential(0.001), trials=50_000, seed=3)
    for t_ms in (0.0, 0.5, 1.0, 2.0, 4.0):
        expected = 1 - math.exp(-t_ms) / 8
        assert model.p_consistent(t_ms) == pytest.approx(expected, abs=0.006), t_ms


def test_the_model_curve_rises_with_time_and_reaches_one() -> None:
    model = pbs_model(3, 1, 1, Exponential(0.001), trials=8_000)
    points = [model.p_consistent(t) for t in (0.0, 0.5, 1.0, 2.0, 5.0, 20.0)]
    assert points == sorted(points)
    assert points[0] < 0.95 and points[-1] > 0.999
    # fixed latency: every write lands before any read request can arrive
    assert pbs_model(3, 1, 1, Fixed(0.002), trials=100).p_consistent(0.0) == 1.0
    # asking every replica and taking the fastest answer sees the write less often: the
    # fastest answer tends to come from a replica the read request reached early
    fastest = pbs_model(3, 1, 1, Exponential(0.001), trials=8_000, read_all=True)
    assert fastest.p_consistent(0.0) < model.p_consistent(0.0) - 0.03
    # a speculative retry that never fires changes nothing; one that fires early lets a
    # second replica answer first
    late = pbs_model(3, 1, 1, Exponential(0.001), trials=8_000, speculative_ms=1e6)
    assert late.thresholds_ms == model.thresholds_ms
    early = pbs_model(3, 1, 1, Exponential(0.001), trials=8_000, speculative_ms=0.5)
    assert early.thresholds_ms != model.thresholds_ms
    assert pbs_model(3, 2, 2, Exponential(0.001), speculative_ms=0.5).p_consistent(0) == 1.0
    assert model.expected([]) is None
    assert model.expected([0.0, 20.0]) == pytest.approx((points[0] + points[-1]) / 2)
    with pytest.raises(InvalidValueError):
        pbs_model(3, 4, 1, Exponential(0.001))
