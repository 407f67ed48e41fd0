"""Latency distributions for the lab's message legs, written as short text.

``multistore lab quorum --latency SPEC`` delays every message between a coordinator
and a node by a value drawn, independently for each message, from SPEC:

==============================  =====================================================
``fixed:2ms``                   always 2 ms
``uniform:1ms..5ms``            uniform between 1 and 5 ms
``exp:1ms``                     exponential with a mean of 1 ms
``pareto:1ms,2``                Pareto with scale (minimum) 1 ms and shape 2
``lognormal:1ms,0.5``           log-normal with median 1 ms and sigma 0.5
``none``                        no added latency (the default)
==============================  =====================================================

Durations take a unit: ``us``, ``ms`` or ``s``. The same distribution feeds the
PBS model (:mod:`multistore.lab._pbs`), so the measured staleness can be compared
with what the model predicts for it.
"""

from __future__ import annotations

import abc
import math
import random
import re
from dataclasses import dataclass
from typing import Final

from multistore.errors import InvalidValueError

__all__ = [
    "Exponential",
    "Fixed",
    "Latency",
    "LogNormal",
    "Pareto",
    "Uniform",
    "format_duration",
    "parse_duration",
    "parse_latency",
]

_UNITS: Final = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION: Final = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zµ]*)\s*$")
_FORMS: Final = (
    "fixed:2ms, uniform:1ms..5ms, exp:1ms, pareto:1ms,2 (scale, shape), "
    "lognormal:1ms,0.5 (median, sigma) or none"
)


def parse_duration(text: str) -> float:
    """``"1.5ms"`` -> 0.0015 (seconds); a unit (us, ms, s) is required."""
    match = _DURATION.match(text)
    if match is None:
        raise InvalidValueError(f"not a duration: {text!r} (write e.g. 1ms, 250us or 0.1s)")
    number, unit = float(match.group(1)), match.group(2)
    if unit not in _UNITS:
        hint = "add a unit, e.g. 1ms" if not unit else "use us, ms or s"
        raise InvalidValueError(f"duration {text.strip()!r} has no known unit: {hint}")
    return number * _UNITS[unit]


def format_duration(seconds: float) -> str:
    """0.0015 -> ``"1.5 ms"``."""
    if seconds >= 1.0:
        return f"{seconds:g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.4g} ms"
    return f"{seconds * 1e6:.4g} us"


class Latency(abc.ABC):
    """A distribution of one message's delay, in seconds."""

    spec: str
    """The text it was parsed from (``exp:1ms``)."""

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> float:
        """One delay in seconds (>= 0)."""

    @property
    @abc.abstractmethod
    def mean(self) -> float:
        """The mean delay in seconds (``inf`` when the distribution has none)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The distribution in words."""


@dataclass(frozen=True, slots=True)
class Fixed(Latency):
    delay: float
    spec: str = ""

    def sample(self, rng: random.Random) -> float:
        return self.delay

    @property
    def mean(self) -> float:
        return self.delay

    def describe(self) -> str:
        return f"fixed {format_duration(self.delay)}"


@dataclass(frozen=True, slots=True)
class Uniform(Latency):
    low: float
    high: float
    spec: str = ""

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    def describe(self) -> str:
        return f"uniform {format_duration(self.low)} to {format_duration(self.high)}"


@dataclass(frozen=True, slots=True)
class Exponential(Latency):
    average: float
    spec: str = ""

    def sample(self, rng: random.Random) -> float:
        return rng.expovariate(1.0 / self.average) if self.average > 0 else 0.0

    @property
    def mean(self) -> float:
        return self.average

    def describe(self) -> str:
        return f"exponential, mean {format_duration(self.average)}"


@dataclass(frozen=True, slots=True)
class Pareto(Latency):
    scale: float
    shape: float
    spec: str = ""

    def sample(self, rng: random.Random) -> float:
        return self.scale * rng.paretovariate(self.shape)

    @property
    def mean(self) -> float:
        return self.shape * self.scale / (self.shape - 1) if self.shape > 1 else math.inf

    def describe(self) -> str:
        return f"Pareto, minimum {format_duration(self.scale)}, shape {self.shape:g}"


@dataclass(frozen=True, slots=True)
class LogNormal(Latency):
    median: float
    sigma: float
    spec: str = ""

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.median), self.sigma)

    @property
    def mean(self) -> float:
        return self.median * math.exp(self.sigma**2 / 2)

    def describe(self) -> str:
        return f"log-normal, median {format_duration(self.median)}, sigma {self.sigma:g}"


def _number(text: str, what: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidValueError(f"{what} in latency {spec!r} is not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidValueError(f"{what} in latency {spec!r} must be above 0, got {text}")
    return value


def _args(rest: str, count: int, spec: str, form: str) -> list[str]:
    parts = [p.strip() for p in rest.split(",")]
    if len(parts) != count or not all(parts):
        raise InvalidValueError(f"latency {spec!r} needs the form {form}")
    return parts


def parse_latency(text: str) -> Latency | None:
    """Parse a latency spec (see the module docstring); ``None`` for ``none``."""
    spec = text.strip()
    if spec.lower() in ("", "none", "0"):
        return None
    name, sep, rest = spec.partition(":")
    name = name.strip().lower()
    if not sep:
        raise InvalidValueError(f"latency {spec!r} names no distribution: use {_FORMS}")
    if name == "fixed":
        return Fixed(parse_duration(rest), spec)
    if name == "uniform":
        low_text, dots, high_text = rest.partition("..")
        if not dots:
            raise InvalidValueError(f"latency {spec!r} needs the form uniform:LOW..HIGH")
        low, high = parse_duration(low_text), parse_duration(high_text)
        if high < low:
            raise InvalidValueError(f"latency {spec!r}: the upper bound is below the lower")
        return Uniform(low, high, spec)
    if name in ("exp", "exponential"):
        mean = parse_duration(rest)
        if mean <= 0:
            raise InvalidValueError(f"latency {spec!r}: the mean must be above 0")
        return Exponential(mean, spec)
    if name == "pareto":
        scale_text, shape_text = _args(rest, 2, spec, "pareto:SCALE,SHAPE (e.g. 1ms,2)")
        scale = parse_duration(scale_text)
        if scale <= 0:
            raise InvalidValueError(f"latency {spec!r}: the scale must be above 0")
        return Pareto(scale, _number(shape_text, "the shape", spec), spec)
    if name == "lognormal":
        median_text, sigma_text = _args(rest, 2, spec, "lognormal:MEDIAN,SIGMA (e.g. 1ms,0.5)")
        median = parse_duration(median_text)
        if median <= 0:
            raise InvalidValueError(f"latency {spec!r}: the median must be above 0")
        return LogNormal(median, _number(sigma_text, "sigma", spec), spec)
    raise InvalidValueError(f"unknown latency distribution {name!r}: use {_FORMS}")
