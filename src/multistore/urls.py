"""Store URLs: one parser, a scheme allow-list and typed query options.

A store is named by a URL whose scheme picks the backend::

    sqlite:///relative/path.db        sqlite:////absolute/path.db   sqlite:///:memory:
    tantivy:///path/to/index          ladybug:///path/to/db         duckdb:///path.duckdb
    redis://[:password@]host:port/0   rediss://… (redis over TLS: ssl=true)
    falkordb://host:port/graphname
    postgresql://user:pass@host:port/dbname?pool_max=10
    mariadb://user:pass@host:port/dbname
    influxdb://user:pass@host:port/dbname

Some schemes take a *seed list*: several ``host:port`` pairs separated by commas, as
libpq's multi-host strings do (``postgresql://u@h1:5432,h2:5433/db``)::

    redis+cluster://[:password@]h1:7000,h2:7001,h3:7002/?prefix=shop:
    postgresql://user:pass@h1:5432,h2:5432,h3:5432/db?target_session_attrs=read-write
    etcd://h1:2379,h2:2379,h3:2379/?prefix=/multistore/&ttl=10
    nats://h1:4222,h2:4222,h3:4222

:attr:`StoreURL.hosts` holds every ``(host, port)`` of the list in the order written
(a host without a port gets the scheme's default); :attr:`StoreURL.host` and
:attr:`StoreURL.port` are the first. A seed list on a scheme that names one server,
an empty entry (``h1,,h2``) or the same address twice is an
:class:`~multistore.errors.InvalidURLError`.

File schemes follow SQLAlchemy's convention: three slashes and a relative path,
four slashes for an absolute one. Credentials are percent-decoded, so a password
may hold any character once encoded (``quote(password, safe="")``).

Query options are checked against a table of known names and types; an unknown
option or a value of the wrong type is an :class:`~multistore.errors.InvalidURLError`.
Keyword overrides given to :func:`parse_url` replace URL fields and the result is
validated again, as psycopg's ``make_conninfo`` does.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from multistore.errors import InvalidURLError

__all__ = [
    "FILE_SCHEMES",
    "MIXED_SCHEMES",
    "MULTI_HOST_SCHEMES",
    "SCHEMES",
    "SERVER_SCHEMES",
    "OptionValue",
    "StoreURL",
    "is_usable_path",
    "parse_url",
    "redact_url",
]

#: Scheme aliases that users write, mapped to the canonical scheme.
_ALIASES: Final[Mapping[str, str]] = {
    "postgres": "postgresql",
    "mysql": "mariadb",
}
#: Schemes that mean their base scheme over TLS, as redis-py reads them: ``rediss://``
#: is ``redis://…?ssl=true``.
_TLS_SCHEMES: Final[Mapping[str, str]] = {"rediss": "redis"}

#: Schemes whose "location" is a path on this machine.
FILE_SCHEMES: Final[frozenset[str]] = frozenset({"sqlite", "tantivy", "ladybug", "duckdb"})
#: Schemes that name a server by host and port.
SERVER_SCHEMES: Final[frozenset[str]] = frozenset(
    {"redis", "redis+cluster", "postgresql", "mariadb", "falkordb", "influxdb", "etcd", "nats"}
)
#: Server schemes whose URL may name several servers (a seed list, ``h1:p1,h2:p2``).
MULTI_HOST_SCHEMES: Final[frozenset[str]] = frozenset(
    {"redis+cluster", "postgresql", "etcd", "nats"}
)
#: Schemes that name either a folder (``quorum:///dir`` — embedded nodes) or servers
#: (``quorum://host:port/0?peers=…`` — Redis nodes).
MIXED_SCHEMES: Final[frozenset[str]] = frozenset({"quorum"})
#: The allow-list of canonical schemes.
SCHEMES: Final[frozenset[str]] = FILE_SCHEMES | SERVER_SCHEMES | MIXED_SCHEMES

_DEFAULT_PORTS: Final[Mapping[str, int]] = {
    "redis": 6379,
    "redis+cluster": 6379,
    "postgresql": 5432,
    "mariadb": 3306,
    "falkordb": 6379,
    "influxdb": 8086,
    "quorum": 6379,
    "etcd": 2379,
    "nats": 4222,
}

_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}

#: Known query options and their types. Options apply to every scheme unless
#: listed in ``_OPTION_SCHEMES``.
_OPTION_TYPES: Final[Mapping[str, type]] = {
    "model": str,
    "timeout": float,
    "connect_timeout": float,
    "pool_min": int,
    "pool_max": int,
    "prefix": str,
    "sslmode": str,
    "journal_mode": str,
    "synchronous": str,
    "create": bool,
    "ssl": bool,
    "nodes": int,
    "n": int,
    "r": str,
    "w": str,
    "vnodes": int,
    "peers": str,
    "names": str,
    "sloppy": bool,
    "node_id": str,
    "read_from": str,
    "target_session_attrs": str,
    "wait_replicas": int,
    "wait_timeout": float,
    "ttl": float,
}
_OPTION_SCHEMES: Final[Mapping[str, frozenset[str]]] = {
    "pool_min": frozenset({"postgresql", "mariadb", "redis", "redis+cluster", "falkordb"}),
    "pool_max": frozenset({"postgresql", "mariadb", "redis", "redis+cluster", "falkordb"}),
    "sslmode": frozenset({"postgresql"}),
    "target_session_attrs": frozenset({"postgresql"}),
    "wait_replicas": frozenset({"redis+cluster"}),
    "wait_timeout": frozenset({"redis+cluster"}),
    "ttl": frozenset({"etcd"}),
    "journal_mode": frozenset({"sqlite"}),
    "create": frozenset({"sqlite", "duckdb", "influxdb"}),
    "synchronous": frozenset({"sqlite"}),
    "ssl": frozenset({"redis", "falkordb", "influxdb", "mariadb"}),
    "nodes": frozenset({"quorum"}),
    "n": frozenset({"quorum"}),
    "r": frozenset({"quorum"}),
    "w": frozenset({"quorum"}),
    "vnodes": frozenset({"quorum"}),
    "peers": frozenset({"quorum"}),
    "names": frozenset({"quorum"}),
    "sloppy": frozenset({"quorum"}),
    "node_id": frozenset({"quorum"}),
    "read_from": frozenset({"quorum"}),
}
_MODELS: Final[frozenset[str]] = frozenset(
    {"kv", "document", "search", "relational", "graph", "widecolumn", "timeseries"}
)
OptionValue = str | int | float | bool


@dataclass(frozen=True)
class StoreURL:
    """A parsed, validated store URL. Build one with :func:`parse_url`."""

    scheme: str
    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None
    """Server schemes: the database/db index/graph name. File schemes: the path."""
    options: Mapping[str, OptionValue] = field(default_factory=dict)
    hosts: tuple[tuple[str, int], ...] = ()
    """Every ``(host, port)`` the URL names, in order; ``host``/``port`` are the first.
    Empty for file URLs."""

    def __post_init__(self) -> None:
        if not self.hosts and self.host is not None and self.port is not None:
            object.__setattr__(self, "hosts", ((self.host, self.port),))

    @property
    def libpq_host(self) -> str | None:
        """The hosts as libpq's ``host`` parameter takes them (``h1,h2``)."""
        return ",".join(h for h, _ in self.hosts) if self.hosts else self.host

    @property
    def libpq_port(self) -> str | None:
        """The ports as libpq's ``port`` parameter takes them (``5432,5433``)."""
        return ",".join(str(p) for _, p in self.hosts) if self.hosts else None

    @property
    def target_session_attrs(self) -> str | None:
        """libpq's ``target_session_attrs`` (``read-write``, ``primary``, ``any`` …):
        which of a seed list's servers a connection may settle on."""
        value = self.options.get("target_session_attrs")
        return None if value is None else str(value)

    @property
    def is_file(self) -> bool:
        """True when the URL names a path on this machine rather than a server."""
        return self.scheme in FILE_SCHEMES or (self.scheme in MIXED_SCHEMES and not self.host)

    @property
    def path(self) -> str:
        """The file path of a file scheme (``:memory:`` for an in-memory store)."""
        if not self.is_file:
            raise InvalidURLError(f"{self.scheme}:// URLs name a server, not a file path")
        return self.database or ":memory:"

    @property
    def model(self) -> str | None:
        """The data model asked for with ``?model=``, if any."""
        value = self.options.get("model")
        return str(value) if value is not None else None

    def option(self, name: str, default: OptionValue | None = None) -> OptionValue | None:
        return self.options.get(name, default)

    def int_option(self, name: str, default: int) -> int:
        value = self.options.get(name, default)
        assert isinstance(value, int) and not isinstance(value, bool)
        return value

    def float_option(self, name: str, default: float) -> float:
        value = self.options.get(name, default)
        assert isinstance(value, int | float) and not isinstance(value, bool)
        return float(value)

    def str_option(self, name: str, default: str) -> str:
        return str(self.options.get(name, default))

    def render(self, *, hide_password: bool = True) -> str:
        """The URL as a string; the password is shown as ``***`` unless asked for."""
        netloc = ""
        if self.username is not None or self.password is not None:
            user = quote(self.username or "", safe="")
            if self.password is not None:
                pw = "***" if hide_password else quote(self.password, safe="")
                user = f"{user}:{pw}"
            netloc = f"{user}@"
        if self.hosts:
            netloc += ",".join(_render_host(h, p) for h, p in self.hosts)
        elif self.host is not None:
            netloc += _render_host(self.host, self.port)
        db = self.database or ""
        if self.is_file:
            # Three slashes, then the path: "/abs" gives the four slashes of an absolute one.
            text = f"{self.scheme}:///{_quote_path(db)}"
        else:
            text = (
                f"{self.scheme}://{netloc}/{quote(db, safe='')}"
                if db
                else (f"{self.scheme}://{netloc}")
            )
        if self.options:
            query = "&".join(f"{k}={_format_option(v)}" for k, v in sorted(self.options.items()))
            text += f"?{query}"
        return text

    def __str__(self) -> str:
        return self.render()


