"""URL fuzz: a password never shows, whatever the URL looks like.

Passwords are built from random tokens (``Q`` and nine letters or digits, which no
message holds by chance) joined by reserved characters, and written into URLs of
every scheme raw, percent-encoded or half-encoded, next to good and bad hosts,
ports, databases and options. Whatever becomes of a URL — parsed, refused, opened
against a port where nothing listens, or named in ``multistore status`` — no token
may appear in a message, ``repr``, problem body, chained exception, log record or
CLI output.
"""

from __future__ import annotations

import asyncio
import json
import logging
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from multistore.cli._app import app
from multistore.errors import InvalidURLError, MultistoreError
from multistore.lab.servers import free_port
from multistore.stores import open_store
from multistore.urls import FILE_SCHEMES, SERVER_SCHEMES, parse_url

#: Example counts (the run time they add is in the commit that sets them).
PARSE_EXAMPLES = 300
OPEN_EXAMPLES = 30
CLI_EXAMPLES = 8

SCHEMES = sorted(SERVER_SCHEMES | {"postgres", "mysql", "quorum"})
ALL_SCHEMES = sorted(set(SCHEMES) | FILE_SCHEMES)
RESERVED = "/?#@:[]!$&'()*+,;=% \t\"<>\\^`{|}~é\u2028"

tokens = st.text(string.ascii_letters + string.digits, min_size=9, max_size=9).map("Q".__add__)


