"""JSON values and paths of the document model (pure: no I/O).

A document is a JSON object: ``dict`` with ``str`` keys whose values are ``None``,
``bool``, ``int`` (64-bit), finite ``float``, ``str``, ``list`` or ``dict``. Every
backend stores exactly these, so the checks live here, once:

- NaN and ±Infinity are not JSON; integers outside the signed 64-bit range do not
  survive SQLite; strings holding NUL (``\\x00``) or lone surrogates do not survive
  PostgreSQL. All are refused.
- Keys starting with ``$`` are refused (``$`` marks operators in filters and updates),
  as are NUL characters in keys.

A *path* names a field: segments joined by dots (``specs.cpu``). A segment is made of
letters, digits, ``_`` and ``-``; an all-digit segment would mean an array position,
which is not supported. Paths are validated here so that the SQL compilers can
write them as quoted literals (needed for expression indexes to match).

Values have a *kind*: ``null``, ``bool``, ``number``, ``string``, ``array`` or
``object``. Equality (:func:`json_equal`) and ordering only relate values of the
same kind: ``1 == 1.0`` but ``1 != True`` and ``1 != "1"``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from multistore.errors import InvalidQueryError, MultistoreError
from multistore.stores._limits import short_repr

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_DEPTH",
    "MAX_PATH_DEPTH",
    "Path",
    "check_value",
    "copy_value",
    "encode",
    "json_equal",
    "kind",
    "parse_path",
]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
#: Deepest nesting of arrays and objects a document may have.
MAX_DEPTH: Final = 100
#: Most segments a path may have (queries expand arrays at every step: 2**depth arms).
MAX_PATH_DEPTH: Final = 8

_SEGMENT: Final = re.compile(r"[\w-]+")
_POSITION: Final = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class Path:
    """A validated dotted path, e.g. ``Path(("specs", "cpu"))`` for ``specs.cpu``."""

    segments: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join(self.segments)

    @property
    def prefixes(self) -> tuple[Path, ...]:
        """The proper prefixes, shortest first: ``a``, ``a.b`` for ``a.b.c``."""
        return tuple(Path(self.segments[:i]) for i in range(1, len(self.segments)))

    def overlaps(self, other: Path) -> bool:
        """True when one path is the other or a prefix of it."""
        n = min(len(self.segments), len(other.segments))
        return self.segments[:n] == other.segments[:n]


def parse_path(raw: object, *, where: str = "filter") -> Path:
    """Validate a dotted path; :class:`InvalidQueryError` naming the problem if bad."""
    if not isinstance(raw, str) or not raw:
        raise InvalidQueryError(
            f"bad path {short_repr(raw)} in {where}: a path is a non-empty string such as "
            "'specs.cpu'"
        )
    segments = raw.split(".")
    if len(segments) > MAX_PATH_DEPTH:
        raise InvalidQueryError(
            f"bad path {short_repr(raw)} in {where}: at most {MAX_PATH_DEPTH} segments are "
            "supported"
        )
    for segment in segments:
        if not segment:
            raise InvalidQueryError(f"bad path {short_repr(raw)} in {where}: empty segment")
        if segment.startswith("$"):
            raise InvalidQueryError(
                f"bad path {short_repr(raw)} in {where}: {short_repr(segment)} is an "
                "operator, not a field; "
                "operators go inside a field's dict, e.g. {'price': {'$lt': 10}}"
            )
        if _POSITION.fullmatch(segment):
            raise InvalidQueryError(
                f"bad path {short_repr(raw)} in {where}: array positions "
                f"({short_repr(segment)}) are not "
                "supported; a path into an array applies to every element"
            )
        if not _SEGMENT.fullmatch(segment):
            raise InvalidQueryError(
                f"bad path {short_repr(raw)} in {where}: segment {short_repr(segment)} may "
                "hold only "
                "letters, digits, '_' and '-'"
            )
    return Path(tuple(segments))


def kind(value: object) -> str:
    """The JSON kind of a checked value (``bool`` is not a number)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def json_equal(a: object, b: object) -> bool:
    """Equality of JSON values: same kind, numbers by value, objects regardless of key order."""
    ka = kind(a)
    if ka != kind(b):
        return False
    if ka == "array":
        assert isinstance(a, list) and isinstance(b, list)
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if ka == "object":
        assert isinstance(a, dict) and isinstance(b, dict)
        return a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    return a == b


def check_value(
    value: object,
    where: str,
    error: type[MultistoreError],
    *,
    depth: int = 0,
) -> None:
    """Raise ``error`` (naming ``where``) unless ``value`` is a storable JSON value."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise error(f"{where}: integer {short_repr(value)} is outside the 64-bit range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise error(
                f"{where}: {short_repr(value)} is not a JSON number (NaN and Infinity are not)"
            )
        return
    if isinstance(value, str):
        _check_string(value, where, error)
        return
    if depth >= MAX_DEPTH:
        raise error(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_value(item, f"{where}[{i}]", error, depth=depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise error(f"{where}: key {short_repr(key)} is not a string")
            if key.startswith("$"):
                raise error(
                    f"{where}: key {short_repr(key)} starts with '$', which marks "
                    "operators; rename the field"
                )
            _check_string(key, f"{where}: key", error)
            check_value(item, f"{where}.{key}", error, depth=depth + 1)
        return
    raise error(
        f"{where}: {type(value).__name__} is not a JSON type "
        "(use None, bool, int, float, str, list or dict)"
    )


def _check_string(text: str, where: str, error: type[MultistoreError]) -> None:
    if "\x00" in text:
        raise error(f"{where}: strings may not contain NUL (\\x00)")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise error(
                f"{where}: {short_repr(text)} is not valid Unicode (lone surrogate)"
            ) from None


def copy_value(value: Any) -> Any:
    """A deep copy of a JSON value (faster than :func:`copy.deepcopy`)."""
    if isinstance(value, dict):
        return {k: copy_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_value(v) for v in value]
    return value


def encode(value: Mapping[str, Any] | Any, *, positional_floats: bool = False) -> str:
    """Compact JSON text of a checked value.

    ``positional_floats`` writes floats without an exponent (``1e+20`` becomes
    ``100000000000000000000.0``): PostgreSQL stores numbers as ``numeric`` and would
    give ``1e+20`` back as the integer ``100000000000000000000``.
    """
    if positional_floats and _has_exponent_float(value):
        return _encode_positional(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _has_exponent_float(value: Any) -> bool:
    if isinstance(value, float):
        return value != 0.0 and not 1e-4 <= abs(value) < 1e16
    if isinstance(value, dict):
        return any(_has_exponent_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_exponent_float(v) for v in value)
    return False


def _encode_positional(value: Any) -> str:
    if isinstance(value, float):
        text = format(Decimal(repr(value)), "f")
        return text if "." in text else f"{text}.0"
    if isinstance(value, dict):
        items = (f"{_encode_positional(k)}:{_encode_positional(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_encode_positional(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)
