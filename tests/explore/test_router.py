"""The router under the schedule explorer (see tests/explore/router.py)."""

from __future__ import annotations

import pytest

from multistore.lab.explore import Faults
from tests.explore.conftest import Explorer
from tests.explore.router import router

#: A whole exploration, not one schedule: thousands of schedules take minutes.
pytestmark = pytest.mark.timeout(1800)


def test_router_sqlite(explorer: Explorer) -> None:
    report = explorer(router, 2000, Faults.all())
    assert report.replayed or report.faults > 0


@pytest.mark.soak
def test_router_sqlite_soak(explorer: Explorer) -> None:
    explorer(router, 0, Faults.all())
