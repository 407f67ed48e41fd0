"""One multi-master transaction's working set: the key states it reads and the rows it writes.

A local write or a batch of received changes loads the states of the keys it
touches with one query, changes them in memory, and writes everything back —
states, log rows, held-back changes, conflict records and per-origin progress —
with one statement per table before the transaction commits. Nothing here
decides anything: :mod:`._multimaster` does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from multistore.core import HLCTimestamp
from multistore.replication._changelog import dumps, loads
from multistore.stores.relational import Transaction

__all__ = ["StateCache", "Work"]


_MISSING: Any = object()


class StateCache:
    """Decoded key states of one node, newest used last, at most ``size`` of them.

    The states are immutable values, and one node object owns its store, so a
    cached state is the stored one as long as every write goes through
    :meth:`Work.committed`.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._states: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str, default: Any) -> Any:
        state = self._states.get(key, default)
        if state is not default:
            self._states.move_to_end(key)
        return state

    def update(self, items: Iterable[tuple[str, Any]]) -> None:
        states = self._states
        for key, state in items:
            states[key] = state
            states.move_to_end(key)
        while len(states) > self.size:
            states.popitem(last=False)


class Work:
    """The states and pending rows of one transaction (see the module docstring)."""

    def __init__(
        self,
        tx: Transaction,
        decode: Callable[[Any], Any],
        pos: int,
        cache: StateCache | None = None,
    ) -> None:
        self.tx = tx
        self._decode = decode
        self._cache = cache
        self._states: dict[str, Any] = {}
        self._dirty: set[str] = set()
        self.pos = pos
        """The local log position of the last row appended (the log head once committed)."""
        self.log_rows: list[dict[str, Any]] = []
        self.conflicts: list[dict[str, Any]] = []
        self.held: list[dict[str, Any]] = []
        self.released: list[dict[str, Any]] = []
        self.origins: dict[str, int] = {}
        self.everyone_has: dict[str, int] = {}
        """Per origin, what every registered peer already has: such changes need no log row
        (nobody will ask this node for them)."""

    async def load(self, keys: Iterable[str]) -> None:
        """Read the stored states of ``keys`` (those not loaded yet) in one query."""
        wanted: list[str] = []
        for key in sorted(set(keys) - self._states.keys()):
            cached = _MISSING if self._cache is None else self._cache.get(key, _MISSING)
            if cached is _MISSING:
                wanted.append(key)
            else:
                self._states[key] = cached
        for first in range(0, len(wanted), 500):
            chunk = wanted[first : first + 500]
            params = {f"k{i}": key for i, key in enumerate(chunk)}
            marks = ", ".join(f":{name}" for name in params)
            rows = await self.tx.fetch_all(
                f"SELECT key, state FROM mm_data WHERE key IN ({marks})", params
            )
            found = {row[0]: row[1] for row in rows}
            for key in chunk:
                text = found.get(key)
                self._states[key] = None if text is None else self._decode(loads(text))

    def get(self, key: str) -> Any:
        """The state of ``key`` as loaded or changed (None when absent); load it first."""
        return self._states[key]

    def set(self, key: str, state: Any) -> None:
        self._states[key] = state
        self._dirty.add(key)

    def committed(self) -> None:
        """The transaction committed: the states it wrote are now the stored ones."""
        if self._cache is not None:
            self._cache.update((key, self._states[key]) for key in self._dirty)

    def logs(self, origin: str, seq: int) -> bool:
        """Whether change ``origin:seq`` gets a log row: not when every peer has it."""
        return seq > self.everyone_has.get(origin, 0)

    def append(self, origin: str, seq: int, key: str, hlc: HLCTimestamp, body: str) -> None:
        """A log row for change ``origin:seq`` (none when every peer has it already)."""
        if not self.logs(origin, seq):
            return
        self.pos += 1
        self.log_rows.append(
            {
                "pos": self.pos,
                "o": origin,
                "s": seq,
                "k": key,
                "ms": hlc.physical_ms,
                "counter": hlc.counter,
                "body": body,
            }
        )

    def progress(self, origin: str, seq: int) -> None:
        """This node has now taken ``origin``'s changes up to ``seq``."""
        self.origins[origin] = seq

    async def flush(self, encode: Callable[[Any], Any]) -> None:
        """Write everything gathered, one statement per table."""
        tx = self.tx
        if self._dirty:
            await tx.executemany(
                "INSERT INTO mm_data (key, state) VALUES (:k, :state) "
                "ON CONFLICT (key) DO UPDATE SET state = excluded.state",
                [
                    {"k": key, "state": dumps(encode(self._states[key]))}
                    for key in sorted(self._dirty)
                ],
            )
        if self.log_rows:
            await tx.executemany(
                "INSERT INTO mm_log (pos, origin, seq, key, hlc_ms, hlc_counter, body) "
                "VALUES (:pos, :o, :s, :k, :ms, :counter, :body)",
                self.log_rows,
            )
        if self.held:
            await tx.executemany(
                "INSERT INTO mm_pending (origin, seq, key, skew_ms, body) "
                "VALUES (:o, :s, :k, :skew, :body)",
                self.held,
            )
        if self.released:
            await tx.executemany(
                "DELETE FROM mm_pending WHERE origin = :o AND seq = :s", self.released
            )
        if self.conflicts:
            await tx.executemany(
                "INSERT INTO mm_conflicts (id, key, kind, origin, seq, body) "
                "VALUES (:id, :k, :kind, :o, :s, :body)",
                self.conflicts,
            )
        if self.origins:
            await tx.executemany(
                "INSERT INTO mm_origins (origin, received) VALUES (:o, :s) "
                "ON CONFLICT (origin) DO UPDATE SET received = excluded.received",
                [{"o": origin, "s": seq} for origin, seq in sorted(self.origins.items())],
            )
