"""The pure 2PC state machine: transaction ids and the presumed-abort rules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import multistore
from multistore.consistency import DistributedTransaction
from multistore.core._tpc import (
    TRANSITIONS,
    Decision,
    TxState,
    TxTransitionError,
    Vote,
    Xid,
    advance,
    decide,
    last_resource,
    needs_decision_log,
    phase_two_targets,
    resolve_in_doubt,
)
from multistore.errors import InvalidValueError

names = st.from_regex(r"[A-Za-z0-9_-]{1,24}", fullmatch=True)
tids = st.from_regex(r"[0-9a-f]{32}", fullmatch=True)
branches = st.one_of(st.just(""), st.from_regex(r"[A-Za-z0-9_-]{1,48}", fullmatch=True))
TID = "0123456789abcdef0123456789abcdef"


@given(names, tids, branches)
def test_xid_round_trips_through_its_string(node: str, tid: str, branch: str) -> None:
    xid = Xid(node, tid, branch)
    assert Xid.parse(str(xid)) == xid
    assert xid.gtrid == f"ms2pc:{node}:{tid}"
    assert len(xid.gtrid) <= 64 and len(branch) <= 64  # MariaDB gtrid / bqual limits
    assert len(str(xid)) <= 200  # PostgreSQL GID limit
    assert xid.for_branch("orders").global_xid == xid.global_xid


def test_xid_names_its_coordinator_and_branch() -> None:
    xid = Xid.parse(f"ms2pc:shop-1:{TID}:orders")
    assert (xid.node, xid.tid, xid.branch, xid.is_branch) == ("shop-1", TID, "orders", True)
    assert str(xid.global_xid) == f"ms2pc:shop-1:{TID}"


@pytest.mark.parametrize(
    "text",
    [
        "",
        f"xa:n:{TID}",
        f"ms2pc:n:{TID}:a:b",
        "ms2pc:n:notahexid",
        f"ms2pc::{TID}",
        f"ms2pc:{'n' * 25}:{TID}",
        f"ms2pc:n';DROP TABLE x;--:{TID}",
        f"ms2pc:n:{TID.upper()}",
    ],
)
def test_foreign_or_malformed_ids_are_rejected(text: str) -> None:
    with pytest.raises(InvalidValueError):
        Xid.parse(text)
    assert Xid.try_parse(text) is None


@given(names, tids, st.from_regex(r"[A-Za-z0-9_-]{1,48}", fullmatch=True), names)
def test_branch_id_naming_its_decision_holder_round_trips(
    node: str, tid: str, branch: str, holder: str
) -> None:
    xid = Xid(node, tid).for_branch(branch, holder)
    assert str(xid) == f"ms2pc:{node}:{tid}:{branch}@{holder}"
    assert Xid.parse(str(xid)) == xid and xid.holder == holder
    assert xid.gtrid == f"ms2pc:{node}:{tid}"  # the decision's key is the same
    assert xid.bqual == f"{branch}@{holder}"
    assert len(str(xid)) <= 200


@pytest.mark.parametrize(
    "text",
    [f"ms2pc:n:{TID}:a@", f"ms2pc:n:{TID}:@b", f"ms2pc:n:{TID}:a@b@c", f"ms2pc:n:{TID}:a@b'"],
)
def test_malformed_decision_holder_is_rejected(text: str) -> None:
    assert Xid.try_parse(text) is None


def test_a_holder_needs_a_branch() -> None:
    with pytest.raises(InvalidValueError, match="decision holder"):
        Xid("n", TID, "", "orders")


def test_last_resource_is_the_best_ranked_then_the_first_named() -> None:
    ranks = {"pg1": 1, "pg2": 1, "maria": 0, "lite": None}
    assert last_resource(["lite", "pg2", "pg1"], ranks.get) == "pg2"
    assert last_resource(["pg1", "lite", "maria"], ranks.get) == "maria"
    assert last_resource(["lite", "redis"], ranks.get) is None
    assert last_resource(["pg1"], ranks.get) is None  # one participant: one phase anyway


def test_quote_in_branch_name_is_refused() -> None:
    with pytest.raises(InvalidValueError, match="branch name"):
        Xid("n", TID, "o'rders")


def test_commit_needs_every_vote_and_no_refusal() -> None:
    assert decide({"a": Vote.YES, "b": Vote.READ_ONLY}) is Decision.COMMIT
    assert decide({"a": Vote.YES, "b": Vote.NO}) is Decision.ABORT
    assert decide({"a": Vote.YES, "b": None}) is Decision.ABORT  # no answer in time


def test_decision_is_logged_only_with_two_prepared_branches() -> None:
    assert needs_decision_log({"a": Vote.YES, "b": Vote.YES, "c": Vote.READ_ONLY})
    assert not needs_decision_log({"a": Vote.YES, "b": Vote.READ_ONLY})
    assert not needs_decision_log({"a": Vote.READ_ONLY, "b": Vote.READ_ONLY})


def test_phase_two_skips_read_only_and_refusing_branches() -> None:
    votes = {"c": Vote.YES, "a": Vote.YES, "r": Vote.READ_ONLY, "n": Vote.NO, "t": None}
    assert phase_two_targets(votes, Decision.COMMIT) == ["a", "c"]
    assert phase_two_targets(votes, Decision.ABORT) == ["a", "c", "t"]


def test_presumed_abort_for_in_doubt_branches() -> None:
    assert resolve_in_doubt(Decision.COMMIT) is Decision.COMMIT
    assert resolve_in_doubt(Decision.ABORT) is Decision.ABORT
    assert resolve_in_doubt(None) is Decision.ABORT


def test_finished_states() -> None:
    assert {s for s in TxState if s.finished} == {TxState.COMMITTED, TxState.ABORTED}


def test_consistency_exports_the_two_phase_commit_api() -> None:
    import multistore.consistency as consistency

    for name in consistency.__all__:
        assert hasattr(consistency, name), name
    public = {
        name
        for name, value in vars(consistency).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("multistore.consistency._tpc")
    }
    assert public <= set(consistency.__all__)


def test_every_state_change_is_checked_against_the_transition_table() -> None:
    assert set(TRANSITIONS) == set(TxState)
    for state in TxState:
        for to in TxState:
            if to in TRANSITIONS[state]:
                assert advance(state, to) is to
            else:
                with pytest.raises(TxTransitionError, match=f"from {state.value} to {to.value}"):
                    advance(state, to)
    finals = {s for s, allowed in TRANSITIONS.items() if not allowed}
    assert finals == {TxState.COMMITTED, TxState.ABORTED, TxState.IN_DOUBT}


def test_a_transaction_refuses_a_state_change_the_table_does_not_allow() -> None:
    tx = DistributedTransaction(Xid("n", TID), {})
    tx.state = TxState.PREPARING
    tx.state = TxState.COMMITTING
    with pytest.raises(TxTransitionError):
        tx.state = TxState.ABORTING  # commit was decided: no way back
    assert tx.state is TxState.COMMITTING


def _always_raises(function: ast.AsyncFunctionDef | ast.FunctionDef) -> bool:
    body = [s for s in function.body if not isinstance(s, ast.Expr)]  # docstrings
    returns = [n for n in ast.walk(function) if isinstance(n, ast.Return)]
    return bool(body) and isinstance(body[-1], ast.Raise) and not returns


def test_no_function_annotated_none_always_raises() -> None:
    """A function that always raises says so (``NoReturn``), so the type checker knows
    the code after a call to it never runs."""
    root = Path(multistore.__file__).parent
    modules = [root / "core" / "_tpc.py", *sorted((root / "consistency").glob("_tpc*.py"))]
    found = []
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                none = isinstance(node.returns, ast.Constant) and node.returns.value is None
                if none and _always_raises(node):
                    found.append(f"{path.name}:{node.lineno} {node.name}")
    assert found == []
