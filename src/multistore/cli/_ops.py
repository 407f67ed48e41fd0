"""Operator command ``multistore recover`` (``multistore sagas`` is in ``_sagas``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from multistore.cli._sagas import load_saga_definitions, saga_store
from multistore.config import load_config
from multistore.consistency import Saga, SagaEngine, SagaLog, list_sagas
from multistore.core import SagaState
from multistore.errors import InvalidURLError, UsageError
from multistore.stores.relational import RelationalStore
from multistore.urls import StoreURL, parse_url, redact_url


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
    log: str | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    """Resolve in-doubt two-phase-commit branches with the decision log (``--log``, else
    the ``transactions`` role); list stuck sagas, and retry them when the saga
    definitions are given (``--sagas module:attribute``). Opens only what that needs:
    no log when there is no participant, no saga log that does not exist yet."""
    definitions = load_saga_definitions(sagas) if sagas is not None else None
    from multistore.consistency import recover_transactions

    config = load_config(config_path)
    named: dict[str, Any] = dict(config.participants)
    named.update(_parse_participants(participants))
    log_url = parse_url(log) if log is not None else config.role("transactions").url
    twopc: dict[str, Any]
    if named:
        twopc = await recover_transactions(named, log_url, node=node, retry_for=retry_for)
    else:
        twopc = {
            "checked": [],
            "resolved": True,
            "note": "nothing was checked: no two-phase-commit participants are configured "
            "([participants] in multistore.toml, or -p NAME=URL)",
        }
    saga_role = config.role("sagas")
    stuck: list[dict[str, Any]] = []
    retried: list[dict[str, Any]] = []
    saga_note = ""
    if saga_role.url.is_file and not await asyncio.to_thread(Path(saga_role.url.path).exists):
        saga_note = f"no saga log at {saga_role.url.render()}: no sagas to check"
    else:
        store = await saga_store(config_path)
        try:
            await SagaLog(store).setup()
            stuck = await list_sagas(store, state=SagaState.STUCK.value)
            retried = await _retry_stuck(store, definitions, stuck) if definitions else []
        finally:
            await store.close()
    report = {"transactions": twopc, "stuck_sagas": stuck, "retried_sagas": retried}
    if saga_note:
        report["sagas_note"] = saga_note
    if not quiet:
        _print_recovery(twopc)
        console = Console(highlight=False, soft_wrap=True)
        if saga_note:
            console.print(escape(saga_note))
        elif retried:
            for entry in retried:
                console.print(
                    escape(
                        f"saga {entry['saga_id']} ({entry['name']}): "
                        + str(entry.get("state", entry.get("skipped")))
                        + (f" — {entry['error']}" if "error" in entry else "")
                    )
                )
        elif stuck:
            console.print(
                f"[yellow]{len(stuck)} stuck saga(s)[/]: "
                + escape(", ".join(str(s["saga_id"]) for s in stuck))
                + " — retry them with --sagas MODULE:ATTRIBUTE (your saga definitions)"
            )
        else:
            console.print("no stuck sagas")
    return report


def _print_recovery(twopc: dict[str, Any]) -> None:
    """What two-phase-commit recovery checked and did, in plain words."""
    console = Console(highlight=False, soft_wrap=True)
    if "note" in twopc:
        # Words only (no path), so folded at the console's width like prose.
        console.print(f"[bold]two-phase commit[/]: {escape(twopc['note'])}", soft_wrap=False)
        return
    console.print(f"[bold]two-phase commit[/]: decision {escape(twopc['log'])}")
    checked = ", ".join(twopc["checked"]) or "none (all unreachable)"
    console.print(escape(f"participants checked: {checked}"))
    nodes = ", ".join(twopc["nodes"]) or "none had anything in doubt"
    console.print(escape(f"coordinator nodes recovered: {nodes}"))
    for why in twopc["skipped"].values():
        console.print(escape(f"left to its live coordinator: {why}"))
    table = Table()
    table.add_column("outcome")
    table.add_column("transactions", overflow="fold")
    for key in ("committed", "rolled_back", "pending", "forgotten"):
        if twopc[key]:
            table.add_row(key, escape("\n".join(twopc[key])))
    for heuristic in twopc["heuristics"]:
        kind = "hazard" if heuristic["hazard"] else "heuristic"
        table.add_row(kind, escape(f"{heuristic['participant']}: {heuristic['detail']}"))
    for name, error in twopc["unreachable"].items():
        table.add_row("unreachable", escape(f"{name}: {error}"))
    for branch, why in twopc["other_logs"].items():
        table.add_row("other log", escape(f"{branch} {why}"))
    if table.row_count:
        console.print(table)
    else:
        console.print("nothing was in doubt")
    console.print("resolved" if twopc["resolved"] else "[bold red]not resolved[/]")


def unresolved_line(twopc: dict[str, Any]) -> str:
    """One line that says why recovery is not finished and what to run next."""
    locations: dict[str, str] = twopc.get("log_locations", {})
    if twopc.get("other_logs"):
        count = len(twopc["other_logs"])
        known = sorted({url for url in locations.values() if url})
        if known:
            runs = " and ".join(f"multistore recover --log {url}" for url in known)
            return (
                f"{count} in-doubt branch(es) belong to another decision log than "
                f"{twopc['log']}: left prepared; run {runs}"
            )
        ids = ", ".join(sorted(i or "(written before logs had ids)" for i in locations))
        return (
            f"{count} in-doubt branch(es) belong to another decision log ({ids}) than "
            f"{twopc['log']}: left prepared; pass that log with --log URL"
        )
    if twopc.get("unreachable"):
        names = ", ".join(sorted(twopc["unreachable"]))
        return f"could not reach {names}: run recover again once they are up (or --retry-for)"
    hazards = [h for h in twopc.get("heuristics", []) if h["hazard"]]
    if hazards:
        return f"{len(hazards)} branch(es) left in doubt for an operator: {hazards[0]['detail']}"
    return f"commit decisions still pending: {', '.join(twopc.get('pending', []))}"
