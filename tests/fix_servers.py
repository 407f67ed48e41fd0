"""Real throwaway servers for tests, and a TCP fault proxy.

Session fixtures (one server of each kind per test session, started on first use and
removed at the end): ``postgres_server``, ``mariadb_server``, ``redis_server``,
``falkordb_server``, ``influxdb_server``, ``redis_cluster`` (six Redis servers in
cluster mode: three primaries with a replica each), ``etcd_cluster`` (three etcd
members), ``patroni_cluster`` (three PostgreSQL members under Patroni, on that etcd)
and ``nats_cluster`` (three NATS servers with clustered JetStream).

Function fixtures: ``postgres_url`` / ``mariadb_url`` / ``influxdb_url`` (URL of a fresh
empty database), ``redis_url`` (db 0 after FLUSHALL), ``falkordb_url`` (a unique graph
name), ``redis_cluster_url`` (the cluster emptied, whole again after any fault), and
``tcp_proxy`` (a factory ``tcp_proxy(host, port) -> TcpProxy``, stopped at the end of
the test).

A test that stops or kills a session server must start it again before it ends (use
``try/finally``); the URL fixtures also restart a server they find stopped.

A missing server binary fails the test with a message naming the binary and its package
(never a skip: `make test` installs the servers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from multistore.lab._etcd import EtcdCluster
from multistore.lab._nats import NatsCluster
from multistore.lab._patroni import PatroniCluster
from multistore.lab._redis_cluster import RedisClusterServers
from multistore.lab.proxy import TcpProxy
from multistore.lab.servers import (
    BinaryNotFoundError,
    FalkorDBServer,
    InfluxDBServer,
    MariaDBServer,
    PostgresServer,
    RedisServer,
    ServerGroup,
    ServerProcess,
    unique_name,
)

_G = TypeVar("_G", bound=ServerGroup)
_S = TypeVar("_S", bound=ServerProcess)


def _missing(exc: BinaryNotFoundError) -> None:
    # Never a skip: the servers are part of the test set-up (`make test` installs them),
    # so a missing binary is a broken set-up and the run says how to mend it.
    pytest.fail(f"{exc} (`make test` installs it as root on Debian)", pytrace=False)


def _session_server(factory: Callable[[], _G]) -> Iterator[_G]:
    try:
        server = factory()
    except BinaryNotFoundError as exc:
        _missing(exc)
        raise  # unreachable: _missing always raises
    try:
        server.start()
    except BinaryNotFoundError as exc:
        server.cleanup()
        _missing(exc)
        raise
    except BaseException:
        server.cleanup()
        raise
    try:
        yield server
    finally:
        server.cleanup()


def _running(server: _S) -> _S:
    if not server.is_running():
        server.start()
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL, with ``fsync=off``: every test makes a database (about
    300 files each), so with fsync on a shutdown checkpoint or the start-up after a kill
    fsyncs tens of thousands of files, which on a loaded machine took over a minute and
    failed the next start. The tests kill processes, never the machine, and a killed
    process's writes stay in the page cache, so no crash test depends on fsync. The
    lab's default (and the benchmarks' servers) keep ``fsync=on``."""
    yield from _session_server(lambda: PostgresServer(extra_conf={"fsync": "off"}))


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    yield from _session_server(MariaDBServer)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    yield from _session_server(RedisServer)


@pytest.fixture(scope="session")
def falkordb_server() -> Iterator[FalkorDBServer]:
    yield from _session_server(FalkorDBServer)


@pytest.fixture(scope="session")
def influxdb_server() -> Iterator[InfluxDBServer]:
    yield from _session_server(InfluxDBServer)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    yield from _session_server(RedisClusterServers)


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    yield from _session_server(EtcdCluster)


@pytest.fixture(scope="session")
def nats_cluster() -> Iterator[NatsCluster]:
    yield from _session_server(NatsCluster)


@pytest.fixture(scope="session")
def patroni_cluster(etcd_cluster: EtcdCluster) -> Iterator[PatroniCluster]:
    """Three Patroni members; a test that kills one starts it again and waits with
    ``wait_streaming()`` before it ends."""
    yield from _session_server(lambda: PatroniCluster(etcd=etcd_cluster))


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """A ``redis+cluster://`` URL (every node a seed) of the session cluster, emptied;
    nodes a test killed are started again first."""
    redis_cluster.start()
    redis_cluster.flushall()
    return redis_cluster.url()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """URL of a fresh, empty PostgreSQL database."""
    return _running(postgres_server).create_database()


@pytest.fixture
def mariadb_url(mariadb_server: MariaDBServer) -> str:
    """URL of a fresh, empty MariaDB database."""
    return _running(mariadb_server).create_database()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of Redis db 0, emptied (FLUSHALL) first."""
    server = _running(redis_server)
    server.flushall()
    return server.url(0)


@pytest.fixture
def falkordb_url(falkordb_server: FalkorDBServer) -> str:
    """URL of a graph with a fresh unique name on the session FalkorDB server."""
    return _running(falkordb_server).url(unique_name("g"))


@pytest.fixture
def influxdb_url(influxdb_server: InfluxDBServer) -> str:
    """URL of a fresh, empty InfluxDB database."""
    return _running(influxdb_server).create_database()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str, int], TcpProxy]]:
    """Factory: ``tcp_proxy(host, port)`` starts a :class:`TcpProxy` to that address."""
    proxies: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy(host, port)
        proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()
