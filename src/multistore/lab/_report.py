"""The lab's report: the verdict and its exit code, the counts, one example of each
anomaly in words, and the staleness measured beside the PBS model.

:func:`summarize` turns a checked history into the JSON-ready part of the report;
:func:`format_lab_report` prints a whole report as text. Verdicts and the exit codes
of ``multistore lab`` (a CI gate):

======================  ====  ==========================================================
``valid``               0     no anomaly, every key checked
``anomalies``           80    at least one anomaly (stale read, lost write, …)
``unknown``             81    no anomaly found, but a key's linearizability search hit
                              its bound
``nothing-checked``     82    no operation of the workload succeeded or no read did:
                              there was nothing to check
======================  ====  ==========================================================
"""

from __future__ import annotations

import bisect
import enum
import math
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from multistore.core._checkers import bucket_edges
from multistore.core._history import EventType
from multistore.core._history_report import HistoryReport
from multistore.lab._latency import Latency
from multistore.lab._pbs import PBSModel

__all__ = [
    "ANOMALY_KINDS",
    "FINAL_PROCESS",
    "LabProgress",
    "Verdict",
    "format_header",
    "format_lab_report",
    "summarize",
]

FINAL_PROCESS: Final = 1_000_000
"""Process ids from here on are the final reads at ``ALL`` (not the workload)."""


class Verdict(enum.Enum):
    VALID = "valid"
    ANOMALIES = "anomalies"
    UNKNOWN = "unknown"
    NOTHING_CHECKED = "nothing-checked"

    @property
    def exit_code(self) -> int:
        return _EXIT[self]

    @property
    def headline(self) -> str:
        return _HEADLINE[self]


_EXIT: Final = {
    Verdict.VALID: 0,
    Verdict.ANOMALIES: 80,
    Verdict.UNKNOWN: 81,
    Verdict.NOTHING_CHECKED: 82,
}
_HEADLINE: Final = {
    Verdict.VALID: "VALID: no anomaly found",
    Verdict.ANOMALIES: "ANOMALIES FOUND",
    Verdict.UNKNOWN: "UNKNOWN: no anomaly found, but the search gave up on some key",
    Verdict.NOTHING_CHECKED: "NOTHING CHECKED: no operation (or no read) succeeded",
}

ANOMALY_KINDS: Final = (
    ("stale_reads", "stale reads"),
    ("lost_writes", "lost writes"),
    ("failed_writes_observed", "failed writes observed"),
    ("monotonic_violations", "monotonic-read violations"),
    ("phantom_reads", "phantom reads"),
    ("non_linearizable_keys", "non-linearizable keys"),
)
"""(count name, label) of each kind of anomaly, in report order."""


@dataclass(frozen=True, slots=True)
class LabProgress:
    """Where a run is, for a progress display."""

    phase: str
    """``starting``, ``workload``, ``healing``, ``final reads`` or ``checking``."""
    done: int
    total: int
    ok: int = 0
    fail: int = 0
    info: int = 0
    faults: tuple[str, ...] = field(default=())
    """The faults in effect."""


# -- the JSON report -------------------------------------------------------------------


def _verdict(checked: HistoryReport, counts: Mapping[str, int]) -> Verdict:
    if checked.valid is False:
        return Verdict.ANOMALIES
    reads_ok = sum(1 for op in checked.operations if op.is_read and op.ok)
    if counts["ok"] == 0 or reads_ok == 0:
        return Verdict.NOTHING_CHECKED
    if checked.valid is None:
        return Verdict.UNKNOWN
    return Verdict.VALID


def _staleness(
    checked: HistoryReport, model: PBSModel | None
) -> tuple[list[dict[str, Any]], list[list[float]] | None]:
    """The measured buckets (with the model's expectation for the same reads) and the
    model's curve."""
    lower = bucket_edges([b.from_ms for b in checked.staleness])
    times: list[list[float]] = [[] for _ in lower]
    for sample in checked.samples:
        times[bisect.bisect_right(lower, sample.t_ms) - 1].append(sample.t_ms)
    rows = []
    for bucket, ts in zip(checked.staleness, times, strict=True):
        row = bucket.to_dict()
        row["mean_ms"] = round(sum(ts) / len(ts), 3) if ts else None
        if model is not None:
            expected = model.expected(ts)
            row["model_p_consistent"] = None if expected is None else round(expected, 4)
        rows.append(row)
    curve = None
    if model is not None:
        top = max([*(s.t_ms for s in checked.samples), 10.0])
        low = 0.01  # ms: the curve is drawn on a log axis
        grid = [0.0, *(low * (top / low) ** (i / 200) for i in range(201))]
        curve = [[round(t, 4), round(p, 4)] for t, p in model.curve(grid)]
    return rows, curve


