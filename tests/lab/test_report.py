"""The lab's text report on hand-made histories: one example of every anomaly kind, in
words that name the operations, and a verdict that matches the exit code."""

from __future__ import annotations

from typing import Any

from multistore.core._history_report import check_history
from multistore.lab._report import ANOMALY_KINDS, format_lab_report, summarize
from tests.lab.histories import history, r, w

MS = 1_000_000

CONFIG: dict[str, Any] = {
    "n": 3,
    "r": 1,
    "w": 1,
    "m": 3,
    "overlapping": False,
    "nodes": "embedded",
    "coordinators": 2,
    "routing": "random",
    "faults": "none",
    "latency": "none",
    "ops": 0,
    "duration": 1.0,
}


def report_of(*specs: Any) -> dict[str, Any]:
    data = summarize(check_history(history(*specs)))
    return {**data, "config": CONFIG, "elapsed_s": 1.0, "faults": [], "warning": None}


def test_every_anomaly_kind_gets_one_example_in_words() -> None:
    report = report_of(
        # k1: 1 then 2 acknowledged; a later read returns 1 (stale), then 1 again at the
        # end: 2 was lost; process 7 read 2 then 1 (monotonic); a read of 9 (phantom)
        w(0, 1, 0, 10 * MS, key="k1"),
        w(0, 2, 20 * MS, 30 * MS, key="k1"),
        r(7, 2, 40 * MS, 50 * MS, key="k1"),
        r(7, 1, 60 * MS, 70 * MS, key="k1"),
        r(8, 9, 80 * MS, 90 * MS, key="k1"),
        # k2: a write that failed as definite, then read back
        w(1, 5, 0, 10 * MS, "fail", key="k2"),
        r(2, 5, 20 * MS, 30 * MS, key="k2"),
    )
    counts = report["counts"]
    assert [counts[name] > 0 for name, _ in ANOMALY_KINDS] == [True] * len(ANOMALY_KINDS)
    assert report["verdict"] == "anomalies" and report["exit_code"] == 80
    sentences = report["sentences"]
    assert set(sentences) == {
        "stale_reads",
        "lost_writes",
        "failed_writes_observed",
        "monotonic_violations",
        "phantom_reads",
        "linearizability",
    }
    assert sentences["stale_reads"] == (
        "process 7 read k1 at 0.060 s and got 1, written at 0.000 s; but 2 had replaced it: "
        "its write began after that value was in place and was acknowledged at 0.030 s, "
        "30.0 ms before the read began"
    )
    assert sentences["lost_writes"].startswith(
        "the write of 2 to k1 by process 0 was acknowledged at 0.030 s; process 7 read it "
        "at 0.040 s, then it was gone: the last read (process 7 at 0.060 s) returned 1, "
        "which is older"
    )
    assert sentences["failed_writes_observed"].startswith(
        "the write of 5 to k2 by process 1 failed as definite at 0.010 s, yet process 2 "
        "read 5 at 0.020 s"
    )
    assert sentences["monotonic_violations"] == (
        "process 7 read k1 = 2 at 0.040 s, then 1 at 0.060 s, an older value (its write "
        "ended before the write of 2 began): its reads went back in time"
    )
    assert "got 9, which no write had written" in sentences["phantom_reads"]
    assert sentences["linearizability"].startswith("key k1: no order of its")
    text = format_lab_report(report)
    lines = text.splitlines()
    assert lines[0].startswith("quorum lab: N=3 R=1 W=1 (R+W<=N)")
    assert "  verdict: ANOMALIES FOUND (exit code 80)" in lines
    start = lines.index("  one example of each:")
    labels = [line.split(":")[0].strip() for line in lines[start + 1 : start + 7]]
    assert labels == [
        "stale read",
        "lost write",
        "failed write observed",
        "monotonic-read violation",
        "phantom read",
        "non-linearizable key",
    ]


def test_a_clean_history_has_no_examples_and_exits_zero() -> None:
    report = report_of(w(0, 1, 0, 10 * MS), r(1, 1, 20 * MS, 30 * MS))
    assert report["verdict"] == "valid" and report["exit_code"] == 0
    assert report["sentences"] == {}
    text = format_lab_report(report)
    assert "one example of each" not in text
    assert "  verdict: VALID: no anomaly found (exit code 0)" in text.splitlines()


def test_a_search_that_gives_up_is_unknown_not_valid() -> None:
    checked = check_history(history(w(0, 1, 0, 10 * MS), r(1, 1, 20 * MS, 30 * MS)), bound=1)
    assert checked.unknown_keys == ["x"]
    report = {**summarize(checked), "config": CONFIG, "elapsed_s": 1.0, "faults": []}
    assert report["verdict"] == "unknown" and report["exit_code"] == 81
    assert (
        "  verdict: UNKNOWN: no anomaly found, but the search gave up on some key (exit code 81)"
        in (format_lab_report(report).splitlines())
    )


def test_the_report_fits_the_terminal_folded_at_spaces() -> None:
    """At 80 columns (what the CLI passes when the output is no terminal) every line of
    the report fits, continuation lines are indented under their line, and no word is
    cut: the folded text holds the same words in the same order."""
    report = report_of(
        w(0, 1, 0, 10 * MS, key="k1"),
        w(0, 2, 20 * MS, 30 * MS, key="k1"),
        r(7, 1, 60 * MS, 70 * MS, key="k1"),
    )
    plain = format_lab_report(report)
    assert max(len(line) for line in plain.splitlines()) > 80  # long sentences to fold
    folded = format_lab_report(report, width=80)
    lines = folded.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert folded.split() == plain.split()
    stale = next(i for i, line in enumerate(lines) if line.startswith("    stale read:"))
    assert lines[stale + 1].startswith("      ") and not lines[stale + 1].startswith("       ")
