"""The 2PC tests' bank fixture: one account table in every kind of participant."""

from __future__ import annotations

from pathlib import Path

import pytest

from multistore.lab.servers import PostgresServer
from tests.consistency.bank import bank_urls


@pytest.fixture
def bank(
    postgres_server: PostgresServer,
    postgres_url: str,
    mariadb_url: str,
    redis_url: str,
    tmp_path: Path,
) -> dict[str, str]:
    """A bank in every kind of 2PC participant: two PostgreSQL databases, MariaDB,
    SQLite and Redis (name -> URL)."""
    return bank_urls(postgres_server, postgres_url, mariadb_url, redis_url, tmp_path)