def summarize(
    checked: HistoryReport,
    *,
    model: PBSModel | None = None,
    latency: Latency | None = None,
) -> dict[str, Any]:
    """The checked history as report data: counts (the workload's operations apart
    from the final reads), verdict and exit code, examples and their sentences, and
    staleness measured beside the model."""
    data = checked.to_dict(max_examples=3)
    workload = [op for op in checked.operations if op.process < FINAL_PROCESS]
    counts = data["counts"]
    counts["operations"] = len(workload)
    counts["ok"] = sum(op.type is EventType.OK for op in workload)
    counts["fail"] = sum(op.type is EventType.FAIL for op in workload)
    counts["info"] = sum(op.type is EventType.INFO for op in workload)
    final = [op for op in checked.operations if op.process >= FINAL_PROCESS]
    counts["final_reads"] = len(final)
    counts["final_reads_ok"] = sum(op.ok for op in final)
    verdict = _verdict(checked, counts)
    data["verdict"] = verdict.value
    data["exit_code"] = verdict.exit_code
    data["staleness"], curve = _staleness(checked, model)
    if latency is not None and model is not None:
        data["latency_model"] = {
            "spec": latency.spec,
            "distribution": latency.describe(),
            "mean_ms": None if math.isinf(latency.mean) else round(latency.mean * 1e3, 4),
            "trials": model.trials,
            "curve": curve,
        }
    data["sentences"] = example_sentences(data)
    return data


# -- examples in words -------------------------------------------------------------------


def _s(ns: int | None) -> str:
    return "never" if ns is None else f"{ns / 1e9:.3f} s"


def _v(value: Any) -> str:
    return "nothing (never written)" if value is None else repr(value)


def _who(op: Mapping[str, Any]) -> str:
    process = op["process"]
    return "the final read" if process >= FINAL_PROCESS else f"process {process}"


def _stale(ex: Mapping[str, Any]) -> str:
    read, saw, missed = ex["read"], ex["saw"], ex["missed"]
    got = "nothing (never written)"
    if saw is not None:
        got = f"{saw['value']!r}, written at {_s(saw['invoke'])}"
    return (
        f"{_who(read)} read {read['key']} at {_s(read['invoke'])} and got {got}; but "
        f"{missed['value']!r} had replaced it: its write began after that value was in "
        f"place and was acknowledged at {_s(missed['complete'])}, {ex['age_ms']:.1f} ms "
        "before the read began"
    )


def _lost(ex: Mapping[str, Any]) -> str:
    write, last, seen = ex["write"], ex["last_read"], ex["seen_by"]
    saw = ex.get("last_saw")
    seen_text = "no read ever returned it"
    if seen is not None:
        seen_text = f"{_who(seen)} read it at {_s(seen['invoke'])}, then it was gone"
    last_value = _v(None if saw is None else saw["value"])
    return (
        f"the write of {write['value']!r} to {write['key']} by {_who(write)} was acknowledged "
        f"at {_s(write['complete'])}; {seen_text}: the last read ({_who(last)} at "
        f"{_s(last['invoke'])}) returned {last_value}, which is older "
        f"({ex['reads_after']} reads began after the acknowledgement)"
    )


def _failed(ex: Mapping[str, Any]) -> str:
    write, read = ex["write"], ex["read"]
    why = f" ({write['error']})" if write.get("error") else ""
    return (
        f"the write of {write['value']!r} to {write['key']} by {_who(write)} failed as "
        f"definite at {_s(write['complete'])}{why}, yet {_who(read)} read {write['value']!r} "
        f"at {_s(read['invoke'])}: it took effect, so the failure should have been "
        "indeterminate"
    )


def _monotonic(ex: Mapping[str, Any]) -> str:
    earlier, later = ex["earlier"], ex["later"]
    older = (
        "the initial value"
        if later["value"] is None
        else f"an older value (its write ended before the write of {earlier['value']!r} began)"
    )
    return (
        f"{_who(later)} read {later['key']} = {_v(earlier['value'])} at "
        f"{_s(earlier['invoke'])}, then {_v(later['value'])} at {_s(later['invoke'])}, "
        f"{older}: its reads went back in time"
    )


def _phantom(ex: Mapping[str, Any]) -> str:
    return (
        f"{_who(ex)} read {ex['key']} at {_s(ex['invoke'])} and got {ex['value']!r}, which no "
        "write had written (or whose write began only after the read ended)"
    )


def _linearizability(ex: Mapping[str, Any]) -> str:
    culprit = ex.get("culprit")
    text = (
        f"key {ex['key']}: no order of its {ex['operations']} operations fits a single "
        f"register; the search placed {ex['placed']} of them, with the register holding "
        f"{_v(ex['value_there'])}"
    )
    if culprit is not None:
        what = (
            f"a read that returned {_v(culprit['value'])}"
            if culprit["f"] == "read"
            else f"the write of {culprit['value']!r}"
        )
        text += f", and then could not place {what} by {_who(culprit)} at {_s(culprit['invoke'])}"
    return text


