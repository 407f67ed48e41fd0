"""The time-series values and the rules every backend enforces on them (no I/O).

A :class:`Point` is one measurement at one instant: string *tags* that identify the
series and typed *fields* that carry the values, as in InfluxDB. Both backends accept
exactly the same points, so a point that InfluxDB 1.x could not store faithfully is
refused everywhere, before anything is written:

- ``time`` is a timezone-aware :class:`~datetime.datetime` (normalised to UTC) with
  microsecond resolution, between 1677-09-21 and 2262-04-11 (InfluxDB's int64
  nanoseconds).
- At least one field. A field value is a ``float`` (finite), an ``int`` (64-bit), a
  ``bool`` or a ``str``. A field keeps the type of its first value for good: writing a
  ``str`` (or an ``int``) to a ``float`` field is a type conflict.
- Names (measurement, tag keys, tag values, field keys) are non-empty strings without
  control characters. ``time`` cannot be a tag or field key and a measurement cannot
  start with ``#`` (line protocol reads the line as a comment). A run of backslashes
  must be followed by a character other than space, ``,``, ``=`` or ``"`` and cannot
  end the name: InfluxDB 1.x's line protocol has no way to write those sequences.
  Quotes, commas, spaces, ``=``, ``;`` and lone backslashes are all fine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, TypeAlias

from multistore.errors import InvalidValueError, UsageError
from multistore.stores._limits import short_repr

__all__ = [
    "EPOCH",
    "MAX_US",
    "MIN_US",
    "FieldValue",
    "Point",
    "Window",
    "check_batch",
    "check_kinds",
    "check_name",
    "check_point",
    "field_kind",
    "from_us",
    "make_point",
    "to_us",
]

FieldValue: TypeAlias = float | int | bool | str

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
#: InfluxDB keeps int64 nanoseconds in [-(2**63) + 2, 2**63 - 2]; in whole microseconds:
MIN_US: Final = -9_223_372_036_854_775
MAX_US: Final = 9_223_372_036_854_775
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
#: The bytes of measurement and tags together (InfluxDB's series key is at most 64 KiB).
MAX_SERIES_BYTES: Final = 60_000

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BAD_BACKSLASH = re.compile(r'\\+(?=[ ,="]|$)')
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Point:
    """One point: ``measurement``, ``tags`` (str -> str), ``fields`` (str -> value), ``time``.

    Construction validates everything (see the module docs) and raises
    :class:`~multistore.errors.InvalidValueError` naming the problem; ``time`` is
    normalised to UTC and the mappings are copied into plain dicts.
    """

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time: datetime

    def __post_init__(self) -> None:
        tags, fields, when = _checked(self.measurement, self.tags, self.fields, self.time)
        object.__setattr__(self, "tags", tags)
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "time", when)


@dataclass(frozen=True, slots=True)
class Window:
    """One window of :meth:`~TimeSeriesStore.aggregate`: its aligned ``start``, the
    aggregated ``value`` and the ``tags`` of its group (only the ``group_by`` tags that
    the points carry)."""

    start: datetime
    value: float | None
    tags: dict[str, str] = field(default_factory=dict)


def make_point(
    measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], time: datetime
) -> Point:
    """Build a point from values a store returned (already valid), skipping the checks."""
    point = object.__new__(Point)
    object.__setattr__(point, "measurement", measurement)
    object.__setattr__(point, "tags", tags)
    object.__setattr__(point, "fields", fields)
    object.__setattr__(point, "time", time)
    return point


def check_point(point: object) -> Point:
    """Check (again) a point handed to a store; mappings of a Point can be mutated."""
    if not isinstance(point, Point):
        raise InvalidValueError(f"expected a Point, got {type(point).__name__}")
    _checked(point.measurement, point.tags, point.fields, point.time)
    return point


def check_batch(points: object) -> tuple[list[Point], dict[str, dict[str, str]]]:
    """Check every point of a batch; return them with the field types they write,
    ``{measurement: {field: kind}}``. Two types for one field in a batch is an error."""
    if isinstance(points, str | bytes | Point) or not isinstance(points, Iterable):
        raise InvalidValueError("write_many takes an iterable of Points")
    checked: list[Point] = []
    kinds: dict[str, dict[str, str]] = {}
    for item in points:
        point = check_point(item)
        seen = kinds.setdefault(point.measurement, {})
        for key, value in point.fields.items():
            kind = field_kind(value)
            first = seen.setdefault(key, kind)
            if first != kind:
                raise InvalidValueError(
                    f"field {short_repr(key)} of measurement "
                    f"{short_repr(point.measurement)} gets both {first} "
                    f"and {kind} values in one batch; nothing was written"
                )
        checked.append(point)
    return checked, kinds


def check_kinds(measurement: str, wanted: Mapping[str, str], stored: Mapping[str, str]) -> None:
    """Refuse a write whose field types contradict the stored ones."""
    for key, kind in wanted.items():
        have = stored.get(key)
        if have is not None and have != kind:
            raise InvalidValueError(
                f"field type conflict: field {short_repr(key)} of measurement "
                f"{short_repr(measurement)} holds "
                f"{have} values, cannot write a {kind}; nothing was written"
            )


def to_us(when: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    return (when - EPOCH) // _ONE_US


def from_us(us: int) -> datetime:
    """The UTC datetime ``us`` microseconds after the epoch."""
    return EPOCH + timedelta(microseconds=us)


def field_kind(value: FieldValue) -> str:
    """InfluxDB's name for the type of a field value: float, integer, boolean, string."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "string"


