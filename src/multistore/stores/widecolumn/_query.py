"""Pure checks and query plans for the wide-column model, shared by every backend.

No I/O here. :func:`check_row` turns a row into checked, normalised values;
:func:`plan_select` turns ``select`` arguments into a :class:`SelectPlan`, which
always describes one contiguous run of rows of one partition in clustering
order: equality on a prefix of the clustering columns, then at most one range
on the next column.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from multistore.errors import ConflictError, InvalidQueryError, InvalidValueError, UsageError
from multistore.stores._limits import check_count, check_seconds, short_repr, to_float
from multistore.stores.widecolumn._api import TableSchema

__all__ = [
    "Bound",
    "SelectPlan",
    "check_existing",
    "check_row",
    "check_rows",
    "check_ttl",
    "from_micros",
    "plan_delete",
    "plan_select",
    "to_micros",
]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO: Final = timedelta(microseconds=1)
_OPERATORS: Final = frozenset({"=", "<", "<=", ">", ">="})


def to_micros(value: datetime) -> int:
    """Microseconds since the Unix epoch of a timezone-aware datetime (exact)."""
    return (value - EPOCH) // _MICRO


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def check_value(schema: TableSchema, column: str, value: Any, error: type[UsageError]) -> Any:
    """``value`` checked against the column's type and normalised (ints to float for
    float columns, datetimes to UTC, bytearrays to bytes). None passes through."""
    kind = schema.columns[column]
    where = f"column {short_repr(column)} of table {short_repr(schema.name)}"
    if value is None:
        return None
    if kind == "text":
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise error(f"{where}: text {short_repr(value)} is not valid Unicode") from None
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT64_MIN <= value <= INT64_MAX:
                raise error(f"{where}: {short_repr(value)} is outside the 64-bit integer range")
            return value
    elif kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = to_float(value, where)
            if not math.isfinite(number):
                raise error(f"{where}: {short_repr(value)} is not a finite number")
            return number
    elif kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "timestamp":
        if isinstance(value, datetime):
            if value.utcoffset() is None:
                raise error(
                    f"{where}: timestamp {short_repr(value)} has no timezone; "
                    "use e.g. datetime(..., tzinfo=UTC)"
                )
            return value.astimezone(UTC)
    elif kind == "blob" and isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise error(f"{where} is {kind}; got {type(value).__name__} {short_repr(value)}")


def check_row(schema: TableSchema, row: Mapping[str, Any]) -> dict[str, Any]:
    """Every column of ``schema`` (in schema order) with its checked value; key columns
    must be present and not None. Errors are :class:`InvalidValueError`."""
    if not isinstance(row, Mapping):
        raise InvalidValueError(
            f"a row of table {short_repr(schema.name)} must be a dict, not {short_repr(row)}"
        )
    unknown = [c for c in row if c not in schema.columns]
    if unknown:
        raise InvalidValueError(
            f"table {short_repr(schema.name)} has no column {short_repr(unknown[0])}; "
            f"columns are {', '.join(schema.columns)}"
        )
    checked: dict[str, Any] = {}
    for column in schema.columns:
        value = check_value(schema, column, row.get(column), InvalidValueError)
        if value is None and column in schema.primary_key:
            raise InvalidValueError(
                f"row of table {short_repr(schema.name)} lacks primary key column "
                f"{short_repr(column)}"
            )
        checked[column] = value
    return checked


def check_rows(schema: TableSchema, rows: object) -> list[dict[str, Any]]:
    """:func:`check_row` of every row of the list ``upsert_many`` takes."""
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence):
        raise InvalidValueError(f"upsert_many takes a list of rows, not {short_repr(rows)}")
    return [check_row(schema, row) for row in rows]


def check_existing(existing: TableSchema, schema: TableSchema, if_not_exists: bool) -> None:
    """``create_table(schema)`` found table ``existing`` under the same name compared
    without case: fine when it is the same table and ``if_not_exists``, else a
    :class:`ConflictError`."""
    if existing.name != schema.name:
        raise ConflictError(
            f"cannot create table {short_repr(schema.name)}: table "
            f"{short_repr(existing.name)} exists "
            "and names are compared without case"
        )
    if existing != schema:
        raise ConflictError(
            f"table {short_repr(schema.name)} exists with another schema: {existing.to_json()}"
        )
    if not if_not_exists:
        raise ConflictError(f"table {short_repr(schema.name)} already exists")


def check_ttl(ttl: object) -> float | None:
    """None, or a TTL in seconds: a finite number above 0, at most ``MAX_SECONDS``."""
    return None if ttl is None else check_seconds(ttl, "ttl")


def _check_partition(schema: TableSchema, partition: Mapping[str, Any]) -> tuple[Any, ...]:
    if not isinstance(partition, Mapping):
        raise InvalidQueryError(
            f"partition must be a dict of the partition key columns of {short_repr(schema.name)} "
            f"({', '.join(schema.partition_key)}), not {short_repr(partition)}"
        )
    extra = [c for c in partition if c not in schema.partition_key]
    if extra:
        hint = (
            "; restrict clustering columns with where=[...] instead"
            if extra[0] in schema.clustering_names
            else ""
        )
        raise InvalidQueryError(
            f"{short_repr(extra[0])} is not a partition key column of table "
            f"{short_repr(schema.name)} "
            f"(partition key: {', '.join(schema.partition_key)}){hint}"
        )
    missing = [c for c in schema.partition_key if partition.get(c) is None]
    if missing:
        raise InvalidQueryError(
            f"a query of table {short_repr(schema.name)} must name the whole partition key; "
            f"missing {', '.join(missing)} (reads never scan across partitions)"
        )
    return tuple(
        check_value(schema, c, partition[c], InvalidQueryError) for c in schema.partition_key
    )


@dataclass(frozen=True)
class Bound:
    value: Any
    inclusive: bool


@dataclass(frozen=True)
class SelectPlan:
    """One contiguous run of rows of one partition.

    ``prefix`` holds the values of the first ``len(prefix)`` clustering columns;
    ``lower``/``upper`` bound the next clustering column (``range_column``) by value,
    whatever its declared order. ``reverse`` means the rows come back in the exact
    reverse of the declared clustering order.
    """

    schema: TableSchema
    partition: tuple[Any, ...]
    prefix: tuple[Any, ...]
    range_column: str | None
    lower: Bound | None
    upper: Bound | None
    reverse: bool
    limit: int | None
    columns: tuple[str, ...]


def plan_select(
    schema: TableSchema,
    partition: Mapping[str, Any],
    where: Sequence[Any] = (),
    order: str | None = None,
    limit: int | None = None,
    columns: Sequence[str] | None = None,
) -> SelectPlan:
    """Check ``select`` arguments against ``schema``; errors are InvalidQueryError."""
    values = _check_partition(schema, partition)
    equal, lower, upper = _group_conditions(schema, where)
    clustering = schema.clustering_names
    prefix: list[Any] = []
    range_column: str | None = None
    for i, column in enumerate(clustering):
        restricted = column in equal or column in lower or column in upper
        if not restricted:
            later = [c for c in clustering[i + 1 :] if c in equal or c in lower or c in upper]
            if later:
                raise InvalidQueryError(
                    f"cannot restrict clustering column {short_repr(later[0])} of "
                    f"{short_repr(schema.name)} "
                    f"without restricting {short_repr(column)} first (clustering order: "
                    f"{', '.join(clustering)})"
                )
            break
        if column in equal:
            prefix.append(equal[column])
            continue
        range_column = column
        later = [c for c in clustering[i + 1 :] if c in equal or c in lower or c in upper]
        if later:
            raise InvalidQueryError(
                f"cannot restrict clustering column {short_repr(later[0])} of "
                f"{short_repr(schema.name)} "
                f"after a range on {short_repr(column)}; only the last restricted column "
                "may take a range"
            )
        break
    if order is not None and order not in ("asc", "desc"):
        raise InvalidQueryError(f"order must be 'asc', 'desc' or None, not {short_repr(order)}")
    if order is not None and not clustering:
        raise InvalidQueryError(
            f"table {short_repr(schema.name)} has no clustering columns, so its rows have no order"
        )
    reverse = order is not None and order != schema.clustering[0].order
    if limit is not None:
        check_count(limit, "limit", minimum=1)
    return SelectPlan(
        schema=schema,
        partition=values,
        prefix=tuple(prefix),
        range_column=range_column,
        lower=lower.get(range_column) if range_column else None,
        upper=upper.get(range_column) if range_column else None,
        reverse=reverse,
        limit=limit,
        columns=_check_columns(schema, columns),
    )


def _group_conditions(
    schema: TableSchema, where: Sequence[Any]
) -> tuple[dict[str, Any], dict[str, Bound], dict[str, Bound]]:
    if isinstance(where, str | bytes) or not isinstance(where, Sequence):
        raise InvalidQueryError(
            f"where must be a list of (column, op, value), not {short_repr(where)}"
        )
    equal: dict[str, Any] = {}
    lower: dict[str, Bound] = {}
    upper: dict[str, Bound] = {}
    for condition in where:
        if not isinstance(condition, tuple | list) or len(condition) != 3:
            raise InvalidQueryError(
                f"a where condition is (column, op, value), not {short_repr(condition)}"
            )
        column, op, raw = condition
        if not isinstance(column, str) or column not in schema.columns:
            raise InvalidQueryError(
                f"table {short_repr(schema.name)} has no column {short_repr(column)}"
            )
        if column in schema.partition_key:
            raise InvalidQueryError(
                f"{short_repr(column)} is a partition key column of "
                f"{short_repr(schema.name)}: give it in "
                "partition={...}, not in where"
            )
        if column not in schema.clustering_names:
            raise InvalidQueryError(
                f"{short_repr(column)} is not a clustering column of "
                f"{short_repr(schema.name)}; only clustering "
                f"columns ({', '.join(schema.clustering_names) or 'none'}) can be restricted"
            )
        if op not in _OPERATORS:
            raise InvalidQueryError(
                f"unknown operator {short_repr(op)} on {short_repr(column)}; use one of = < <= > >="
            )
        if raw is None:
            raise InvalidQueryError(
                f"cannot compare clustering column {short_repr(column)} with None"
            )
        value = check_value(schema, column, raw, InvalidQueryError)
        taken = column in equal or column in lower or column in upper
        if op == "=":
            if taken:
                raise InvalidQueryError(
                    f"{short_repr(column)} is restricted twice; = excludes others"
                )
            equal[column] = value
            continue
        if column in equal:
            raise InvalidQueryError(f"{short_repr(column)} is restricted twice; = excludes others")
        side = lower if op in (">", ">=") else upper
        if column in side:
            raise InvalidQueryError(
                f"{short_repr(column)} has two {op[0]} bounds; give at most one"
            )
        side[column] = Bound(value, inclusive=op.endswith("="))
    return equal, lower, upper


def _check_columns(schema: TableSchema, columns: Sequence[str] | None) -> tuple[str, ...]:
    if columns is None:
        return tuple(schema.columns)
    if isinstance(columns, str | bytes) or not isinstance(columns, Sequence) or not columns:
        raise InvalidQueryError(
            f"columns must be a non-empty list of names, not {short_repr(columns)}"
        )
    for column in columns:
        if not isinstance(column, str) or column not in schema.columns:
            raise InvalidQueryError(
                f"table {short_repr(schema.name)} has no column {short_repr(column)}"
            )
    if len(set(columns)) != len(columns):
        raise InvalidQueryError(f"columns names a column twice: {list(columns)}")
    return tuple(columns)


def plan_delete(
    schema: TableSchema, partition: Mapping[str, Any], clustering: Mapping[str, Any] | None
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(partition values, values of a prefix of the clustering columns) for ``delete``."""
    values = _check_partition(schema, partition)
    if clustering is None:
        return values, ()
    if not isinstance(clustering, Mapping):
        raise InvalidQueryError(f"clustering must be a dict or None, not {short_repr(clustering)}")
    names = schema.clustering_names
    unknown = [c for c in clustering if c not in names]
    if unknown:
        raise InvalidQueryError(
            f"{short_repr(unknown[0])} is not a clustering column of {short_repr(schema.name)} "
            f"(clustering: {', '.join(names) or 'none'})"
        )
    prefix: list[Any] = []
    for column in names:
        if column not in clustering:
            break
        if clustering[column] is None:
            raise InvalidQueryError(f"cannot delete by {short_repr(column)} = None")
        prefix.append(check_value(schema, column, clustering[column], InvalidQueryError))
    if len(prefix) != len(clustering):
        raise InvalidQueryError(
            f"delete on {short_repr(schema.name)} must give a leading run of clustering columns "
            f"({', '.join(names)}), got {', '.join(clustering)}"
        )
    return values, tuple(prefix)
