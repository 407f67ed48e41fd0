"""2PC under the schedule explorer (see tests/explore/tpc.py for the invariants)."""

from __future__ import annotations

import pytest

from multistore.lab.explore import Faults
from tests.explore.conftest import Explorer
from tests.explore.tpc import transfers, transfers_on

#: A whole exploration, not one schedule: thousands of schedules take minutes.
pytestmark = pytest.mark.timeout(1800)


def test_tpc_sqlite(explorer: Explorer) -> None:
    report = explorer(transfers, 2000, Faults.all())
    assert report.replayed or report.faults > 0


@pytest.mark.soak
def test_tpc_sqlite_soak(explorer: Explorer) -> None:
    explorer(transfers, 0, Faults.all())


@pytest.mark.server
def test_tpc_postgres_mariadb(explorer: Explorer, postgres_url: str, mariadb_url: str) -> None:
    """Real PREPARE TRANSACTION and XA: the same scenario, 200 schedules on real time."""
    # Short statement timeouts: two coordinators moving money both ways deadlock across
    # the two servers, which only a timeout breaks.
    urls = {"a": f"{postgres_url}?timeout=2", "b": f"{mariadb_url}?timeout=2"}
    report = explorer(transfers_on(urls), 200, Faults.all(), virtual=False)
    assert report.replayed or report.faults > 0
