"""Durable hints for hinted handoff.

When a write's home replica is down, the coordinator writes the record to a
fallback node and keeps a *hint* here: "deliver this record to that home node".
Hints live in a SQLite file, so they survive a coordinator restart (give the
same path again); ``:memory:`` keeps them for the life of the process only.
The window policy (how old a hint may get) is the coordinator's; this module
only stores, lists and deletes.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from multistore.errors import StoreError, StoreUnavailableError, UsageError
from multistore.stores._worker import Worker

__all__ = ["Hint", "HintStore"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS hints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    home TEXT NOT NULL, grp BLOB NOT NULL, member BLOB NOT NULL,
    hlc TEXT NOT NULL, blob BLOB NOT NULL, fallback TEXT NOT NULL, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS hints_home ON hints (home, id);
"""


@dataclass(frozen=True, slots=True)
class Hint:
    """A record waiting for its home node."""

    id: int
    home: str
    group: bytes
    member: bytes
    hlc: str
    blob: bytes
    fallback: str
    """The node that holds the record meanwhile."""
    created: float
    """Wall-clock seconds when the hint was written."""


class HintStore:
    """Hints in one SQLite file, driven from a worker thread."""

    def __init__(self, path: str, worker: Worker, conn: sqlite3.Connection) -> None:
        self.path = path
        self._worker = worker
        self._conn: sqlite3.Connection | None = conn

    @classmethod
    async def open(cls, path: str | Path | None = None) -> HintStore:
        where = ":memory:" if path is None else str(path)
        worker = Worker("quorum-hints")
        try:
            conn = await worker.run(_connect, where)
        except BaseException:
            worker.close()
            raise
        return cls(where, worker, conn)

    async def _run(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        conn = self._conn
        if conn is None:
            raise UsageError("the hint store is closed")

        def work() -> list[tuple[object, ...]]:
            return list(conn.execute(sql, params))

        try:
            return await self._worker.run(work)
        except sqlite3.Error as exc:
            raise StoreError(f"hint store {self.path!r} failed: {exc}") from exc

    async def add(
        self,
        home: str,
        group: bytes,
        member: bytes,
        hlc: str,
        blob: bytes,
        fallback: str,
        created: float,
    ) -> None:
        await self._run(
            "INSERT INTO hints (home, grp, member, hlc, blob, fallback, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (home, group, member, hlc, blob, fallback, created),
        )

    async def pending(
        self, home: str | None = None, limit: int = 1000, *, after: int = 0
    ) -> list[Hint]:
        """The oldest hints (of one home node, or of all) whose id is above ``after``,
        at most ``limit``."""
        where, params = ("AND home = ?", (home,)) if home is not None else ("", ())
        rows = await self._run(
            "SELECT id, home, grp, member, hlc, blob, fallback, created FROM hints "
            f"WHERE id > ? {where} ORDER BY id LIMIT ?",
            (after, *params, limit),
        )
        return [
            Hint(*cast("tuple[int, str, bytes, bytes, str, bytes, str, float]", r)) for r in rows
        ]

    async def remove(self, ids: list[int]) -> None:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            await self._run(f"DELETE FROM hints WHERE id IN ({marks})", tuple(chunk))

    async def counts(self) -> dict[str, int]:
        """Pending hints per home node."""
        rows = await self._run("SELECT home, COUNT(*) FROM hints GROUP BY home")
        return dict(cast("list[tuple[str, int]]", rows))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await self._worker.run(conn.close)
            finally:
                self._worker.close()


def _connect(path: str) -> sqlite3.Connection:
    try:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode = wal")
        conn.executescript(_SCHEMA)
    except sqlite3.Error as exc:
        raise StoreUnavailableError(f"cannot open the hint store {path!r}: {exc}") from exc
    return conn
