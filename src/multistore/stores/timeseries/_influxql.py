"""Text for InfluxDB 1.x: line protocol for writes, quoting for InfluxQL (no I/O).

The ``influxdb`` client's own line-protocol writer doubles backslashes in names and
tag values, which InfluxDB 1.x does not undo (``a\\b`` would be stored as
``a\\\\b``), so points are encoded here, following what the 1.x parser really does
(checked against the server, see ``tests/stores/test_timeseries.py``):

- measurement: escape ``,`` and space;
- tag keys, tag values, field keys: escape ``,``, space and ``=``;
- string field values: double quotes around, ``\\`` and ``"`` escaped;
- other backslashes are taken literally. Names the parser cannot read back (a
  backslash before a special character or at the end) are refused earlier by
  :func:`~multistore.stores.timeseries._points.check_name`.

InfluxQL identifiers are always double-quoted with ``\\`` and ``"`` escaped; string
values never enter query text: they are bound parameters (``$t0``), which the server
substitutes as literals.
"""

from __future__ import annotations

from typing import Final

from multistore.stores.timeseries._points import FieldValue, Point, to_us

__all__ = ["ident", "line", "time_ns"]

_MEASUREMENT: Final = str.maketrans({",": "\\,", " ": "\\ "})
_KEY: Final = str.maketrans({",": "\\,", " ": "\\ ", "=": "\\="})
_STRING: Final = str.maketrans({"\\": "\\\\", '"': '\\"'})
#: InfluxDB's time range in nanoseconds.
MIN_NS: Final = -9_223_372_036_854_775_806
MAX_NS: Final = 9_223_372_036_854_775_806


def _value(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    return '"' + value.translate(_STRING) + '"'


def line(point: Point) -> str:
    """One point as a line of line protocol, with a timestamp in microseconds."""
    parts = [point.measurement.translate(_MEASUREMENT)]
    for key in sorted(point.tags):
        parts.append(f",{key.translate(_KEY)}={point.tags[key].translate(_KEY)}")
    fields = ",".join(
        f"{key.translate(_KEY)}={_value(value)}" for key, value in point.fields.items()
    )
    parts.append(f" {fields} {to_us(point.time)}")
    return "".join(parts)


def ident(name: str) -> str:
    """A double-quoted InfluxQL identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def time_ns(us: int) -> int:
    """A time bound in microseconds as InfluxQL nanoseconds, inside the server's range."""
    return min(max(us * 1000, MIN_NS), MAX_NS)
