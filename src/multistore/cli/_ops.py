"""Operator command ``multistore recover`` (``multistore sagas`` is in ``_sagas``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from multistore.cli._sagas import load_saga_definitions, saga_store
from multistore.config import load_config
from multistore.consistency import Saga, SagaEngine, SagaLog, list_sagas
from multistore.core import SagaState
from multistore.errors import UsageError
from multistore.stores.relational import RelationalStore


def _parse_participants(items: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in items:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise UsageError(f"--participant takes NAME=URL, got {item!r}")
        parsed[name] = url
    return parsed


async def _retry_stuck(
    store: RelationalStore, definitions: list[Saga], stuck: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    engine = SagaEngine(store, definitions)
    known = {(saga.name, saga.version) for saga in definitions}
    results: list[dict[str, Any]] = []
    try:
        await engine.setup()
        for row in stuck:
            saga_id, name = str(row["saga_id"]), str(row["name"])
            if (name, str(row["version"])) not in known:
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
    if log.is_file:
        Path(log.path).parent.mkdir(parents=True, exist_ok=True)
    twopc: dict[str, Any]
    if named:
        twopc = await recover_transactions(named, log, retry_for=retry_for)
    else:
        twopc = {"resolved": True, "note": "no participants configured ([participants])"}
    store = await saga_store(config_path)
    try:
        await SagaLog(store).setup()
        stuck = await list_sagas(store, state=SagaState.STUCK.value)
        retried = await _retry_stuck(store, definitions, stuck) if definitions else []
    finally:
        await store.close()
    report = {"transactions": twopc, "stuck_sagas": stuck, "retried_sagas": retried}
    if not quiet:
        console = Console()
        table = Table(title="two-phase commit recovery")
        table.add_column("outcome")
        table.add_column("transactions", overflow="fold")
        for key in ("committed", "rolled_back", "heuristics", "unreachable", "pending"):
            if key in twopc:
                table.add_row(key, str(twopc[key]))
        table.add_row("resolved", str(twopc.get("resolved")))
        console.print(table)
        if retried:
            for entry in retried:
                console.print(
                    f"saga {entry['saga_id']} ({entry['name']}): "
                    + str(entry.get("state", entry.get("skipped")))
                    + (f" — {entry['error']}" if "error" in entry else "")
                )
        elif stuck:
            console.print(
                f"[yellow]{len(stuck)} stuck saga(s)[/]: "
                + ", ".join(str(s["saga_id"]) for s in stuck)
                + " — retry them with --sagas MODULE:ATTRIBUTE (your saga definitions)"
            )
        else:
            console.print("no stuck sagas")
    return report
