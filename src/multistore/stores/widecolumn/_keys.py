"""Order-preserving byte keys for clustering columns, and row values as JSON: what the
backends that keep a partition in a sorted structure share (the quorum cluster, Redis
Cluster). A partition's rows are members of one sorted set, each member the bytes of
its clustering values in declared order, so a clustering range is one lexicographic
range (``ZRANGEBYLEX``)."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from multistore.stores.widecolumn._api import TableSchema
from multistore.stores.widecolumn._query import SelectPlan, from_micros, to_micros

__all__ = ["bounds", "encode_key", "from_json", "successor", "to_json"]


# -- order-preserving keys ------------------------------------------------------------


def _escape(data: bytes) -> bytes:
    return data.replace(b"\x00", b"\x00\xff") + b"\x00\x01"


def _encode_value(kind: str, value: Any) -> bytes:
    if kind in ("int", "timestamp"):
        number = to_micros(value) if kind == "timestamp" else value
        return (number + 2**63).to_bytes(8, "big")
    if kind == "float":
        number = 0.0 if value == 0 else float(value)
        bits = struct.unpack(">Q", struct.pack(">d", number))[0]
        bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | (1 << 63)
        return int(bits).to_bytes(8, "big")
    if kind == "bool":
        return b"\x01" if value else b"\x00"
    if kind == "text":
        return _escape(value.encode("utf-8"))
    return _escape(bytes(value))


def encode_key(schema: TableSchema, columns: Sequence[str], values: Sequence[Any]) -> bytes:
    """Bytes that sort like the values in the clustering order of ``columns``."""
    out = bytearray()
    orders = {c.name: c.order for c in schema.clustering}
    for column, value in zip(columns, values, strict=True):
        part = _encode_value(schema.columns[column], value)
        if orders.get(column) == "desc":
            part = bytes(255 - b for b in part)
        out += part
    return bytes(out)


def successor(prefix: bytes) -> bytes | None:
    """The least byte string greater than every string that starts with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def bounds(plan: SelectPlan) -> tuple[bytes | None, bytes | None]:
    schema = plan.schema
    names = schema.clustering_names
    prefix = encode_key(schema, names[: len(plan.prefix)], plan.prefix)
    lo: bytes | None = prefix or None
    hi: bytes | None = successor(prefix) if prefix else None
    column = plan.range_column
    if column is None:
        return lo, hi
    desc = dict((c.name, c.order) for c in schema.clustering)[column] == "desc"
    low_value, high_value = plan.lower, plan.upper
    if desc:  # a larger value sorts first: value bounds swap sides
        low_value, high_value = high_value, low_value
    if low_value is not None:
        at = prefix + encode_key(schema, [column], [low_value.value])
        lo = at if low_value.inclusive else successor(at)
    if high_value is not None:
        at = prefix + encode_key(schema, [column], [high_value.value])
        hi = successor(at) if high_value.inclusive else at
    return lo, hi


# -- row values as JSON -------------------------------------------------------------------------


def to_json(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "timestamp":
        return to_micros(value)
    if kind == "blob":
        return bytes(value).hex()
    return value


def from_json(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "timestamp":
        return from_micros(value)
    if kind == "blob":
        return bytes.fromhex(value)
    if kind == "float":
        return float(value)
    if kind == "bool":
        return bool(value)
    return value


def key_range(plan: SelectPlan) -> tuple[bytes | None, bytes | None] | None:
    """:func:`bounds` of a plan, or None when no key can fall between them."""
    lo, hi = bounds(plan)
    if lo is not None and hi is not None and lo >= hi:
        return None
    return lo, hi


def project(plan: SelectPlan, data: Mapping[str, Any]) -> dict[str, Any]:
    """The plan's columns of a row stored as JSON values."""
    return {c: from_json(plan.schema.columns[c], data.get(c)) for c in plan.columns}
