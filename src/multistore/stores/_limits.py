"""Checks of numeric arguments shared by every backend (pure: no I/O).

Python integers have no size limit and floats reach 1.8e308; the databases stop far
earlier, and each at another place (SQLite binds at most a signed 64-bit integer,
Redis keeps expiry times in 64-bit milliseconds, PostgreSQL ``LIMIT`` takes a
``bigint``). These checks refuse such numbers before anything is sent, with an
:class:`~multistore.errors.InvalidValueError` that names the argument, so every
backend of a model refuses the same input in the same way.
"""

from __future__ import annotations

import math
from typing import Any, Final

from multistore.errors import InvalidQueryError, InvalidValueError, MultistoreError

__all__ = [
    "INT64_MAX",
    "MAX_JSON_DEPTH",
    "MAX_SECONDS",
    "check_count",
    "check_seconds",
    "json_depth",
    "short_repr",
    "to_float",
]

INT64_MAX: Final = 2**63 - 1
#: Longest TTL or time window in seconds (about 317 years).
MAX_SECONDS: Final = 10**10
#: Deepest nesting of lists and objects in a JSON value (the document model's limit too).
MAX_JSON_DEPTH: Final = 100


def to_float(value: int | float, what: str) -> float:
    """``float(value)``, or InvalidValueError naming ``what`` when it is too large."""
    try:
        return float(value)
    except OverflowError:
        raise InvalidValueError(
            f"{what} {short_repr(value)} is too large (beyond the range of a 64-bit float)"
        ) from None


def check_seconds(value: object, what: str) -> float:
    """A duration in seconds: a finite number above 0 and at most :data:`MAX_SECONDS`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidValueError(
            f"{what} must be a finite number of seconds above 0, not {short_repr(value)}"
        )
    seconds = to_float(value, what)
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidValueError(
            f"{what} must be a finite number of seconds above 0, not {short_repr(value)}"
        )
    if seconds > MAX_SECONDS:
        raise InvalidValueError(
            f"{what} {short_repr(value)} is too long: "
            f"at most {MAX_SECONDS} seconds (about 317 years)"
        )
    return seconds


def check_count(
    value: object,
    what: str,
    *,
    minimum: int = 0,
    error: type[MultistoreError] = InvalidQueryError,
) -> int:
    """A count (limit, skip, offset): an int from ``minimum`` up to 2**63 - 1.

    A value of the wrong type or below ``minimum`` raises ``error``; one above the
    64-bit range raises :class:`InvalidValueError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer of at least {minimum}"
        )
        raise error(f"{what} must be {kind}, not {short_repr(value)}")
    if value > INT64_MAX:
        raise InvalidValueError(
            f"{what} {short_repr(value)} is above the largest allowed, 2**63 - 1"
        )
    return value


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply lists and dicts nest in ``value`` (0 for a scalar), counted without
    recursion; stops counting once past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def short_repr(value: object, limit: int = 120) -> str:
    """``repr(value)`` for an error message, safe for anything a caller may pass: an
    integer too long for ``repr`` (Python 3.11 refuses past 4300 digits), a value nested
    too deeply to print, or a very long one (cut at ``limit`` characters)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"{'-' if value < 0 else ''}(an integer of {value.bit_length()} bits)"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"(a {type(value).__name__} too large to show)"
    return text if len(text) <= limit else text[: limit - 1] + "…"
