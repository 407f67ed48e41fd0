"""The hang diagnostic (``tests/fix_hangs.py``): a test that pytest-timeout is about to
stop shows what its event loop waits for."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

HANGING_TEST = """
import asyncio
import pytest

async def wait_for_an_answer_that_never_comes():
    await asyncio.get_running_loop().create_future()

@pytest.mark.timeout(2)
def test_hangs():
    asyncio.run(wait_for_an_answer_that_never_comes())
"""


def test_a_hung_test_shows_what_its_event_loop_waits_for(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_inner=HANGING_TEST)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    result = pytester.runpytest_subprocess("-p", "tests.fix_hangs", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(  # the dump, as the inner run captured it
        [
            "*asyncio tasks: test_inner.py::test_hangs*",
            "*line *, in wait_for_an_answer_that_never_comes",
        ]
    )
