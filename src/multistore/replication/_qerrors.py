"""The quorum cluster's error, apart from the coordinator so that its helpers
(membership changes) can raise it too."""

from __future__ import annotations

from collections.abc import Sequence

from multistore.errors import Outcome, StoreUnavailableError

__all__ = ["QuorumError"]


class QuorumError(StoreUnavailableError):
    """Fewer replicas answered than the consistency level needs.

    A failed write is definite only when every replica refused it definitely (or
    too few were up to send it at all); otherwise — an acknowledgement short of W,
    a timeout, a connection lost after sending — it is indeterminate: the write may
    still surface (through read repair, hints or anti-entropy). A read that could
    not bring the version it found to R replicas is indeterminate too (its repair
    may still apply).
    """

    def __init__(
        self, message: str, *, acks: Sequence[str], required: int, outcome: Outcome
    ) -> None:
        super().__init__(message, outcome=outcome)
        self.acks = tuple(acks)
        self.required = required
