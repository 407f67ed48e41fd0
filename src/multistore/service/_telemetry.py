"""Prometheus metrics and OpenTelemetry traces.

Metrics go to a registry of the app's own (served at ``/metrics``): request counts
and latency histograms by route, store-operation latency by role, and gauges that
are read when scraped (sagas by state, in-doubt 2PC branches, outbox backlog and
lag, cart replication lag, quorum hints) from the same report the console and
``multistore status`` show.

Traces use the OpenTelemetry API and the global tracer provider (configure the SDK
and an exporter, or run ``multistore serve --traces``): a span per request (the
caller's ``traceparent`` continued), per store operation, per saga step and
compensation, per two-phase-commit phase. Saga steps run in the request's context,
so their spans are children of the request's. With traces off (the default) no
span is made: the hooks return a shared do-nothing context manager.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any, Final

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from multistore.service._asgi import ASGIApp, Message, Receive, Scope, Send
from multistore.service._instruments import _NOTHING, Instruments

__all__ = ["Telemetry", "TelemetryMiddleware"]


_LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class _StoreOp(AbstractContextManager[None]):
    """Times one store operation into the histogram (and a span when tracing)."""

    __slots__ = ("_histogram", "_name", "_role", "_span", "_start", "_telemetry")

    def __init__(self, telemetry: Telemetry, role: str, op: str) -> None:
        self._histogram = telemetry.store_seconds.labels(role, op)
        self._telemetry = telemetry
        self._role = role
        self._name = op
        self._span: AbstractContextManager[Span] | None = None
        self._start = 0.0

    def __enter__(self) -> None:
        tracer = self._telemetry.tracer
        if tracer is not None:
            self._span = tracer.start_as_current_span(
                f"store {self._role} {self._name}",
                kind=SpanKind.CLIENT,
                attributes={"multistore.role": self._role, "db.operation.name": self._name},
            )
            self._span.__enter__()
        self._start = time.perf_counter()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._histogram.observe(time.perf_counter() - self._start)
        if self._span is not None:
            self._span.__exit__(exc_type, exc, tb)


class Telemetry(Instruments):
    """Metrics always; spans when ``traces`` is on."""

    def __init__(self, *, traces: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "multistore_http_requests",
            "HTTP requests answered, by method, route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "multistore_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.store_seconds = Histogram(
            "multistore_store_operation_duration_seconds",
            "Time of one store operation of the shop, by role and operation.",
            ["role", "operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.sagas = Gauge("multistore_sagas", "Sagas in the log, by state.", ["state"], registry=r)
        self.in_doubt = Gauge(
            "multistore_tpc_in_doubt_branches",
            "Prepared two-phase-commit branches nobody has resolved yet.",
            registry=r,
        )
        self.outbox = Gauge(
            "multistore_outbox_events", "Outbox events, by state.", ["state"], registry=r
        )
        self.outbox_lag = Gauge(
            "multistore_outbox_lag_seconds",
            "Age of the oldest outbox event not yet delivered (0 when none).",
            registry=r,
        )
        self.replication_behind = Gauge(
            "multistore_replication_behind_changes",
            "Changes of a peer's log a multi-master cart node has not applied yet.",
            ["node", "peer"],
            registry=r,
        )
        self.quorum_hints = Gauge(
            "multistore_quorum_hints",
            "Hinted-handoff writes waiting for their home node.",
            registry=r,
        )
        self.tracer: trace.Tracer | None = (
            trace.get_tracer("multistore.service") if traces else None
        )
        self._phases: dict[str, Span] = {}
        self._prepared: dict[str, int] = {}

    # -- Instruments ----------------------------------------------------------------------

    def store_op(self, role: str, op: str) -> AbstractContextManager[None]:
        return _StoreOp(self, role, op)

    def span(
        self, name: str, attributes: Mapping[str, Any] | None = None
    ) -> AbstractContextManager[None]:
        if self.tracer is None:
            return _NOTHING
        return self._span(name, attributes)

    @contextmanager
    def _span(self, name: str, attributes: Mapping[str, Any] | None) -> Iterator[None]:
        assert self.tracer is not None
        with self.tracer.start_as_current_span(name, attributes=dict(attributes or {})):
            opened = set(self._phases)
            try:
                yield
            finally:
                for xid in set(self._phases) - opened:  # phases of a transaction that aborted
                    self._end_phase(xid)

    def tpc_event(self, event: str, xid: str, participant: str) -> None:
        if self.tracer is None:
            return
        if event == "preparing":
            self._phases[xid] = self.tracer.start_span("2pc prepare", attributes={"xid": xid})
            self._prepared[xid] = 0
        elif event == "prepared" and xid in self._phases:
            self._phases[xid].add_event("prepared", {"participant": participant})
            self._prepared[xid] += 1
        elif event == "decided":
            prepared = self._prepared.get(xid, 0)
            self._end_phase(xid)
            self._phases[xid] = self.tracer.start_span(
                "2pc commit", attributes={"xid": xid, "decision": "commit"}
            )
            self._prepared[xid] = prepared
        elif event == "committed" and xid in self._phases:
            span = self._phases[xid]
            span.add_event("committed", {"participant": participant})
            self._prepared[xid] -= 1
            if self._prepared[xid] <= 0:
                self._end_phase(xid)

    def _end_phase(self, xid: str) -> None:
        span = self._phases.pop(xid, None)
        self._prepared.pop(xid, None)
        if span is not None:
            span.end()


class TelemetryMiddleware:
    """Counts and times every request, records its point in the request series, and
    (with traces) runs it in a server span that continues the caller's trace."""

    def __init__(
        self,
        app: ASGIApp,
        telemetry: Telemetry,
        record: Callable[[str, str, int, float, datetime], None],
    ) -> None:
        self.app = app
        self.telemetry = telemetry
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        method = str(scope.get("method", ""))

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        tracer = self.telemetry.tracer
        start = time.perf_counter()
        try:
            if tracer is None:
                await self.app(scope, receive, watch)
            else:
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                with tracer.start_as_current_span(
                    f"{method} {scope.get('path', '')}",
                    context=propagate.extract(headers),
                    kind=SpanKind.SERVER,
                    attributes={"http.request.method": method, "url.path": scope.get("path", "")},
                ) as span:
                    await self.app(scope, receive, watch)
                    route = _route(scope)
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
        finally:
            seconds = time.perf_counter() - start
            route = _route(scope)
            self.telemetry.requests.labels(method, route, str(status)).inc()
            self.telemetry.request_seconds.labels(method, route).observe(seconds)
            self.record(route, method, status, seconds * 1000, datetime.now(UTC))


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"
