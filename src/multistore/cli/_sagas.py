"""The bodies of ``multistore sagas`` (list), ``sagas show ID``, ``sagas cancel ID``
and ``sagas worker``.

What a person reads is made for reading: times as local dates with their age
("2025-06-01 12:03:04, 5 s ago"), errors as ``Type: message``, a line that says so
when nothing matched. ``--json`` gives the same data with the JSON columns of the log
(input, outputs, errors) decoded, and times as Unix seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from multistore.cli._human import age, moment
from multistore.config import load_config
from multistore.consistency import (
    ErrorInfo,
    EtcdLeases,
    Saga,
    SagaEngine,
    SagaLog,
    SagaWorker,
    list_sagas,
    show_saga,
)
from multistore.core import SagaState
from multistore.errors import NotFoundError, UsageError
from multistore.stores.relational import RelationalStore

__all__ = [
    "load_saga_definitions",
    "run_sagas_cancel",
    "run_sagas_list",
    "run_sagas_show",
    "run_sagas_worker",
    "saga_store",
]

_JSON_COLUMNS = ("input", "output", "error", "compensation_error")


async def saga_store(config_path: Path | None) -> RelationalStore:
    config = load_config(config_path)
    store = await config.open("sagas")
    if not isinstance(store, RelationalStore):
        raise UsageError(f"the sagas role needs a relational store, not {store.url}")
    return store


async def run_sagas_list(
    config_path: Path | None, *, state: str | None, limit: int, quiet: bool
) -> dict[str, Any]:
    """The sagas in the log, newest first (only those in ``state`` if given)."""
    if state is not None and state not in {s.value for s in SagaState}:
        known = ", ".join(s.value for s in SagaState)
        raise UsageError(f"unknown saga state {state!r}; states are: {known}")
    store = await saga_store(config_path)
    try:
        await SagaLog(store).setup()
        sagas = await list_sagas(store, state=state, limit=limit)
    finally:
        await store.close()
    if not quiet:
        _print_list(sagas, where=str(store.url), state=state)
    return {"sagas": [_decoded(s) for s in sagas]}


async def run_sagas_show(config_path: Path | None, saga_id: str, *, quiet: bool) -> dict[str, Any]:
    """One saga with its steps; :class:`NotFoundError` if the log has no such id."""
    store = await saga_store(config_path)
    try:
        await SagaLog(store).setup()
        saga = await show_saga(store, saga_id)
    finally:
        await store.close()
    if saga is None:
        raise NotFoundError(f"no saga with id {saga_id!r} in {store.url}")
    if not quiet:
        _print_saga(saga)
    saga = _decoded(saga)
    saga["steps"] = [_decoded(step) for step in saga["steps"]]
    return {"saga": saga}


async def run_sagas_cancel(
    config_path: Path | None, saga_id: str, reason: str, *, quiet: bool
) -> dict[str, Any]:
    """Cancel a stuck saga (:meth:`SagaEngine.cancel_stuck`); the saga as it is then."""
    store = await saga_store(config_path)
    try:
        engine = SagaEngine(store)
        await engine.setup()
        result = await engine.cancel_stuck(saga_id, reason)
    finally:
        await store.close()
    if not quiet:
        console = Console(highlight=False)
        console.print(f"saga {escape(saga_id)} is {result.state.value}")
        if result.compensation_error is not None:
            console.print(escape(result.compensation_error.message), soft_wrap=False)
    return {"saga_id": saga_id, "state": result.state.value}


# -- reading ----------------------------------------------------------------------------


def human_time(seconds: float | None, *, now: float | None = None) -> str:
    """``2025-06-01 12:03:04 (5 s ago)`` in local time; ``in 20 s`` for the future."""
    return "" if seconds is None else moment(seconds, now=now)


def _error_text(text: str | None) -> str:
    """A logged error (JSON ``{"type", "message"}``) as ``Type: message``."""
    if not text:
        return ""
    try:
        info = ErrorInfo.from_json(text)
    except (ValueError, KeyError, TypeError):
        return text
    return "" if info is None else str(info)


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its JSON text columns as JSON values."""
    out = dict(row)
    for column in _JSON_COLUMNS:
        value = out.get(column)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                out[column] = json.loads(value)
    return out


def _state_text(row: dict[str, Any]) -> str:
    state = str(row["state"])
    return f"{state}, blocked" if row.get("blocked") else state


def _print_list(sagas: list[dict[str, Any]], *, where: str, state: str | None) -> None:
    """One line per saga (long errors cut with …; ``show ID`` has them whole)."""
    console = Console(highlight=False)
    which = f"sagas in state {state}" if state else "sagas"
    if not sagas:
        console.print(escape(f"no {which} in {where}"), soft_wrap=True)
        return
    console.print(escape(f"{which}, newest first, in {where}"), soft_wrap=True)
    table = Table(expand=True)
    for column in ("saga id", "saga", "state", "updated"):
        table.add_column(column, no_wrap=True)
    table.add_column("error, or why no worker runs it", no_wrap=True, ratio=1)
    now = time.time()
    for saga in sagas:
        reason = saga.get("blocked")
        problem = (
            f"blocked: {reason}"
            if reason
            else _error_text(saga.get("compensation_error")) or _error_text(saga.get("error"))
        )
        updated = saga.get("updated_at")
        table.add_row(
            escape(str(saga["saga_id"])),
            escape(f"{saga['name']} v{saga.get('version', '1')}"),
            str(saga["state"]),
            "" if updated is None else age(now - updated),
            escape(problem),
        )
    console.print(table)
    console.print("multistore sagas show ID: one saga with its steps, errors in full")


