"""The service's tunables, one value object with module-level defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from multistore.consistency import COMPENSATION_RETRY, RetryPolicy
from multistore.errors import InvalidValueError

__all__ = ["ServiceSettings"]


@dataclass(frozen=True)
class ServiceSettings:
    """How ``multistore serve`` runs the shop. Times are seconds.

    ``name`` names this server in the saga log (as the worker id) and in two-phase
    commit transaction ids (as the coordinator node, held as a lease of ``saga_lease``
    seconds in the decision log: a second live server with the same name is refused,
    and a server restarted under the same name waits for its dead predecessor's lease
    to run out, then takes its in-doubt transactions back); two live servers must never
    share a name (``multistore serve`` uses ``shop-<port>``).
    """

    name: str = "shop"
    admin_user: str = "admin"
    admin_password: str | None = None
    """Sets (or resets) the admin's password at start; without it and without an
    admin, one is made with a random password that is logged once."""
    session_ttl: float = 3600.0
    rate_limit: int = 600
    """Requests per client (user, or address when anonymous) per ``rate_window``."""
    rate_window: float = 60.0
    order_mode: str = "saga"
    """How ``POST /orders`` places an order unless the body says: ``saga`` or ``2pc``."""
    idempotency_lease: float = 30.0
    """How long a crashed request keeps its ``Idempotency-Key`` before a retry may
    take it over (and run again, finding the first run's order)."""
    idempotency_expiry: float = 86_400.0
    saga_lease: float = 30.0
    recovery_interval: float = 5.0
    """How often unfinished sagas of dead workers, and in-doubt transactions, are
    looked for."""
    compensation_retry: RetryPolicy = COMPENSATION_RETRY
    cart_sync_interval: float = 0.5
    metrics_flush_interval: float = 1.0
    telemetry: bool = True
    """Prometheus metrics at ``/metrics`` and request points in the metrics store."""
    traces: bool = False
    """OpenTelemetry spans (through the global tracer provider)."""

    def __post_init__(self) -> None:
        if self.order_mode not in ("saga", "2pc"):
            raise InvalidValueError(f"order_mode: {self.order_mode!r} is not saga or 2pc")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not value > 0:
                raise InvalidValueError(f"{field.name}: must be positive, not {value!r}")
        if self.rate_limit < 1:
            raise InvalidValueError(f"rate_limit: must be at least 1, not {self.rate_limit}")
        if not 0 < len(self.name) <= 20 or not self.name.replace("-", "").isalnum():
            raise InvalidValueError(f"name: 1 to 20 letters, digits or '-', not {self.name!r}")
