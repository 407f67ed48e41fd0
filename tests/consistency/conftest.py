"""Fixtures of the consistency tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.server),
        pytest.param("mariadb", marks=pytest.mark.server),
    ]
)
def relational_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh relational database: an SQLite file, PostgreSQL, MariaDB."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shop.db'}"
    fixture = "postgres_url" if request.param == "postgresql" else "mariadb_url"
    return str(request.getfixturevalue(fixture))
