"""Options and a fixture for the schedule explorer's suites.

``pytest tests/explore --explore-seed 316`` replays one schedule (its trace is printed);
``--explore-schedules N`` runs N schedules per test instead of each test's default. The
soak tests (marked ``soak``) run 100,000 schedules each and only when asked for:
``pytest -m soak tests/explore``.
"""

from __future__ import annotations

from typing import Protocol

import pytest

from multistore.lab.explore import ExploreReport, Faults, Scenario, explore, run_schedule

SOAK = 100_000


class Explorer(Protocol):
    def __call__(
        self, scenario: Scenario, schedules: int, faults: Faults, *, virtual: bool = True
    ) -> ExploreReport: ...


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("explore", "schedule explorer")
    group.addoption("--explore-seed", type=int, help="replay this one seed, printing its trace")
    group.addoption("--explore-schedules", type=int, help="schedules per explorer test")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak runs only when ``-m`` names them (deselected, not skipped, otherwise)."""
    if "soak" in (config.getoption("-m") or ""):
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]


@pytest.fixture
def explorer(request: pytest.FixtureRequest) -> Explorer:
    """``explorer(scenario, schedules, faults)``: explore (or replay ``--explore-seed``)."""
    config = request.config
    slow = request.node.get_closest_marker("soak") is not None

    def run(
        scenario: Scenario, schedules: int, faults: Faults, *, virtual: bool = True
    ) -> ExploreReport:
        seed = config.getoption("--explore-seed")
        if seed is not None:
            schedule = run_schedule(scenario, seed, faults, virtual=virtual)
            print("\n".join(schedule.trace))
            if schedule.error is not None:
                raise schedule.error
            return ExploreReport(
                request.node.name,
                schedules=1,
                steps=schedule.steps,
                faults=schedule.faults,
                replayed=True,
            )
        count = config.getoption("--explore-schedules") or (SOAK if slow else schedules)
        first = 1_000_000 if slow else 0  # the soak explores seeds the default run does not
        report = explore(
            scenario,
            seeds=range(first, first + count),
            faults=faults,
            name=request.node.name,
            virtual=virtual,
            replay=f"pytest '{request.node.nodeid}' --explore-seed {{seed}}",
        )
        print(report.summary())
        return report

    return run  # type: ignore[return-value]
