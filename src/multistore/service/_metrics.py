"""``GET /metrics``: the Prometheus text format. The gauges are read from the stores
when scraped (:func:`multistore.service._ops.numbers`), so they are what the
console and ``multistore status`` show at that moment."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from multistore.service._auth import shop_of
from multistore.service._ops import shop_numbers
from multistore.service._telemetry import Telemetry

__all__ = ["metrics_router", "refresh_gauges"]


async def refresh_gauges(telemetry: Telemetry, found: dict[str, object]) -> None:
    sagas = found["sagas"]
    assert isinstance(sagas, dict)
    for state, count in sagas.items():
        telemetry.sagas.labels(state).set(count)
    telemetry.in_doubt.set(float(found["in_doubt"]))  # type: ignore[arg-type]
    outbox = found["outbox"]
    assert isinstance(outbox, dict)
    for state, count in outbox.items():
        telemetry.outbox.labels(state).set(count)
    telemetry.outbox_lag.set(float(found["outbox_lag_seconds"]))  # type: ignore[arg-type]
    behind = found["replication_behind"]
    assert isinstance(behind, dict)
    for node, peers in behind.items():
        for peer, count in peers.items():
            telemetry.replication_behind.labels(node, peer).set(count)
    hints = found.get("quorum_hints")
    if isinstance(hints, int):
        telemetry.quorum_hints.set(hints)


def metrics_router(telemetry: Telemetry) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", tags=["service"], summary="Prometheus metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        await refresh_gauges(telemetry, await shop_numbers(shop_of(request.scope)))
        return Response(generate_latest(telemetry.registry), media_type=CONTENT_TYPE_LATEST)

    return router
