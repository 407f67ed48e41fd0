"""A real PostgreSQL streaming-replication cluster for the router tests: a primary and
two hot standbys made with ``pg_basebackup -R``, one database replicated to both."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from multistore.lab.servers import BinaryNotFoundError, PostgresServer, unique_name


@dataclass
class Cluster:
    primary: PostgresServer
    standbys: list[PostgresServer]
    database: str

    @property
    def servers(self) -> list[PostgresServer]:
        return [self.primary, *self.standbys]

    def url(self, server: PostgresServer) -> str:
        return server.url(self.database) + "?connect_timeout=2"

    def sql(self, server: PostgresServer, sql: str) -> list[tuple[object, ...]]:
        return server.execute(sql, database=self.database)


def _wait_connectable(
    server: PostgresServer, database: str, bound: float = 30.0, user: str = "postgres"
) -> None:
    deadline = time.monotonic() + bound
    url = server.url(database).replace("postgres@", f"{user}@", 1)
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)  # polling for the replicated database, bounded above


def create_role(cluster: Cluster, name: str, grants: list[str]) -> None:
    """A login role with ``grants`` (run on the primary, in the cluster's database), once
    every standby has replayed it."""
    cluster.sql(cluster.primary, f"CREATE ROLE {name} LOGIN")
    for grant in grants:
        cluster.sql(cluster.primary, grant)
    for standby in cluster.standbys:
        _wait_connectable(standby, cluster.database, user=name)


def start_cluster() -> Iterator[Cluster]:
    try:
        primary = PostgresServer(extra_conf={"wal_receiver_status_interval": 1})
        primary.start()
    except BinaryNotFoundError as exc:
        pytest.fail(f"{exc} (`make test` installs it as root on Debian)", pytrace=False)
    standbys: list[PostgresServer] = []
    try:
        database = unique_name("rep")
        primary.execute(f'CREATE DATABASE "{database}"')
        standbys = [PostgresServer.standby_of(primary, start=True) for _ in range(2)]
        for standby in standbys:
            _wait_connectable(standby, database)
        yield Cluster(primary, standbys, database)
    finally:
        for server in [primary, *standbys]:
            server.cleanup()