_SENTENCES: Final[dict[str, tuple[str, Callable[[Mapping[str, Any]], str]]]] = {
    "stale_reads": ("stale read", _stale),
    "lost_writes": ("lost write", _lost),
    "failed_writes_observed": ("failed write observed", _failed),
    "monotonic_violations": ("monotonic-read violation", _monotonic),
    "phantom_reads": ("phantom read", _phantom),
    "linearizability": ("non-linearizable key", _linearizability),
}


def example_sentences(data: Mapping[str, Any]) -> dict[str, str]:
    """One sentence per anomaly kind that has an example."""
    out: dict[str, str] = {}
    for kind, (_, make) in _SENTENCES.items():
        found = data["examples"].get(kind) or []
        if found:
            out[kind] = make(found[0])
    return out


# -- text ------------------------------------------------------------------------------


def format_header(config: Mapping[str, Any]) -> str:
    """The run's setup in one line (printed before the run starts)."""
    overlap = "R+W>N" if config["overlapping"] else "R+W<=N"
    latency = config.get("latency", "none")
    extra = f", latency per message: {latency}" if latency not in ("none", "", None) else ""
    return (
        f"quorum lab: N={config['n']} R={config['r']} W={config['w']} ({overlap}), "
        f"M={config['m']} {config['nodes']} nodes, {config['coordinators']} coordinators "
        f"({config.get('routing', 'random')} routing), faults: {config['faults']}{extra}; "
        f"{config['ops']} operations over {config['duration']:g} s"
    )


def _pct(p: float | None) -> str:
    return "     -" if p is None else f"{p:>6.1%}"


def fold(text: str, width: int | None) -> str:
    """Each line of ``text`` folded to ``width`` columns at spaces, its continuation
    lines indented two more than it (None: as it is)."""
    if width is None:
        return text
    out: list[str] = []
    for line in text.split("\n"):
        indent = " " * (len(line) - len(line.lstrip(" ")) + 2)
        out.extend(
            textwrap.wrap(
                line,
                width=max(width, 40),
                subsequent_indent=indent,
                break_long_words=False,
                break_on_hyphens=False,
            )
            or [line]
        )
    return "\n".join(out)


def format_lab_report(
    report: Mapping[str, Any], *, header: bool = True, width: int | None = None
) -> str:
    """The report as readable lines (what ``--json`` prints in full), folded to
    ``width`` columns if given."""
    counts = report["counts"]
    lines = [format_header(report["config"])] if header else []
    lines.append(
        f"  {counts['operations']} operations ({counts['ok']} ok, {counts['fail']} fail, "
        f"{counts['info']} info) in {report['elapsed_s']:.2f} s, then "
        f"{counts['final_reads']} final reads at ALL ({counts['final_reads_ok']} ok)"
    )
    if report.get("warning"):
        lines.append(f"  warning: {report['warning']}")
    lines.extend(f"  fault at {f['at_s']:>6.2f} s: {f['fault']}" for f in report["faults"])
    verdict = Verdict(report["verdict"])
    lines.append(f"  verdict: {verdict.headline} (exit code {verdict.exit_code})")
    for name, label in ANOMALY_KINDS:
        lines.append(f"    {label:<28}{counts[name]}")
    lines.append(f"    {'unknown keys':<28}{counts['unknown_keys']}")
    lines.append(f"    {'unverified writes':<28}{counts['unverified_writes']}")
    sentences = report.get("sentences", {})
    if sentences:
        lines.append("  one example of each:")
        for kind, sentence in sentences.items():
            lines.append(f"    {_SENTENCES[kind][0]}: {sentence}")
    lines.append("  latency (ms)      ok   fail  info     p50     p90     p99")
    for f, row in report["latency"].items():
        pct = "".join(f"{row.get(f'p{q}_ms', math.nan):>8.2f}" for q in (50, 90, 99))
        lines.append(f"    {f:<12}{row['ok']:>6}{row['fail']:>7}{row['info']:>6}{pct}")
    lines.extend(_staleness_lines(report))
    if report.get("plot_error"):
        lines.append(f"  plot: not drawn: {report['plot_error']}")
    for key in ("history", "plot"):
        if key in report:
            lines.append(f"  {key}: {report[key]}")
    return fold("\n".join(lines), width)


def _staleness_lines(report: Mapping[str, Any]) -> list[str]:
    model = report.get("latency_model")
    title = "  P(consistent read) by time since the latest acknowledged write"
    if model is not None:
        title += f", measured and PBS model ({model['distribution']} per message leg)"
    lines = [title + ":"]
    rows = [b for b in report["staleness"] if b["reads"]]
    if not rows:
        return [*lines, "    no read began after an acknowledged write"]
    for bucket in rows:
        hi = "inf" if bucket["to_ms"] is None else f"{bucket['to_ms']:g}"
        span = f"{bucket['from_ms']:g}-{hi} ms"
        text = f"    {span:<14}{_pct(bucket['p_consistent'])} of {bucket['reads']:>4} reads"
        if model is not None:
            text += f"   model {_pct(bucket.get('model_p_consistent'))}"
        lines.append(text)
    return lines
