"""Pure checks shared by the graph backends: names, keys, property values, parameters.

Labels, relationship types and property names end up *inside* the Cypher text
(Cypher cannot bind them as parameters), so they are held to a strict pattern and
always written between backticks; every value travels as a bound parameter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final, Literal, cast

from multistore.errors import InvalidQueryError, InvalidValueError
from multistore.stores._limits import check_count, short_repr

__all__ = [
    "KEY_PROPERTY",
    "MAX_HOPS",
    "MAX_KEY_BYTES",
    "Direction",
    "PropertyValue",
    "arrow",
    "check_cypher",
    "check_direction",
    "check_k",
    "check_key",
    "check_max_hops",
    "check_name",
    "check_params",
    "check_properties",
    "quote",
    "sort_nodes",
]

KEY_PROPERTY: Final = "key"
"""The property that holds a node's key: a node is identified by (label, key)."""

MAX_HOPS: Final = 100
MAX_KEY_BYTES: Final = 1024
"""The longest node key, in UTF-8 bytes (as for search ids)."""
"""The largest ``max_hops`` :meth:`GraphStore.shortest_path` accepts."""

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_NAME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")
_PARAM_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")

Direction = Literal["out", "in", "both"]
Scalar = bool | int | float | str
PropertyValue = Scalar | list[bool] | list[int] | list[float] | list[str]


