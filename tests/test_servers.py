"""The lab's launchers start real servers, and the TCP proxy injects real faults."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pymysql
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from multistore.lab import _process
from multistore.lab.proxy import TcpProxy
from multistore.lab.servers import (
    InfluxDBServer,
    MariaDBServer,
    PostgresServer,
    RedisServer,
    ServerStartError,
    free_port,
)
from multistore.urls import parse_url

REPO = Path(__file__).resolve().parent.parent

ProxyFactory = Callable[[str, int], TcpProxy]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.05)


def redis_client(port: int, *, socket_timeout: float = 5.0) -> redis.Redis:
    """A client that does not retry, so each fault shows on the first command."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
    )


# -- each server is real: a write read back through its own client --------------------


@pytest.mark.server
def test_postgres_write_read_and_prepared_transactions(postgres_url: str) -> None:
    url = parse_url(postgres_url)
    assert url.scheme == "postgresql" and url.port is not None
    conninfo = f"host={url.host} port={url.port} user=postgres dbname={url.database}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t VALUES (1, 'hello')")
        assert conn.execute("SELECT v FROM t WHERE id = 1").fetchall() == [("hello",)]
        # the session server turns fsync off (tests/fix_servers.py says why)
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
    # Two-phase commit needs max_prepared_transactions > 0.
    with psycopg.connect(conninfo) as conn:
        conn.tpc_begin(conn.xid(1, "lab-test", "branch"))
        conn.execute("INSERT INTO t VALUES (2, 'prepared')")
        conn.tpc_prepare()
        conn.tpc_commit()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)


