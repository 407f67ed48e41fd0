"""Hostile input for the store suites: what an attacker or a careless caller passes.

Strategies for names, keys, values, numbers and nesting that stores must either take
(and give back unchanged) or refuse with a ``MultistoreError``, and :func:`drive`, which
runs hypothesis examples of generated operations against one open store and checks,
for each operation:

- only ``MultistoreError`` subclasses escape (anything else fails the example);
- a refused operation changes nothing: the store's state (``snapshot``) is the same
  before and after, and the error says so (its outcome is DEFINITE);
- an accepted operation passes its own check (a value read back unchanged, every row
  of a batch present).

Each model's suite (``test_hostile_<model>.py``) describes its operations as
:class:`Op` objects and its state as a ``snapshot`` coroutine.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multistore.errors import MultistoreError

S = TypeVar("S")

#: Examples per backend in the default run; ``HOSTILE_EXAMPLES`` raises it for a soak.
EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "40"))


def deep_list(depth: int) -> list[Any]:
    """A list nested ``depth`` levels deep (built without recursion)."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def deep_dict(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


#: Strings that break naive code: empty, NUL, lone surrogates, quotes, SQL and Cypher
#: and InfluxQL fragments, operators, globs, markup, path tricks, long and odd text.
NASTY_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfff",
    "'",
    '"',
    "`",
    "'; DROP TABLE t; --",
    '" OR 1=1 --',
    "$where",
    "$gt",
    "a.b",
    "a..b",
    ".a",
    "*",
    "?",
    "[",
    "%",
    "_",
    "\\",
    "\\'",
    "../../etc/passwd",
    "[bold]x[/]",
    "}) MATCH (n) DETACH DELETE n //",
    'x" WHERE 1=1; DROP MEASUREMENT m; --',
    "\n",
    "\r\n\t",
    "é",
    "🙂",
    "\u202e",
    "\ufeff",
    "a" * 70,
]
#: Long strings, made on draw (a strategy that holds them prints them in its repr).
long_text = st.sampled_from([("a", 300), ("b", 5000), ("Ω", 2000), ("🙂", 1100)]).map(
    lambda shape: shape[0] * shape[1]
)

texts = st.one_of(
    st.sampled_from(NASTY_TEXT),
    long_text,
    st.text(max_size=12),
    st.text(st.characters(codec="utf-8"), max_size=6),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2),
)
#: Integers at and beyond every 64-bit edge, and one with no decimal ``repr`` (more than
#: 4300 digits: Python 3.11+ refuses to print it), made on draw so that hypothesis never
#: has to show it among the choices.
big_ints = st.one_of(
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**400, -(10**400)]),
    st.just(5000).map(lambda digits: 10**digits),
)
integers = st.one_of(st.integers(-5, 5), st.integers(), big_ints)
floats = st.one_of(
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]),
)
numbers = st.one_of(integers, floats)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts, st.binary(max_size=8))
#: Deep nesting, built on draw (a strategy holding the values would have to print them).
deep = st.sampled_from([("list", 101), ("list", 10_000), ("dict", 101), ("dict", 3000)]).map(
    lambda shape: deep_list(shape[1]) if shape[0] == "list" else deep_dict(shape[1])
)
#: JSON-ish values: scalars, small lists and dicts (keys hostile too), deep nesting.
values = st.one_of(
    st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.one_of(texts, integers), inner, max_size=3)
        ),
        max_leaves=6,
    ),
    deep,
)
#: Valid but unusual JSON: what a store must take and give back unchanged.
plain_text = st.one_of(
    st.sampled_from([t for t in NASTY_TEXT if ("\x00" not in t and t.isprintable()) or t in "\n"]),
    long_text,
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
)
plain_numbers = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False)
)
plain_values = st.recursive(
    st.one_of(st.none(), st.booleans(), plain_numbers, plain_text),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(plain_text, inner, max_size=3),
    max_leaves=6,
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four, else ``bad``: most operations then get far enough
    to write, and the rest are refused."""
    return st.integers(0, 3).flatmap(lambda pick: bad if pick == 3 else good)


#: Anything at all where a specific type is expected.
anything = st.one_of(
    values, st.tuples(scalars), st.sets(st.integers(), max_size=2), st.just(object())
)


class Op(Generic[S]):
    """One operation on a store: ``run`` does it; ``verify`` checks an accepted one.
    (Not a dataclass: hypothesis would print its fields, deep values and all.)"""

    __slots__ = ("args", "name", "run", "verify")

    def __init__(
        self,
        name: str,
        run: Callable[[S], Awaitable[Any]],
        verify: Callable[[S, Any], Awaitable[None]] | None = None,
        args: tuple[Any, ...] = (),
    ) -> None:
        self.name = name
        self.run = run
        self.verify = verify
        self.args = args

    def __repr__(self) -> str:
        shown = ", ".join(_short(a) for a in self.args)
        return f"{self.name}({shown})"


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int too long for repr, a deep value
        return f"<{type(value).__name__} too large to print>"
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class Stats:
    """What a run did, for the report of example counts."""

    examples: int = 0
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


async def check(store: S, op: Op[S], snapshot: Callable[[S], Awaitable[Any]], stats: Stats) -> None:
    before = await snapshot(store)
    try:
        result = await op.run(store)
    except MultistoreError as exc:
        after = await snapshot(store)
        assert after == before, (
            f"{op!r} was refused ({type(exc).__name__}: {exc}) but wrote: {_diff(before, after)}"
        )
        assert exc.definite, f"{op!r}: a refusal with an indeterminate outcome: {exc!r}"
        stats.refused[type(exc).__name__] = stats.refused.get(type(exc).__name__, 0) + 1
        return
    stats.accepted += 1
    if op.verify is not None:
        await op.verify(store, result)


def _diff(before: Any, after: Any) -> str:
    """What changed between two snapshots, briefly."""
    if isinstance(before, dict) and isinstance(after, dict):
        changed = {
            k: (_short(before.get(k)), _short(after.get(k)))
            for k in before.keys() | after.keys()
            if before.get(k) != after.get(k)
        }
        return _short(changed)
    return f"{_short(before)} -> {_short(after)}"


def drive(
    store_factory: Callable[[], Awaitable[S]],
    ops: st.SearchStrategy[Op[S]],
    snapshot: Callable[[S], Awaitable[Any]],
    *,
    examples: int = EXAMPLES,
    steps: int = 3,
    prepare: Callable[[S], Awaitable[None]] | None = None,
) -> Stats:
    """Open one store and run ``examples`` hypothesis examples against it, each a short
    sequence of generated operations (up to ``steps``), checking every operation."""
    stats = Stats()
    started = time.monotonic()
    with asyncio.Runner() as runner:
        store = runner.run(store_factory())
        try:
            if prepare is not None:
                runner.run(prepare(store))

            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(st.lists(ops, min_size=1, max_size=steps))
            def example(sequence: list[Op[S]]) -> None:
                stats.examples += 1
                for op in sequence:
                    runner.run(check(store, op, snapshot, stats))

            example()
        finally:
            runner.run(_close(store))
    stats.seconds = time.monotonic() - started
    refused = ", ".join(f"{k} {v}" for k, v in sorted(stats.refused.items()))
    print(
        f"hostile: {stats.examples} examples in {stats.seconds:.1f} s, "
        f"{stats.accepted} operations accepted, refused: {refused}"
    )
    return stats


async def _close(store: Any) -> None:
    await store.close()
