"""``multistore lab quorum`` as a user runs it: the exit code gates CI, the report reads
as sentences, a terminal shows a header and progress, histories export as Jepsen EDN,
and a missing matplotlib is noticed before the run without losing its results."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import edn_format

from tests.cli import run_cli

SMALL = ("--ops", "200", "--duration", "1")


def test_anomalies_exit_80_with_one_example_of_each_and_an_edn_history(tmp_path: Path) -> None:
    history = tmp_path / "history.edn"
    run = run_cli(
        "lab", "quorum", "-r", "one", "-w", "one", "--faults", "partition", "--seed", "4",
        *SMALL, "--history", str(history), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 80, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("quorum lab: N=3 R=1 W=1 (R+W<=N)")
    assert any(line.startswith("  200 operations (") for line in lines[1:4])
    assert "  verdict: ANOMALIES FOUND (exit code 80)" in lines
    examples = lines.index("  one example of each:")
    sentences = [line for line in lines[examples + 1 :] if line.startswith("    ")]
    assert any(s.startswith("    stale read: process ") for s in sentences)
    assert "(" not in run.stdout.split("one example of each:")[0].split("verdict:")[1].split(
        "\n", 1
    )[1].replace("(exit code", "")  # the counts carry no Python tuples
    # the EDN history: Jepsen's op maps, independent [key value] tuples, nemesis ops
    ops = [edn_format.loads(line) for line in history.read_text().splitlines()]
    kw = edn_format.Keyword
    client = [op for op in ops if op[kw("process")] != kw("nemesis")]
    nemesis = [op for op in ops if op[kw("process")] == kw("nemesis")]
    assert [op[kw("index")] for op in ops] == list(range(len(ops)))
    invokes = [op for op in client if op[kw("type")] == kw("invoke")]
    assert len([op for op in invokes if op[kw("process")] < 1_000_000]) == 200
    assert {op[kw("f")] for op in client} == {kw("read"), kw("write")}
    first_write = next(op for op in client if op[kw("f")] == kw("write"))
    key, value = first_write[kw("value")]
    assert key.startswith("k") and isinstance(value, int)
    assert [(op[kw("f")], op[kw("value")]) for op in nemesis] == [
        (kw("partition"), "partition node0"),
        (kw("heal"), "heal node0"),
    ]
    times = [op[kw("time")] for op in ops]
    assert times == sorted(times)


def test_bad_options_are_one_line_before_anything_runs(tmp_path: Path) -> None:
    run = run_cli("lab", "quorum", "--timeout", "0", cwd=tmp_path)
    assert run.returncode == 22
    assert run.stdout == ""
    assert run.stderr.startswith("error[invalid-value]: timeout must be above 0 seconds")
    assert len(run.stderr.strip().splitlines()) == 1
    run = run_cli("lab", "quorum", "--latency", "exp:1", cwd=tmp_path)
    assert run.returncode == 22 and "add a unit, e.g. 1ms" in run.stderr


def _run_in_terminal(
    args: list[str], cwd: Path, bound: float = 120.0, columns: int = 120
) -> tuple[int, str]:
    """Run ``python -m multistore ARGS`` with a pseudo-terminal as stdout and stderr."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "MULTISTORE_CONFIG"}
    env.update(TERM="xterm-256color", COLUMNS=str(columns), LINES="40")
    proc = subprocess.Popen(
        [sys.executable, "-m", "multistore", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + bound
    try:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the lab did not finish within {bound} s")
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=bound)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_a_terminal_sees_the_header_at_once_then_progress_then_the_report(
    tmp_path: Path,
) -> None:
    args = ["lab", "quorum", "--coordinators", "1", "--ops", "300", "--duration", "2"]
    code, screen = _run_in_terminal(args, tmp_path)
    assert code == 0, screen
    header = screen.index("quorum lab: N=3 R=2 W=2 (R+W>N)")
    progress = [m.start() for m in re.finditer(r"workload\s.*?\d+/300", screen)]
    verdict = screen.index("verdict: VALID: no anomaly found (exit code 0)")
    assert progress, screen[:2000]
    assert header < progress[0] < verdict
    assert len({m.group() for m in re.finditer(r"\d+/300", screen)}) > 2  # it moved


def test_the_report_in_an_80_column_terminal_is_folded_to_fit(tmp_path: Path) -> None:
    """Its long sentences (the header, the warning, the examples) fold at spaces under
    their line in a terminal; piped, the lines stay whole (for grep)."""
    args = ["lab", "quorum", "-r", "one", "-w", "one", "--faults", "partition", *SMALL]
    code, screen = _run_in_terminal(args, tmp_path, columns=80)
    assert code == 80, screen
    report = screen[screen.index("quorum lab:") :]
    report = report[report.index("verdict:") :].replace("\r\n", "\n")
    lines = [line for line in report.split("\n") if line]
    assert len(lines) > 10 and max(len(line) for line in lines) <= 80, lines
    assert "  one example of each:" in lines
    piped = run_cli(*args, "--seed", "4", cwd=tmp_path)
    assert max(len(line) for line in piped.stdout.splitlines()) > 80


def test_plot_without_matplotlib_is_noticed_first_and_the_results_still_print(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "no-matplotlib" / "matplotlib"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    plot = tmp_path / "lab.png"
    run = run_cli(
        "lab", "quorum", "--coordinators", "1", *SMALL, "--plot", str(plot),
        cwd=tmp_path, env={"PYTHONPATH": str(blocked.parent)},
    )  # fmt: skip
    pip = str(Path(sys.executable).with_name("pip"))
    assert run.returncode == 23, run.stderr
    warning, error = run.stderr.strip().splitlines()[0], run.stderr.strip().splitlines()[-1]
    assert warning.startswith("warning: --plot needs matplotlib")
    assert "The run goes on; its results are printed without it." in warning
    assert error.startswith("error[unsupported]: --plot needs matplotlib")
    assert f"{pip} install matplotlib" in warning and f"{pip} install matplotlib" in error
    assert "verdict: VALID: no anomaly found (exit code 0)" in run.stdout
    assert "plot: not drawn: --plot needs matplotlib" in run.stdout
    assert not plot.exists()


DOC = Path(__file__).resolve().parents[2] / "docs" / "lab.md"
EXAMPLE = re.compile(
    r"<!-- worked-example:[^>]*-->\s*```console\n\$ multistore (.*?)\n(.*?)```", re.S
)


def _shape(line: str) -> str:
    """A report line with its numbers blanked and the padding between columns folded."""
    return re.sub(r"(?<=\S) +", " ", re.sub(r"\d+(\.\d+)?", "#", line))


def _varies(line: str) -> bool:
    """Lines whose presence depends on the run: an example sentence (which kinds were
    found) or a staleness bucket (which spans had reads)."""
    return bool(re.match(r"    [a-z-]+( [a-z-]+)*: ", line) or re.match(r"    [\d.]+-", line))


def test_the_worked_example_in_the_docs_runs_as_shown(tmp_path: Path) -> None:
    match = EXAMPLE.search(DOC.read_text(encoding="utf-8"))
    assert match is not None, "docs/lab.md lost its worked example"
    args, shown = match.group(1).split(), match.group(2).splitlines()
    run = run_cli(*args, cwd=tmp_path)
    assert run.returncode == 80, run.stderr  # the exit code the page states
    got = run.stdout.splitlines()
    assert [_shape(line) for line in got if not _varies(line)] == [
        _shape(line) for line in shown if not _varies(line)
    ]
    labels = [line.split(":")[0] for line in got if _varies(line) and ": " in line]
    assert "    stale read" in labels  # the example's first anomaly kind is found again
    assert (tmp_path / "history.edn").stat().st_size > 0
    assert (tmp_path / "lab.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # and, as the page says, the same run at R+W>N with one coordinator is valid
    overlapping = [a for a in args if a not in ("-r", "-w", "one")]
    run = run_cli(*overlapping, "--coordinators", "1", "--history", "h.jsonl", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verdict: VALID: no anomaly found (exit code 0)" in run.stdout
