"""The one error tree of multistore.

Every error multistore raises on purpose derives from :class:`MultistoreError`.
Each class carries a stable :class:`ErrorCode`, used as the CLI's exit code and in
HTTP ``problem+json`` bodies, and an :class:`Outcome` that says whether the
operation that failed *may* have taken effect::

    MultistoreError
    ├── ConfigError                  bad multistore.toml, unknown role/scheme
    │   └── InvalidURLError          a store URL that cannot be parsed or is not allowed
    ├── UsageError                   the caller asked for something invalid
    │   ├── InvalidQueryError        malformed filter, unknown operator, bad query syntax
    │   ├── InvalidValueError        a value that cannot be stored (NaN in JSON, …)
    │   ├── UnsupportedError         the backend does not serve this model/operation
    │   ├── IdempotencyKeyMissingError   a required Idempotency-Key is missing (HTTP 400)
    │   ├── InvalidIdempotencyKeyError   a malformed idempotency key (HTTP 400)
    │   ├── IdempotencyClientUnknownError  a keyed request without an identified client (HTTP 400)
    │   └── ContentTooLargeError     a request body over the configured limit (HTTP 413)
    ├── NotFoundError                missing collection, table, measurement, index
    ├── ConflictError                a write that contradicts stored state
    │   ├── DuplicateKeyError        insert of an id that already exists
    │   ├── WrongTypeError           a key-value op on a key holding the other kind of value
    │   ├── ClockSkewError           a remote clock too far ahead (the HLC skew guard)
    │   ├── IdempotencyKeyReusedError    the key was used with another payload (HTTP 422)
    │   ├── IdempotencyInProgressError   the first request still runs (HTTP 409)
    │   ├── IdempotencyLeaseLostError    our lease was taken over (indeterminate)
    │   ├── TransactionAbortedError  a distributed transaction rolled back everywhere
    │   └── SagaLeaseLostError       another worker took over the saga
    ├── StoreError                   the store failed (server-side error)
    │   ├── StoreUnavailableError    cannot connect: the server is down or unreachable
    │   ├── StoreTimeoutError        no answer in time (indeterminate)
    │   ├── TransactionIndeterminateError  commit may have been decided; recovery finishes it
    │   └── TransactionHeuristicError      a branch's outcome contradicts the decision
    ├── SagaError                    a saga could not proceed
    │   ├── StepTimeoutError         a step ran past its timeout (indeterminate)
    │   └── SagaTimeoutError         the saga ran past its deadline
    ├── ReplayedError                a stored error replayed, whose class could not be rebuilt
    ├── ResponseNotStoredError       a response too large to store for replay (HTTP 500)
    └── BenchmarkError               a benchmark that could not run

Certainty of the outcome is part of the type, following Jepsen's maelstrom
protocol: a **definite** error means the operation did not happen and never
will; an **indeterminate** error means it may have happened (timeouts, crashes,
a connection lost after the request was sent). When in doubt, indeterminate is
the safe answer, so :class:`StoreError` defaults to it and only errors raised
before anything was sent are definite.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import ClassVar

__all__ = [
    "BenchmarkError",
    "ClockSkewError",
    "ConfigError",
    "ConflictError",
    "ContentTooLargeError",
    "DuplicateKeyError",
    "ErrorCode",
    "IdempotencyClientUnknownError",
    "IdempotencyInProgressError",
    "IdempotencyKeyMissingError",
    "IdempotencyKeyReusedError",
    "IdempotencyLeaseLostError",
    "InvalidIdempotencyKeyError",
    "InvalidQueryError",
    "InvalidURLError",
    "InvalidValueError",
    "MultistoreError",
    "NotFoundError",
    "Outcome",
    "ReplayedError",
    "ResponseNotStoredError",
    "SagaError",
    "SagaLeaseLostError",
    "SagaTimeoutError",
    "StepTimeoutError",
    "StoreError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "TransactionAbortedError",
    "TransactionHeuristicError",
    "TransactionIndeterminateError",
    "UnsupportedError",
    "UsageError",
    "WrongTypeError",
]


class ErrorCode(enum.IntEnum):
    """Stable error codes. The values are CLI exit codes; never renumber them.

    0 and 1 are left to success and "unexpected failure"; 2 is a usage error of
    the command line itself (an unknown command or option, a missing argument), as
    click and typer use it. No exception class carries it.
    """

    UNKNOWN = 1
    COMMAND_LINE = 2
    REPLAYED = 3
    CONFIG = 10
    INVALID_URL = 11
    USAGE = 20
    INVALID_QUERY = 21
    INVALID_VALUE = 22
    UNSUPPORTED = 23
    IDEMPOTENCY_KEY_MISSING = 24
    INVALID_IDEMPOTENCY_KEY = 25
    IDEMPOTENCY_CLIENT_UNKNOWN = 26
    CONTENT_TOO_LARGE = 27
    RESPONSE_NOT_STORED = 28
    NOT_FOUND = 30
    CONFLICT = 40
    DUPLICATE_KEY = 41
    WRONG_TYPE = 42
    CLOCK_SKEW = 43
    IDEMPOTENCY_KEY_REUSED = 44
    IDEMPOTENCY_IN_PROGRESS = 45
    IDEMPOTENCY_LEASE_LOST = 46
    SAGA_LEASE_LOST = 47
    TRANSACTION_ABORTED = 48
    STORE = 50
    STORE_UNAVAILABLE = 51
    STORE_TIMEOUT = 52
    TRANSACTION_INDETERMINATE = 53
    HEURISTIC_OUTCOME = 54
    BENCHMARK = 60
    SAGA = 70
    SAGA_STEP_TIMEOUT = 71
    SAGA_TIMEOUT = 72

    @property
    def slug(self) -> str:
        """The code as a short lowercase name, e.g. ``invalid-url``."""
        return self.name.lower().replace("_", "-")


class Outcome(enum.Enum):
    """Whether a failed operation may have taken effect."""

    DEFINITE = "definite"
    """It did not happen and never will."""
    INDETERMINATE = "indeterminate"
    """It may have happened; only a later read can tell."""


class MultistoreError(Exception):
    """Root of every error that multistore raises on purpose."""

    code: ClassVar[ErrorCode] = ErrorCode.UNKNOWN
    default_outcome: ClassVar[Outcome] = Outcome.DEFINITE
    http_status: ClassVar[int] = 500
    """The HTTP status an API answers with for this error."""

    def __init__(self, message: str, *, outcome: Outcome | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.outcome = outcome if outcome is not None else self.default_outcome

    @property
    def definite(self) -> bool:
        """True when the failed operation certainly did not take effect."""
        return self.outcome is Outcome.DEFINITE

    def to_problem(self) -> dict[str, object]:
        """This error as an RFC 9457 ``problem+json`` body."""
        return {
            "type": f"urn:multistore:error:{self.code.slug}",
            "title": type(self).__name__,
            "detail": self.message,
            "status": self.http_status,
            "code": int(self.code),
            "outcome": self.outcome.value,
        }

    def __str__(self) -> str:
        return self.message


class ConfigError(MultistoreError):
    """multistore.toml (or a role mapping) is wrong; the message names file, key and fix."""

    code = ErrorCode.CONFIG


class InvalidURLError(ConfigError):
    """A store URL cannot be parsed, uses a scheme not on the allow-list, or has bad options."""

    code = ErrorCode.INVALID_URL


class UsageError(MultistoreError):
    """The caller asked for something invalid; nothing was attempted."""

    code = ErrorCode.USAGE
    http_status = 400


class InvalidQueryError(UsageError):
    """A malformed filter, unknown operator or query syntax error."""

    code = ErrorCode.INVALID_QUERY


class InvalidValueError(UsageError):
    """A value that the store cannot hold (NaN in JSON, wrong type for a schema field)."""

    code = ErrorCode.INVALID_VALUE


class UnsupportedError(UsageError):
    """The backend does not serve this data model or operation."""

    code = ErrorCode.UNSUPPORTED


class NotFoundError(MultistoreError):
    """A collection, table, measurement, index or node that does not exist."""

    code = ErrorCode.NOT_FOUND
    http_status = 404


class ConflictError(MultistoreError):
    """A write that contradicts what is stored; nothing was changed."""

    code = ErrorCode.CONFLICT
    http_status = 409


class DuplicateKeyError(ConflictError):
    """An insert of a key or id that already exists."""

    code = ErrorCode.DUPLICATE_KEY


class StoreError(MultistoreError):
    """The store itself failed. Indeterminate unless raised before anything was sent."""

    code = ErrorCode.STORE
    default_outcome = Outcome.INDETERMINATE


class StoreUnavailableError(StoreError):
    """The server could not be reached (down, refused, connection lost)."""

    code = ErrorCode.STORE_UNAVAILABLE
    http_status = 503


class StoreTimeoutError(StoreError):
    """No answer within the timeout: the operation may or may not have happened."""

    code = ErrorCode.STORE_TIMEOUT
    http_status = 504


class WrongTypeError(ConflictError):
    """An operation on a key that holds the other kind of value (a string vs a sorted
    set), like Redis ``WRONGTYPE``. Nothing was changed."""

    code = ErrorCode.WRONG_TYPE


class ClockSkewError(ConflictError):
    """A remote timestamp is further ahead of our wall clock than the allowed skew.

    Definite: the clock was not advanced and the change that carried the timestamp
    must not be applied. ``remote`` is the offending timestamp, ``skew_ms`` how far
    ahead it was.
    """

    code = ErrorCode.CLOCK_SKEW

    def __init__(self, message: str, *, remote: object = None, skew_ms: int = 0) -> None:
        super().__init__(message)
        self.remote = remote
        self.skew_ms = skew_ms


class IdempotencyKeyMissingError(UsageError):
    """An idempotency key is required and none was given (HTTP 400)."""

    code = ErrorCode.IDEMPOTENCY_KEY_MISSING


class InvalidIdempotencyKeyError(UsageError):
    """An idempotency key that is empty, longer than 255 characters or not visible
    ASCII (HTTP 400)."""

    code = ErrorCode.INVALID_IDEMPOTENCY_KEY


class IdempotencyClientUnknownError(UsageError):
    """A request with an idempotency key but no identified client (HTTP 400): its key
    would share one scope with every other unidentified client. Nothing ran."""

    code = ErrorCode.IDEMPOTENCY_CLIENT_UNKNOWN


class ContentTooLargeError(UsageError):
    """A request body larger than the configured limit (HTTP 413). Nothing ran."""

    code = ErrorCode.CONTENT_TOO_LARGE
    http_status = 413


class ResponseNotStoredError(MultistoreError):
    """The first response to an idempotency key was larger than the limit for stored
    responses: it was delivered once and cannot be replayed (HTTP 500). The request
    did run; do not send it again under a new key unless running it twice is safe."""

    code = ErrorCode.RESPONSE_NOT_STORED
    default_outcome = Outcome.INDETERMINATE


class IdempotencyKeyReusedError(ConflictError):
    """The key was used before with another payload (HTTP 422). Nothing ran."""

    code = ErrorCode.IDEMPOTENCY_KEY_REUSED
    http_status = 422


class IdempotencyInProgressError(ConflictError):
    """A run holding this key is still in progress (HTTP 409). Nothing ran; retry
    after ``retry_after`` seconds."""

    code = ErrorCode.IDEMPOTENCY_IN_PROGRESS

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IdempotencyLeaseLostError(ConflictError):
    """This run could not renew its lease in time and another run took the key over;
    its outcome was not stored. Indeterminate: its effects may have happened."""

    code = ErrorCode.IDEMPOTENCY_LEASE_LOST
    default_outcome = Outcome.INDETERMINATE


class SagaLeaseLostError(ConflictError):
    """Another worker took over this saga (our lease ran out); this worker stops."""

    code = ErrorCode.SAGA_LEASE_LOST


class SagaError(MultistoreError):
    """A saga could not proceed (root of the saga errors)."""

    code = ErrorCode.SAGA


class StepTimeoutError(SagaError):
    """A step's action or compensation ran past its timeout. It may have taken
    effect (indeterminate); retried by the default policy."""

    code = ErrorCode.SAGA_STEP_TIMEOUT
    default_outcome = Outcome.INDETERMINATE


class SagaTimeoutError(SagaError):
    """The saga ran past its deadline; its started steps are compensated."""

    code = ErrorCode.SAGA_TIMEOUT


class ReplayedError(MultistoreError):
    """A stored error whose class could not be rebuilt on replay; ``type_name`` names it."""

    code = ErrorCode.REPLAYED

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name


class TransactionAbortedError(ConflictError):
    """The distributed transaction was rolled back; nothing of it committed anywhere.
    Definite. ``reasons`` maps each refusing participant to its message."""

    code = ErrorCode.TRANSACTION_ABORTED

    def __init__(self, message: str, *, gtrid: str, reasons: dict[str, str] | None = None) -> None:
        super().__init__(message, outcome=Outcome.DEFINITE)
        self.gtrid = gtrid
        self.reasons = dict(reasons or {})


class TransactionIndeterminateError(StoreError):
    """The outcome is not known yet: commit may have been decided; recovery finishes the
    transaction (``pending`` names the participants still to be reached)."""

    code = ErrorCode.TRANSACTION_INDETERMINATE

    def __init__(self, message: str, *, gtrid: str, pending: Sequence[str] = ()) -> None:
        super().__init__(message, outcome=Outcome.INDETERMINATE)
        self.gtrid = gtrid
        self.pending = tuple(pending)


class TransactionHeuristicError(StoreError):
    """Some branch's outcome contradicts the decision (see ``heuristics``, a sequence of
    :class:`multistore.consistency.HeuristicOutcome`)."""

    code = ErrorCode.HEURISTIC_OUTCOME

    def __init__(self, message: str, *, heuristics: Sequence[object]) -> None:
        super().__init__(message, outcome=Outcome.INDETERMINATE)
        self.heuristics = tuple(heuristics)


class BenchmarkError(MultistoreError):
    """A benchmark that does not exist or could not run."""

    code = ErrorCode.BENCHMARK
