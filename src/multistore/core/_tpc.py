"""The two-phase commit protocol as pure values and rules (presumed abort), no I/O.

* :class:`Xid` — a global transaction id that names the decision log and the
  coordinator's node, so a recovery manager knows whose in-doubt branches are whose.
  It formats to and parses from one string (``ms2pc:<node>.<log>:<tid>`` for the
  transaction, ``…:<branch>`` for the branch a participant holds, ``…:<branch>@<holder>``
  when participant ``holder`` records the decision instead of the coordinator's log)
  that fits PostgreSQL's 200-byte GID and MariaDB's 64-byte ``gtrid``/``bqual``. Ids
  written before logs had ids (``ms2pc:<node>:<tid>``, 32 hex digits) still parse,
  with an empty ``log``.
* :class:`TxState`, :class:`Vote`, :class:`Decision` — where a transaction stands,
  what a participant answered to prepare, what the coordinator decided.
  :data:`TRANSITIONS` is the state machine; :func:`advance` checks every state change
  against it.
* The presumed-abort rules: :func:`decide`, :func:`needs_decision_log`,
  :func:`phase_two_targets`, :func:`last_resource` and, for recovery,
  :func:`resolve_in_doubt`.

Presumed abort: the coordinator writes nothing before it decides; only a commit
decision is logged (forced to disk before phase 2 starts), so a branch whose
transaction has no log record was never committed and is rolled back.

Last resource ("logging last resource"): one relational branch is not prepared; once
the others are, it commits in one phase together with the commit record, written into
its own database. That commit *is* the decision, so no separate log write and one
prepare less. The other branches' ids name that participant (``@holder``), so
recovery knows where their decision is.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from multistore.errors import InvalidValueError, UsageError

__all__ = [
    "TID_DIGITS",
    "TRANSITIONS",
    "XA_FORMAT_ID",
    "XID_PREFIX",
    "Decision",
    "TxState",
    "TxTransitionError",
    "Vote",
    "Xid",
    "advance",
    "decide",
    "last_resource",
    "needs_decision_log",
    "phase_two_targets",
    "resolve_in_doubt",
]

#: Every multistore global transaction id starts with this; others are not ours.
XID_PREFIX: Final = "ms2pc"
#: The XA ``formatID`` used for multistore branches on MariaDB.
XA_FORMAT_ID: Final = 0x6D73  # "ms"

_NODE_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,24}")
_TID_RE: Final = re.compile(r"[0-9a-f]{16,32}")
_LOG_RE: Final = re.compile(r"[0-9a-f]{10}")
_BRANCH_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,48}")
#: MariaDB's limit on an XA ``gtrid``, in bytes (the global id must fit it).
_GTRID_MAX: Final = 64
#: Hex digits of a transaction id in an id that names its log (the log id takes the rest
#: of the 64-byte gtrid).
TID_DIGITS: Final = 22


class TxState(enum.Enum):
    """Where a distributed transaction stands (the coordinator's view)."""

    ACTIVE = "active"
    """Statements are running on the branches."""
    PREPARING = "preparing"
    """Phase 1: prepare was sent to the participants."""
    COMMITTING = "committing"
    """Commit was decided (and logged when needed); phase 2 is running."""
    COMMITTED = "committed"
    """Every branch committed."""
    ABORTING = "aborting"
    """Abort was decided; branches are being rolled back."""
    ABORTED = "aborted"
    """Nothing was committed anywhere, and never will be."""
    IN_DOUBT = "in_doubt"
    """Commit was decided but some branch did not confirm; recovery finishes it."""

    @property
    def finished(self) -> bool:
        return self in (TxState.COMMITTED, TxState.ABORTED)


#: Every state change the coordinator may make; anything else is a bug
#: (:class:`TxTransitionError`). IN_DOUBT, COMMITTED and ABORTED are final for the
#: coordinator: an in-doubt transaction is finished by recovery, from the log.
TRANSITIONS: Final[Mapping[TxState, frozenset[TxState]]] = {
    # the block ended normally (prepare starts) or raised (everything rolls back)
    TxState.ACTIVE: frozenset({TxState.PREPARING, TxState.ABORTING}),
    TxState.PREPARING: frozenset(
        {
            TxState.COMMITTING,  # commit decided (and logged when needed)
            TxState.ABORTING,  # a NO vote or no answer: abort decided
            TxState.COMMITTED,  # a one-phase commit (one branch, or the last resource alone)
            TxState.ABORTED,  # a one-phase commit that definitely failed
            TxState.IN_DOUBT,  # the decision's write (log or last resource) is unknown
        }
    ),
    TxState.COMMITTING: frozenset({TxState.COMMITTED, TxState.IN_DOUBT}),
    TxState.ABORTING: frozenset({TxState.ABORTED}),
    TxState.COMMITTED: frozenset(),
    TxState.ABORTED: frozenset(),
    TxState.IN_DOUBT: frozenset(),
}


class TxTransitionError(UsageError):
    """A state change that :data:`TRANSITIONS` does not allow."""


def advance(current: TxState, to: TxState) -> TxState:
    """``to``, if the state machine allows going there from ``current``."""
    if to not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "none (final)"
        raise TxTransitionError(
            f"a transaction cannot go from {current.value} to {to.value} (allowed: {allowed})"
        )
    return to


class Vote(enum.Enum):
    """A participant's answer to prepare."""

    YES = "yes"
    """Prepared: the branch can commit and will wait for the decision."""
    NO = "no"
    """Refused (and already rolled back): the transaction must abort."""
    READ_ONLY = "read_only"
    """The branch wrote nothing and is finished; it takes no part in phase 2."""


class Decision(enum.Enum):
    COMMIT = "commit"
    ABORT = "abort"


@dataclass(frozen=True, order=True)
class Xid:
    """A global transaction id, or one branch of it (``branch`` set).

    ``str(xid)`` is ``ms2pc:<node>.<log>:<tid>[:<branch>[@<holder>]]`` and :meth:`parse`
    reads it back. ``node`` names the coordinator (letters, digits, ``_``, ``-``; at
    most 24), ``log`` the decision log that decides it (10 lowercase hex digits, made
    when the log was created; empty in ids written before logs had ids, printed then as
    ``ms2pc:<node>:<tid>``), ``tid`` is 16-32 lowercase hex digits (22 in new ids, so the
    global id fits MariaDB's 64 bytes), ``branch`` the participant's name, ``holder``
    the participant whose database holds the transaction's decision (its last
    resource), empty when the coordinator's log does.
    """

    node: str
    tid: str
    branch: str = ""
    holder: str = ""
    log: str = ""

    def __post_init__(self) -> None:
        if not _NODE_RE.fullmatch(self.node):
            raise InvalidValueError(
                f"coordinator node id {self.node!r} must be 1-24 letters, digits, '_' or '-'"
            )
        if not _TID_RE.fullmatch(self.tid):
            raise InvalidValueError(
                f"transaction id {self.tid!r} must be 16-32 lowercase hex digits"
            )
        if self.log and not _LOG_RE.fullmatch(self.log):
            raise InvalidValueError(f"log id {self.log!r} must be 10 lowercase hex digits")
        if not self.log and len(self.tid) != 32:
            # An id without a log id is one written before logs had ids: 32 digits.
            raise InvalidValueError(
                f"transaction id {self.tid!r}: an id without a log id has 32 hex digits"
            )
        if len(self.gtrid) > _GTRID_MAX:
            raise InvalidValueError(
                f"global transaction id {self.gtrid!r} is longer than {_GTRID_MAX} characters "
                "(a shorter node id or transaction id fits)"
            )
        if self.branch and not _BRANCH_RE.fullmatch(self.branch):
            raise InvalidValueError(
                f"branch name {self.branch!r} must be 1-48 letters, digits, '_' or '-'"
            )
        if self.holder and not (self.branch and _BRANCH_RE.fullmatch(self.holder)):
            raise InvalidValueError(
                f"decision holder {self.holder!r} needs a branch and must be 1-48 letters, "
                "digits, '_' or '-'"
            )

    @property
    def gtrid(self) -> str:
        """The global part (no branch): the key of the decision log."""
        owner = f"{self.node}.{self.log}" if self.log else self.node
        return f"{XID_PREFIX}:{owner}:{self.tid}"

    @property
    def is_branch(self) -> bool:
        return bool(self.branch)

    def for_branch(self, branch: str, holder: str = "") -> Xid:
        """This transaction's id on participant ``branch`` (its decision held by
        participant ``holder``, if given)."""
        return Xid(self.node, self.tid, branch, holder, self.log)

    @property
    def bqual(self) -> str:
        """The branch part: ``<branch>`` or ``<branch>@<holder>`` (MariaDB's ``bqual``)."""
        return f"{self.branch}@{self.holder}" if self.holder else self.branch

    @property
    def global_xid(self) -> Xid:
        return Xid(self.node, self.tid, log=self.log)

    def __str__(self) -> str:
        return f"{self.gtrid}:{self.bqual}" if self.branch else self.gtrid

    @classmethod
    def parse(cls, text: str) -> Xid:
        """Read an id written by ``str(xid)``; :class:`InvalidValueError` otherwise."""
        parts = text.split(":")
        if len(parts) not in (3, 4) or parts[0] != XID_PREFIX:
            raise InvalidValueError(
                f"{text!r} is not a multistore transaction id "
                "(ms2pc:<node>.<log>:<tid>[:<branch>[@<holder>]])"
            )
        node, dot, log = parts[1].partition(".")
        if dot and not log:
            raise InvalidValueError(f"{text!r}: '.' must be followed by the log id")
        if len(parts) == 3:
            return cls(node, parts[2], log=log)
        branch, at, holder = parts[3].partition("@")
        if at and not holder:
            raise InvalidValueError(f"{text!r}: '@' must be followed by the decision holder")
        return cls(node, parts[2], branch, holder, log)

    @classmethod
    def try_parse(cls, text: str) -> Xid | None:
        """Like :meth:`parse`, but None for an id that is not ours (another tool's)."""
        try:
            return cls.parse(text)
        except InvalidValueError:
            return None


def decide(votes: Mapping[str, Vote | None]) -> Decision:
    """Commit only when every participant voted (None: no answer in time) and none
    voted NO."""
    if all(vote is not None and vote is not Vote.NO for vote in votes.values()):
        return Decision.COMMIT
    return Decision.ABORT


def needs_decision_log(votes: Mapping[str, Vote | None]) -> bool:
    """A commit decision is logged only when two or more branches are prepared: with one
    prepared branch (the others read-only) its own commit is the decision, and a crash
    before it leaves a branch that presumed abort rightly rolls back."""
    return sum(1 for vote in votes.values() if vote is Vote.YES) >= 2


def last_resource(names: Sequence[str], rank: Callable[[str], int | None]) -> str | None:
    """The participant that commits last, in one phase, with the decision: among
    ``names`` those with a ``rank`` (None: cannot be one), the lowest, the first in
    the transaction's order on a tie; None without one, or with a single participant
    (that commits in one phase anyway)."""
    if len(names) < 2:
        return None
    ranked = [(r, i) for i, name in enumerate(names) if (r := rank(name)) is not None]
    return names[min(ranked)[1]] if ranked else None


def phase_two_targets(votes: Mapping[str, Vote | None], decision: Decision) -> list[str]:
    """The participants that phase 2 must reach, in name order.

    Commit: the prepared ones (read-only branches are finished). Abort: the prepared
    ones and those that gave no answer (their prepare may have gone through); a NO
    voter has rolled back already.
    """
    if decision is Decision.COMMIT:
        return sorted(name for name, vote in votes.items() if vote is Vote.YES)
    return sorted(name for name, vote in votes.items() if vote is Vote.YES or vote is None)


def resolve_in_doubt(logged: Decision | None) -> Decision:
    """Presumed abort: an in-doubt branch commits only when a commit decision is logged."""
    return Decision.COMMIT if logged is Decision.COMMIT else Decision.ABORT
