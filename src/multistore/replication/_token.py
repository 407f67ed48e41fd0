"""Causal tokens: the log position a write reached, carried to later reads.

A token is ``(generation, position)``: ``position`` is where the primary's log stood
after the write committed (a PostgreSQL LSN as an integer, or the entry number of
the embedded SQLite change log) and ``generation`` counts the failovers the router
had seen. A read that carries a token is served only by a node that has replayed up
to ``position``. Tokens format to and parse from short strings (``"1:23F9A10"``),
so they can travel in a cookie or an HTTP header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from multistore.errors import InvalidValueError

__all__ = ["CausalToken", "format_lsn", "parse_lsn"]


@dataclass(frozen=True, order=True)
class CausalToken:
    """The position a read must see. Orders by ``(generation, position)``."""

    generation: int
    position: int

    def __post_init__(self) -> None:
        if self.generation < 0 or self.position < 0:
            raise InvalidValueError(
                f"a causal token needs a non-negative generation and position, got "
                f"generation={self.generation}, position={self.position}"
            )

    def __str__(self) -> str:
        return f"{self.generation}:{self.position:X}"

    @classmethod
    def parse(cls, text: str) -> Self:
        """The token that ``str(token)`` printed; :class:`InvalidValueError` otherwise."""
        generation, sep, position = text.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            return cls(int(generation, 10), int(position, 16))
        except ValueError:
            raise InvalidValueError(
                f"not a causal token: {text[:60]!r} (expected GENERATION:HEXPOSITION, "
                "as str(token) prints it)"
            ) from None

    def later(self, other: CausalToken | None) -> CausalToken:
        """The later of two tokens (a session keeps the latest it has seen)."""
        if other is None or self >= other:
            return self
        return other


def parse_lsn(text: str) -> int:
    """A PostgreSQL LSN (``"16/B374D848"``) as an integer."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(position: int) -> str:
    """An integer position as a PostgreSQL LSN string."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"
