"""No silent skips in CI: when the ``CI`` environment variable is set, a skipped test fails.

A skip hides a test that did not run (a missing server binary, a missing driver), so in CI
every skip is turned into a failure whose message says why it would have been skipped.
Expected failures (``xfail``) are not skips and are left alone.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        report.outcome = "failed"
        report.longrepr = (
            f"skipped test in CI (CI is set, so skips are failures): {item.nodeid}\n"
            f"skip reason: {reason}"
        )
    return report
