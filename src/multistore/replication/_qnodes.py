"""Quorum nodes: the storage a coordinator replicates to, one interface, two backends.

A node stores *records*: ``(group, member) -> (hlc, blob)``. The group is what the
ring places (a key, or a wide-column partition); members order the records of a
group (empty for a plain key; an order-preserving clustering encoding for rows),
so a node can return one group's records in order, which is what range reads of
the wide-column model need. ``hlc`` is the text form of the record's newest HLC
timestamp (its lexicographic order is time order) and ``blob`` the JSON the
coordinator wrote (a sibling set).

Every write is atomic on the node: :meth:`QuorumNode.write_lww` keeps the record
with the greater HLC, :meth:`QuorumNode.write_cas` replaces the record only if it
still is what the caller read (for resolvers that merge siblings). Each node also
keeps, per record, an *entry* name ``<token hex><group hex>:<member hex>`` and a
SHA-1 digest of the stored value, ordered by token, from which
:meth:`QuorumNode.leaf_hashes` computes Merkle leaves *on the node* (a Lua script
on Redis): anti-entropy sends leaf hashes, not data.

* :class:`~multistore.replication._qredis.RedisNode` (in :mod:`._qredis`) — a Redis
  server; each operation is one round trip (a Lua script where it must be atomic).
* :class:`SQLiteNode` — an embedded SQLite file on a worker thread, with
  :meth:`SQLiteNode.set_down` / :meth:`SQLiteNode.set_delay` to simulate a crashed
  or slow node.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import hashlib
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from multistore.core._merkle import leaf_hash
from multistore.core._ring import token_of
from multistore.errors import Outcome, StoreError, StoreUnavailableError, UsageError
from multistore.stores._worker import Worker

__all__ = [
    "QuorumNode",
    "Record",
    "Reply",
    "SQLiteNode",
    "entry_name",
    "pack_record",
    "parse_entry",
    "record_digest",
    "token_hex_bounds",
    "unpack_record",
    "when_done",
]

T = TypeVar("T")

Record = tuple[str, bytes]
"""``(hlc text, blob)`` as stored on a node."""


@functools.lru_cache(maxsize=4096)  # every replica write of a record needs it
def entry_name(group: bytes, member: bytes) -> str:
    """The anti-entropy index name of a record; sorts by the group's ring token."""
    return f"{token_of(group):016x}{group.hex()}:{member.hex()}"


def parse_entry(entry: str) -> tuple[bytes, bytes]:
    body, _, member = entry[16:].partition(":")
    return bytes.fromhex(body), bytes.fromhex(member)


def pack_record(hlc: str, blob: bytes) -> bytes:
    return hlc.encode() + b"\n" + blob


def unpack_record(value: bytes) -> Record:
    hlc, _, blob = value.partition(b"\n")
    return hlc.decode(), blob


def record_digest(value: bytes) -> str:
    """The anti-entropy digest of a stored value (``pack_record``'s bytes): SHA-1, hex."""
    return hashlib.sha1(value, usedforsecurity=False).hexdigest()


def token_hex_bounds(lo: int, hi: int) -> tuple[str, str]:
    """Entry-name bounds ``[lo_hex, hi_hex + "g")`` covering tokens lo..hi ('g' > hex)."""
    return f"{lo:016x}", f"{hi:016x}g"


class Reply(asyncio.Future[T]):
    """The future of one node call that also tells *listeners* the moment it is
    settled, from the code that settles it (a reply's I/O callback), where an
    asyncio done-callback would wait for the next turn of the event loop. The
    coordinator's fan-out listens, so counting answers toward a quorum costs no
    event-loop turn. Awaiting it and done-callbacks work as for any future."""

    __slots__ = ("_listeners",)  # set on first listen: no __init__ of our own to run

    _listeners: list[Callable[[Reply[T]], None]] | None

    def listen(self, listener: Callable[[Reply[T]], None]) -> None:
        """Call ``listener(self)`` once settled (now, if it is)."""
        if self.done():
            listener(self)
            return
        try:
            self._listeners.append(listener)  # type: ignore[union-attr]
        except AttributeError:  # the first (or None after a reset)
            self._listeners = [listener]

    def settle(self, result: T | None, error: BaseException | None = None) -> None:
        """Set the result (or ``error``) unless the future is done, then tell the listeners."""
        if self.done():  # cancelled by its awaiter
            return
        if error is None:
            self.set_result(result)  # type: ignore[arg-type]  # None only with an error
        else:
            self.set_exception(error)
        self._tell()

    def cancel(self, msg: Any | None = None) -> bool:
        if not super().cancel(msg):
            return False
        self._tell()
        return True

    def _tell(self) -> None:
        listeners = getattr(self, "_listeners", None)
        self._listeners = None
        for listener in listeners or ():
            try:
                listener(self)
            except Exception as exc:  # one listener's bug must not starve the others
                self.get_loop().call_exception_handler(
                    {"message": "a quorum reply listener raised", "exception": exc, "future": self}
                )


