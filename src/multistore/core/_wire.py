"""The framing of the binary wire form of CRDT states, and its column reader and writer.

A state on the wire is ``version byte, tag byte, body``:

* version ``0x01`` is this format; a first byte ``{`` is the older encoding, the
  compact JSON text of ``to_dict()``, which still decodes;
* tag ``J`` means the body is that compact JSON text (any CRDT); other tags name a
  CRDT class with a binary body of its own (the cart's is ``c``).

Binary bodies are made of counts (4 bytes, little-endian), text blocks (a byte
length, then UTF-8 text whose parts are joined by NUL) and integer *columns*:
one width byte (1, 2, 4 or 8), then the values as unsigned little-endian ints of
that width. A column decodes in one C call (``memoryview.cast``), which is what
keeps decoding a state close to the cost of allocating its objects.

The reader checks every length against the bytes that are left before it takes
anything, so a truncated or forged input fails with :class:`InvalidValueError`
naming what was wrong, without allocating what the input claims.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from multistore.errors import InvalidValueError

__all__ = ["JSON_TAG", "LEGACY_JSON_START", "WIRE_VERSION", "Reader", "Writer"]

WIRE_VERSION = 1
JSON_TAG = ord("J")
LEGACY_JSON_START = ord("{")

_CODES: dict[int, Literal["B", "H", "I", "Q"]] = {1: "B", 2: "H", 4: "I", 8: "Q"}
_LITTLE = memoryview(b"\x01\x00").cast("H")[0] == 1
_MAX = 1 << 64


def width(values: Sequence[int]) -> int:
    """The smallest column width that holds every value (all must be in [0, 2**64))."""
    top = max(values, default=0)
    for size in (1, 2, 4, 8):
        if top < 1 << (8 * size):
            return size
    raise InvalidValueError(f"a column value {top} does not fit in 8 bytes")


def fits(values: Sequence[int]) -> bool:
    """Whether ``values`` can go in a column."""
    return not values or (min(values) >= 0 and max(values) < _MAX)


class Writer:
    """Appends the parts of a binary body."""

    __slots__ = ("_parts",)

    def __init__(self, tag: int) -> None:
        self._parts: list[bytes] = [bytes((WIRE_VERSION, tag))]

    def count(self, n: int) -> None:
        self._parts.append(n.to_bytes(4, "little"))

    def text(self, parts: Sequence[str]) -> None:
        """Parts joined by NUL (none may contain one), preceded by the byte length."""
        blob = "\x00".join(parts).encode()
        self.count(len(blob))
        self._parts.append(blob)

    def column(self, values: Sequence[int]) -> None:
        size = width(values)
        self._parts.append(bytes((size,)))
        self._parts.append(b"".join(v.to_bytes(size, "little") for v in values))

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Takes the parts of a binary body in order; every read is bounds-checked."""

    __slots__ = ("_at", "_data", "_what")

    def __init__(self, data: memoryview, what: str) -> None:
        self._data = data
        self._at = 0
        self._what = what

    def fail(self, problem: str) -> InvalidValueError:
        return InvalidValueError(f"bad {self._what} wire state: {problem} (at byte {self._at + 2})")

    def _take(self, n: int, part: str) -> memoryview:
        end = self._at + n
        if end > len(self._data):
            raise self.fail(
                f"truncated: {part} needs {n} bytes, {len(self._data) - self._at} are left"
            )
        chunk = self._data[self._at : end]
        self._at = end
        return chunk

    def count(self, part: str) -> int:
        return int.from_bytes(self._take(4, part), "little")

    def text(self, n: int, part: str) -> list[str]:
        """``n`` NUL-separated parts of a text block."""
        size = self.count(part)
        raw = self._take(size, part)
        try:
            text = str(raw, "utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{part} is not UTF-8: {exc.reason}") from None
        parts = text.split("\x00") if n else []
        if len(parts) != n or (not n and size):
            raise self.fail(f"{part} holds {len(parts)} parts, expected {n}")
        return parts

    def column(self, n: int, part: str) -> list[int]:
        """A column of ``n`` unsigned ints."""
        size = self._take(1, part)[0]
        code = _CODES.get(size)
        if code is None:
            raise self.fail(f"{part} has column width {size}, expected 1, 2, 4 or 8")
        raw = self._take(n * size, part)
        if _LITTLE or size == 1:
            values: list[int] = raw.cast(code).tolist()
            return values
        return [int.from_bytes(raw[i : i + size], "little") for i in range(0, n * size, size)]

    def end(self) -> None:
        if self._at != len(self._data):
            raise self.fail(f"{len(self._data) - self._at} bytes left over after the state")
