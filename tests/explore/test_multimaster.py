"""Multi-master replication under the schedule explorer (see tests/explore/multimaster.py)."""

from __future__ import annotations

import dataclasses

import pytest

from multistore.lab.explore import Faults
from tests.explore.conftest import Explorer
from tests.explore.multimaster import multimaster

#: A whole exploration, not one schedule: thousands of schedules take minutes.
pytestmark = pytest.mark.timeout(1800)

#: The usual mix and now and then a clock leap past the nodes' skew guard (60 s).
FAULTS = dataclasses.replace(Faults.all(), clock_leap=0.01)


def test_multimaster_sqlite(explorer: Explorer) -> None:
    report = explorer(multimaster, 2000, FAULTS)
    assert report.replayed or report.faults > 0


@pytest.mark.soak
def test_multimaster_sqlite_soak(explorer: Explorer) -> None:
    explorer(multimaster, 0, FAULTS)