def _render_host(host: str, port: int | None) -> str:
    text = f"[{host}]" if ":" in host else host
    return text if port is None else f"{text}:{port}"


def _quote_path(path: str) -> str:
    """A file path as URL text that parses back to it: only '%', '?', '#' and control
    characters are percent-encoded, so the path stays readable."""
    return "".join(
        f"%{ord(c):02X}" if c in "%?#" or ord(c) < 0x20 or ord(c) == 0x7F else c for c in path
    )


def _format_option(value: OptionValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return quote(str(value), safe="")


def _options_for(scheme: str) -> list[str]:
    """The query options a ``scheme://`` URL takes, sorted."""
    return sorted(
        name
        for name in _OPTION_TYPES
        if name not in _OPTION_SCHEMES or scheme in _OPTION_SCHEMES[name]
    )


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _convert_option(scheme: str, name: str, raw: object, source: str) -> OptionValue:
    kind = _OPTION_TYPES.get(name)
    allowed = _OPTION_SCHEMES.get(name)
    if kind is None or (allowed is not None and scheme not in allowed):
        takes = _options_for(scheme)
        hint = _did_you_mean(name, takes)
        if kind is None:
            problem = f"unknown option {name!r} in {source}"
        else:
            problem = (
                f"option {name!r} does not apply to {scheme}:// URLs "
                f"(only to {', '.join(sorted(allowed or ()))})"
            )
        raise InvalidURLError(f"{problem}; {hint}{scheme}:// URLs take: {', '.join(takes)}")
    try:
        value = _coerce(kind, raw)
    except (TypeError, ValueError):
        raise InvalidURLError(
            f"option {name}={raw!r} in {source} must be {kind.__name__}"
        ) from None
    if name == "model" and value not in _MODELS:
        raise InvalidURLError(
            f"option model={value!r} in {source} is not a data model; "
            f"use one of {', '.join(sorted(_MODELS))}"
        )
    if name in (
        "pool_min",
        "pool_max",
        "timeout",
        "connect_timeout",
        "wait_replicas",
        "wait_timeout",
    ) and (isinstance(value, int | float) and value < 0):
        raise InvalidURLError(f"option {name}={raw!r} in {source} must not be negative")
    return value


def _coerce(kind: type, raw: object) -> OptionValue:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).lower()
        if text in _BOOL_TRUE:
            return True
        if text in _BOOL_FALSE:
            return False
        raise ValueError(raw)
    if isinstance(raw, bool):
        raise TypeError(raw)
    if kind is int:
        if isinstance(raw, float):
            raise TypeError(raw)
        return int(str(raw))
    if kind is float:
        number = float(str(raw))
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(raw)
        return number
    if not isinstance(raw, str):
        raise TypeError(raw)
    return raw


