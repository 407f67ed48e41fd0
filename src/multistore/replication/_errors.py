"""The router's own errors."""

from __future__ import annotations

from typing import ClassVar

from multistore.errors import InvalidValueError, Outcome, StoreError, StoreUnavailableError

__all__ = ["FailoverError", "FailoverFailedError", "ForkedTokenError", "InvalidTokenError"]


class FailoverError(StoreUnavailableError):
    """A write met a failover: it was refused while the primary was being replaced, or
    it ran on a primary that was replaced meanwhile. Indeterminate: only a read of the
    new primary can tell whether it took effect; it never lands on a fenced primary
    through the router afterwards."""


class FailoverFailedError(StoreError):
    """No replica could be promoted (none reachable, the promotion failed, or the old
    primary was reachable but could not be fenced)."""


class ForkedTokenError(StoreError):
    """A read carried a causal token whose position lies past the point where its
    timeline was forked off by a failover: the write the token stands for may have been
    lost with the old primary, and the same position on the new timeline names other
    writes. Definite: the read was not run (and never will be with this token)."""

    default_outcome: ClassVar[Outcome] = Outcome.DEFINITE


class InvalidTokenError(InvalidValueError):
    """A causal token no node of this cluster can satisfy: a position ahead of the
    primary, a timeline the primary does not have, or a missing or wrong signature.
    Definite: the read was not run."""
