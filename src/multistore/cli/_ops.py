"""Operator commands: ``multistore sagas`` and ``multistore recover``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from multistore.config import load_config
from multistore.consistency import SagaLog, list_sagas, show_saga
from multistore.core import SagaState
from multistore.errors import NotFoundError, UsageError
from multistore.stores.relational import RelationalStore


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
            Console().print(table)
        return {"sagas": sagas}
    finally:
        await store.close()


def _print_saga(saga: dict[str, Any]) -> None:
    console = Console()
    console.print(f"[bold]{saga['saga_id']}[/] {saga['name']}: {saga['state']}")
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
    console.print(table)


def _parse_participants(items: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in items:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise UsageError(f"--participant takes NAME=URL, got {item!r}")
        parsed[name] = url
    return parsed


async def run_recover(
    config_path: Path | None,
    *,
    participants: list[str],
    retry_for: float,
    quiet: bool,
) -> dict[str, Any]:
    """Resolve in-doubt two-phase-commit branches and list stuck sagas."""
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
    store = await _saga_store(config_path)
    try:
        await SagaLog(store).setup()
        stuck = await list_sagas(store, state=SagaState.STUCK.value)
    finally:
        await store.close()
    report = {"transactions": twopc, "stuck_sagas": stuck}
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
        if stuck:
            console.print(
                f"[yellow]{len(stuck)} stuck saga(s)[/]: "
                + ", ".join(str(s["saga_id"]) for s in stuck)
                + " — retry them with SagaEngine(...).retry_stuck(id) from your code"
            )
        else:
            console.print("no stuck sagas")
    return report