def when_done(future: asyncio.Future[T], callback: Callable[[asyncio.Future[T]], None]) -> None:
    """``callback(future)`` once it is done: as a :class:`Reply` listener (at once) or a
    done-callback (on the event loop's next turn)."""
    if isinstance(future, Reply):
        future.listen(callback)
    else:
        future.add_done_callback(callback)


class QuorumNode(abc.ABC):
    """One storage node of a quorum cluster (see the module docstring)."""

    name: str
    deadline: float | None = None
    """Seconds after which the node itself fails any one call with StoreTimeoutError
    (None: it sets no deadline; the coordinator's timeout still applies)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailableError/StoreTimeoutError unless the node answers."""

    # The three calls of every request may answer with a future rather than a coroutine
    # (the coordinator then needs no task to wait for them).

    @abc.abstractmethod
    def read(self, group: bytes, member: bytes = b"") -> Awaitable[Record | None]: ...

    @abc.abstractmethod
    def write_lww(self, group: bytes, member: bytes, hlc: str, blob: bytes) -> Awaitable[bool]:
        """Store the record unless the node holds one with an HLC >= ``hlc``; True if stored."""

    @abc.abstractmethod
    def write_cas(
        self, group: bytes, member: bytes, hlc: str, blob: bytes, expected: Record | None
    ) -> Awaitable[bool]:
        """Store the record if the node still holds ``expected`` (None: nothing); True if so."""

    @abc.abstractmethod
    async def scan(
        self,
        group: bytes,
        lo: bytes | None,
        hi: bytes | None,
        *,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, Record]]:
        """Records of ``group`` with ``lo <= member < hi`` (None: unbounded), in member
        order (reversed when asked), at most ``limit``."""

    @abc.abstractmethod
    async def remove(
        self, group: bytes, member: bytes = b"", *, expected: Record | None = None
    ) -> bool:
        """Forget a record entirely (a stand-in's copy once its home has it, expired
        rows); with ``expected``, only if the node still holds exactly that record.
        True if a record was removed."""

    @abc.abstractmethod
    async def leaf_hashes(self, arcs: Sequence[tuple[int, int]], depth: int) -> dict[int, str]:
        """Merkle leaf hashes (depth a multiple of 4) of the records in the token ranges."""

    @abc.abstractmethod
    async def entries(self, lo: int, hi: int) -> list[tuple[str, str]]:
        """``(entry name, digest)`` of the records with group tokens in ``[lo, hi]``."""

    @abc.abstractmethod
    async def wipe(self) -> None:
        """Delete every record of this node (to show anti-entropy at work)."""

    @abc.abstractmethod
    async def close(self) -> None: ...


