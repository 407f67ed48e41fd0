"""The idempotency middleware under the schedule explorer (see tests/explore/idempotency.py)."""

from __future__ import annotations

import pytest

from multistore.lab.explore import Faults
from tests.explore.conftest import Explorer
from tests.explore.idempotency import idempotency

#: A whole exploration, not one schedule: thousands of schedules take minutes.
pytestmark = pytest.mark.timeout(1800)


def test_idempotency_sqlite(explorer: Explorer) -> None:
    report = explorer(idempotency, 2000, Faults.all())
    assert report.replayed or report.faults > 0


@pytest.mark.soak
def test_idempotency_sqlite_soak(explorer: Explorer) -> None:
    explorer(idempotency, 0, Faults.all())