@pytest.mark.server
def test_postgres_keeps_port_and_data_across_stop_start(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    database = parse_url(postgres_url).database
    assert database is not None
    postgres_server.execute("CREATE TABLE kept (v int)", database=database)
    postgres_server.execute("INSERT INTO kept VALUES (42)", database=database)
    port, old_pid = postgres_server.port, postgres_server.pid
    postgres_server.stop()
    try:
        assert not postgres_server.is_running()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(postgres_url, connect_timeout=2)
    finally:
        postgres_server.start()
    assert postgres_server.port == port and postgres_server.pid != old_pid
    assert postgres_server.execute("SELECT v FROM kept", database=database) == [(42,)]


@pytest.mark.server
def test_postgres_standby_replicates_a_row(postgres_server: PostgresServer) -> None:
    database = parse_url(postgres_server.create_database()).database
    assert database is not None
    postgres_server.execute("CREATE TABLE r (v text)", database=database)
    standby = PostgresServer.standby_of(postgres_server)
    try:
        assert standby.port != postgres_server.port
        assert standby.execute("SELECT pg_is_in_recovery()") == [(True,)]
        postgres_server.execute("INSERT INTO r VALUES ('replicated')", database=database)

        def arrived() -> bool:
            return standby.execute("SELECT v FROM r", database=database) == [("replicated",)]

        wait_for(arrived)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            standby.execute("INSERT INTO r VALUES ('no')", database=database)
    finally:
        standby.cleanup()


@pytest.mark.server
def test_mariadb_write_read_and_xa(mariadb_url: str) -> None:
    url = parse_url(mariadb_url)
    assert url.scheme == "mariadb" and url.port is not None and url.database
    conn = pymysql.connect(
        host=url.host, port=url.port, user="root", database=url.database, autocommit=True
    )
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
            cur.execute("INSERT INTO t VALUES (1, 'hello')")
            cur.execute("SELECT v FROM t WHERE id = 1")
            assert cur.fetchall() == (("hello",),)
            cur.execute("XA START 'lab-test'")
            cur.execute("INSERT INTO t VALUES (2, 'prepared')")
            cur.execute("XA END 'lab-test'")
            cur.execute("XA PREPARE 'lab-test'")
            cur.execute("XA RECOVER")
            assert [row[3] for row in cur.fetchall()] == [b"lab-test"]
            cur.execute("XA COMMIT 'lab-test'")
            cur.execute("SELECT count(*) FROM t")
            assert cur.fetchone() == (2,)
    finally:
        conn.close()


@pytest.mark.server
def test_redis_write_read(redis_server: RedisServer, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.dbsize() == 1
        redis_server.flushall()
        assert client.dbsize() == 0
    finally:
        client.close()


@pytest.mark.server
def test_falkordb_creates_and_matches_a_node(falkordb_url: str) -> None:
    from falkordb import FalkorDB

    url = parse_url(falkordb_url)
    assert url.scheme == "falkordb" and url.port is not None and url.database
    db = FalkorDB(host=url.host, port=url.port)
    try:
        graph = db.select_graph(url.database)
        graph.query("CREATE (:Person {name: 'Ada'})")
        result = graph.query("MATCH (p:Person) RETURN p.name")
        assert result.result_set == [["Ada"]]
        graph.delete()
    finally:
        db.connection.close()


@pytest.mark.server
def test_influxdb_writes_and_queries_a_point(influxdb_url: str) -> None:
    from influxdb import InfluxDBClient

    url = parse_url(influxdb_url)
    assert url.scheme == "influxdb" and url.port is not None and url.database
    client = InfluxDBClient(host=url.host, port=url.port, database=url.database)
    try:
        point = {
            "measurement": "cpu",
            "tags": {"host": "a"},
            "time": "2024-01-01T00:00:00Z",
            "fields": {"value": 0.5},
        }
        assert client.write_points([point])
        rows = list(client.query('SELECT "value" FROM "cpu"').get_points())
        assert rows == [{"time": "2024-01-01T00:00:00Z", "value": 0.5}]
    finally:
        client.close()


@pytest.mark.server
def test_influxdb_rpc_port_is_not_the_default(influxdb_server: InfluxDBServer) -> None:
    assert influxdb_server.rpc_port != 8088
    assert f"127.0.0.1:{influxdb_server.rpc_port}" in influxdb_server.config_path.read_text()


# -- crash and restart ----------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.mark.server
def test_redis_kill_then_start_answers_again(own_redis: RedisServer) -> None:
    client = redis_client(own_redis.port, socket_timeout=2.0)
    try:
        assert client.ping()
        old_pid = own_redis.pid
        own_redis.kill()
        assert not own_redis.is_running() and own_redis.pid is None
        with pytest.raises(redis.ConnectionError):
            client.ping()
        own_redis.start()
        assert own_redis.pid != old_pid
        assert client.ping()
    finally:
        client.close()


@pytest.mark.server
def test_postgres_prepared_transaction_survives_kill(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    conninfo = postgres_url
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v int)")
    gid = f"lab-kill-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute(f"PREPARE TRANSACTION '{gid}'")
    old_pid = postgres_server.pid
    postgres_server.kill()
    try:
        assert not postgres_server.is_running()
    finally:
        postgres_server.start()
    assert postgres_server.pid != old_pid
    rows = postgres_server.execute("SELECT gid FROM pg_prepared_xacts WHERE gid = %s", [gid])
    assert rows == [(gid,)]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"COMMIT PREPARED '{gid}'")
        assert conn.execute("SELECT v FROM t").fetchall() == [(1,)]


@pytest.mark.server
def test_mariadb_prepared_xa_survives_kill(mariadb_server: MariaDBServer, mariadb_url: str) -> None:
    database = parse_url(mariadb_url).database
    mariadb_server.execute("CREATE TABLE t (v INT) ENGINE=InnoDB", database=database)
    conn = pymysql.connect(
        host="127.0.0.1", port=mariadb_server.port, user="root", database=database
    )
    try:
        with conn.cursor() as cur:
            cur.execute("XA START 'lab-kill'")
            cur.execute("INSERT INTO t VALUES (1)")
            cur.execute("XA END 'lab-kill'")
            cur.execute("XA PREPARE 'lab-kill'")
        mariadb_server.kill()
    finally:
        conn.close()
        mariadb_server.start()
    recovered = mariadb_server.execute("XA RECOVER")
    assert [row[3] for row in recovered] == [b"lab-kill"]
    mariadb_server.execute("XA COMMIT 'lab-kill'")
    assert mariadb_server.execute("SELECT v FROM t", database=database) == [(1,)]


@pytest.mark.server
def test_start_redis_cluster_gives_independent_nodes() -> None:
    from multistore.lab.servers import start_redis_cluster

    nodes = start_redis_cluster(3)
    try:
        assert len({node.port for node in nodes}) == 3
        clients = [redis_client(node.port) for node in nodes]
        clients[0].set("k", "only-on-0")
        assert [c.get("k") for c in clients] == [b"only-on-0", None, None]
        for c in clients:
            c.close()
    finally:
        for node in nodes:
            node.cleanup()


@pytest.mark.server
def test_launchers_work_as_context_managers() -> None:
    with RedisServer(appendonly=False) as server:
        rootdir = server.rootdir
        assert server.is_running()
    assert not server.is_running()
    assert not rootdir.exists()


# -- the TCP proxy ----------------------------------------------------------------------


@pytest.mark.server
def test_proxy_forwards_and_cut_restore(
    redis_server: RedisServer, redis_url: str, tcp_proxy: ProxyFactory
) -> None:
    proxy = tcp_proxy(redis_server.host, redis_server.port)
    client = redis_client(proxy.port, socket_timeout=5.0)
    try:
        assert client.ping()
        client.set("through", "proxy")
        assert client.get("through") == b"proxy"
        wait_for(lambda: proxy.connections == 1, timeout=5)

        proxy.cut()
        assert proxy.connections == 0
        # a connection error, not a timeout (redis.TimeoutError is no ConnectionError)
        with pytest.raises(redis.ConnectionError):
            client.ping()  # the open connection was reset
        with pytest.raises(redis.ConnectionError):
            client.ping()  # and a new one is closed on accept

        proxy.restore()
        assert client.get("through") == b"proxy"
    finally:
        client.close()


def _read_reply(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes (a reply may arrive in pieces)."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.server
def test_proxy_delay_holds_data_each_way_then_delivers_it(
    redis_server: RedisServer, redis_url: str, tcp_proxy: ProxyFactory
) -> None:
    proxy = tcp_proxy(redis_server.host, redis_server.port)
    direct = redis_client(redis_server.port)
    key = f"delayed:{uuid.uuid4().hex}"
    request = f"*3\r\n$3\r\nSET\r\n${len(key)}\r\n{key}\r\n$4\r\nlate\r\n".encode()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10.0) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            assert _read_reply(sock, 7) == b"+PONG\r\n"  # connected, no delay yet
            proxy.delay(2.0)
            sock.sendall(request)
            # on the way there: the server has not seen the write yet
            assert direct.get(key) is None
            # the reply is held: a client with a 0.5 s socket timeout times out
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(64)
            # delayed, not lost: the write reaches the server ...
            wait_for(lambda: direct.get(key) == b"late", timeout=30)
            # ... and its reply is still held on the way back ...
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(64)
            # ... until it arrives intact
            sock.settimeout(30.0)
            assert _read_reply(sock, 5) == b"+OK\r\n"
            proxy.restore()
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            assert _read_reply(sock, 7) == b"+PONG\r\n"
    finally:
        direct.close()


@pytest.mark.server
def test_proxy_blackhole_times_out_then_restore(
    redis_server: RedisServer, redis_url: str, tcp_proxy: ProxyFactory
) -> None:
    proxy = tcp_proxy(redis_server.host, redis_server.port)
    client = redis_client(proxy.port, socket_timeout=0.5)
    try:
        assert client.ping()
        proxy.blackhole()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        # New connections are accepted but get no answer either.
        fresh = redis_client(proxy.port, socket_timeout=0.5)
        try:
            with pytest.raises(redis.TimeoutError):
                fresh.ping()
        finally:
            fresh.close()
        proxy.restore()
        assert redis_client(proxy.port).ping()
    finally:
        client.close()


# -- no silent skips in CI, and missing binaries --------------------------------------


SKIPPING_TEST = """
import pytest

def test_skipped():
    pytest.skip("no server here")

@pytest.mark.xfail(reason="expected", strict=True)
def test_xfail():
    assert False
"""


def _run_inner(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *, ci: bool
) -> pytest.RunResult:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    if ci:
        monkeypatch.setenv("CI", "1")
    else:
        monkeypatch.delenv("CI", raising=False)
    return pytester.runpytest_subprocess("-p", "tests.fix_ci", "-p", "no:cacheprovider", "-rsE")


def test_skip_fails_the_run_in_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_inner=SKIPPING_TEST)
    result = _run_inner(pytester, monkeypatch, ci=True)
    assert result.ret != 0
    result.assert_outcomes(failed=1, xfailed=1)
    result.stdout.fnmatch_lines(["*skipped test in CI*test_skipped*", "*no server here*"])


