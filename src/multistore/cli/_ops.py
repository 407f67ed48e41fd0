"""Operator commands: ``multistore sagas`` and ``multistore recover``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from multistore.cli._text import console, joined, styled
from multistore.config import load_config
from multistore.consistency import Saga, SagaEngine, SagaLog, list_sagas, show_saga
from multistore.core import SagaState
from multistore.errors import InvalidURLError, NotFoundError, UsageError
from multistore.stores.relational import RelationalStore
from multistore.urls import StoreURL, parse_url, redact_url


async def _saga_store(config_path: Path | None) -> RelationalStore:
    config = load_config(config_path)
    store = await config.open("sagas")
    assert isinstance(store, RelationalStore)
    return store


async def run_sagas(
    config_path: Path | None, *, state: str | None, saga_id: str | None, limit: int, quiet: bool
) -> dict[str, Any]:
    """List sagas (optionally by state) or show one saga with its step history."""
    if state is not None and state not in {s.value for s in SagaState}:
        known = ", ".join(s.value for s in SagaState)
        raise UsageError(f"unknown saga state {state!r}; states are: {known}")
    store = await _saga_store(config_path)
    try:
        await SagaLog(store).setup()
        if saga_id is not None:
            saga = await show_saga(store, saga_id)
            if saga is None:
                raise NotFoundError(f"no saga with id {saga_id!r} in {store.url}")
            if not quiet:
                _print_saga(saga)
            return {"saga": saga}
        sagas = await list_sagas(store, state=state, limit=limit)
        if not quiet:
            table = Table(title=f"sagas in {store.url}" + (f" (state {state})" if state else ""))
            for column in ("saga_id", "name", "state", "error", "updated_at"):
                table.add_column(column, overflow="fold")
            for saga in sagas:
                table.add_row(
                    str(saga["saga_id"]),
                    str(saga["name"]),
                    str(saga["state"]),
                    str(saga.get("error") or ""),
                    str(saga.get("updated_at") or ""),
                )
            console().print(table)
        return {"sagas": sagas}
    finally:
        await store.close()


def _print_saga(saga: dict[str, Any]) -> None:
    out = console()
    out.print(joined(styled(saga["saga_id"], "bold"), f" {saga['name']}: {saga['state']}"))
    table = Table()
    for column in ("step", "state", "attempts", "output", "error"):
        table.add_column(column, overflow="fold")
    for step in saga.get("steps", []):
        table.add_row(
            str(step.get("name", step.get("step", ""))),
            str(step.get("state", "")),
            str(step.get("attempts", "")),
            str(step.get("output", "")),
            str(step.get("error") or ""),
        )
    out.print(table)


def _parse_participants(items: list[str]) -> dict[str, StoreURL]:
    parsed: dict[str, StoreURL] = {}
    for item in items:
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url:
            raise UsageError(f"--participant takes NAME=URL, got {redact_url(item)!r}")
        try:
            parsed[name] = parse_url(url)
        except InvalidURLError as exc:
            raise InvalidURLError(f"--participant {name!r}: {exc}") from None
    return parsed


def load_saga_definitions(spec: str) -> list[Saga]:
    """Import ``module:attribute`` naming a Saga, a sequence of Sagas, or a function
    returning either (the operator's way to hand the CLI the saga code)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"--sagas takes MODULE:ATTRIBUTE, got {spec!r}")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--sagas: cannot import {module_name!r}: {exc}") from None
    try:
        found: Any = getattr(module, attribute)
    except AttributeError:
        raise UsageError(f"--sagas: {module_name} has no attribute {attribute!r}") from None
    if callable(found) and not isinstance(found, Saga):
        found = found()
    sagas = [found] if isinstance(found, Saga) else list(found)
    if not sagas or not all(isinstance(s, Saga) for s in sagas):
        raise UsageError(f"--sagas: {spec} is not a Saga or a sequence of Sagas")
    return sagas


async def _retry_stuck(
    store: RelationalStore, definitions: list[Saga], stuck: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    engine = SagaEngine(store, definitions)
    known = {saga.name for saga in definitions}
    results: list[dict[str, Any]] = []
    try:
        await engine.setup()
        for row in stuck:
            saga_id, name = str(row["saga_id"]), str(row["name"])
            if name not in known:
                results.append({"saga_id": saga_id, "name": name, "skipped": "no definition"})
                continue
            result = await engine.retry_stuck(saga_id)
            entry: dict[str, Any] = {"saga_id": saga_id, "name": name}
            entry["state"] = result.state.value
            if result.compensation_error is not None:
                entry["error"] = result.compensation_error.message
            results.append(entry)
    finally:
        await engine.close()
    return results


async def run_recover(
    config_path: Path | None,
    *,
    participants: list[str],
    retry_for: float,
    quiet: bool,
    sagas: str | None = None,
) -> dict[str, Any]:
    """Resolve in-doubt two-phase-commit branches; list stuck sagas, and retry them
    when the saga definitions are given (``--sagas module:attribute``)."""
    definitions = load_saga_definitions(sagas) if sagas is not None else None
    from multistore.consistency import recover_transactions

    config = load_config(config_path)
    named: dict[str, Any] = dict(config.participants)
    named.update(_parse_participants(participants))
    log = config.role("transactions").url
    config.make_folder("transactions")
    twopc: dict[str, Any]
    if named:
        twopc = await recover_transactions(named, log, retry_for=retry_for)
    else:
        twopc = {"resolved": True, "note": "no participants configured ([participants])"}
    store = await _saga_store(config_path)
    try:
        await SagaLog(store).setup()
        stuck = await list_sagas(store, state=SagaState.STUCK.value)
        retried = await _retry_stuck(store, definitions, stuck) if definitions else []
    finally:
        await store.close()
    report = {"transactions": twopc, "stuck_sagas": stuck, "retried_sagas": retried}
    if not quiet:
        out = console()
        table = Table(title="two-phase commit recovery")
        table.add_column("outcome")
        table.add_column("transactions", overflow="fold")
        for key in ("committed", "rolled_back", "heuristics", "unreachable", "pending"):
            if key in twopc:
                table.add_row(key, str(twopc[key]))
        table.add_row("resolved", str(twopc.get("resolved")))
        out.print(table)
        if retried:
            for entry in retried:
                out.print(
                    f"saga {entry['saga_id']} ({entry['name']}): "
                    + str(entry.get("state", entry.get("skipped")))
                    + (f" — {entry['error']}" if "error" in entry else "")
                )
        elif stuck:
            out.print(
                joined(
                    styled(f"{len(stuck)} stuck saga(s)", "yellow"),
                    ": "
                    + ", ".join(str(s["saga_id"]) for s in stuck)
                    + " — retry them with --sagas MODULE:ATTRIBUTE (your saga definitions)",
                )
            )
        else:
            out.print("no stuck sagas")
    return report
