"""Checks of query arguments and the exact semantics of the aggregates (no I/O).

Both backends call these, so they refuse the same inputs with the same errors and
agree on what each aggregate means:

- Time ranges are half-open, ``start <= time < end``; both bounds are timezone-aware.
- Windows are aligned to the Unix epoch, like InfluxDB's ``GROUP BY time(every)``:
  a point at ``t`` falls in the window starting at ``t - (t mod every)``.
- Only windows that hold a value are returned (InfluxDB's ``fill(none)``).
- ``median`` is the middle value, or ``lo + (hi - lo) / 2`` of the two middle values.
- ``pNN`` is InfluxDB's nearest-rank percentile: sort the values ascending and take
  the one at 1-based rank ``floor(count * NN / 100 + 0.5)``; when that rank is 0 (too
  few values for a low percentile) the window has no value and is left out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, NamedTuple

from multistore.errors import InvalidQueryError, InvalidValueError
from multistore.stores._limits import check_count, short_repr
from multistore.stores.timeseries._points import (
    MAX_US,
    MIN_US,
    FieldValue,
    check_name,
    to_us,
)

__all__ = [
    "FUNCTIONS",
    "NUMERIC_KINDS",
    "Agg",
    "AggregateQuery",
    "PointQuery",
    "check_aggregate",
    "check_every",
    "check_fields",
    "check_group_by",
    "check_limit",
    "check_measurement",
    "check_query",
    "check_range",
    "check_tag_filter",
    "coerce",
    "median",
    "parse_fn",
    "percentile",
    "percentile_rank",
    "point_sort_key",
    "retention_bound",
]

FUNCTIONS: Final = ("mean", "min", "max", "sum", "count", "median")
NUMERIC_KINDS: Final = frozenset({"float", "integer"})
_PERCENTILE = re.compile(r"p([0-9]{1,3}(?:\.[0-9]+)?)")


@dataclass(frozen=True)
class Agg:
    """A parsed aggregate: ``name`` is one of :data:`FUNCTIONS` or ``percentile``."""

    name: str
    percentile: float | None = None

    @property
    def label(self) -> str:
        if self.percentile is None:
            return self.name
        return f"p{self.percentile:g}"

    def check_kind(self, measurement: str, field: str, kind: str) -> None:
        """Only ``count`` works on string and boolean fields."""
        if self.name != "count" and kind not in NUMERIC_KINDS:
            raise InvalidQueryError(
                f"{self.label} needs a numeric field, but field {short_repr(field)} of measurement "
                f"{short_repr(measurement)} holds {kind} values (only count works on it)"
            )


def parse_fn(fn: object) -> Agg:
    """``mean``, ``min``, ``max``, ``sum``, ``count``, ``median`` or ``pNN`` (0 < NN <= 100)."""
    if not isinstance(fn, str):
        raise InvalidQueryError(f"fn must be a string, got {type(fn).__name__}")
    if fn in FUNCTIONS:
        return Agg(fn)
    match = _PERCENTILE.fullmatch(fn)
    if match:
        value = float(match.group(1))
        if 0 < value <= 100:
            return Agg("percentile", value)
        raise InvalidQueryError(f"percentile {short_repr(fn)} must be above p0 and at most p100")
    raise InvalidQueryError(
        f"unknown aggregate fn {short_repr(fn)}; use one of {', '.join(FUNCTIONS)} or pNN "
        "(e.g. p95)"
    )


def percentile_rank(count: int, pct: float) -> int:
    """The 1-based rank InfluxDB's PERCENTILE picks among ``count`` sorted values
    (0 or above ``count`` means no value)."""
    return math.floor(float(count) * pct / 100.0 + 0.5)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of ``values``, as InfluxDB computes it."""
    rank = percentile_rank(len(values), pct)
    if rank < 1 or rank > len(values):
        return None
    return float(sorted(values)[rank - 1])


