"""A JSON encoder for hot paths: ``json.JSONEncoder(...).encode`` without its
per-call setup.

Every ``JSONEncoder.encode`` call builds its C encoder again (about 170 bytecode
instructions around a few microseconds of C work); :func:`encoder` builds it once.
The output is the standard library's, byte for byte (the same C encoder). Circular
references are not tracked on the way: a circular or too deeply nested value raises
``ValueError`` (``JSONEncoder`` would raise ``ValueError`` or ``RecursionError``), as
a value of a type JSON has no form for raises ``TypeError``.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any

__all__ = ["encoder"]


def encoder(
    *,
    sort_keys: bool = False,
    ensure_ascii: bool = True,
    allow_nan: bool = True,
    separators: tuple[str, str] = (",", ":"),
) -> Callable[[Any], str]:
    """A function encoding a value as ``json.JSONEncoder`` with these options would."""
    options = json.JSONEncoder(
        sort_keys=sort_keys,
        ensure_ascii=ensure_ascii,
        allow_nan=allow_nan,
        separators=separators,
        check_circular=False,
    )
    make: Any = getattr(json.encoder, "c_make_encoder", None)  # private, CPython's
    if make is None:  # no C accelerator: the standard path
        return _bounded(options.encode)
    strings = (
        json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    )
    try:
        chunks = make(
            None,  # no circular-reference markers: recursion is bounded instead
            options.default,
            strings,
            None,  # no indent
            options.key_separator,
            options.item_separator,
            sort_keys,
            False,  # skipkeys
            allow_nan,
        )
    except TypeError:  # another signature than CPython 3.11-3.13's
        return _bounded(options.encode)

    def encode(value: Any) -> str:
        try:
            return "".join(chunks(value, 0))
        except RecursionError:
            raise ValueError("the value is circular or nested too deeply for JSON") from None

    return encode


def _bounded(encode: Callable[[Any], str]) -> Callable[[Any], str]:
    def bounded(value: Any) -> str:
        try:
            return encode(value)
        except RecursionError:
            raise ValueError("the value is circular or nested too deeply for JSON") from None

    return bounded
