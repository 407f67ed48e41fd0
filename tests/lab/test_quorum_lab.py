"""The quorum lab end to end: a real cluster, real faults, the checked history.

R+W>N with one node killed must show no stale read and no lost acknowledged write;
R=W=1 under a partition must show stale reads — the checker is shown able to fail.
Embedded SQLite nodes in the default run; the same on real Redis servers (``server``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from multistore.core import VersionVector
from multistore.core._history import EventType, Operation, pair_operations
from multistore.core._history_report import check_history
from multistore.core._quorum import Consistency
from multistore.errors import InvalidValueError
from multistore.lab._history import read_history
from multistore.lab._quorum_lab import QuorumLabOptions, _Topology, lab_quorum, run_quorum_lab
from multistore.lab._report import FINAL_PROCESS, format_lab_report, summarize

TOPOLOGIES = ["embedded", pytest.param("redis", marks=pytest.mark.server)]


def run_lab(tmp_path: Path, **options: Any) -> dict[str, Any]:
    opts = QuorumLabOptions(**{"ops": 400, "duration": 2.0, "concurrency": 6, **options})
    return asyncio.run(run_quorum_lab(opts, history=tmp_path / "history.jsonl"))


def ops_between(report: dict[str, Any], history: Path, start: str, end: str) -> int:
    """ok operations invoked while a fault was in effect (from the fault log)."""
    times = {entry["fault"].split()[0]: entry["at_s"] for entry in report["faults"]}
    lo, hi = times[start] * 1e9, times[end] * 1e9
    ops = pair_operations(read_history(history))
    return sum(1 for op in ops if op.ok and lo < op.invoke < hi)


@pytest.mark.parametrize("nodes", TOPOLOGIES)
def test_quorum_with_one_node_killed_has_no_stale_or_lost_write(tmp_path: Path, nodes: str) -> None:
    # one coordinator: two would stamp writes with two millisecond clocks, and LWW may
    # then order two writes of the same millisecond against real time (a rare stale
    # read the lab does find under heavy load; see the _quorum_lab docstring)
    report = run_lab(
        tmp_path, n=3, r="2", w="2", faults="kill", nodes=nodes, seed=1, coordinators=1
    )
    assert [f["fault"] for f in report["faults"]] == ["kill node0", "restart node0"]
    # the fault really hit: the coordinators saw node0 fail, and work went on meanwhile
    failures = [
        node["failures"]
        for status in report["cluster_status"]
        for node in status["nodes"]
        if node["name"] == "node0"
    ]
    assert max(failures) > 0, report["cluster_status"]
    assert ops_between(report, tmp_path / "history.jsonl", "kill", "restart") > 50
    counts = report["counts"]
    assert counts["stale_reads"] == 0, report["examples"]["stale_reads"]
    assert counts["lost_writes"] == 0, report["examples"]["lost_writes"]
    assert counts["unverified_writes"] == 0  # the final reads judged every write
    assert counts["monotonic_violations"] == 0
    assert counts["non_linearizable_keys"] == 0, report["examples"]["linearizability"]
    assert report["valid"] is True


@pytest.mark.parametrize("nodes", TOPOLOGIES)
def test_one_one_under_a_partition_shows_stale_reads(tmp_path: Path, nodes: str) -> None:
    report = run_lab(tmp_path, n=3, r="one", w="one", faults="partition", nodes=nodes, seed=2)
    assert report["warning"] and "stale" in report["warning"]
    assert [f["fault"] for f in report["faults"]] == ["partition node0", "heal node0"]
    assert report["counts"]["stale_reads"] > 0
    assert report["valid"] is False
    stale = report["examples"]["stale_reads"][0]
    missed, saw = stale["missed"], stale["saw"]
    assert missed["type"] == "ok" and missed["complete"] < stale["read"]["invoke"]
    assert saw is None or saw["complete"] < missed["invoke"]  # it was overwritten
    # the partition is what did it: stale reads happen while it is in effect
    times = {e["fault"].split()[0]: e["at_s"] * 1e9 for e in report["faults"]}
    checked = check_history(read_history(tmp_path / "history.jsonl"))
    assert len(checked.stale_reads) == report["counts"]["stale_reads"]
    during = [s for s in checked.stale_reads if times["partition"] < s.read.invoke < times["heal"]]
    assert during, [s.to_dict() for s in checked.stale_reads[:3]]
    # and the staleness curve counts them
    assert sum(b["stale"] for b in report["staleness"]) > 0


def test_same_run_without_faults_is_clean(tmp_path: Path) -> None:
    report = run_lab(tmp_path, n=3, r="quorum", w="quorum", faults="none", ops=200, seed=3)
    assert report["faults"] == [] and report["valid"] is True
    assert set(report["latency"]) == {"read", "write"}
    assert report["latency"]["read"]["p50_ms"] > 0


def test_cli_body_writes_history_and_plot(tmp_path: Path) -> None:
    history, plot = tmp_path / "h.jsonl", tmp_path / "lab.png"
    report = lab_quorum(
        n=3,
        r="1",
        w="1",
        m=4,
        ops=150,
        duration=1.0,
        keys=2,
        mix="read=2,write=1,rmw=1",
        faults="latency",
        history=history,
        plot=plot,
        seed=4,
    )
    assert report["config"]["m"] == 4 and report["config"]["r"] == 1
    assert report["history"] == str(history) and report["plot"] == str(plot)
    events = read_history(history)
    assert len(events) >= 2 * 150
    assert {e.f for e in events} == {"read", "write"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = format_lab_report(report)
    assert "N=3 R=1 W=1" in text and "delay node0 by 50 ms" in text


def test_bad_options_are_refused() -> None:
    with pytest.raises(InvalidValueError):
        QuorumLabOptions(n=4, m=3)
    with pytest.raises(InvalidValueError):
        QuorumLabOptions(r="most")
    with pytest.raises(InvalidValueError):
        QuorumLabOptions(faults="meteor")
    with pytest.raises(InvalidValueError):
        QuorumLabOptions(nodes="cassandra")


def test_clock_skew_breaks_last_writer_wins_even_at_quorum(tmp_path: Path) -> None:
    """A coordinator whose clock runs 10 s ahead stamps its writes into the future: under
    LWW they beat later writes of the other coordinator, which are then never seen."""
    report = run_lab(tmp_path, n=3, r="quorum", w="quorum", faults="skew", seed=5)
    assert report["config"]["overlapping"] is True
    assert report["faults"][0]["fault"] == "skew coordinator1's clock by +10000 ms"
    assert report["counts"]["stale_reads"] > 0
    assert report["valid"] is False


# -- the faults and workload features that let the lab find anomalies by itself ----------


def workload_ops(history: Path) -> list[Operation]:
    return [op for op in pair_operations(read_history(history)) if op.process < FINAL_PROCESS]


def test_lost_replies_hide_writes_that_took_effect(tmp_path: Path) -> None:
    """coordinator0's requests are applied but their replies lost: its writes end as
    failures although they took effect. Each one a read then returns is either recorded
    indeterminate by the store (``info``) or reported by the checker as a failed write
    observed — never left as a silent ``fail``."""
    report = run_lab(tmp_path, ops=300, faults="lost-replies", seed=1)
    assert [f["fault"] for f in report["faults"]] == [
        "lose replies to coordinator0 (requests still applied)",
        "deliver replies to coordinator0 again",
    ]
    assert report["messages"]["replies_lost"] > 0
    ops = pair_operations(read_history(tmp_path / "history.jsonl"))
    read_values = {op.value for op in ops if op.is_read and op.ok}
    took_effect = [op for op in ops if op.is_write and not op.ok and op.value in read_values]
    assert took_effect, "no write applied without an acknowledgement was read back"
    failed_and_read = {op.index for op in took_effect if op.type is EventType.FAIL}
    observed = {ex["write"]["index"] for ex in report["examples"]["failed_writes_observed"]}
    assert report["counts"]["failed_writes_observed"] == len(failed_and_read)
    assert observed <= failed_and_read
    if failed_and_read:  # the store called them definite: the lab says so, in words
        assert report["verdict"] == "anomalies" and report["exit_code"] == 80
        assert "should have been indeterminate" in report["sentences"]["failed_writes_observed"]


def test_kill_homes_takes_down_two_homes_of_a_key(tmp_path: Path) -> None:
    report = run_lab(tmp_path, ops=200, m=5, keys=2, faults="kill-homes", seed=1)
    homes = report["homes"]["k0"]
    assert len(homes) == 3
    assert [f["fault"] for f in report["faults"]] == [
        f"kill {homes[0]}",
        f"kill {homes[1]}",
        f"restart {homes[0]}",
        f"restart {homes[1]}",
    ]
    assert report["messages"]["refused"] > 0  # the coordinators did hit the dead nodes
    windows = report["fault_windows"]
    assert [w["fault"] for w in windows] == [f"kill {homes[0]}", f"kill {homes[1]}"]
    assert all(0 < w["from_s"] < w["to_s"] for w in windows)


def test_reads_spread_over_coordinators_show_monotonic_read_violations(tmp_path: Path) -> None:
    """R=W=1 with node0 split off with coordinator0: a process whose operations go
    through either coordinator reads both sides of the split, and goes back in time."""
    report = run_lab(tmp_path, ops=300, r="one", w="one", faults="partition", seed=4)
    assert report["config"]["routing"] == "random"
    assert report["counts"]["monotonic_violations"] > 0
    sentence = report["sentences"]["monotonic_violations"]
    assert "went back in time" in sentence and "process" in sentence


def test_rmw_writes_carry_the_context_of_their_read(tmp_path: Path) -> None:
    """A read through one coordinator and a write through another that passes the read's
    context: the written version descends from everything the read saw."""

    async def body() -> None:
        opts = QuorumLabOptions(coordinators=2)
        topology = _Topology(opts, tmp_path)
        await topology.start()
        try:
            first, second = topology.clients()
            await first.write("k0", 1)
            seen = await second.read("k0")
            assert seen.value == 1 and isinstance(seen.context, VersionVector)
            await second.write("k0", 2, seen.context)
            got = await topology.clusters[0].get("k0", r=Consistency.ALL)
            assert got.value == 2
            assert got.context.descends(seen.context)
            first_actor = topology.clusters[0].actor  # coordinator0/…
            assert got.context.get_count(first_actor) > 0  # the read's share is kept
        finally:
            await topology.close()

    asyncio.run(body())


def test_ops_counts_operations_as_recorded(tmp_path: Path) -> None:
    """``ops=N`` runs exactly N recorded operations: an rmw is two of them."""
    report = run_lab(tmp_path, ops=120, mix="rmw=1", duration=0.5)
    ops = workload_ops(tmp_path / "history.jsonl")
    assert report["counts"]["operations"] == len(ops) == 120
    assert report["counts"]["final_reads"] >= report["counts"]["final_reads_ok"] == 4
    assert {op.f for op in ops} == {"read", "write"}
    text = format_lab_report(report)
    assert "120 operations (" in text and "final reads at ALL (4 ok)" in text


def test_latency_per_leg_is_set_beside_the_pbs_model(tmp_path: Path) -> None:
    """R=W=1 with every message leg delayed exp(20 ms): reads soon after a write miss it
    sometimes, reads long after never; the report sets the PBS model, computed from the
    same distribution, beside each measured bucket."""
    report = run_lab(
        tmp_path,
        ops=500,
        duration=2.0,
        keys=2,
        concurrency=10,
        r="one",
        w="one",
        mix="read=3,write=1",
        latency="exp:20ms",
        single_writer=True,
        coordinators=1,
        timeout=2.0,
    )
    model = report["latency_model"]
    assert model["spec"] == "exp:20ms" and model["mean_ms"] == 20.0
    curve = model["curve"]
    assert curve[0][1] < 0.95 and curve[-1][1] == 1.0
    assert [p for _, p in curve] == sorted(p for _, p in curve)
    buckets = [b for b in report["staleness"] if b["reads"]]
    assert all(b["model_p_consistent"] is not None for b in buckets)
    early = [b for b in buckets if b["to_ms"] is not None and b["to_ms"] <= 50]
    late = [b for b in buckets if b["from_ms"] >= 200]
    assert sum(b["stale"] for b in early) > 0  # some reads soon after a write missed it
    assert all(b["stale"] == 0 for b in late) and all(b["model_p_consistent"] == 1 for b in late)
    assert min(b["model_p_consistent"] for b in early) < 0.95
    text = format_lab_report(report)
    assert "measured and PBS model (exponential, mean 20 ms per message leg)" in text
    assert "model " in text.splitlines()[-2]  # the last bucket's line, then the history


def test_nothing_checked_is_not_valid() -> None:
    """A run in which every operation failed checks nothing: it says so, and exits 82."""
    from tests.lab.histories import history, r, w

    checked = check_history(history(w(0, 1, 0, 10, "fail"), r(1, None, 20, 30, "fail")))
    assert checked.valid is True  # the checkers found nothing ...
    summary = summarize(checked)
    assert summary["verdict"] == "nothing-checked" and summary["exit_code"] == 82


def test_timeout_zero_is_refused_in_words() -> None:
    with pytest.raises(InvalidValueError, match="timeout must be above 0") as caught:
        QuorumLabOptions(timeout=0)
    assert "nothing could be checked" in caught.value.message
    for bad in ({"faults": "meteor"}, {"nodes": "cassandra"}, {"routing": "zigzag"}):
        with pytest.raises(InvalidValueError) as caught:
            QuorumLabOptions(**bad)  # type: ignore[arg-type]
        assert "('" not in caught.value.message and "['" not in caught.value.message
    with pytest.raises(InvalidValueError, match="kill, kill-homes, partition"):
        QuorumLabOptions(faults="meteor")
