"""2PC under the schedule explorer (see tests/explore/tpc.py for the invariants)."""

from __future__ import annotations

import pytest

from multistore.lab.explore import Faults
from tests.explore.conftest import Explorer
from tests.explore.tpc import transfers


def test_tpc_sqlite(explorer: Explorer) -> None:
    report = explorer(transfers, 2000, Faults.all())
    assert report.faults > 0


@pytest.mark.slow
def test_tpc_sqlite_soak(explorer: Explorer) -> None:
    explorer(transfers, 0, Faults.all())