_HOST_RE = re.compile(r"^[A-Za-z0-9._-]+$|^\[?[0-9A-Fa-f:.]+\]?$")


def parse_url(url: str | StoreURL, **overrides: object) -> StoreURL:
    """Parse and validate a store URL.

    ``overrides`` replace fields of the URL: ``host``, ``port``, ``username``,
    ``password``, ``database``, or any query option by name. The result is
    validated again, so an override cannot smuggle in a bad port or option.

    Raises :class:`~multistore.errors.InvalidURLError` naming the problem.
    """
    parsed = url if isinstance(url, StoreURL) else _parse_text(url)
    if not overrides:
        return parsed
    fields: dict[str, object] = {}
    options = dict(parsed.options)
    for key, value in overrides.items():
        if key in ("host", "port", "username", "password", "database", "hosts"):
            fields[key] = value
        elif key == "scheme":
            raise InvalidURLError("the scheme cannot be overridden; write another URL")
        else:
            options[key] = _convert_option(parsed.scheme, key, value, "keyword overrides")
    if len(parsed.hosts) > 1 and ("host" in fields or "port" in fields):
        raise InvalidURLError(
            f"the URL names {len(parsed.hosts)} servers; override them all with hosts=[…] "
            "rather than host= or port="
        )
    if "hosts" in fields:
        fields["hosts"] = _check_hosts_override(parsed.scheme, fields["hosts"])
        fields["host"], fields["port"] = fields["hosts"][0]  # type: ignore[index]
    if "port" in fields and fields["port"] is not None:
        fields["port"] = _check_port(fields["port"], "keyword overrides")
    if "host" in fields and fields["host"] is not None:
        host = fields["host"]
        if not isinstance(host, str) or not _HOST_RE.match(host):
            raise InvalidURLError(f"host override {host!r} is not a host name or address")
    for key in ("username", "password", "database"):
        if key in fields and fields[key] is not None and not isinstance(fields[key], str):
            raise InvalidURLError(f"{key} override must be a string")
    if ("host" in fields or "port" in fields) and "hosts" not in fields:
        host = fields.get("host", parsed.host)
        port = fields.get("port", parsed.port)
        fields["hosts"] = ((host, port),) if host is not None and port is not None else ()
    result = dataclasses.replace(parsed, options=options, **fields)  # type: ignore[arg-type]
    _validate(result, "keyword overrides")
    return result


