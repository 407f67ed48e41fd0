"""The pure saga state machine (multistore.core._saga) and the retry policy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from multistore.consistency._retry import DEFAULT_RETRY, RetryPolicy
from multistore.core import _saga as sm
from multistore.core._saga import SagaState, StepState
from multistore.errors import StoreTimeoutError, StoreUnavailableError

ALL = [True, True, True]


def _saga(deadline: float | None = None) -> sm.SagaRecord:
    return sm.begin(sm.new_saga("s1", "order", "{}", ["a", "b", "c"], deadline))


def test_core_module_does_no_io() -> None:
    source = Path(sm.__file__).read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert imported <= {"__future__", "dataclasses", "enum", "collections.abc", "multistore.errors"}


def test_forward_run_to_completion() -> None:
    saga = _saga()
    assert sm.next_move(saga, ALL, 0) == sm.RunStep(0)
    for i in range(3):
        saga = sm.step_started(saga, i)
        assert sm.next_move(saga, ALL, 0) == sm.RunStep(i)  # crash here: run it again
        saga = sm.step_completed(saga, i, f'"{i}"')
    assert sm.next_move(saga, ALL, 0) == sm.Finish(SagaState.COMPLETED)
    done = sm.finish(saga, SagaState.COMPLETED)
    assert sm.next_move(done, ALL, 0) == sm.Halt(SagaState.COMPLETED)
    with pytest.raises(sm.SagaTransitionError):
        sm.step_started(done, 0)


def test_failure_compensates_started_steps_in_reverse_including_the_failed_one() -> None:
    saga = _saga()
    for i in range(2):
        saga = sm.step_completed(sm.step_started(saga, i), i, "1")
    saga = sm.step_failed(sm.step_started(saga, 2), 2, '{"type": "E", "message": "m"}')
    assert saga.state is SagaState.COMPENSATING
    assert saga.error == '{"type": "E", "message": "m"}'
    order = []
    while isinstance(move := sm.next_move(saga, ALL, 0), sm.Compensate):
        order.append(move.index)
        saga = sm.step_compensated(saga, move.index)
    assert order == [2, 1, 0]
    assert move == sm.Finish(SagaState.COMPENSATED)
    done = sm.finish(saga, SagaState.COMPENSATED)
    assert done.error is not None  # the business error survives


def test_steps_without_compensation_and_never_started_are_skipped() -> None:
    saga = sm.step_completed(sm.step_started(_saga(), 0), 0, "1")
    saga = sm.step_failed(sm.step_started(saga, 1), 1, "e")
    assert sm.next_move(saga, [True, False, True], 0) == sm.Compensate(0)


def test_stuck_and_reopen() -> None:
    saga = sm.step_failed(sm.step_started(_saga(), 0), 0, "e")
    saga = sm.compensation_attempted(saga, 0, "x")
    saga = sm.stuck(saga, 0, "y")
    assert saga.state is SagaState.STUCK
    assert saga.steps[0].compensation_attempts == 2
    assert sm.next_move(saga, ALL, 0) == sm.Halt(SagaState.STUCK)
    again = sm.reopen_stuck(saga)
    assert again.state is SagaState.COMPENSATING
    assert again.steps[0].compensation_attempts == 0
    assert again.compensation_error is None
    assert sm.next_move(again, ALL, 0) == sm.Compensate(0)


def test_deadline_aborts_forward_progress_only() -> None:
    saga = _saga(deadline=100.0)
    assert sm.next_move(saga, ALL, 99.9) == sm.RunStep(0)
    assert isinstance(sm.next_move(saga, ALL, 100.0), sm.Abort)
    compensating = sm.abort(sm.step_started(saga, 0), "timeout")
    assert sm.next_move(compensating, ALL, 1e9) == sm.Compensate(0)


def test_invalid_transitions_are_refused() -> None:
    saga = _saga()
    with pytest.raises(sm.SagaTransitionError):
        sm.step_completed(saga, 0, "1")  # not started
    with pytest.raises(sm.SagaTransitionError):
        sm.finish(saga, SagaState.COMPLETED)
    with pytest.raises(sm.SagaTransitionError):
        sm.step_started(saga, 7)
    with pytest.raises(sm.SagaTransitionError):
        sm.next_move(saga, [True], 0)
    with pytest.raises(sm.SagaTransitionError):
        sm.new_saga("s", "n", "{}", ["a", "a"], None)


@given(
    outcomes=st.lists(st.sampled_from(["ok", "fail", "crash"]), min_size=1, max_size=6),
    comp=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_any_run_ends_completed_or_compensated(outcomes: list[str], comp: list[bool]) -> None:
    """Whatever steps do, driving the machine ends in an end state, every step that
    left PENDING and has a compensation is compensated once, and no step runs after
    a failure."""
    n = len(outcomes)
    compensable = comp[:n]
    saga = sm.begin(sm.new_saga("s", "n", "{}", [f"s{i}" for i in range(n)], None))
    crashed: set[int] = set()
    compensated: list[int] = []
    for _ in range(100):
        move = sm.next_move(saga, compensable, 0)
        if isinstance(move, sm.Halt):
            break
        if isinstance(move, sm.Finish):
            saga = sm.finish(saga, move.state)
        elif isinstance(move, sm.RunStep):
            i = move.index
            saga = sm.step_started(saga, i)
            if outcomes[i] == "crash" and i not in crashed:
                crashed.add(i)  # crash: the log keeps STARTED, next move re-runs it
            elif outcomes[i] == "fail":
                saga = sm.step_failed(saga, i, "e")
            else:
                saga = sm.step_completed(saga, i, "1")
        elif isinstance(move, sm.Compensate):
            compensated.append(move.index)
            saga = sm.step_compensated(saga, move.index)
    assert saga.state in (SagaState.COMPLETED, SagaState.COMPENSATED)
    first_fail = outcomes.index("fail") if "fail" in outcomes else None
    if first_fail is None:
        assert saga.state is SagaState.COMPLETED
        assert compensated == []
    else:
        assert saga.state is SagaState.COMPENSATED
        assert all(s.state is StepState.PENDING for s in saga.steps[first_fail + 1 :])
        expected = [i for i in range(first_fail, -1, -1) if compensable[i]]
        assert compensated == expected


def test_retry_policy_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(max_attempts=10, initial_delay=0.1, multiplier=2, max_delay=1, jitter=1)
    assert [policy.delay(n, 0.0) for n in range(1, 7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert policy.delay(3, 0.999) == pytest.approx(0.4 * 0.001)
    assert policy.delay(10_000, 0.0) == 1.0  # no overflow
    assert DEFAULT_RETRY.should_retry(StoreUnavailableError("x"), 1)
    assert DEFAULT_RETRY.should_retry(StoreTimeoutError("x"), 2)
    assert not DEFAULT_RETRY.should_retry(StoreTimeoutError("x"), 3)
    assert not DEFAULT_RETRY.should_retry(ValueError("declined"), 1)
    only_value = RetryPolicy(retry_on=lambda exc: isinstance(exc, ValueError))
    assert only_value.should_retry(ValueError("x"), 1)
    assert not only_value.should_retry(StoreUnavailableError("x"), 1)


# -- parallel groups ----------------------------------------------------------------


def _grouped() -> sm.SagaRecord:
    """Steps a, (b, c, d) as one group, e."""
    return sm.begin(sm.new_saga("s2", "order", "{}", ["a", "b", "c", "d", "e"], None))


GROUPS = [0, 1, 1, 1, 2]
FIVE = [True] * 5


def test_group_members_run_together_and_only_those_not_completed_again() -> None:
    saga = sm.step_completed(sm.step_started(_grouped(), 0), 0, "1")
    assert sm.next_move(saga, FIVE, 0, GROUPS) == sm.RunGroup((1, 2, 3), first=1)
    for i in (1, 2, 3):
        saga = sm.step_started(saga, i)
    # a crash before the group's outcome is logged: every member runs again
    assert sm.next_move(saga, FIVE, 0, GROUPS) == sm.RunGroup((1, 2, 3), first=1)
    after = sm.group_finished(saga, {1: '"b"', 3: '"d"'}, {})
    assert after.state is SagaState.RUNNING
    assert sm.next_move(after, FIVE, 0, GROUPS) == sm.RunGroup((2,), first=1)
    done = sm.group_finished(after, {2: '"c"'}, {})
    assert sm.next_move(done, FIVE, 0, GROUPS) == sm.RunStep(4)
    # without groups the same log is run one step at a time
    assert sm.next_move(saga, FIVE, 0) == sm.RunStep(1)


def test_a_failed_member_compensates_the_group_together_after_later_steps() -> None:
    saga = sm.step_completed(sm.step_started(_grouped(), 0), 0, "1")
    for i in (1, 2, 3):
        saga = sm.step_started(saga, i)
    saga = sm.group_finished(saga, {1: '"b"'}, {3: '"E3"', 2: '"E2"'})
    assert saga.state is SagaState.COMPENSATING
    assert saga.error == '"E2"'  # the first failed member in step order
    states = [s.state for s in saga.steps[1:4]]
    assert states == [StepState.COMPLETED, StepState.FAILED, StepState.FAILED]
    comp = [True, True, False, True, True]  # c has no compensation
    assert sm.next_move(saga, comp, 0, GROUPS) == sm.CompensateGroup((1, 3))
    saga = sm.group_compensated(saga, [1, 3], {})
    assert sm.next_move(saga, comp, 0, GROUPS) == sm.Compensate(0)
    saga = sm.step_compensated(saga, 0)
    assert sm.next_move(saga, comp, 0, GROUPS) == sm.Finish(SagaState.COMPENSATED)


def test_a_member_whose_compensation_gives_up_leaves_the_saga_stuck() -> None:
    saga = sm.step_completed(sm.step_started(_grouped(), 0), 0, "1")
    for i in (1, 2, 3):
        saga = sm.step_started(saga, i)
    saga = sm.group_finished(saga, {1: '"b"', 2: '"c"'}, {3: '"E"'})
    saga = sm.group_compensated(saga, [2], {3: '"C3"', 1: '"C1"'})
    assert saga.state is SagaState.STUCK
    assert saga.compensation_error == '"C1"'
    assert saga.steps[2].state is StepState.COMPENSATED
    assert saga.steps[1].compensation_error == '"C1"'
    assert saga.steps[3].compensation_error == '"C3"'
    with pytest.raises(sm.SagaTransitionError):
        sm.group_finished(_grouped(), {1: "1"}, {1: "e"})
