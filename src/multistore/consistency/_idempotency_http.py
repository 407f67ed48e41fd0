"""The HTTP side of idempotency keys, without I/O: the ``Idempotency-Key`` field parsed
as an RFC 8941 Structured Field string, the request fingerprint, the client scope,
problem details and the headers a replay keeps.

The ASGI middleware (:mod:`._idempotency_asgi`) is built on these.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any, Final

from multistore.errors import (
    IdempotencyInProgressError,
    InvalidIdempotencyKeyError,
    MultistoreError,
)

__all__ = [
    "DEFAULT_PROBLEM_DOCS",
    "HOP_BY_HOP",
    "body_fingerprint",
    "client_from_principal",
    "parse_idempotency_key",
    "parse_sf_string",
    "problem",
    "replayable_headers",
]

Scope = MutableMapping[str, Any]

DEFAULT_PROBLEM_DOCS: Final = "https://multistore.readthedocs.io/en/latest/consistency/idempotency/"
"""The page that explains the idempotency problem types (one section per type, its
anchor the type's slug). Pass ``problem_docs=`` with your API's own page."""

# -- RFC 8941 Structured Field values: an Item whose bare item must be a String -------

_KEY_START: Final = re.compile(r"[a-z*]")
_KEY_REST: Final = re.compile(r"[a-z0-9_\-.*]*")
_TOKEN: Final = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER: Final = re.compile(r"-?([0-9]{1,15})(\.[0-9]{1,3})?")
_BYTES: Final = re.compile(r":[A-Za-z0-9+/=]*:")
_BARE_KEY: Final = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,255}")


class _Parser:
    """A cursor over one field value; each ``parse_*`` consumes what it parses."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, why: str) -> InvalidIdempotencyKeyError:
        return InvalidIdempotencyKeyError(
            f"the Idempotency-Key field {self.text!r:.80} is not a Structured Field "
            f"string (RFC 8941): {why} at position {self.pos}"
        )

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def skip_spaces(self) -> None:
        while self.peek() == " ":
            self.pos += 1

    def string(self) -> str:
        """``"..."`` with ``\\"`` and ``\\\\`` escapes; printable ASCII only."""
        if self.peek() != '"':
            raise self.fail("a string starts with a double quote")
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\":
                escaped = self.peek()
                if escaped not in ('"', "\\") or not escaped:
                    raise self.fail('only \\" and \\\\ may be escaped')
                out.append(escaped)
                self.pos += 1
            elif char == '"':
                return "".join(out)
            elif not " " <= char <= "~":
                raise self.fail(f"character {char!r} is not allowed in a string")
            else:
                out.append(char)
        raise self.fail("the string is not terminated")

    def bare_item(self) -> object:
        char = self.peek()
        if char == '"':
            return self.string()
        for pattern in (_NUMBER, _TOKEN, _BYTES):
            match = pattern.match(self.text, self.pos)
            if match and (pattern is not _NUMBER or char == "-" or char.isdigit()):
                self.pos = match.end()
                return match.group()
        if char == "?" and self.text[self.pos + 1 : self.pos + 2] in ("0", "1"):
            self.pos += 2
            return self.text[self.pos - 1] == "1"
        raise self.fail("expected a string, token, number, byte sequence or boolean")

    def parameters(self) -> None:
        """``;key[=value]`` pairs after the item; parsed to check them, then ignored
        (the draft defines none for this field)."""
        while self.peek() == ";":
            self.pos += 1
            self.skip_spaces()
            if not _KEY_START.match(self.peek()):
                raise self.fail("a parameter name starts with a lowercase letter or *")
            self.pos = _KEY_REST.match(self.text, self.pos + 1).end()  # type: ignore[union-attr]
            if self.peek() == "=":
                self.pos += 1
                self.bare_item()


def parse_sf_string(value: str) -> str:
    """The string of a field value that is an RFC 8941 Item holding a String
    (``"abc"`` → ``abc``; parameters are checked and ignored). Raises
    :class:`InvalidIdempotencyKeyError` for anything else."""
    parser = _Parser(value)
    parser.skip_spaces()
    if parser.peek() != '"':
        raise parser.fail("the value must be a string in double quotes")
    text = parser.string()
    parser.parameters()
    parser.skip_spaces()
    if parser.pos != len(value):
        raise parser.fail("unexpected characters after the string")
    return text


def parse_idempotency_key(values: Sequence[str], *, bare_keys: bool = True) -> str | None:
    """The key of a request's ``Idempotency-Key`` field lines (None when there are
    none). The value is an RFC 8941 string, ``"8e03978e-40d5"`` → ``8e03978e-40d5``.
    With ``bare_keys`` a value without quotes, as Stripe's clients send it, is taken
    whole (visible ASCII without ``"`` or ``\\``): ``abc`` and ``"abc"`` are one key.
    Two field lines are refused: which one the client meant is not known."""
    if not values:
        return None
    if len(values) > 1:
        raise InvalidIdempotencyKeyError(
            f"the request has {len(values)} Idempotency-Key fields; send exactly one"
        )
    value = values[0].strip(" \t")
    if bare_keys and not value.startswith('"'):
        if not _BARE_KEY.fullmatch(value):
            raise InvalidIdempotencyKeyError(
                f"the Idempotency-Key {value!r:.80} is neither a quoted string (RFC 8941) "
                "nor 1 to 255 visible ASCII characters without quotes or backslashes"
            )
        return value
    return parse_sf_string(value)


# -- the request's fingerprint ---------------------------------------------------------

_JSON_TYPE: Final = re.compile(r"application/(?:[\w.+-]+\+)?json", re.ASCII)
_string: Final = json.JSONEncoder(ensure_ascii=False).encode


class _NotCanonical(ValueError):
    """A JSON body with something a canonical form would hide (duplicate names, NaN)."""


class _Number:
    """A JSON number kept as the text it was sent as: two numbers are one only when
    written alike (``0.1`` and ``0.10000000000000001`` are two amounts, though one
    binary float)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _NotCanonical("duplicate member names")
    return obj


def _no_constants(name: str) -> Any:
    raise _NotCanonical(f"{name} is not JSON")


def _canonical(value: Any) -> str:
    """The canonical text of a parsed JSON value: member names sorted, no whitespace,
    strings escaped one way, numbers as they were written."""
    out: list[str] = []
    _write(value, out)
    return "".join(out)


def _write(value: Any, out: list[str]) -> None:
    if isinstance(value, _Number):
        out.append(value.text)
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, name in enumerate(sorted(value)):
            if i:
                out.append(",")
            out.append(_string(name))
            out.append(":")
            _write(value[name], out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:  # True, False, None
        out.append(_LITERALS[value])


_LITERALS: Final = {True: "true", False: "false", None: "null"}


def body_fingerprint(
    body: bytes, content_type: str | None, content_encoding: str | None, *, canonical_json: bool
) -> str:
    """SHA-256 of the request body: of its canonical JSON (sorted names, no
    whitespace, numbers as written) when ``canonical_json`` and the body is
    ``application/json`` (or ``+json``), not content-encoded, valid JSON without
    duplicate member names and whose strings UTF-8 can encode (no lone surrogate
    escape); of the raw bytes otherwise. Two bodies that differ only in whitespace or
    member order then get the same fingerprint, as Stripe compares a request's
    parameters; two that differ in a number's digits never do."""
    if canonical_json and content_type and not content_encoding:
        media = content_type.split(";", 1)[0].strip().lower()
        if _JSON_TYPE.fullmatch(media):
            try:
                data = json.loads(
                    body,
                    object_pairs_hook=_unique_names,
                    parse_constant=_no_constants,
                    parse_float=_Number,
                    parse_int=_Number,
                )
                canonical = _canonical(data).encode()
            except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
                pass  # not canonical JSON: the raw bytes decide
            else:
                return "json:" + hashlib.sha256(canonical).hexdigest()
    return "raw:" + hashlib.sha256(body).hexdigest()


# -- the client scope -------------------------------------------------------------------


def client_from_principal(scope: Scope) -> str | None:
    """The default client scope: the authenticated user an authentication middleware
    put in ``scope["user"]`` (Starlette's ``AuthenticationMiddleware``, FastAPI): its
    ``identity``, or its ``display_name`` when it has no identity (Starlette's
    ``SimpleUser``). None when the request has no authenticated user. Never a
    credential: a retry after a token refresh is the same client."""
    user = scope.get("user")
    if user is None or getattr(user, "is_authenticated", False) is not True:
        return None
    for attribute in ("identity", "display_name"):
        try:
            name = getattr(user, attribute)
        except (NotImplementedError, AttributeError):
            continue
        if isinstance(name, str) and name:
            scoped = "user:" + name
            if len(scoped) > 255:  # the scope's limit: a long name is hashed
                return "user#" + hashlib.sha256(name.encode()).hexdigest()
            return scoped
    return None


# -- problem details --------------------------------------------------------------------


def problem(
    error: MultistoreError, *, docs: str, max_retry_after: float
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """``error`` as an ``application/problem+json`` response (RFC 9457): status,
    headers and body. The ``type`` is the docs page with the error's slug as anchor,
    and ``Link: <docs>; rel="describedby"`` points at the page (as the draft shows).
    A 409 carries ``Retry-After``: the lease left, capped at ``max_retry_after``."""
    status = error.http_status
    body = {**error.to_problem(), "type": f"{docs}#{error.code.slug}", "status": status}
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"link", f'<{docs}>; rel="describedby"; type="text/html"'.encode("latin-1")),
    ]
    if isinstance(error, IdempotencyInProgressError):
        wait = max(1, math.ceil(min(error.retry_after, max_retry_after)))
        headers.append((b"retry-after", str(wait).encode()))
    return status, headers, json.dumps(body).encode()


# -- the headers a replay keeps ---------------------------------------------------------

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""Headers of one connection (RFC 9110 section 7.6.1), never stored or replayed."""


def replayable_headers(
    headers: Iterable[tuple[bytes, bytes]], dropped: frozenset[bytes]
) -> list[list[str]]:
    """The response headers a replay sends again: all but the hop-by-hop ones (and
    those a ``Connection`` header names) and those in ``dropped`` (lowercase)."""
    pairs = [(bytes(name).lower(), bytes(value)) for name, value in headers]
    named = {
        token.strip().lower().encode("latin-1")
        for name, value in pairs
        if name == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    return [
        [name.decode("latin-1"), value.decode("latin-1")]
        for name, value in pairs
        if name not in HOP_BY_HOP and name not in named and name not in dropped
    ]
