"""``multistore bench scale`` at tiny sizes: every curve comes back with both sides,
positive numbers, a growth row, and the logs' reap rows show every due row deleted.
Speed itself is not asserted (it belongs to the benchmark's numbers, not to tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from multistore import ErrorCode
from tests.cli import run_cli

REPO = Path(__file__).resolve().parents[1]
SIZES = (100, 1000)
CASES = {
    "kv-get",
    "doc-find-indexed",
    "doc-find-scan",
    "search-top10",
    "graph-fof",
    "ts-window",
    "wc-partition",
    "saga-step",
    "idem-claim",
    "outbox-add",
    "tpc-decision",
}
REAPED = {"idem-claim", "outbox-add", "tpc-decision"}


@pytest.mark.timeout(900)
def test_bench_scale_json_has_every_row_with_both_sides(tmp_path: Path) -> None:
    plot = tmp_path / "curves.png"
    result = run_cli(
        "bench",
        "scale",
        "--sizes",
        ",".join(map(str, SIZES)),
        "--json",
        "--plot",
        str(plot),
        "--dir",
        str(REPO / "benchmarks"),
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    for row in rows:
        assert row["ours"] > 0 and row["anchor"] > 0 and row["speedup"] > 0, row
        assert row["anchor_name"], row
    seen = {(r["case"], r["metric"], r.get("size")) for r in rows}
    for case in CASES:
        for size in SIZES:
            assert (case, "latency", size) in seen, (case, size)
            assert (case, "peak RSS growth", size) in seen, (case, size)
        assert (case, "growth", None) in seen, case
    assert {r["case"] for r in rows} == CASES
    reaps = [r for r in rows if r["metric"] == "reap"]
    assert {(r["case"], r["size"]) for r in reaps} == {(c, s) for c in REAPED for s in SIZES}
    for row in reaps:
        # The log held `size` entries that were due: the reap deleted every one of them.
        assert row["rows_before"] - row["rows_after"] == row["size"], row
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_bench_scale_rejects_bad_sizes(tmp_path: Path) -> None:
    result = run_cli("bench", "scale", "--sizes", "1000,lots", cwd=tmp_path)
    assert result.returncode == int(ErrorCode.BENCHMARK)
    assert "--sizes takes whole numbers" in result.stderr


def test_bench_options_a_benchmark_does_not_take_are_refused(tmp_path: Path) -> None:
    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    (bench_dir / "__init__.py").write_text("")
    (bench_dir / "_harness.py").write_text("")
    (bench_dir / "toy.py").write_text("async def run():\n    return []\n")
    result = run_cli("bench", "toy", "--sizes", "100", cwd=tmp_path)
    assert result.returncode == int(ErrorCode.BENCHMARK)
    assert "benchmark toy takes no --sizes option" in result.stderr


def test_bench_scale_names_its_cases_when_one_is_unknown(tmp_path: Path) -> None:
    result = run_cli("bench", "scale", "--cases", "kv-get,nope", cwd=tmp_path)
    assert result.returncode == int(ErrorCode.BENCHMARK)
    assert "no scale case nope; the cases are kv-get, " in result.stderr