# -- SQLite -----------------------------------------------------------------------------

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS records (
    grp BLOB NOT NULL, member BLOB NOT NULL, value BLOB NOT NULL, hlc TEXT NOT NULL,
    entry TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (grp, member)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_entry ON records (entry);
"""


class SQLiteNode(QuorumNode):
    """A quorum node in a SQLite file, on its own worker thread."""

    def __init__(self, name: str, path: str | Path) -> None:
        self.name = name
        self.path = str(path)
        self._worker: Worker | None = None
        self._conn: sqlite3.Connection | None = None
        self._down = False
        self._delay = 0.0

    async def open(self) -> SQLiteNode:
        worker = Worker(f"quorum-{self.name}")
        try:
            self._conn = await worker.run(_sqlite_connect, self.path)
        except BaseException:
            worker.close()
            raise
        self._worker = worker
        return self

    def set_down(self, down: bool) -> None:
        """Simulate a crashed node (every call fails, data kept) or bring it back."""
        self._down = down

    def set_delay(self, seconds: float) -> None:
        """Add latency to every call (a slow node or link)."""
        self._delay = max(0.0, seconds)

    @property
    def down(self) -> bool:
        return self._down

    async def _call(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        if self._delay:
            await asyncio.sleep(self._delay)
        if self._down:  # nothing was done: a definite failure
            raise StoreUnavailableError(
                f"quorum node {self.name} is down ({op})", outcome=Outcome.DEFINITE
            )
        if self._worker is None or self._conn is None:
            raise UsageError(f"quorum node {self.name} is not open")
        try:
            return await self._worker.run(fn, self._conn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"quorum node {self.name} failed {op}: {exc}") from exc

    async def ping(self) -> None:
        await self._call("ping", lambda conn: None)

    async def read(self, group: bytes, member: bytes = b"") -> Record | None:
        value = await self._call("read", _sqlite_read, group, member)
        return None if value is None else unpack_record(value)

    async def write_lww(self, group: bytes, member: bytes, hlc: str, blob: bytes) -> bool:
        return await self._call("write", _sqlite_write, group, member, hlc, blob, "lww", None)

    async def write_cas(
        self, group: bytes, member: bytes, hlc: str, blob: bytes, expected: Record | None
    ) -> bool:
        old = None if expected is None else pack_record(*expected)
        return await self._call("write", _sqlite_write, group, member, hlc, blob, "cas", old)

    async def scan(
        self,
        group: bytes,
        lo: bytes | None,
        hi: bytes | None,
        *,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, Record]]:
        rows = await self._call("scan", _sqlite_scan, group, lo, hi, reverse, limit)
        return [(member, unpack_record(value)) for member, value in rows]

    async def remove(
        self, group: bytes, member: bytes = b"", *, expected: Record | None = None
    ) -> bool:
        value = None if expected is None else pack_record(*expected)
        return await self._call("remove", _sqlite_remove, group, member, value)

    async def leaf_hashes(self, arcs: Sequence[tuple[int, int]], depth: int) -> dict[int, str]:
        rows: list[tuple[str, str]] = []
        for lo, hi in arcs:
            rows += await self.entries(lo, hi)
        width = depth // 4
        leaves: dict[int, list[tuple[str, str]]] = {}
        for entry, digest in rows:
            leaves.setdefault(int(entry[:width], 16) if width else 0, []).append((entry, digest))
        return {leaf: leaf_hash(items) for leaf, items in leaves.items()}

    async def entries(self, lo: int, hi: int) -> list[tuple[str, str]]:
        low, high = token_hex_bounds(lo, hi)
        return await self._call("merkle entries", _sqlite_entries, low, high)

    async def wipe(self) -> None:
        await self._call("wipe", lambda conn: conn.execute("DELETE FROM records"))

    async def close(self) -> None:
        worker, conn = self._worker, self._conn
        self._worker = self._conn = None
        if worker is not None and conn is not None:
            try:
                await worker.run(conn.close)
            finally:
                worker.close()

    def __repr__(self) -> str:
        return f"SQLiteNode({self.name!r}, {self.path!r})"


def _sqlite_connect(path: str) -> sqlite3.Connection:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        conn.execute("PRAGMA journal_mode = wal")
        conn.execute("PRAGMA synchronous = normal")
        conn.executescript(_SCHEMA)
    except sqlite3.Error as exc:
        raise StoreUnavailableError(f"cannot open quorum node file {path!r}: {exc}") from exc
    return conn


def _sqlite_read(conn: sqlite3.Connection, group: bytes, member: bytes) -> bytes | None:
    row = conn.execute(
        "SELECT value FROM records WHERE grp = ? AND member = ?", (group, member)
    ).fetchone()
    return None if row is None else bytes(row[0])


def _sqlite_write(
    conn: sqlite3.Connection,
    group: bytes,
    member: bytes,
    hlc: str,
    blob: bytes,
    mode: str,
    expected: bytes | None,
) -> bool:
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(
            "SELECT value, hlc FROM records WHERE grp = ? AND member = ?", (group, member)
        ).fetchone()
        if mode == "lww":
            if row is not None and row[1] >= hlc:
                conn.execute("COMMIT")
                return False
        elif (None if row is None else bytes(row[0])) != expected:
            conn.execute("COMMIT")
            return False
        value = pack_record(hlc, blob)
        conn.execute(
            "INSERT OR REPLACE INTO records (grp, member, value, hlc, entry, digest) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (group, member, value, hlc, entry_name(group, member), record_digest(value)),
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return True


def _sqlite_scan(
    conn: sqlite3.Connection,
    group: bytes,
    lo: bytes | None,
    hi: bytes | None,
    reverse: bool,
    limit: int | None,
) -> list[tuple[bytes, bytes]]:
    sql = "SELECT member, value FROM records WHERE grp = ?"
    params: list[Any] = [group]
    if lo is not None:
        sql += " AND member >= ?"
        params.append(lo)
    if hi is not None:
        sql += " AND member < ?"
        params.append(hi)
    sql += f" ORDER BY member {'DESC' if reverse else 'ASC'}"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [(bytes(m), bytes(v)) for m, v in conn.execute(sql, params)]


def _sqlite_remove(
    conn: sqlite3.Connection, group: bytes, member: bytes, value: bytes | None
) -> bool:
    sql = "DELETE FROM records WHERE grp = ? AND member = ?"
    params: tuple[bytes, ...] = (group, member)
    if value is not None:
        sql += " AND value = ?"
        params += (value,)
    return conn.execute(sql, params).rowcount > 0


def _sqlite_entries(conn: sqlite3.Connection, low: str, high: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT entry, digest FROM records WHERE entry >= ? AND entry < ? ORDER BY entry",
        (low, high),
    )
    return [(str(e), str(d)) for e, d in rows]
