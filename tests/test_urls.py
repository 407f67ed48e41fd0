"""parse_url: allow-list, credentials, typed options, overrides validated again."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from multistore import InvalidURLError, parse_url

NASTY = "a!b@c$d()e*_,/:;=?@ff[]22"


def test_password_with_every_reserved_character_round_trips() -> None:
    url = parse_url(f"postgresql://app:{quote(NASTY, safe='')}@db.example:6543/shop")
    assert url.password == NASTY
    assert url.username == "app"
    assert url.host == "db.example"
    assert url.port == 6543
    assert url.database == "shop"
    again = parse_url(url.render(hide_password=False))
    assert again == url


def test_password_is_hidden_in_repr_and_str() -> None:
    url = parse_url(f"mariadb://root:{quote(NASTY, safe='')}@127.0.0.1/orders")
    assert NASTY not in str(url)
    assert NASTY not in repr(url)
    assert "***" in str(url)


def test_username_is_percent_decoded() -> None:
    url = parse_url("postgresql://us%40er:pw@h/db")
    assert url.username == "us@er"


def test_aliases_and_default_ports() -> None:
    assert parse_url("postgres://h/db").scheme == "postgresql"
    assert parse_url("postgres://h/db").port == 5432
    assert parse_url("mysql://h/db").scheme == "mariadb"
    assert parse_url("redis://h").port == 6379
    assert parse_url("influxdb://h/metrics").port == 8086


def test_file_urls_follow_three_and_four_slashes() -> None:
    assert parse_url("sqlite:///rel/data.db").path == "rel/data.db"
    assert parse_url("sqlite:////abs/data.db").path == "/abs/data.db"
    assert parse_url("sqlite:///:memory:").path == ":memory:"
    assert parse_url("tantivy:///idx").is_file


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("mongodb://h/db", "unknown scheme 'mongodb'"),
        ("not a url", "malformed"),
        ("", "empty"),
        ("sqlite://relative.db", "three slashes"),
        ("postgresql://h:99999/db", "port"),
        ("postgresql://h:abc/db", "port"),
        ("postgresql:///db", "no host"),
        ("redis://h/notanumber", "must be a number"),
        ("postgresql://h/db?pool_max=ten", "must be int"),
        ("postgresql://h/db?bogus=1", "unknown option 'bogus'"),
        ("sqlite:///x.db?pool_max=3", "does not apply"),
        ("postgresql://h/db?pool_min=5&pool_max=2", "exceeds"),
        ("postgresql://h/db?model=nosuch", "not a data model"),
        ("postgresql://u:p#w@h/db", "'#'"),
        ("postgresql://h/db?timeout=-1", "negative"),
    ],
)
def test_bad_urls_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        parse_url(text)
    assert fragment in str(info.value)


def test_typed_query_options() -> None:
    url = parse_url("postgresql://h/db?pool_max=7&connect_timeout=2.5&model=document")
    assert url.options["pool_max"] == 7
    assert url.options["connect_timeout"] == 2.5
    assert url.model == "document"
    assert parse_url("redis://h/0?ssl=yes").options["ssl"] is True


def test_keyword_overrides_replace_fields_and_are_validated_again() -> None:
    base = parse_url("postgresql://app:old@h:5432/db")
    url = parse_url(base, password=NASTY, port="6000", pool_max=3)
    assert url.password == NASTY
    assert url.port == 6000
    assert url.options["pool_max"] == 3
    with pytest.raises(InvalidURLError, match="out of range"):
        parse_url(base, port=70000)
    with pytest.raises(InvalidURLError, match="unknown option"):
        parse_url(base, nosuch=1)
    with pytest.raises(InvalidURLError, match="exceeds"):
        parse_url("postgresql://h/db?pool_max=2", pool_min=9)
    with pytest.raises(InvalidURLError, match="scheme"):
        parse_url(base, scheme="redis")
    with pytest.raises(InvalidURLError, match="host"):
        parse_url(base, host="bad host/with slash")


def test_password_hidden_in_error_for_bad_url() -> None:
    with pytest.raises(InvalidURLError) as info:
        parse_url("postgresql://app:s3cret@h:notaport/db")
    assert "s3cret" not in str(info.value)


def test_an_unencoded_at_sign_in_a_password_works() -> None:
    """The last '@' ends the credentials, so an '@' in a password needs no encoding."""
    url = parse_url("postgresql://app:pa@ss@db.example:5/shop")
    assert (url.username, url.password, url.host, url.port) == ("app", "pa@ss", "db.example", 5)
    assert "pa@ss" not in str(url)


@pytest.mark.parametrize(
    "text", ["sqlite:////abs/shop.db", "sqlite:///rel/shop.db", "quorum:////abs/cluster?nodes=4"]
)
def test_file_urls_render_to_text_that_parses_back(text: str) -> None:
    url = parse_url(text)
    assert url.render() == text
    assert parse_url(url.render()) == url


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("postgress://h/db", "did you mean postgresql://?"),
        ("mysq://h/db", "did you mean mariadb://?"),
        ("redis://h/0?timout=3", "did you mean 'timeout'?"),
        ("postgresql://h/db?sslmod=require", "did you mean 'sslmode'?"),
    ],
)
def test_a_misspelling_names_the_close_match(url: str, fragment: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        parse_url(url)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("url", "takes", "not_listed"),
    [
        ("redis://h/0?colour=1", {"ssl", "timeout", "pool_max", "prefix"}, {"n", "journal_mode"}),
        ("sqlite:///a.db?pool_max=3", {"journal_mode", "create"}, {"sslmode", "peers", "ssl"}),
        ("postgresql://h/db?ssl=true", {"sslmode", "pool_min"}, {"ssl", "create", "vnodes"}),
    ],
)
def test_the_options_listed_are_those_of_the_scheme(
    url: str, takes: set[str], not_listed: set[str]
) -> None:
    with pytest.raises(InvalidURLError) as info:
        parse_url(url)
    listed = set(str(info.value).rsplit(" URLs take: ", 1)[1].split(", "))
    assert takes <= listed
    assert not (not_listed & listed)


def test_rediss_is_redis_over_tls() -> None:
    url = parse_url("rediss://app:secret@cache.example:6380/2")
    assert (url.scheme, url.host, url.port, url.database) == ("redis", "cache.example", 6380, "2")
    assert url.options["ssl"] is True
    assert parse_url(url.render(hide_password=False)) == url
    with pytest.raises(InvalidURLError, match="rediss:// means TLS"):
        parse_url("rediss://h/0?ssl=false")


@pytest.mark.server
def test_rediss_speaks_tls_to_a_real_server(redis_url: str) -> None:
    """The test server speaks plain RESP: redis:// opens, while rediss:// starts a TLS
    handshake that the server cannot answer, so opening fails (refused or timed out)."""
    import asyncio

    from multistore import StoreTimeoutError, StoreUnavailableError, open_store

    async def main() -> None:
        plain = await open_store(redis_url, model="kv")
        await plain.close()
        tls = redis_url.replace("redis://", "rediss://", 1) + "?connect_timeout=2&timeout=2"
        with pytest.raises((StoreUnavailableError, StoreTimeoutError)):
            store = await open_store(tls, model="kv")
            await store.close()

    asyncio.run(main())
