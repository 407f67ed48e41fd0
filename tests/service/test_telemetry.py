"""Prometheus metrics at /metrics (the same numbers as ``multistore status``), and
OpenTelemetry traces caught by the SDK's in-memory exporter: a span per request that
continues the caller's trace, per store operation, per saga step, per 2PC phase."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from multistore.config import load_config
from multistore.service import ServiceSettings, create_app
from tests.cli import run_cli
from tests.fix_service import (
    ADMIN_PASSWORD,
    ServiceProcess,
    ShopClient,
    free_port,
    wait_until,
)
from tests.service.test_api import product


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_match_status(service: ServiceProcess) -> None:
    with service.admin() as admin, service.new_user() as alice:
        sku = product(admin, stock=1)
        assert alice.order({sku: 1}).status_code == 201
        assert alice.order({sku: 1}).status_code == 409  # out of stock: compensated
        wait_until(
            lambda: admin.get("/catalog/search", params={"q": sku}).json()["total"] == 1,
            "the product indexed",
        )
        scraped = httpx.get(f"{service.base}/metrics", timeout=30)
    assert scraped.headers["content-type"].startswith("text/plain")
    found = samples(scraped.text)
    assert (
        value(found, "multistore_http_requests_total", method="POST", route="/orders", status="201")
        >= 1
    )
    assert (
        value(
            found, "multistore_http_request_duration_seconds_count", method="POST", route="/orders"
        )
        >= 2
    )
    assert (
        value(
            found,
            "multistore_store_operation_duration_seconds_count",
            role="payments",
            operation="charge",
        )
        >= 1
    )
    assert value(found, "multistore_sagas", state="completed") >= 1
    assert value(found, "multistore_sagas", state="compensated") >= 1

    # (The embedded DuckDB and Ladybug files are locked by the running server, so
    # status reports those two roles as unavailable; the shop's numbers come from
    # the other stores.)
    status = run_cli("status", "--json", cwd=service.folder)
    shop = json.loads(status.stdout)["shop"]
    assert shop["ok"] is True
    for state, count in shop["sagas"].items():
        assert value(found, "multistore_sagas", state=state) == count, state
    for state, count in shop["outbox"].items():
        assert value(found, "multistore_outbox_events", state=state) == count, state
    assert value(found, "multistore_tpc_in_doubt_branches") == shop["in_doubt"]
    for node, peers in shop["replication_behind"].items():
        for peer, behind in peers.items():
            assert (
                value(found, "multistore_replication_behind_changes", node=node, peer=peer)
                == behind
            )


# -- traces -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, spans: InMemorySpanExporter) -> Iterator[str]:
    """The app with traces on, served by uvicorn in a thread of this process (so the
    in-memory exporter sees its spans)."""
    folder: Path = tmp_path_factory.mktemp("traced")
    (folder / "multistore.toml").write_text('[multistore]\ndata_dir = "data"\n')
    settings = ServiceSettings(name="traced", admin_password=ADMIN_PASSWORD, traces=True)
    app = create_app(load_config(folder / "multistore.toml"), settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "the in-process server")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def finished(exporter: InMemorySpanExporter, trace_id: int, name: str) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.context is not None and s.context.trace_id == trace_id and s.name == name
    ]


def test_a_request_is_one_trace_down_to_saga_steps_and_stores(
    traced: str, spans: InMemorySpanExporter
) -> None:
    with ShopClient.connect(traced, "admin", ADMIN_PASSWORD) as admin:
        sku = product(admin, stock=5)
        trace_id, parent = uuid.uuid4().int >> 64 << 64 | 1, 0x1234567890ABCDEF
        header = f"00-{trace_id:032x}-{parent:016x}-01"
        placed = admin.post(
            "/orders",
            json={"items": [{"sku": sku, "qty": 1}]},
            headers={"Idempotency-Key": '"traced-1"', "traceparent": header},
        )
        assert placed.status_code == 201, placed.text
    wait_until(lambda: finished(spans, trace_id, "POST /orders"), "the request's span")
    (request,) = finished(spans, trace_id, "POST /orders")
    assert request.parent is not None and request.parent.span_id == parent  # continued
    assert request.attributes is not None and request.attributes["http.route"] == "/orders"
    assert request.attributes["http.response.status_code"] == 201
    by_id = {s.context.span_id: s for s in spans.get_finished_spans() if s.context is not None}

    def ancestors(span: ReadableSpan) -> list[str]:
        names = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names

    for step in ("create_order", "charge_payment", "reserve_stock", "confirm_order"):
        (saga_step,) = finished(spans, trace_id, f"saga step {step}")
        assert "POST /orders" in ancestors(saga_step)
    (charge,) = finished(spans, trace_id, "store payments charge")
    assert ancestors(charge)[0] == "saga step charge_payment"
    assert finished(spans, trace_id, "store sessions rate_limit")


def test_two_phase_commit_phases_are_spans(traced: str, spans: InMemorySpanExporter) -> None:
    with ShopClient.connect(traced, "admin", ADMIN_PASSWORD) as admin:
        sku = product(admin, stock=5)
        trace_id = uuid.uuid4().int >> 64 << 64 | 2
        placed = admin.post(
            "/orders",
            json={"items": [{"sku": sku, "qty": 1}], "mode": "2pc"},
            headers={
                "Idempotency-Key": '"traced-2pc"',
                "traceparent": f"00-{trace_id:032x}-{0xABCDEF:016x}-01",
            },
        )
        assert placed.status_code == 201, placed.text
    wait_until(lambda: finished(spans, trace_id, "2pc commit"), "the commit phase's span")
    (prepare,) = finished(spans, trace_id, "2pc prepare")
    (commit,) = finished(spans, trace_id, "2pc commit")
    assert sorted(e.attributes["participant"] for e in prepare.events if e.attributes) == [
        "inventory",
        "orders",
        "payments",
    ]
    assert sorted(e.attributes["participant"] for e in commit.events if e.attributes) == [
        "inventory",
        "orders",
        "payments",
    ]
    assert prepare.end_time is not None and commit.start_time is not None
    assert prepare.end_time <= commit.start_time
    (transaction,) = finished(spans, trace_id, "2pc transaction")
    assert prepare.parent is not None and prepare.parent.span_id == transaction.context.span_id


def test_traces_are_off_by_default() -> None:
    assert ServiceSettings().traces is False
    app = create_app(load_config(None, env={}), ServiceSettings())
    assert app.state.telemetry.tracer is None  # no span is ever started
