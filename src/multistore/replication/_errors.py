"""The router's own errors (both are :class:`~multistore.errors.StoreError` subclasses)."""

from __future__ import annotations

from multistore.errors import StoreError, StoreUnavailableError

__all__ = ["FailoverError", "FailoverFailedError"]


class FailoverError(StoreUnavailableError):
    """A write met a failover: it was refused while the primary was being replaced, or
    it ran on a primary that was replaced meanwhile. Indeterminate: only a read of the
    new primary can tell whether it took effect; it never lands on a fenced primary
    through the router afterwards."""


class FailoverFailedError(StoreError):
    """No replica could be promoted (none reachable, or the promotion failed)."""
