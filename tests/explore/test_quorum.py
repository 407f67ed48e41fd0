"""The quorum store under the schedule explorer (see tests/explore/quorum.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from multistore.lab.explore import Faults
from tests.explore.conftest import Explorer
from tests.explore.quorum import quorum

#: A whole exploration, not one schedule: thousands of schedules take minutes.
pytestmark = pytest.mark.timeout(1800)

#: The usual mix, and now and then a write (or read) none of whose replies arrive.
FAULTS = replace(Faults.all(), lost_replies=0.04)


def test_quorum_sqlite(explorer: Explorer) -> None:
    report = explorer(quorum, 2000, FAULTS)
    assert report.replayed or report.faults > 0


@pytest.mark.soak
def test_quorum_sqlite_soak(explorer: Explorer) -> None:
    explorer(quorum, 0, FAULTS)
