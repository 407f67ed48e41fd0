"""The cart's binary wire body (tag ``c``; framing and columns in ``_wire``).

Laid out by columns so that decoding is a few C calls plus one pass that builds
the objects::

    count nodes      text  node ids                     (the node table)
    count vv         column node index   column counter (the context's vector)
    count cloud      column node index   column counter (its stray dots)
    count entries    text  items
                     column node index   column counter (each entry's dot)
                     column epoch        column up      column down

An entry is one live contribution: the item, its dot, the first counter of the
contribution (its id is ``"<node>:<epoch>"``) and its increments and decrements.
A cart whose item names contain NUL, or whose counts do not fit in 8 bytes, is
written with the JSON body instead (see :meth:`Cart._encode_wire`).
"""

from __future__ import annotations

from itertools import repeat
from operator import gt
from typing import TYPE_CHECKING

from multistore.core._causal import CausalContext
from multistore.core._counters import PNCounter
from multistore.core._dotstore import DotKernel
from multistore.core._hlc import _check_node
from multistore.core._vv import Dot, _dot, _new_tuple
from multistore.core._wire import Reader, Writer, fits

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["decode_cart", "encode_cart"]

new = object.__new__


def encode_cart(kernel: DotKernel[str, PNCounter], out: Writer) -> bytes | None:
    """The body of a cart's kernel, or None when it cannot be written in binary."""
    index: dict[str, int] = {}

    def at(node: str) -> int:
        if node not in index:
            index[node] = len(index)
        return index[node]

    context = kernel.context
    vv = sorted(context.vv.items())
    cloud = sorted(context.cloud)
    items: list[str] = []
    dots: list[Dot] = []
    epochs: list[int] = []
    ups: list[int] = []
    downs: list[int] = []
    for item, held in sorted(kernel.entries.items()):
        for dot in sorted(held):
            counter = held[dot]
            own = counter.node
            up, down = counter.increments, counter.decrements
            if "\x00" in item or not set(up) | set(down) <= {own}:
                return None
            items.append(item)
            dots.append(dot)
            epochs.append(int(own.rsplit(":", 1)[1]))
            ups.append(up.get(own, 0))
            downs.append(down.get(own, 0))
    columns: list[Sequence[int]] = [
        [at(node) for node, _ in vv],
        [counter for _, counter in vv],
        [at(dot.node) for dot in cloud],
        [dot.counter for dot in cloud],
        [at(dot.node) for dot in dots],
        [dot.counter for dot in dots],
        epochs,
        ups,
        downs,
    ]
    if not all(fits(column) for column in columns):
        return None
    out.count(len(index))
    out.text(list(index))
    for n, first in ((len(vv), 0), (len(cloud), 2)):
        out.count(n)
        out.column(columns[first])
        out.column(columns[first + 1])
    out.count(len(items))
    out.text(items)
    for column in columns[4:]:
        out.column(column)
    return out.getvalue()


def decode_cart(body: Reader, kernel: DotKernel[str, PNCounter]) -> None:
    """Fill an empty ``kernel`` from a cart body; raises InvalidValueError on bad input."""
    n_nodes = body.count("node count")
    nodes = body.text(n_nodes, "node table")
    for node in nodes:
        _check_node(node)
    if len(set(nodes)) != n_nodes:
        raise body.fail("the node table repeats a node")
    n = body.count("vector size")
    where = _nodes(body, body.column(n, "vector nodes"), nodes, "vector")
    vv = dict(zip(where, _counters(body, body.column(n, "vector counters"), "vector"), strict=True))
    if len(vv) != n:
        raise body.fail("the vector repeats a node")
    n = body.count("cloud size")
    where = _nodes(body, body.column(n, "cloud nodes"), nodes, "cloud")
    cloud = list(map(_dot, where, _counters(body, body.column(n, "cloud counters"), "cloud")))
    n = body.count("entry count")
    items = body.text(n, "items")
    at = body.column(n, "entry nodes")
    where = _nodes(body, at, nodes, "entry")
    counters = _counters(body, body.column(n, "entry counters"), "entry")
    epochs = _counters(body, body.column(n, "epochs"), "epoch")
    ups = body.column(n, "increments")
    downs = body.column(n, "decrements")
    body.end()
    context = CausalContext(vv, cloud)
    # Whole-column steps run in C (map, zip, dict); only the counters need a loop.
    dots: list[Dot] = list(map(_new_tuple, repeat(Dot), zip(where, counters, strict=True)))
    tops = [vv.get(node, 0) for node in nodes]
    if any(map(gt, counters, map(tops.__getitem__, at))):
        unseen = [dot for dot in dots if not context.contains(dot)]
        if unseen:
            raise body.fail(f"dot {unseen[0]} is not in the state's context")
    owner = dict(zip(dots, items, strict=True))
    if len(owner) != n:
        raise body.fail("two entries share a dot")
    payloads: list[PNCounter] = []
    append = payloads.append
    for own, up, down in zip(map("{}:{}".format, where, epochs), ups, downs, strict=True):
        # PNCounter._own, inlined: this loop is most of the decoding time.
        counter = new(PNCounter)
        counter._node = own
        counter._p = {own: up} if up else {}
        counter._n = {own: down} if down else {}
        append(counter)
    entries: dict[str, dict[Dot, PNCounter]] = dict(
        zip(items, map(dict, zip(zip(dots, payloads, strict=True))), strict=True)
    )
    if len(entries) != n:  # an item with several contributions: group them
        entries = {}
        for item, dot, payload in zip(items, dots, payloads, strict=True):
            entries.setdefault(item, {})[dot] = payload
    kernel.context = context
    kernel.owner = owner
    kernel.entries = entries


def _nodes(body: Reader, where: list[int], nodes: list[str], part: str) -> list[str]:
    if where and max(where) >= len(nodes):
        raise body.fail(f"{part} node index {max(where)} is past the node table")
    return list(map(nodes.__getitem__, where))


def _counters(body: Reader, counters: list[int], part: str) -> list[int]:
    if counters and min(counters) < 1:
        raise body.fail(f"{part} counter 0 (counters start at 1)")
    return counters
