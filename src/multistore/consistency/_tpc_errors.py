"""Errors of two-phase commit: definite abort, indeterminate outcome, heuristic outcome.

* :class:`TransactionAbortedError` (a :class:`~multistore.errors.ConflictError`) is
  **definite**: the transaction was rolled back everywhere, or will be by recovery
  (presumed abort: no commit decision was logged), and it never commits.
* :class:`TransactionIndeterminateError` (a :class:`~multistore.errors.StoreError`) is
  **indeterminate**: commit may have been decided — the decision log could not be
  written for sure, or a participant did not confirm phase 2. Recovery finishes it.
* :class:`TransactionHeuristicError` reports outcomes that contradict the decision
  (a branch that vanished before phase 2 reached it): never silently dropped.
* :class:`BranchHazardError` is raised by a participant that cannot apply a prepared
  branch exactly as it was prepared (a SQLite intent whose replay differs); recovery
  reports it as a heuristic *hazard* and keeps the branch for an operator.
"""

from __future__ import annotations

from dataclasses import dataclass

from multistore.errors import (
    ConflictError,
    TransactionAbortedError,
    TransactionHeuristicError,
    TransactionIndeterminateError,
)

__all__ = [
    "BranchHazardError",
    "HeuristicOutcome",
    "TransactionAbortedError",
    "TransactionHeuristicError",
    "TransactionIndeterminateError",
]


class BranchHazardError(ConflictError):
    """A prepared branch that cannot be applied exactly as it was prepared; it stays
    prepared (in doubt) for an operator, and the message says why."""


@dataclass(frozen=True)
class HeuristicOutcome:
    """A branch whose fate contradicts (or cannot be reconciled with) the decision."""

    gtrid: str
    participant: str
    decision: str
    """What the coordinator decided: ``commit`` or ``abort``."""
    detail: str
    hazard: bool = False
    """True for a branch left in doubt because applying the decision would not do what
    was prepared (its outcome is still open); False for one already resolved against
    the decision."""

    def as_dict(self) -> dict[str, str | bool]:
        return {
            "gtrid": self.gtrid,
            "participant": self.participant,
            "decision": self.decision,
            "detail": self.detail,
            "hazard": self.hazard,
        }