@st.composite
def passwords(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A password and the tokens it is made of."""
    parts = draw(st.lists(tokens, min_size=1, max_size=4, unique=True))
    seps = draw(st.lists(st.text(RESERVED, max_size=2), min_size=len(parts) + 1))
    text = seps[0] + "".join(p + s for p, s in zip(parts, seps[1:], strict=False))
    return text, parts


def _encode(password: str, how: str) -> str:
    if how == "raw":
        return password
    if how == "encoded":
        return quote(password, safe="")
    return quote(password, safe="/?#@")  # the reserved characters left raw


HOSTS = ["127.0.0.1", "db.example", "[::1]", "bad_host!", ""]


@st.composite
def urls(
    draw: st.DrawFn, schemes: list[str] = ALL_SCHEMES, hosts: list[str] = HOSTS, odd: bool = True
) -> tuple[str, list[str], str, str]:
    """(URL text, password tokens, the password, how it was written)."""
    scheme = draw(st.sampled_from(schemes))
    password, parts = draw(passwords())
    how = draw(
        st.sampled_from(["raw", "encoded", "half"] if odd else ["encoded", "encoded", "raw"])
    )
    user = draw(st.sampled_from(["app", "", "us%40er", "root"]))
    host = draw(st.sampled_from(hosts))
    port = draw(st.sampled_from([":5432", "", ":0", ":99999", ":abc", ":"] if odd else [":5432"]))
    path = draw(st.sampled_from(["/0", "", "/", "/shop", "/a/b", "/%2F"] if odd else ["/0"]))
    query = draw(
        st.sampled_from(
            ["", "?timeout=1", "?model=kv", "?bogus=1", "?pool_max=x", "?&"] if odd else [""]
        )
    )
    text = f"{scheme}://{user}:{_encode(password, how)}@{host}{port}{path}{query}"
    return text, parts, password, how


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    item: BaseException | None = exc
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        yield item
        item = item.__cause__ or item.__context__


def _texts_of(exc: BaseException) -> list[str]:
    texts: list[str] = []
    for item in _chain(exc):
        texts += [str(item), repr(item), *(str(a) for a in item.args)]
        if isinstance(item, MultistoreError):
            texts.append(json.dumps(item.to_problem()))
    return texts


def _assert_hidden(parts: list[str], texts: list[str], context: str) -> None:
    for text in texts:
        for token in parts:
            assert token not in text, f"{context}: password token {token!r} in {text!r}"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            self.lines += _texts_of(record.exc_info[1])


@contextmanager
def _all_log_records() -> Iterator[_Records]:
    handler = _Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@settings(max_examples=PARSE_EXAMPLES, deadline=None, derandomize=True)
@given(urls())
def test_parsing_never_shows_the_password(case: tuple[str, list[str], str, str]) -> None:
    text, parts, password, how = case
    try:
        url = parse_url(text)
    except InvalidURLError as exc:
        _assert_hidden(parts, _texts_of(exc), text)
        return
    _assert_hidden(parts, [str(url), repr(url), url.render()], text)
    assert parse_url(url.render(hide_password=False)) == url
    if how == "encoded" and url.username is not None:
        assert url.password == password  # percent-encoded: any password round-trips


@settings(max_examples=PARSE_EXAMPLES // 3, deadline=None, derandomize=True)
@given(
    st.sampled_from(sorted(FILE_SCHEMES)),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1),
    st.booleans(),
)
def test_file_urls_render_back_to_the_same_path(scheme: str, path: str, absolute: bool) -> None:
    text = f"{scheme}:///{'/' if absolute else ''}{quote(path, safe='')}"
    try:
        url = parse_url(text)
    except InvalidURLError:
        return
    assert url.path == ("/" if absolute else "") + path
    assert parse_url(url.render()) == url


def test_a_raw_slash_in_a_password_names_the_fix() -> None:
    for raw, fix in (("Sec/retPW", "%2F"), ("Sec?retPW", "%3F"), ("Sec#retPW", "%23")):
        try:
            parse_url(f"redis://app:{raw}@127.0.0.1:6379/0")
        except InvalidURLError as exc:
            assert "retPW" not in str(exc) and "Sec" not in str(exc)
            assert f"a password with {raw[3]!r} must be percent-encoded ({fix})" in str(exc)
        else:
            raise AssertionError(f"{raw} parsed")


@settings(
    max_examples=OPEN_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(urls(SCHEMES))
def test_opening_never_shows_the_password(case: tuple[str, list[str], str, str]) -> None:
    """A URL that parses is opened against a port where nothing listens: the error
    (and everything logged meanwhile) still hides the password."""
    _, parts, password, _how = case
    scheme = case[0].split("://", 1)[0]
    port = free_port()
    database = "0" if scheme in ("redis", "falkordb", "quorum") else "shop"
    text = f"{scheme}://app:{quote(password, safe='')}@127.0.0.1:{port}/{database}?timeout=1"
    url = parse_url(text)

    async def attempt() -> None:
        store = await open_store(url, model=_model(scheme))
        await store.close()
        raise AssertionError(f"{scheme} opened on a closed port")

    with _all_log_records() as records:
        try:
            asyncio.run(attempt())
        except MultistoreError as exc:
            _assert_hidden(parts, _texts_of(exc), text)
    _assert_hidden(parts, records.lines, f"log records of {text}")


def _model(scheme: str) -> str:
    return {
        "redis": "kv",
        "postgresql": "document",
        "postgres": "document",
        "mariadb": "relational",
        "mysql": "relational",
        "falkordb": "graph",
        "influxdb": "timeseries",
        "quorum": "widecolumn",
    }[scheme]


_ROLE_OF = {
    "redis": "sessions",
    "postgresql": "profiles",
    "postgres": "orders",
    "mariadb": "orders",
    "mysql": "orders",
    "falkordb": "social",
    "influxdb": "metrics",
    "quorum": "readings",
}


@settings(
    max_examples=CLI_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(urls(SCHEMES, ["127.0.0.1"], odd=False), st.booleans())
def test_status_never_shows_the_password(
    tmp_path: Path, case: tuple[str, list[str], str, str], as_json: bool
) -> None:
    """``multistore status`` with the URL as a role (parsing or not; the server
    unreachable), as a table and as ``--json``."""
    text, parts, _, _ = case
    scheme = text.split("://", 1)[0]
    text = text.replace(":5432", f":{free_port()}")
    config = tmp_path / "multistore.toml"
    config.write_text(
        f'[multistore]\ndata_dir = "data"\n[roles]\n{_ROLE_OF[scheme]} = {json.dumps(text)}\n'
    )
    args = ["status", "-c", str(config)] + (["--json"] if as_json else [])
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    _assert_hidden(parts, [result.stdout, result.stderr], f"status with {text}")