def test_skip_passes_the_run_outside_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_inner=SKIPPING_TEST)
    result = _run_inner(pytester, monkeypatch, ci=False)
    assert result.ret == 0
    result.assert_outcomes(skipped=1, xfailed=1)


MISSING_BINARY_TEST = """
import pytest
from multistore.lab.servers import RedisServer
from tests.fix_servers import _session_server

@pytest.fixture
def broken_server():
    yield from _session_server(lambda: RedisServer(binary="/nonexistent/redis-server"))

def test_needs_server(broken_server):
    assert broken_server.is_running()
"""


@pytest.mark.parametrize("ci", [False, True], ids=["local", "ci"])
def test_missing_binary_fails_and_names_the_package(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: bool
) -> None:
    # Never a skip, in CI or not: the servers belong to the test set-up.
    pytester.makepyfile(test_inner=MISSING_BINARY_TEST)
    result = _run_inner(pytester, monkeypatch, ci=ci)
    assert result.ret != 0
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*/nonexistent/redis-server not found; install apt package redis-server*make test*"]
    )


# -- start-up failures --------------------------------------------------------------------


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", free_port()))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.server
def test_start_failure_raises_with_the_log_tail(occupied_port: int) -> None:
    server = RedisServer(port=occupied_port)
    try:
        with pytest.raises(ServerStartError, match=r"(?i)already in use"):
            server.start(timeout=30)
        assert not server.is_running()
    finally:
        server.cleanup()


