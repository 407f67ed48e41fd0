"""Result rows: a read-only mapping by column name that also takes a column index."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = ["Columns", "Row"]


class Columns:
    """The column names of one result set, shared by all its rows."""

    __slots__ = ("index", "names")

    def __init__(self, names: Sequence[str]) -> None:
        self.names: tuple[str, ...] = tuple(names)
        index: dict[str, int] = {}
        for position, name in enumerate(self.names):
            index.setdefault(name, position)  # a repeated name maps to its first column
        self.index = index

    def row(self, values: Sequence[Any]) -> Row:
        return Row(self, tuple(values))


class Row(Mapping[str, Any]):
    """One result row.

    ``row["email"]`` reads a column by name and ``row[0]`` by position. As a mapping it
    iterates over the column names in select order and compares equal to a ``dict``
    with the same items. When two columns share a name (a ``JOIN`` without aliases),
    the name reads the first of them; positions read each one.
    """

    __slots__ = ("_columns", "_values")

    def __init__(self, columns: Columns, values: tuple[Any, ...]) -> None:
        self._columns = columns
        self._values = values

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int):
            return self._values[key]
        try:
            return self._values[self._columns.index[key]]
        except KeyError:
            names = ", ".join(self._columns.names)
            raise KeyError(f"no column {key!r} in this row; columns: {names}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns.index)

    def __len__(self) -> int:
        return len(self._columns.index)

    def __contains__(self, key: object) -> bool:
        return key in self._columns.index

    @property
    def columns(self) -> tuple[str, ...]:
        """All column names in select order (repeats included)."""
        return self._columns.names

    def as_tuple(self) -> tuple[Any, ...]:
        """All values in select order."""
        return self._values

    def __repr__(self) -> str:
        items = ", ".join(
            f"{name}={value!r}" for name, value in zip(self.columns, self._values, strict=True)
        )
        return f"Row({items})"
