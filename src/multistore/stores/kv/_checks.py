"""Argument checks shared by the key-value backends, so that both reject the same input
with the same :class:`~multistore.errors.InvalidValueError` before touching the store."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Final

from multistore.errors import InvalidValueError

#: Largest and smallest value ``incr`` accepts (a signed 64-bit integer, as in Redis).
INT64_MAX: Final = 2**63 - 1
INT64_MIN: Final = -(2**63)


def dump_json(value: Any, key: str) -> str:
    """``value`` as compact JSON, or :class:`InvalidValueError`."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, TypeError) as exc:
        raise InvalidValueError(f"cannot store the value for key {key!r} as JSON: {exc}") from None


def check_key(key: object) -> str:
    """A valid key (a non-empty string that UTF-8 can encode) or InvalidValueError."""
    if not isinstance(key, str) or not key:
        raise InvalidValueError(f"a key must be a non-empty string, not {key!r}")
    _check_utf8(key, "key")
    return key


def check_keys(keys: Sequence[str]) -> list[str]:
    if isinstance(keys, str | bytes):
        raise InvalidValueError("keys must be a sequence of strings, not a single string")
    return [check_key(k) for k in keys]


def check_member(member: object) -> str:
    if not isinstance(member, str):
        raise InvalidValueError(f"a sorted-set member must be a string, not {member!r}")
    _check_utf8(member, "member")
    return member


def check_value(value: object) -> bytes:
    """The bytes to store for a ``bytes | str`` value, or InvalidValueError."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return _check_utf8(value, "value")
    raise InvalidValueError(f"a value must be bytes or str, not {type(value).__name__}")


def check_ttl(ttl: object) -> float:
    """A TTL in seconds: a finite number above 0."""
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not math.isfinite(ttl)
        or ttl <= 0
    ):
        raise InvalidValueError(f"a TTL must be a finite number of seconds above 0, not {ttl!r}")
    return float(ttl)


def ttl_millis(ttl: float) -> int:
    """A TTL in whole milliseconds, at least 1."""
    return max(1, round(ttl * 1000))


def check_amount(amount: object) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidValueError(f"the increment must be an int, not {amount!r}")
    if not INT64_MIN <= amount <= INT64_MAX:
        raise InvalidValueError(f"the increment {amount} is outside the 64-bit integer range")
    return amount


def check_score(score: object, what: str = "score") -> float:
    if isinstance(score, bool) or not isinstance(score, int | float) or math.isnan(score):
        raise InvalidValueError(f"a {what} must be a number (not NaN), not {score!r}")
    return float(score)


def check_index(index: object, what: str) -> int:
    if isinstance(index, bool) or not isinstance(index, int):
        raise InvalidValueError(f"{what} must be an int, not {index!r}")
    return index


def check_limit(limit: object, window: object) -> tuple[int, float]:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidValueError(f"a rate limit must be an int of at least 1, not {limit!r}")
    if (
        isinstance(window, bool)
        or not isinstance(window, int | float)
        or not math.isfinite(window)
        or window <= 0
    ):
        raise InvalidValueError(
            f"a rate-limit window must be a finite number of seconds above 0, not {window!r}"
        )
    return limit, float(window)


def parse_int(raw: bytes) -> int | None:
    """The integer a stored value spells in Redis's strict form, or None."""
    if not 0 < len(raw) <= 20:
        return None
    text = raw.decode("ascii", errors="replace")
    if text == "0":
        return 0
    body = text[1:] if text.startswith("-") else text
    if not body or not body.isdigit() or not body.isascii() or body[0] == "0":
        return None
    number = int(text)
    return number if INT64_MIN <= number <= INT64_MAX else None


def _check_utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValueError(
            f"the {what} {text!r} cannot be encoded as UTF-8 (lone surrogate)"
        ) from None