def _check_hosts_override(scheme: str, value: object) -> tuple[tuple[str, int], ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise InvalidURLError("hosts override must be a non-empty list of (host, port) pairs")
    hosts: list[tuple[str, int]] = []
    for item in value:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise InvalidURLError(f"hosts override entry {item!r} is not a (host, port) pair")
        host, port = item
        if not isinstance(host, str) or not _HOST_RE.match(host):
            raise InvalidURLError(f"host override {host!r} is not a host name or address")
        hosts.append((host.strip("[]"), _check_port(port, "keyword overrides")))
    return _checked_seed_list(scheme, hosts, "keyword overrides")


def _checked_seed_list(
    scheme: str, hosts: list[tuple[str, int]], source: str
) -> tuple[tuple[str, int], ...]:
    if len(hosts) > 1 and scheme not in MULTI_HOST_SCHEMES:
        raise InvalidURLError(
            f"{scheme}:// names one server, but {source} lists {len(hosts)}; seed lists "
            f"(h1:p1,h2:p2) work with {', '.join(f'{s}://' for s in sorted(MULTI_HOST_SCHEMES))}"
        )
    seen: set[tuple[str, int]] = set()
    for address in hosts:
        if address in seen:
            raise InvalidURLError(
                f"{_render_host(*address)} is listed twice in the hosts of {source}"
            )
        seen.add(address)
    return tuple(hosts)


def _check_port(port: object, source: str) -> int:
    if isinstance(port, bool):
        raise InvalidURLError(f"port {port!r} in {source} is not a number")
    try:
        number = int(str(port))
    except ValueError:
        raise InvalidURLError(f"port {port!r} in {source} is not a number") from None
    if not 0 < number < 65536:
        raise InvalidURLError(f"port {number} in {source} is out of range 1-65535")
    return number


def _parse_text(text: str) -> StoreURL:
    if not isinstance(text, str) or not text.strip():
        raise InvalidURLError("empty store URL; write e.g. sqlite:///data.db")
    text = text.strip()
    if "://" not in text:
        raise InvalidURLError(
            f"malformed store URL {redact_url(text)!r}: expected SCHEME://…, e.g. sqlite:///data.db"
        )
    raw_scheme = text.split("://", 1)[0].lower()
    if raw_scheme in _TLS_SCHEMES:
        plain = _TLS_SCHEMES[raw_scheme]
        parsed = _parse_text(plain + text[len(raw_scheme) :])
        if parsed.options.get("ssl") is False:
            raise InvalidURLError(
                f"{raw_scheme}:// means TLS, but the URL {redact_url(text)!r} says ssl=false; "
                f"write {plain}:// for a plain connection"
            )
        return dataclasses.replace(parsed, options={**parsed.options, "ssl": True})
    scheme = _ALIASES.get(raw_scheme, raw_scheme)
    if scheme not in SCHEMES:
        allowed = ", ".join(sorted(SCHEMES))
        close = difflib.get_close_matches(raw_scheme, sorted({*SCHEMES, *_ALIASES}), n=1)
        hint = f"did you mean {_ALIASES.get(close[0], close[0])}://? " if close else ""
        raise InvalidURLError(f"unknown scheme {raw_scheme!r}; {hint}allowed schemes: {allowed}")
    source = f"URL {redact_url(text)!r}"
    if scheme in FILE_SCHEMES or (
        scheme in MIXED_SCHEMES and text.split("://", 1)[1].startswith("/")
    ):
        return _parse_file(scheme, text, source)
    return _parse_server(scheme, text, source)


def _parse_file(scheme: str, text: str, source: str) -> StoreURL:
    rest = text.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    if not rest.startswith("/"):
        raise InvalidURLError(
            f"malformed {source}: a file URL needs three slashes "
            f"({scheme}:///relative/path or {scheme}:////absolute/path)"
        )
    path = unquote(rest[1:])
    if not path:
        raise InvalidURLError(f"malformed {source}: no path after {scheme}:///")
    if not is_usable_path(path):
        raise InvalidURLError(
            f"malformed {source}: the path holds a NUL character or text this system "
            "cannot use in a file name"
        )
    options = _parse_query(scheme, query, source)
    result = StoreURL(scheme=scheme, database=path, options=options)
    _validate(result, source)
    return result


_ENCODE: Final[Mapping[str, str]] = {"/": "%2F", "?": "%3F", "#": "%23", "[": "%5B", "]": "%5D"}


def _parse_server(scheme: str, text: str, source: str) -> StoreURL:
    rest = text.split("://", 1)[1]
    userinfo, at, _ = rest.rpartition("@")
    if at:
        # A '/', '?' or '#' before the last '@' ends the host part early for every URL
        # parser, and '[' ']' read as an IPv6 host: a user name or password holding
        # one unencoded would be split into host, path and query, and shown in errors.
        # Refuse it before parsing.
        bad = next((c for c in userinfo if c in _ENCODE), None)
        if bad is not None:
            raise InvalidURLError(
                f"malformed {source}: a password with {bad!r} must be percent-encoded "
                f"({_ENCODE[bad]}), as must '/', '?', '#' and '@' in any user name or "
                "password (and an '@' in the path or query)"
            )
    try:
        parts = urlsplit(text)
    except ValueError:
        raise InvalidURLError(
            f"malformed {source}: the host is not a name or an address "
            "(an IPv6 address goes in brackets, e.g. [::1])"
        ) from None
    if parts.fragment:
        raise InvalidURLError(
            f"malformed {source}: unexpected '#'; percent-encode it as %23 in a password"
        )
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    items = hostlist.split(",")
    hosts = _checked_seed_list(
        scheme, [_parse_host(scheme, item, source, len(items) > 1) for item in items], source
    )
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text) if user_text else None
        password = unquote(password_text) if colon else None
    database = unquote(parts.path[1:]) if parts.path.startswith("/") and parts.path != "/" else None
    if database is not None and "/" in database:
        raise InvalidURLError(f"malformed {source}: database name {database!r} contains '/'")
    options = _parse_query(scheme, parts.query, source)
    result = StoreURL(
        scheme=scheme,
        host=hosts[0][0],
        port=hosts[0][1],
        username=username,
        password=password,
        database=database,
        options=options,
        hosts=hosts,
    )
    _validate(result, source)
    return result


