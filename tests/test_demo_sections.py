"""The consistency and replication sections of ``multistore demo``, as a user runs it:
a real subprocess on embedded stores, its ``--json`` report checked fact by fact.

The demo runs twice in the same folder: every section clears its own demo folder and
keeps its ids per run, so the second report must tell the same story as the first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli


def _demo(cwd: Path) -> dict[str, Any]:
    result = run_cli("demo", "--json", cwd=cwd, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    return {s["title"].split(":")[0]: s for s in report["sections"]}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("demo")
    return [_demo(folder), _demo(folder)]


@pytest.fixture(params=["first run", "second run"])
def sections(request: pytest.FixtureRequest, reports: list[dict[str, Any]]) -> dict[str, Any]:
    return reports[0 if request.param == "first run" else 1]


def test_sections_come_in_the_issue_order(sections: dict[str, Any]) -> None:
    assert list(sections)[-7:] == [
        "idempotency keys",
        "sagas",
        "two-phase commit",
        "outbox",
        "primary/replica router",
        "multi-master",
        "quorum replication",
    ]


def test_idempotency_replays_and_refuses(sections: dict[str, Any]) -> None:
    idem = sections["idempotency keys"]
    outcomes = [r["outcome"] for r in idem["requests"]]
    assert outcomes == ["executed", "replayed", "replayed", "refused"]
    assert [r["executions"] for r in idem["requests"]] == [1, 1, 1, 1]
    assert idem["executions"] == 1
    first, *replays = (r["result"] for r in idem["requests"][:3])
    assert all(replay == first for replay in replays)  # the stored answer, not a new charge
    refused = idem["requests"][3]["error"]
    assert refused["error"] == "IdempotencyKeyReusedError"
    assert refused["http_status"] == 422
    assert refused["slug"] == "idempotency-key-reused"
    assert idem["record_state"] == "completed"


def test_sagas_complete_and_compensate(sections: dict[str, Any]) -> None:
    sagas = sections["sagas"]
    states = {s["order"]["order_id"]: s["state"] for s in sagas["sagas"]}
    assert states == {1001: "completed", 1002: "compensated"}
    failed = sagas["sagas"][1]
    assert "OutOfStockError" in failed["error"]
    assert [(s["name"], s["state"]) for s in failed["steps"]] == [
        ("create_order", "compensated"),
        ("charge_payment", "compensated"),
        ("reserve_stock", "compensated"),  # it failed; its undo ran all the same
        ("confirm_order", "pending"),
    ]
    dbs = sagas["databases"]
    assert [(r["order_id"], r["status"]) for r in dbs["orders"]] == [
        ("1001", "confirmed"),
        ("1002", "cancelled"),
    ]
    assert [(r["order_id"], r["status"]) for r in dbs["payments"]] == [
        ("1001", "charged"),
        ("1002", "refunded"),
    ]
    assert {r["sku"]: r["stock"] for r in dbs["inventory"]} == {"book": 3, "lamp": 0}
    assert [r["order_id"] for r in dbs["reservations"]] == ["1001"]


def test_two_phase_commit_commits_and_recovers(sections: dict[str, Any]) -> None:
    tpc = sections["two-phase commit"]
    assert tpc["committed_order"]["state"] == "committed"
    assert tpc["crash"]["crashed"]
    before = tpc["in_doubt_before_recovery"]
    assert all(len(branches) == 1 for branches in before.values()), before
    assert sorted(tpc["recovery"]["committed"]) == sorted(b for bs in before.values() for b in bs)
    assert tpc["recovery"]["resolved"]
    assert all(not branches for branches in tpc["in_doubt_after_recovery"].values())
    orders_before = [r["id"] for r in tpc["rows_before_recovery"]["orders"]]
    orders_after = [r["id"] for r in tpc["rows_after_recovery"]["orders"]]
    assert (orders_before, orders_after) == (["ord_123"], ["ord_123", "ord_124"])
    payments = [r["order_id"] for r in tpc["rows_after_recovery"]["payments"]]
    assert payments == ["ord_123", "ord_124"]
    stock = {r["sku"]: r["stock"] for r in tpc["rows_after_recovery"]["inventory"]}
    assert stock == {"product1": 3, "product2": 4}


def test_outbox_keeps_the_index_in_step_with_the_catalog(sections: dict[str, Any]) -> None:
    outbox = sections["outbox"]
    # three saves, each with its event; the rejected save left neither row nor event
    assert outbox["events_after_saves"] == {"pending": 3, "delivered": 0, "parked": 0}
    assert outbox["events_after_relay"] == {"pending": 0, "delivered": 3, "parked": 0}
    assert outbox["catalog_rows"] == [["p1", 999.0], ["p2", 29.5]]
    assert len(outbox["failed_attempts"]) == 1  # retried, not lost
    indexed = [tuple(i) for i in outbox["indexed"]]
    assert sorted(indexed) == [("product:p1", 1, 1299.0), ("product:p1", 2, 999.0),
                               ("product:p2", 1, 29.5)]  # fmt: skip
    p1 = [i for i in indexed if i[0] == "product:p1"]
    assert [i[1] for i in p1] == [1, 2]  # in order per product
    assert outbox["redelivery_ran_again"] is False  # the inbox skipped it
    assert outbox["search_laptop"] == [["p2", 29.5], ["p1", 999.0]]


def test_router_token_reads_see_the_write(sections: dict[str, Any]) -> None:
    router = sections["primary/replica router"]
    assert router["read_spread"] == {"primary": 0, "replica1": 3, "replica2": 3}
    assert router["stale_without_token"] is True
    values = {s["step"]: s.get("value") for s in router["steps"]}
    assert values["read cart 1, no token"] == "book"  # the write had not reached it
    assert values["read cart 1 with token 1:3"] == "book,pen"
    assert router["token_read_sees_write"] is True
    assert router["session_read_sees_write"] is True
    assert router["new_primary"] in {"replica1", "replica2"}
    assert router["write_after_failover_on"] == router["new_primary"]
    roles = {n["name"]: n["role"] for n in router["status"]["nodes"]}
    assert roles["primary"] == "fenced"
    assert roles[router["new_primary"]] == "primary"


def test_multimaster_merge_keeps_every_item(sections: dict[str, Any]) -> None:
    mm = sections["multi-master"]
    assert mm["every_item"] == ["apple", "milk", "pear"]
    assert mm["merge"]["kept_every_item"] and mm["merge"]["siblings"] == 1
    assert mm["crdt_cart"]["kept_every_item"]
    assert mm["siblings"]["siblings"] == 2
    assert not mm["lww"]["kept_every_item"] and mm["lww"]["lost_versions"]
    assert all(mm[s]["converged"] for s in ("lww", "merge", "siblings", "crdt_cart"))


def test_quorum_survives_two_down_and_the_checker_sees_stale_reads(
    sections: dict[str, Any],
) -> None:
    quorum = sections["quorum replication"]
    two_down = quorum["two_down"]
    assert two_down["write_ok"] and two_down["read_ok"]
    assert two_down["read_value"] == {"apple": 2, "pear": 1}
    assert quorum["three_down_write_ok"] is False
    lab = quorum["lab"]
    assert (lab["config"]["n"], lab["config"]["r"], lab["config"]["w"]) == (5, 1, 1)
    assert lab["counts"]["stale_reads"] > 0
    assert lab["valid"] is False
    assert lab["stale_read_examples"]