def check_name(
    value: object,
    what: str,
    *,
    error: type[UsageError] = InvalidValueError,
    measurement: bool = False,
    key: bool = False,
) -> str:
    """Check a measurement name, tag key/value or field key; return it."""
    if not isinstance(value, str):
        raise error(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise error(f"{what} must not be empty")
    if _CONTROL.search(value):
        raise error(f"{what} {short_repr(value)} contains a control character (newline, tab …)")
    if _SURROGATE.search(value):
        raise error(f"{what} {short_repr(value)} is not valid Unicode (lone surrogate)")
    if _BAD_BACKSLASH.search(value):
        raise error(
            f"{what} {short_repr(value)} has a backslash before a space, ',', '=', "
            f"'\"' or at the end; "
            "InfluxDB's line protocol cannot store that sequence"
        )
    if measurement and value.startswith("#"):
        raise error(
            f"{what} {short_repr(value)} starts with '#', which line protocol reads as a comment"
        )
    if key and value == "time":
        raise error(f"{what} cannot be 'time': the name is reserved for the timestamp")
    return value


def _check_time(when: object, what: str) -> datetime:
    if not isinstance(when, datetime):
        raise InvalidValueError(f"{what} must be a datetime, got {type(when).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidValueError(
            f"{what} {when.isoformat()} is naive; give a timezone-aware datetime "
            "(e.g. datetime.now(timezone.utc))"
        )
    when = when.astimezone(UTC)
    if not MIN_US <= to_us(when) <= MAX_US:
        raise InvalidValueError(
            f"{what} {when.isoformat()} is outside the storable range "
            f"{from_us(MIN_US).isoformat()} .. {from_us(MAX_US).isoformat()}"
        )
    return when


def _check_value(measurement: str, key: str, value: object) -> FieldValue:
    where = f"field {short_repr(key)} of measurement {short_repr(measurement)}"
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidValueError(f"{where}: integer {short_repr(value)} does not fit in 64 bits")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValueError(f"{where}: {value} is not a finite number")
        return float(value)
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise InvalidValueError(f"{where}: the string is not valid Unicode (lone surrogate)")
        return value
    raise InvalidValueError(
        f"{where}: values must be float, int, bool or str, got {type(value).__name__}"
    )


def _checked(
    measurement: object, tags: object, fields: object, when: object
) -> tuple[dict[str, str], dict[str, FieldValue], datetime]:
    name = check_name(measurement, "measurement name", measurement=True)
    if not isinstance(tags, Mapping):
        raise InvalidValueError(
            f"tags of {short_repr(name)} must be a mapping, got {type(tags).__name__}"
        )
    if not isinstance(fields, Mapping):
        raise InvalidValueError(
            f"fields of {short_repr(name)} must be a mapping, got {type(fields).__name__}"
        )
    if not fields:
        raise InvalidValueError(f"a point of {short_repr(name)} needs at least one field")
    size = len(name.encode())
    checked_tags: dict[str, str] = {}
    for key, value in tags.items():
        check_name(key, f"tag key of {short_repr(name)}", key=True)
        check_name(value, f"tag {short_repr(key)} of {short_repr(name)}")
        checked_tags[key] = value
        size += len(key.encode()) + len(value.encode()) + 2
    if size > MAX_SERIES_BYTES:
        raise InvalidValueError(
            f"measurement {short_repr(name)} with its tags takes {size} bytes; the limit is "
            f"{MAX_SERIES_BYTES}"
        )
    checked_fields: dict[str, FieldValue] = {}
    for key, value in fields.items():
        check_name(key, f"field key of {short_repr(name)}", key=True)
        checked_fields[key] = _check_value(name, key, value)
    return checked_tags, checked_fields, _check_time(when, f"time of a point of {short_repr(name)}")
