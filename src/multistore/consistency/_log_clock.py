"""The clock of a log table: leases and deadlines in the database's time.

Leases (``lease_until``) and retry times are written and compared by several
processes, often on several machines, whose wall clocks disagree by whatever NTP
leaves, or by hours on a machine whose clock is wrong. So where the database has a
clock, it decides:

- PostgreSQL and MariaDB: every lease and retry time is computed and compared inside
  the statement that writes or claims it, on the server's clock (:attr:`LogClock.sql`).
  Deadlines that a worker checks between statements (a saga's timeout) use the
  server's time as :meth:`LogClock.sync` last read it, advanced by the local
  monotonic clock since then, which a change of the machine's wall clock does not
  move.
- SQLite has no clock of its own: the file lives on one machine and every process
  that opens it runs there, so the machine's clock (``time.time()``) is the one clock
  they share.

A ``clock`` given explicitly replaces all of this, on every backend: tests and the
schedule explorer pass one to control time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from multistore.stores.relational import RelationalStore

__all__ = ["LogClock"]

_NOW_SQL: Final = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM statement_timestamp()) AS DOUBLE PRECISION)",
    "mariadb": "CAST(UNIX_TIMESTAMP(NOW(6)) AS DOUBLE)",
}


class LogClock:
    """Seconds for the leases and deadlines of a log in ``store``.

    With ``clock`` None: on PostgreSQL and MariaDB the server's clock, on SQLite the
    machine's; with a ``clock``, that one everywhere.
    """

    def __init__(self, store: RelationalStore, clock: Callable[[], float] | None = None) -> None:
        self.store = store
        self._clock = clock
        server = _NOW_SQL.get(store.backend) if clock is None else None
        self._server = server
        self.sql = server or ":now"
        """SQL for "now" in Unix seconds inside a statement: the server's clock, or the
        parameter ``:now``, which the caller fills with :meth:`now`."""
        self._read: tuple[float, float] | None = None  # (server time, monotonic then)

    @property
    def on_server(self) -> bool:
        """Whether leases are on the database server's clock."""
        return self._server is not None

    def wall(self) -> float:
        """This machine's wall clock (or the given ``clock``): for time stamps that
        only people read."""
        return self._clock() if self._clock is not None else time.time()

    async def sync(self) -> None:
        """Read the server's time (nothing unless :attr:`on_server`)."""
        if self._server is None:
            return
        before = time.monotonic()
        value = await self.store.fetch_val(f"SELECT {self._server}")
        after = time.monotonic()
        self._read = (float(value), (before + after) / 2)

    def now(self) -> float:
        """The clock's time: the server's as last read plus the monotonic time since,
        or the wall clock (before the first :meth:`sync`, and on SQLite)."""
        if self._read is None:
            return self.wall()
        server, at = self._read
        return server + (time.monotonic() - at)
