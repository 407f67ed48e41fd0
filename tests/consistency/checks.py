"""Look at every participant with its own driver: what is still prepared or staged."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import redis

from multistore.urls import parse_url


def in_doubt(urls: Mapping[str, str], node: str | None) -> dict[str, list[str]]:
    """Per participant, the prepared 2PC branches (or intents) of coordinator ``node``
    (None: of every coordinator)."""
    found: dict[str, list[str]] = {}
    for name, url in urls.items():
        parsed = parse_url(url)
        gids: list[str] = []
        if parsed.scheme == "postgresql":
            with psycopg.connect(
                host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database
            ) as conn:
                rows = conn.execute(
                    "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
                ).fetchall()
                gids = [str(r[0]) for r in rows]
        elif parsed.scheme == "mariadb":
            conn2 = pymysql.connect(
                host=parsed.host, port=parsed.port or 3306, user=parsed.username or "root"
            )
            with contextlib.closing(conn2), conn2.cursor() as cur:
                cur.execute("XA RECOVER")
                for _fmt, glen, _blen, data in cur.fetchall():
                    text = data.decode() if isinstance(data, bytes) else str(data)
                    gids.append(f"{text[: int(glen)]}:{text[int(glen) :]}")
        elif parsed.scheme == "sqlite":
            db = sqlite3.connect(f"{parsed.path}-2pc")
            with contextlib.closing(db):
                gids = [r[0] for r in db.execute("SELECT gid FROM multistore_tpc_intents")]
        elif parsed.scheme == "redis":
            client = redis.Redis.from_url(url)
            with contextlib.closing(client):
                gids = [_text(m) for m in client.smembers("ms2pc:prepared")]
                staged = [_text(k) for k in client.keys("ms2pc:tx:*")]
                gids += [k.removeprefix("ms2pc:tx:") for k in staged]
                locks = [client.get(k) for k in client.keys("ms2pc:lock:*")]
                gids += [_text(v) for v in locks if v is not None]
        found[name] = sorted(g for g in gids if _node(g) is not None and node in (None, _node(g)))
    return found


def _node(gid: str) -> str | None:
    """The coordinator node a branch id names (ids with or without a log id)."""
    parts = gid.split(":")
    return parts[1].split(".")[0] if len(parts) > 2 and parts[0] == "ms2pc" else None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nothing_in_doubt(urls: Mapping[str, str], node: str) -> bool:
    return not any(in_doubt(urls, node).values())


def expire_lease(log_path: str, node: str) -> None:
    """Make node ``node``'s lease in the SQLite log at ``log_path`` run out now, as if its
    coordinator had stopped renewing it (paused, or cut off from the log)."""
    db = sqlite3.connect(log_path)
    with contextlib.closing(db), db:
        db.execute("UPDATE multistore_tpc_nodes SET expires = 1 WHERE node = ?", (node,))


def log_records(log_path: str) -> list[tuple[str, str]]:
    db = sqlite3.connect(log_path)
    with contextlib.closing(db):
        return [(r[0], r[1]) for r in db.execute("SELECT gtrid, decision FROM multistore_tpc_log")]


def decision_records(url: str) -> list[tuple[str, str]]:
    """(gtrid, decision) of the records a PostgreSQL or MariaDB participant keeps as a
    last resource."""
    parsed = parse_url(url)
    sql = "SELECT gtrid, decision FROM multistore_tpc_decisions ORDER BY created"
    if parsed.scheme == "postgresql":
        with psycopg.connect(
            host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database
        ) as conn:
            return [(str(r[0]), str(r[1])) for r in conn.execute(sql).fetchall()]
    conn2 = pymysql.connect(
        host=parsed.host,
        port=parsed.port or 3306,
        user=parsed.username or "root",
        database=parsed.database,
    )
    with contextlib.closing(conn2), conn2.cursor() as cur:
        cur.execute(sql)
        return [(str(r[0]), str(r[1])) for r in cur.fetchall()]


_ROOT = Path(__file__).resolve().parents[2]


def kill_coordinator(config: Mapping[str, Any]) -> None:
    """Run ``tests.consistency.tpc_crash_script`` with ``config`` in a process of its
    own and check that it was SIGKILLed at its crash point."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.consistency.tpc_crash_script", json.dumps(config)],
        cwd=_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