def _parse_host(scheme: str, item: str, source: str, listed: bool) -> tuple[str, int]:
    """One ``host[:port]`` (``[v6][:port]``) of a URL's host list."""
    if not item and listed:
        raise InvalidURLError(f"malformed {source}: an empty entry in the list of hosts")
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise InvalidURLError(f"malformed {source}: {item!r} is not [IPv6]:PORT")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_raw = item.partition(":")
        port_text = port_text_raw if colon else None
    if not host:
        raise InvalidURLError(f"malformed {source}: no host (write {scheme}://HOST:PORT/…)")
    if not _HOST_RE.match(host):
        raise InvalidURLError(f"malformed {source}: {host!r} is not a host name or address")
    if port_text is None or port_text == "":
        return host.lower(), _DEFAULT_PORTS[scheme]
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidURLError(f"malformed {source}: port in {item!r} is not a number in 1-65535")
    return host.lower(), int(port_text)


def _parse_query(scheme: str, query: str, source: str) -> dict[str, OptionValue]:
    options: dict[str, OptionValue] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise InvalidURLError(f"malformed query string {query!r} in {source}") from None
    for name, raw in pairs:
        if name in options:
            raise InvalidURLError(f"option {name!r} given twice in {source}")
        options[name] = _convert_option(scheme, name, raw, source)
    return options


