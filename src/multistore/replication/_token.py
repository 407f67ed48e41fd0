"""Causal tokens: where a write reached in the primary's log, carried to later reads.

A token is ``(timeline, position)``. ``position`` is where the primary's log stood
after the write committed (a PostgreSQL LSN as an integer, or the entry number of the
embedded SQLite change log). ``timeline`` names the history that position belongs to:
the PostgreSQL timeline ID, or the embedded log's timeline, which every promotion
increments (see ``_timeline.py``). A read that carries a token is served only by a
node that has replayed up to ``position`` of that history.

Tokens print as ``TIMELINE:HEXPOSITION`` (``"1:16B374D848"``), followed by
``.SIGNATURE`` when the router signs them with a :class:`TokenSigner`, so they can
travel in a cookie or an HTTP header. Parsing accepts ASCII digits only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

from multistore.errors import InvalidValueError

__all__ = ["CausalToken", "TokenSigner", "format_lsn", "parse_lsn"]

MAX_TIMELINE = 2**32 - 1
"""PostgreSQL timeline IDs are unsigned 32-bit integers."""
MAX_POSITION = 2**64 - 1
"""PostgreSQL LSNs are unsigned 64-bit integers."""
_SIGNATURE_BYTES = 16
_MIN_KEY_BYTES = 16
# Explicit ASCII classes: ``int()`` and ``\d`` would also take digits of other scripts.
_TOKEN = re.compile(r"([0-9]{1,10}):([0-9A-Fa-f]{1,16})(?:\.([0-9a-f]{32}))?")


@dataclass(frozen=True, order=True)
class CausalToken:
    """The position a read must see. Orders by ``(timeline, position)``; the
    signature, when there is one, takes no part in comparisons."""

    timeline: int
    position: int
    signature: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.timeline <= MAX_TIMELINE or not 0 <= self.position <= MAX_POSITION:
            raise InvalidValueError(
                f"a causal token needs a timeline in 1..{MAX_TIMELINE} and a position in "
                f"0..{MAX_POSITION:X} (hex), got timeline={self.timeline}, "
                f"position={self.position}"
            )

    @property
    def unsigned(self) -> str:
        """``TIMELINE:HEXPOSITION``, what a signature covers."""
        return f"{self.timeline}:{self.position:X}"

    def __str__(self) -> str:
        if self.signature is None:
            return self.unsigned
        return f"{self.unsigned}.{self.signature}"

    @classmethod
    def parse(cls, text: str) -> Self:
        """The token that ``str(token)`` printed; :class:`InvalidValueError` otherwise.

        Only ASCII digits are accepted: a timeline of up to 10 decimal digits, a
        position of up to 16 hex digits, and an optional signature of 32 lowercase hex
        digits after a dot."""
        match = _TOKEN.fullmatch(text.strip(" \t"))
        if match is None:
            raise InvalidValueError(
                f"not a causal token: {text[:60]!r} (expected TIMELINE:HEXPOSITION in "
                "ASCII digits, as str(token) prints it)"
            )
        timeline, position, signature = match.groups()
        return cls(int(timeline, 10), int(position, 16), signature)

    def later(self, other: CausalToken | None) -> CausalToken:
        """The later of two tokens (a session keeps the latest it has seen)."""
        if other is None or self >= other:
            return self
        return other


class TokenSigner:
    """Signs causal tokens with HMAC-SHA256 so that clients cannot forge them.

    ``key`` signs every token the router hands out; ``key`` and each of ``previous``
    verify, so keys can be rotated: sign with the new key and keep the old one in
    ``previous`` until tokens signed with it have expired from sessions. Keys are
    secrets of at least 16 bytes; the signature is the first 16 bytes of the HMAC of
    ``TIMELINE:HEXPOSITION``, in hex.
    """

    def __init__(self, key: bytes, *, previous: Sequence[bytes] = ()) -> None:
        keys = (key, *previous)
        for k in keys:
            if not isinstance(k, bytes) or len(k) < _MIN_KEY_BYTES:
                raise InvalidValueError(
                    f"a token signing key must be bytes of at least {_MIN_KEY_BYTES} bytes"
                )
        self._keys = keys

    def sign(self, token: CausalToken) -> CausalToken:
        """``token`` with its signature."""
        return dataclasses.replace(token, signature=_mac(self._keys[0], token))

    def verify(self, token: CausalToken) -> bool:
        """True when ``token`` carries a signature made with one of the keys."""
        if token.signature is None:
            return False
        signature = token.signature
        return any(hmac.compare_digest(_mac(k, token), signature) for k in self._keys)

    def __repr__(self) -> str:  # never print the keys
        return f"<TokenSigner: 1 key, {len(self._keys) - 1} previous>"


def _mac(key: bytes, token: CausalToken) -> str:
    digest = hmac.new(key, token.unsigned.encode("ascii"), hashlib.sha256).digest()
    return digest[:_SIGNATURE_BYTES].hex()


def parse_lsn(text: str) -> int:
    """A PostgreSQL LSN (``"16/B374D848"``) as an integer."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(position: int) -> str:
    """An integer position as a PostgreSQL LSN string."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"
