"""Argument checks shared by the key-value backends, so that both reject the same input
with the same :class:`~multistore.errors.InvalidValueError` before touching the store."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Final

from multistore.errors import InvalidValueError
from multistore.stores._limits import (
    MAX_JSON_DEPTH,
    check_seconds,
    json_depth,
    short_repr,
    to_float,
)

#: Largest and smallest value ``incr`` accepts (a signed 64-bit integer, as in Redis).
INT64_MAX: Final = 2**63 - 1
INT64_MIN: Final = -(2**63)


def dump_json(value: Any, key: str) -> str:
    """``value`` as compact JSON, or :class:`InvalidValueError` (also for lists and
    dicts nested deeper than :data:`MAX_JSON_DEPTH`)."""
    if not _string_keys(value):
        raise InvalidValueError(
            f"cannot store the value for key {key!r} as JSON: an object key is not a "
            "string (JSON would turn it into one, and two keys could collide)"
        )
    if json_depth(value) > MAX_JSON_DEPTH:
        raise InvalidValueError(
            f"cannot store the value for key {short_repr(key)} as JSON: "
            f"nested deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, TypeError) as exc:
        raise InvalidValueError(
            f"cannot store the value for key {short_repr(key)} as JSON: {exc}"
        ) from None


def load_json(raw: bytes | None, key: str) -> Any:
    """The JSON value ``raw`` decoded (``None`` stays ``None``), or
    :class:`InvalidValueError` when it is not JSON or nests too deeply to decode."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidValueError(f"the value at key {short_repr(key)} is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidValueError(
            f"the value at key {short_repr(key)} is JSON nested too deeply to decode"
        ) from None


def _string_keys(value: Any) -> bool:
    """True when every dict in ``value`` has only string keys (checked without recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True


def check_key(key: object) -> str:
    """A valid key (a non-empty string that UTF-8 can encode) or InvalidValueError."""
    if type(key) is str and key and key.isascii():  # the common case: nothing to encode
        return key
    if not isinstance(key, str) or not key:
        raise InvalidValueError(f"a key must be a non-empty string, not {short_repr(key)}")
    _check_utf8(key, "key")
    return key


def check_keys(keys: Sequence[str]) -> list[str]:
    if isinstance(keys, str | bytes):
        raise InvalidValueError("keys must be a sequence of strings, not a single string")
    if not isinstance(keys, Sequence):
        raise InvalidValueError(f"keys must be a list of strings, not {type(keys).__name__}")
    return [check_key(k) for k in keys]


def check_prefix(prefix: object) -> str:
    """A scan prefix: any string that UTF-8 can encode (the empty one included)."""
    if not isinstance(prefix, str):
        raise InvalidValueError(f"a scan prefix must be a string, not {short_repr(prefix)}")
    _check_utf8(prefix, "scan prefix")
    return prefix


def check_member(member: object) -> str:
    if not isinstance(member, str):
        raise InvalidValueError(f"a sorted-set member must be a string, not {short_repr(member)}")
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
    """A TTL in seconds: a finite number above 0, at most ``MAX_SECONDS``."""
    return check_seconds(ttl, "ttl")


def ttl_millis(ttl: float) -> int:
    """A TTL in whole milliseconds, at least 1."""
    return max(1, round(ttl * 1000))


def check_amount(amount: object) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidValueError(f"the increment must be an int, not {short_repr(amount)}")
    if not INT64_MIN <= amount <= INT64_MAX:
        raise InvalidValueError(
            f"the increment {short_repr(amount)} is outside the 64-bit integer range"
        )
    return amount


def check_score(score: object, what: str = "score") -> float:
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise InvalidValueError(f"a {what} must be a number (not NaN), not {short_repr(score)}")
    number = to_float(score, f"the {what}")
    if math.isnan(number):
        raise InvalidValueError(f"a {what} must be a number (not NaN), not {short_repr(score)}")
    return number


def check_index(index: object, what: str) -> int:
    if isinstance(index, bool) or not isinstance(index, int):
        raise InvalidValueError(f"{what} must be an int, not {short_repr(index)}")
    # Beyond 64 bits an index means "past either end", as it would in Redis.
    return max(INT64_MIN, min(index, INT64_MAX))


def check_limit(limit: object, window: object) -> tuple[int, float]:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= INT64_MAX:
        raise InvalidValueError(
            f"a rate limit must be an int from 1 to 2**63 - 1, not {short_repr(limit)}"
        )
    return limit, check_seconds(window, "the rate-limit window")


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
            f"the {what} {short_repr(text)} cannot be encoded as UTF-8 (lone surrogate)"
        ) from None
