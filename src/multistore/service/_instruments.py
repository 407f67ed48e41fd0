"""The hooks the shop calls to be measured, and their do-nothing default.

The shop does not import prometheus-client or OpenTelemetry (the demo runs it
without them). It calls an :class:`Instruments` object at each store operation,
saga step and two-phase-commit phase; :class:`Instruments` itself does nothing,
and :class:`multistore.service._telemetry.Telemetry` records metrics and spans.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Final

__all__ = ["NO_INSTRUMENTS", "Instruments"]


class _Nothing(AbstractContextManager[None]):
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


_NOTHING: Final = _Nothing()


class Instruments:
    """Measuring hooks; every one does nothing here."""

    def store_op(self, role: str, op: str) -> AbstractContextManager[None]:
        """Around one store operation of ``role`` (a latency sample and a span)."""
        return _NOTHING

    def span(
        self, name: str, attributes: Mapping[str, Any] | None = None
    ) -> AbstractContextManager[None]:
        """Around a unit of work (a saga step, a 2PC phase)."""
        return _NOTHING

    def tpc_event(self, event: str, xid: str, participant: str) -> None:
        """A two-phase-commit protocol point (``preparing``, ``prepared``, ``decided``,
        ``committed``)."""


NO_INSTRUMENTS: Final = Instruments()
