"""``multistore serve``: the shop over HTTP with uvicorn (needs the ``service`` extra)."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path
from typing import Any

from multistore.config import load_config
from multistore.errors import UsageError

__all__ = ["run_serve"]


def _check_extra() -> None:
    missing = [
        m
        for m in ("fastapi", "uvicorn", "prometheus_client", "opentelemetry")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise UsageError(
            f"multistore serve needs {', '.join(missing)}: pip install 'multistore[service]'"
        )


def _console_traces() -> None:
    """Spans to stderr, one JSON object each (for a quick look; use an OTLP exporter
    and the SDK's environment variables in production)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


def run_serve(
    config_path: Path | None,
    *,
    host: str,
    port: int,
    traces: bool,
    log_level: str,
    settings: dict[str, Any],
) -> None:
    _check_extra()
    import uvicorn

    from multistore.consistency import COMPENSATION_RETRY
    from multistore.service import ServiceSettings, create_app

    config = load_config(config_path)
    attempts = settings.pop("compensation_attempts", None)
    values = {k: v for k, v in settings.items() if v is not None}
    values.setdefault("name", f"shop-{port}")
    if attempts is not None:
        values["compensation_retry"] = dataclasses.replace(
            COMPENSATION_RETRY, max_attempts=attempts
        )
    chosen = ServiceSettings(traces=traces, **values)
    if traces:
        _console_traces()
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    app = create_app(config, chosen)
    uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="on")