def median(values: Sequence[float]) -> float:
    """InfluxDB's median: the middle value, or lo + (hi - lo) / 2."""
    ordered = sorted(values)
    n = len(ordered)
    if n % 2 == 1:
        return float(ordered[n // 2])
    lo, hi = ordered[n // 2 - 1], ordered[n // 2]
    return float(lo) + float(hi - lo) / 2


def _check_bound(value: object, what: str) -> int:
    if not isinstance(value, datetime):
        raise InvalidQueryError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidQueryError(
            f"{what} {value.isoformat()} is naive; give a timezone-aware datetime"
        )
    return to_us(value)


def check_range(start: object, end: object) -> tuple[int, int]:
    """The half-open range [start, end) in microseconds, clamped to storable times."""
    start_us = _check_bound(start, "start")
    end_us = _check_bound(end, "end")
    if end_us < start_us:
        raise InvalidQueryError(f"end {end} is before start {start}")
    return max(start_us, MIN_US), min(end_us, MAX_US + 1)


def check_measurement(measurement: object) -> str:
    return check_name(measurement, "measurement name", error=InvalidQueryError, measurement=True)


def check_tag_filter(tags: object) -> dict[str, str]:
    """Tag equality filters: keys are names; values are any strings (bound as data)."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise InvalidQueryError(f"tags must be a mapping, got {type(tags).__name__}")
    checked: dict[str, str] = {}
    for key, value in tags.items():
        check_name(key, "tag key in the filter", error=InvalidQueryError, key=True)
        if not isinstance(value, str):
            raise InvalidQueryError(
                f"tag filter {short_repr(key)} must be a string, got {type(value).__name__}"
            )
        checked[key] = value
    return checked


def check_fields(fields: object) -> list[str] | None:
    if fields is None:
        return None
    if isinstance(fields, str) or not isinstance(fields, Sequence):
        raise InvalidQueryError("fields must be a list of field keys")
    if not fields:
        raise InvalidQueryError("fields must name at least one field (or be None for all)")
    out: list[str] = []
    for key in fields:
        check_name(key, "field key", error=InvalidQueryError, key=True)
        if key not in out:
            out.append(key)
    return out


def check_group_by(group_by: object) -> list[str]:
    if group_by is None:
        return []
    if isinstance(group_by, str) or not isinstance(group_by, Sequence):
        raise InvalidQueryError("group_by must be a list of tag keys")
    out: list[str] = []
    for key in group_by:
        check_name(key, "group_by tag key", error=InvalidQueryError, key=True)
        if key not in out:
            out.append(key)
    return out


def check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    return check_count(limit, "limit", minimum=1)


def check_every(every: object) -> int:
    """The window length in whole microseconds (> 0)."""
    if not isinstance(every, timedelta):
        raise InvalidQueryError(f"every must be a timedelta, got {type(every).__name__}")
    us = every // timedelta(microseconds=1)
    if us <= 0:
        raise InvalidQueryError(f"every must be positive, got {every}")
    return us


class PointQuery(NamedTuple):
    """The checked arguments of ``query``."""

    measurement: str
    start_us: int
    end_us: int
    tags: dict[str, str]
    fields: list[str] | None
    limit: int | None


def check_query(
    measurement: object, start: object, end: object, tags: object, fields: object, limit: object
) -> PointQuery:
    """Check the arguments of ``query``, in the order every backend checks them."""
    name = check_measurement(measurement)
    start_us, end_us = check_range(start, end)
    return PointQuery(
        name, start_us, end_us, check_tag_filter(tags), check_fields(fields), check_limit(limit)
    )


class AggregateQuery(NamedTuple):
    """The checked arguments of ``aggregate``."""

    measurement: str
    field: str
    agg: Agg
    every_us: int
    start_us: int
    end_us: int
    tags: dict[str, str]
    group_by: list[str]


def check_aggregate(
    measurement: object,
    field: object,
    fn: object,
    every: object,
    start: object,
    end: object,
    tags: object,
    group_by: object,
) -> AggregateQuery:
    """Check the arguments of ``aggregate``, in the order every backend checks them."""
    name = check_measurement(measurement)
    field_key = check_fields([field])
    assert field_key is not None
    agg = parse_fn(fn)
    every_us = check_every(every)
    start_us, end_us = check_range(start, end)
    return AggregateQuery(
        name,
        field_key[0],
        agg,
        every_us,
        start_us,
        end_us,
        check_tag_filter(tags),
        check_group_by(group_by),
    )


def retention_bound(older_than: object, now: datetime) -> int:
    """The cut-off in microseconds: points with ``time < bound`` go."""
    if isinstance(older_than, timedelta):
        if older_than < timedelta(0):
            raise InvalidValueError(f"older_than must not be negative, got {older_than}")
        bound = to_us(now) - older_than // timedelta(microseconds=1)
    elif isinstance(older_than, datetime):
        if older_than.tzinfo is None or older_than.utcoffset() is None:
            raise InvalidValueError(
                f"older_than {older_than.isoformat()} is naive; give a timezone-aware datetime"
            )
        bound = to_us(older_than)
    else:
        raise InvalidValueError(
            f"older_than must be a timedelta or a datetime, got {type(older_than).__name__}"
        )
    return min(max(bound, MIN_US), MAX_US + 1)


def point_sort_key(tags: Mapping[str, str], us: int) -> tuple[int, tuple[tuple[str, str], ...]]:
    """The order of query results and windows: time, then the sorted tag pairs."""
    return us, tuple(sorted(tags.items()))


def coerce(kind: str | None, value: FieldValue) -> FieldValue:
    """A value read back, in the type its field holds (an int from a float field)."""
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