def check_name(name: object, kind: str = "label") -> str:
    """A label or relationship type: a letter, then letters, digits or ``_``."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidQueryError(
            f"invalid {kind} {short_repr(name)}: use a letter followed by letters, digits or '_' "
            "(at most 128 characters)"
        )
    return name


def _check_property_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidValueError(
            f"invalid property name {short_repr(name)}: use a letter followed by letters, digits "
            "or '_' (at most 128 characters)"
        )
    return name


def check_key(key: object) -> str:
    """A node key: a non-empty string of at most :data:`MAX_KEY_BYTES` bytes of UTF-8,
    without NUL characters or lone surrogates, that neither starts nor ends with
    whitespace."""
    if not isinstance(key, str):
        raise InvalidValueError(f"a node key must be a string, not {type(key).__name__}")
    if not key:
        raise InvalidValueError("a node key must not be empty")
    if len(key) > MAX_KEY_BYTES or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        # FalkorDB's index does not find keys of 4096 bytes or more.
        raise InvalidValueError(
            f"a node key is at most {MAX_KEY_BYTES} bytes of UTF-8: {short_repr(key, 60)}"
        )
    if key[0].isspace() or key[-1].isspace():
        # FalkorDB's index on keys never finds such a key (so a second write would
        # make a second node): every backend refuses it.
        raise InvalidValueError(
            f"a node key must not start or end with whitespace: {short_repr(key)}"
        )
    return _check_text("a node key", key)


def _check_text(where: str, text: str) -> str:
    """``text`` unless it holds NUL or a lone surrogate (UTF-8 cannot encode it; one
    backend refused it with a driver error, the other stored something else)."""
    if "\x00" in text:
        raise InvalidValueError(f"{where}: strings cannot contain NUL characters")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidValueError(
                f"{where}: {short_repr(text)} is not valid Unicode (lone surrogate)"
            ) from None
    return text


def _check_scalar(where: str, value: object) -> Scalar:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidValueError(f"{where}: integer {short_repr(value)} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValueError(f"{where}: {value} is not a finite number")
        return value
    if isinstance(value, str):
        return _check_text(where, value)
    raise InvalidValueError(
        f"{where}: a {type(value).__name__} cannot be stored; use None, bool, int, float, "
        "str or a list of one of these"
    )


def _check_property(where: str, value: object) -> PropertyValue | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        items = [_check_scalar(where, item) for item in cast(list[object], value)]
        kinds = {_kind(item) for item in items}
        if len(kinds) > 1 and kinds != {"int", "float"}:
            raise InvalidValueError(
                f"{where}: a list must hold one kind of value, not {sorted(kinds)}"
            )
        return cast(PropertyValue, items)
    return _check_scalar(where, value)


def _kind(value: Scalar) -> str:
    return type(value).__name__


def check_properties(
    properties: Mapping[str, object] | None, what: str, key: str | None = None
) -> dict[str, PropertyValue | None]:
    """Check a property map; ``None`` values mean "remove / leave absent".

    For a node, ``key`` is its key: a ``"key"`` entry must repeat it (and is dropped).
    """
    if properties is None:
        return {}
    if not isinstance(properties, Mapping):
        raise InvalidValueError(f"{what}: properties must be a dict, not {type(properties)}")
    result: dict[str, PropertyValue | None] = {}
    for name, value in properties.items():
        prop = _check_property_name(name)
        if prop == KEY_PROPERTY:
            if key is None or value != key:
                raise InvalidValueError(
                    f"{what}: the property {short_repr(KEY_PROPERTY)} is the node key "
                    + (
                        "and cannot be set on a relationship"
                        if key is None
                        else f"({short_repr(key)})"
                    )
                )
            continue
        result[prop] = _check_property(f"{what}, property {short_repr(prop)}", value)
    return result


def check_direction(direction: object) -> Direction:
    if direction not in ("out", "in", "both"):
        raise InvalidQueryError(
            f"direction must be 'out', 'in' or 'both', not {short_repr(direction)}"
        )
    return direction


def check_k(k: object) -> int:
    return check_count(k, "k")


def check_max_hops(max_hops: object) -> int:
    if isinstance(max_hops, bool) or not isinstance(max_hops, int) or not 1 <= max_hops <= MAX_HOPS:
        raise InvalidQueryError(
            f"max_hops must be an integer in 1..{MAX_HOPS}, not {short_repr(max_hops)}"
        )
    return max_hops


def _check_param(where: str, value: object, strict: bool, depth: int = 0) -> object:
    if depth > 32:
        raise InvalidValueError(f"{where}: nested too deeply")
    if value is None:
        return None
    if isinstance(value, list | tuple):
        items = cast(list[object], value)
        return [_check_param(where, item, strict, depth + 1) for item in items]
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for name, item in cast(Mapping[object, object], value).items():
            if not isinstance(name, str) or not name or "`" in name or "\x00" in name:
                raise InvalidValueError(f"{where}: map key {short_repr(name)} is not allowed")
            out[_check_text(where, name)] = _check_param(where, item, strict, depth + 1)
        return out
    if strict or isinstance(value, bool | int | float | str):
        return _check_scalar(where, value)
    return value  # another type (a date …): the driver decides


def check_cypher(cypher: object) -> str:
    """A raw Cypher statement: a non-empty string UTF-8 can encode, without NUL."""
    if not isinstance(cypher, str) or not cypher.strip():
        raise InvalidQueryError("query() needs a non-empty Cypher string")
    try:
        return _check_text("the Cypher statement", cypher)
    except InvalidValueError as exc:
        raise InvalidQueryError(exc.message) from None


def check_params(params: Mapping[str, object] | None, *, strict: bool) -> dict[str, Any]:
    """Check query parameters. Names must be identifiers; lists and maps nest at most 32
    deep; numbers and strings are held to what every backend stores. With ``strict``,
    values must be None, bool, int, float, str, lists and string-keyed maps of these
    (what every backend can bind); otherwise other types go to the driver unchecked."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise InvalidQueryError(f"query parameters must be a dict, not {type(params).__name__}")
    result: dict[str, Any] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not _PARAM_RE.fullmatch(name):
            raise InvalidQueryError(f"invalid query parameter name {short_repr(name)}")
        result[name] = _check_param(f"parameter ${name}", value, strict)
    return result


def quote(name: str) -> str:
    """A checked name as a Cypher identifier (backticks; names never contain one)."""
    return f"`{name}`"


def sort_nodes(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nodes in a stable order: by key, then label."""
    return sorted(nodes, key=lambda n: (str(n.get(KEY_PROPERTY, "")), str(n.get("_label", ""))))


def arrow(rel_type: str | None, direction: Direction, var: str = "", hops: str = "") -> str:
    """The relationship part of a pattern, e.g. ``-[r:`FOLLOWS`]->``."""
    inner = var + (f":{quote(rel_type)}" if rel_type is not None else "") + hops
    if direction == "out":
        return f"-[{inner}]->"
    if direction == "in":
        return f"<-[{inner}]-"
    return f"-[{inner}]-"