def _validate(url: StoreURL, source: str) -> None:
    if url.scheme == "redis+cluster" and url.database not in (None, "0"):
        raise InvalidURLError(
            f"redis database {url.database!r} in {source}: Redis Cluster has only database 0"
        )
    if url.scheme == "redis" and url.database is not None and not url.database.isdigit():
        raise InvalidURLError(
            f"redis database {url.database!r} in {source} must be a number (e.g. /0)"
        )
    pool_min = url.options.get("pool_min")
    pool_max = url.options.get("pool_max")
    if isinstance(pool_min, int) and isinstance(pool_max, int) and pool_min > pool_max:
        raise InvalidURLError(f"pool_min={pool_min} exceeds pool_max={pool_max} in {source}")
    if url.is_file and url.host:
        raise InvalidURLError(f"{url.scheme}:// URLs take a path, not a host, in {source}")


def is_usable_path(path: str) -> bool:
    """True when ``path`` can name a file here: no NUL, and encodable for the OS."""
    if "\x00" in path:
        return False
    try:
        os.fsencode(path)
    except UnicodeError:
        return False
    return True


_SCHEME_HEAD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/{1,2}")


def redact_url(text: str) -> str:
    """``text`` with the user information of a URL in it hidden, for error messages:
    everything between the scheme and the *last* '@' becomes ``user:***`` (the user
    name kept only when it is plain), so a password is hidden whole even when it
    holds unencoded '/', '?', '#' or '@'."""
    userinfo, at, hostpart = text.rpartition("@")
    if not at:
        return text
    match = _SCHEME_HEAD.match(userinfo)
    head = match.group(0) if match else ""
    user, colon, _ = userinfo[len(head) :].partition(":")
    if user and not any(c in user for c in "/?#@"):
        shown = f"{user}:***" if colon else user
    else:
        shown = "***"
    return f"{head}{shown}@{hostpart}"
