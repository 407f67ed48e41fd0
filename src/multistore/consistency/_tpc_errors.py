"""Errors of two-phase commit: definite abort, indeterminate outcome, heuristic outcome.

* :class:`TransactionAbortedError` (a :class:`~multistore.errors.ConflictError`) is
  **definite**: the transaction was rolled back everywhere, or will be by recovery
  (presumed abort: no commit decision was logged), and it never commits.
* :class:`TransactionIndeterminateError` (a :class:`~multistore.errors.StoreError`) is
  **indeterminate**: commit may have been decided — the decision log could not be
  written for sure, or a participant did not confirm phase 2. Recovery finishes it.
* :class:`TransactionHeuristicError` reports outcomes that contradict the decision
  (a branch that vanished before phase 2 reached it): never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from multistore.errors import (
    TransactionAbortedError,
    TransactionHeuristicError,
    TransactionIndeterminateError,
)

__all__ = [
    "HeuristicOutcome",
    "TransactionAbortedError",
    "TransactionHeuristicError",
    "TransactionIndeterminateError",
]


@dataclass(frozen=True)
class HeuristicOutcome:
    """A branch whose fate contradicts (or cannot be reconciled with) the decision."""

    gtrid: str
    participant: str
    decision: str
    """What the coordinator decided: ``commit`` or ``abort``."""
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {
            "gtrid": self.gtrid,
            "participant": self.participant,
            "decision": self.decision,
            "detail": self.detail,
        }
