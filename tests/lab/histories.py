"""Small helpers to write register histories by hand and to draw linearizable ones."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from multistore.core._history import Event, EventType, Value

# (process, f, key, value, invoke, complete, type); complete None: never completed
Spec = tuple[int, str, str, Value, int, int | None, str]


def history(*specs: Spec) -> list[Event]:
    """Events of hand-written operations, ordered by time (completions first on ties)."""
    raw: list[tuple[int, int, int, str, str, Value, EventType]] = []
    for process, f, key, value, invoke, complete, kind in specs:
        raw.append((invoke, 1, process, f, key, value if f == "write" else None, EventType.INVOKE))
        if complete is not None:
            done_value = value if kind == "ok" or f == "write" else None
            raw.append((complete, 0, process, f, key, done_value, EventType(kind)))
    raw.sort(key=lambda r: (r[0], r[1]))
    return [
        Event(i, process, kind, f, key, value, time)
        for i, (time, _, process, f, key, value, kind) in enumerate(raw)
    ]


def w(
    process: int, value: int, start: int, end: int | None, kind: str = "ok", key: str = "x"
) -> Spec:
    return (process, "write", key, value, start, end, kind)


def r(
    process: int, value: Value, start: int, end: int | None, kind: str = "ok", key: str = "x"
) -> Spec:
    return (process, "read", key, value, start, end, kind)


@dataclass(frozen=True)
class _Planned:
    is_write: bool
    outcome: str  # ok / info / fail
    took_effect: bool  # for info writes
    before: int
    after: int
    key: int


PLANS = st.lists(
    st.builds(
        _Planned,
        st.booleans(),
        st.sampled_from(["ok", "ok", "ok", "ok", "info", "fail"]),
        st.booleans(),
        st.integers(1, 350),
        st.integers(1, 350),
        st.integers(0, 1),
    ),
    min_size=1,
    max_size=14,
)


def linearizable_history(plan: list[_Planned]) -> list[Event]:
    """Run the plan on a real sequential register, one op every 100 ns at its
    linearization point, each op's interval stretched around it; ops go to the first
    free process (a process runs one op at a time; after an info it is gone)."""
    registers: dict[str, Value] = {}
    specs: list[Spec] = []
    free_at: list[int] = []  # per process: when its last op completed (-1: crashed)
    for i, p in enumerate(plan):
        point = 1000 + 100 * i
        invoke, complete = point - p.before, point + p.after
        key = f"k{p.key}"
        value: Value = None
        if p.is_write:
            value = i + 1
            if p.outcome == "ok" or (p.outcome == "info" and p.took_effect):
                registers[key] = value
        else:
            value = registers.get(key)
        process = next((n for n, t in enumerate(free_at) if 0 <= t < invoke), len(free_at))
        if process == len(free_at):
            free_at.append(0)
        free_at[process] = -1 if p.outcome == "info" else complete
        end = None if p.outcome == "info" and p.took_effect else complete
        f = "write" if p.is_write else "read"
        specs.append((process, f, key, value, invoke, end, p.outcome))
    return history(*specs)


_TIGHT_WRITE = _Planned(True, "ok", False, 1, 1, 0)
_TIGHT_READ = _Planned(False, "ok", False, 1, 1, 0)
FRAMED_PLANS = PLANS.map(lambda plan: [_TIGHT_WRITE, _TIGHT_WRITE, *plan, _TIGHT_READ])
"""Plans that start with two sequential writes of k0 and end with a read of k0 after
both: a read that can be made stale."""