@pytest.mark.server
def test_first_start_moves_off_a_port_taken_meanwhile(
    occupied_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([occupied_port])
    real_free_port = _process.free_port
    monkeypatch.setattr(_process, "free_port", lambda: next(ports, None) or real_free_port())
    server = RedisServer()
    try:
        server.start(timeout=30)
        assert server.port != occupied_port
        assert redis_client(server.port).ping()
    finally:
        server.cleanup()


@pytest.mark.server
def test_a_server_whose_port_is_taken_does_not_pass_for_started(
    redis_server: RedisServer,
) -> None:
    # Another server answers on the port: the new one must not count the other's
    # answers as its own (tests would then kill and restart the wrong server).
    intruder = RedisServer(port=redis_server.port)
    try:
        with pytest.raises(ServerStartError):
            intruder.start(timeout=10)
        assert not intruder.is_running()
        assert redis_server.is_running()
    finally:
        intruder.cleanup()


def _connect_from(source: str, port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5.0, source_address=(source, 0))


def _ping(sock: socket.socket) -> bytes:
    """PING's reply on ``sock``; b"" if the connection was closed or reset."""
    try:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        return _read_reply(sock, 7)
    except OSError:
        return b""


def _ping_from(source: str, port: int) -> bytes:
    """PING through a new connection that leaves from ``source`` (a loopback address)."""
    with _connect_from(source, port) as sock:
        return _ping(sock)


@pytest.mark.server
def test_proxy_cut_from_cuts_only_the_connections_of_those_sources(
    redis_server: RedisServer, redis_url: str, tcp_proxy: ProxyFactory
) -> None:
    proxy = tcp_proxy(redis_server.host, redis_server.port)
    with _connect_from("127.0.0.12", proxy.port) as open_one:
        assert _ping(open_one) == b"+PONG\r\n"
        proxy.cut_from("127.0.0.12")
        assert _ping(open_one) == b""  # the open connection was reset
    assert _ping_from("127.0.0.12", proxy.port) == b""  # a new one is closed on accept
    assert _ping_from("127.0.0.1", proxy.port) == b"+PONG\r\n"  # others go on
    assert _ping_from("127.0.0.13", proxy.port) == b"+PONG\r\n"
    proxy.restore()
    assert _ping_from("127.0.0.12", proxy.port) == b"+PONG\r\n"
