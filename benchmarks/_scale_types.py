"""The shapes ``multistore bench scale`` is made of: a case prepares each side at a
size (:class:`Prepared`: the operation to time and how to close it)."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Case", "Prepare", "Prepared", "Reap", "clone_rows", "keys", "raw_sqlite"]


@dataclass
class Prepared:
    """One side, loaded: ``call`` runs the operation once (sync or async)."""

    call: Callable[[], object]
    close: Callable[[], Awaitable[None]]
    state: dict[str, Any] = field(default_factory=dict)
    """What a reap step needs (the store, the raw connection)."""


Prepare = Callable[[int, Path], Awaitable[Prepared]]
Reap = Callable[[Prepared, Prepared], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Case:
    id: str
    """A short name for the curve, used by ``--cases``."""
    name: str
    """The curve, e.g. ``kv get one key, sqlite``; the rows add the size."""
    items: str
    """What the size counts: ``keys``, ``documents``, ``saga records`` …"""
    anchor_name: str
    ours: Prepare
    raw: Prepare
    reap: Reap | None = None
    """Retention: delete what is due on both sides, report sizes before and after."""


def keys(prefix: str, size: int, count: int = 512) -> Callable[[], str]:
    """A cycle of ``count`` spread keys ``prefix<i>`` with ``i < size``: each call the
    next one, so a run reads many places of the data, the same ones on both sides."""
    step = 7919  # a prime: i * step % size visits the range evenly
    chosen = [f"{prefix}{(i * step) % size}" for i in range(min(count, size))]
    position = [0]

    def next_key() -> str:
        position[0] = (position[0] + 1) % len(chosen)
        return chosen[position[0]]

    return next_key


def raw_sqlite(path: Path, *, synchronous: str = "normal") -> sqlite3.Connection:
    """A plain sqlite3 connection in autocommit mode, WAL, like the stores' files."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def clone_rows(
    conn: sqlite3.Connection,
    table: str,
    template: str,
    count: int,
    overrides: dict[str, str],
) -> None:
    """Insert ``count`` copies of the row ``WHERE template`` into ``table`` in one
    transaction, each column as in the template except ``overrides`` (SQL over ``i``,
    1 to ``count``). The stores have no bulk load of their own for the logs and some
    models: a row written through multistore, copied, loads a million in seconds."""
    columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]
    picked = ", ".join(overrides.get(c, f't."{c}"') for c in columns)
    names = ", ".join(f'"{c}"' for c in columns)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) "
        f'INSERT INTO "{table}" ({names}) SELECT {picked} '
        f'FROM n, (SELECT * FROM "{table}" WHERE {template}) AS t'
    )
    conn.execute("COMMIT")
