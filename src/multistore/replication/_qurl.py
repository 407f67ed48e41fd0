"""``quorum://`` URLs: the nodes a cluster has, opening it, and the URL of a changed
membership.

* ``quorum:///DIR?nodes=3`` — embedded SQLite nodes ``DIR/node0.db`` …;
  ``names=a,b,c`` names them instead (after a node left, say).
* ``quorum://HOST:PORT/DB?peers=HOST2:PORT2,HOST3:PORT3/1`` — one Redis server per
  node, named ``node0`` … in that order, or by ``names=``.

Options: ``n``, ``r``, ``w`` (one/quorum/all/number), ``sloppy`` (true: a sloppy
quorum), ``read_from`` (random or fastest: which replicas a read asks first),
``vnodes``, ``timeout``, ``prefix`` (Redis key prefix), ``node_id`` (the coordinator's
identity; default: one unique to it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from multistore.core._quorum import Consistency, Level, QuorumConfig
from multistore.errors import InvalidURLError
from multistore.replication._quorum import QuorumCluster
from multistore.urls import OptionValue, StoreURL

__all__ = ["cluster_members", "membership_url", "open_cluster", "parse_quorum_url"]

T = TypeVar("T", int, float)


def parse_quorum_url(text: str) -> StoreURL:
    """``quorum:///dir?...`` or ``quorum://host:port/db?peers=...`` as a :class:`StoreURL`."""
    parts = urlsplit(text)
    if parts.scheme != "quorum":
        raise InvalidURLError(f"not a quorum:// URL: {text!r}")
    options: dict[str, OptionValue] = dict(parse_qsl(parts.query))
    if not parts.hostname:
        path = unquote(parts.path[1:])
        return StoreURL(scheme="quorum", database=path or None, options=options)
    return StoreURL(
        scheme="quorum",
        host=parts.hostname,
        port=parts.port or 6379,
        database=parts.path.strip("/") or None,
        options=options,
    )


def _level(value: object) -> Level:
    text = str(value).lower()
    if text.isdigit():
        return int(text)
    try:
        return Consistency(text)
    except ValueError:
        raise InvalidURLError(
            f"consistency level {value!r} must be one, quorum, all or a number"
        ) from None


def _number(opts: Mapping[str, OptionValue], name: str, default: T, kind: type[T]) -> T:
    """Option ``name`` as an int or a float (``default`` when absent)."""
    if name not in opts:
        return default
    try:
        return kind(str(opts[name]))
    except ValueError:
        what = "an int" if kind is int else "a number"
        raise InvalidURLError(f"quorum URL option {name}={opts[name]!r} must be {what}") from None


def _flag(name: str, value: object) -> bool:
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidURLError(f"quorum URL option {name}={value!r} must be true or false")


def cluster_members(url: StoreURL) -> list[tuple[str, str]]:
    """``(name, where)`` of each node: the SQLite file, or the Redis ``host:port/db``."""
    opts = url.options
    if url.host is None:
        if not url.database:
            raise InvalidURLError("quorum:/// needs a directory for the embedded nodes")
        if "names" in opts:
            names = [name for name in str(opts["names"]).split(",") if name]
        else:
            count = _number(opts, "nodes", max(3, _number(opts, "n", 3, int)), int)
            names = [f"node{i}" for i in range(count)]
        return [(name, str(Path(url.database) / f"{name}.db")) for name in names]
    db = url.database or "0"
    peers = [p for p in str(opts.get("peers", "")).split(",") if p]
    places = [f"{url.host}:{url.port}/{db}"] + [p if "/" in p else f"{p}/{db}" for p in peers]
    if "names" not in opts:
        return [(f"node{i}", place) for i, place in enumerate(places)]
    names = [name for name in str(opts["names"]).split(",") if name]
    if len(names) != len(places):
        raise InvalidURLError(f"names= gives {len(names)} names for {len(places)} Redis nodes")
    return list(zip(names, places, strict=True))


async def open_cluster(url: StoreURL) -> QuorumCluster:
    """The coordinator the URL describes (see the module docstring)."""
    opts = url.options
    config = QuorumConfig(
        n=_number(opts, "n", 3, int),
        r=_level(opts.get("r", "quorum")),
        w=_level(opts.get("w", "quorum")),
        sloppy=_flag("sloppy", opts.get("sloppy", "false")),
    )
    common: dict[str, Any] = {
        "config": config,
        "vnodes": _number(opts, "vnodes", 64, int),
        "timeout": _number(opts, "timeout", 2.0, float),
    }
    if "node_id" in opts:
        common["node_id"] = str(opts["node_id"])
    if "read_from" in opts:
        common["read_from"] = str(opts["read_from"])
    members = cluster_members(url)
    names = [name for name, _ in members]
    if url.host is None:
        return await QuorumCluster.embedded(Path(str(url.database)), names, **common)
    urls = [f"redis://{place}" for _, place in members]
    prefix = str(opts.get("prefix", "q:"))
    return await QuorumCluster.redis(urls, names=names, prefix=prefix, **common)


def membership_url(url: StoreURL, members: list[tuple[str, str]]) -> StoreURL:
    """``url`` with its nodes replaced by ``members`` (as :func:`cluster_members` gives
    them): the URL to open the cluster with after a membership change."""
    options = {k: v for k, v in url.options.items() if k not in ("names", "nodes", "peers")}
    names = [name for name, _ in members]
    default = names == [f"node{i}" for i in range(len(names))]
    if url.host is None:
        if default:
            options["nodes"] = len(names)
        else:
            options["names"] = ",".join(names)
        return replace(url, options=options)
    first, *peers = (place for _, place in members)
    host_port, _, db = first.partition("/")
    host, _, port = host_port.rpartition(":")
    if peers:
        options["peers"] = ",".join(peers)
    if not default:
        options["names"] = ",".join(names)
    # ``hosts`` too: a URL renders its host list (seed lists), not ``host``/``port``.
    return replace(
        url,
        host=host,
        port=int(port),
        hosts=((host, int(port)),),
        database=db or None,
        options=options,
    )
