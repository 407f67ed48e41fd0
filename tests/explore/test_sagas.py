"""Sagas under the schedule explorer (see tests/explore/sagas.py for the invariants)."""

from __future__ import annotations

import pytest

from multistore.lab.explore import Faults
from tests.explore.conftest import Explorer
from tests.explore.sagas import sagas

#: A whole exploration, not one schedule: thousands of schedules take minutes.
pytestmark = pytest.mark.timeout(1800)


def test_sagas_sqlite(explorer: Explorer) -> None:
    report = explorer(sagas, 2000, Faults.all())
    assert report.replayed or report.faults > 0


@pytest.mark.soak
def test_sagas_sqlite_soak(explorer: Explorer) -> None:
    explorer(sagas, 0, Faults.all())