def _print_saga(saga: dict[str, Any]) -> None:
    console = Console(highlight=False)
    console.print(
        f"[bold]{escape(str(saga['saga_id']))}[/]  "
        + escape(f"{saga['name']} v{saga.get('version', '1')}: {_state_text(saga)}")
    )
    facts = [
        ("created", human_time(saga.get("created_at"))),
        ("updated", human_time(saga.get("updated_at"))),
        ("deadline", human_time(saga.get("deadline"))),
        ("input", str(saga.get("input", ""))),
        ("error", _error_text(saga.get("error"))),
        ("compensation error", _error_text(saga.get("compensation_error"))),
        ("cannot run because", str(saga.get("blocked") or "")),
    ]
    if saga.get("owner"):
        facts.append(("run by", f"{saga['owner']}, lease until {human_time(saga['lease_until'])}"))
    for label, value in facts:
        if value:
            console.print(escape(f"  {label}: {value}"))
    table = Table(expand=True)
    for column in ("step", "state", "attempts", "undo attempts"):
        table.add_column(column, no_wrap=True)
    table.add_column("output", no_wrap=True, ratio=1)
    notes: list[str] = []
    for step in saga.get("steps", []):
        table.add_row(
            escape(str(step["name"])),
            str(step["state"]),
            str(step["attempts"]),
            str(step.get("compensation_attempts") or ""),
            escape(str(step.get("output") or "")),
        )
        failed = _error_text(step.get("error"))
        if failed:
            notes.append(f"  {step['name']} failed: {failed}")
        undo = _error_text(step.get("compensation_error"))
        if undo:
            notes.append(f"  {step['name']}'s compensation failed: {undo}")
    console.print(table)
    for note in notes:
        console.print(escape(note))


# -- definitions and the worker -----------------------------------------------------------


def load_saga_definitions(spec: str, *, option: str = "--sagas") -> list[Saga]:
    """Import ``module:attribute`` naming a Saga, a sequence of Sagas, or a function
    returning either (the operator's way to hand the CLI the saga code)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"{option} takes MODULE:ATTRIBUTE, got {spec!r}")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"{option}: cannot import {module_name!r}: {exc}") from None
    try:
        found: Any = getattr(module, attribute)
    except AttributeError:
        raise UsageError(f"{option}: {module_name} has no attribute {attribute!r}") from None
    if callable(found) and not isinstance(found, Saga):
        found = found()
    sagas = [found] if isinstance(found, Saga) else list(found)
    if not sagas or not all(isinstance(s, Saga) for s in sagas):
        raise UsageError(f"{option}: {spec} is not a Saga or a sequence of Sagas")
    return sagas


async def run_sagas_worker(
    config_path: Path | None,
    *,
    definitions: str,
    worker_id: str | None,
    concurrency: int,
    lease: float,
    grace: float,
    quiet: bool,
) -> dict[str, Any]:
    """Run a :class:`SagaWorker` until SIGINT or SIGTERM (a second one cancels the
    running sagas at once, giving their leases back)."""
    sagas = load_saga_definitions(definitions, option="--definitions")
    store = await saga_store(config_path)
    console = Console(stderr=True, highlight=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None

    def on_signal() -> None:
        if stop.is_set():
            main.cancel()
        stop.set()

    try:
        etcd = load_config(config_path).leases
        engine = SagaEngine(
            store,
            sagas,
            worker_id=worker_id,
            lease=lease,
            concurrency=concurrency,
            leases=None if etcd is None else EtcdLeases(etcd),
        )
        worker = SagaWorker(engine, grace=grace)
    except BaseException:
        await store.close()
        raise
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal)
        names = ", ".join(sorted(f"{s.name} v{s.version}" for s in sagas))
        if not quiet:
            console.print(
                escape(
                    f"saga worker {engine.worker_id} on {store.url}: runs {names}; "
                    f"{concurrency} at a time, lease {lease:g} s. "
                    "Ctrl-C or SIGTERM stops it (a second time: at once)."
                )
            )
        try:
            await worker.run(stop)
        except asyncio.CancelledError:
            if not stop.is_set():
                raise
            main.uncancel()  # the second signal: the worker gave its sagas back
        stats = worker.statistics()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await engine.close()
        await store.close()
    report = {
        "worker_id": engine.worker_id,
        "claimed": stats.claimed,
        "completed": stats.completed,
        "compensated": stats.compensated,
        "stuck": stats.stuck,
        "blocked": stats.blocked,
        "given_up": stats.given_up,
        "store_errors": stats.store_errors,
        "last_error": None if stats.last_error is None else str(stats.last_error),
    }
    if not quiet:
        console.print(
            escape(
                f"stopped: {stats.completed} completed, {stats.compensated} compensated, "
                f"{stats.stuck} stuck, {stats.blocked} blocked, {stats.given_up} given back"
                + (f"; last error {stats.last_error}" if stats.last_error else "")
            )
        )
    return report
