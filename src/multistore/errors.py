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
    │   └── UnsupportedError         the backend does not serve this model/operation
    ├── NotFoundError                missing collection, table, measurement, index
    ├── ConflictError                a write that contradicts stored state
    │   └── DuplicateKeyError        insert of an id that already exists
    ├── StoreError                   the store failed (server-side error)
    │   ├── StoreUnavailableError    cannot connect: the server is down or unreachable
    │   └── StoreTimeoutError        no answer in time (indeterminate)
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
from typing import ClassVar

__all__ = [
    "BenchmarkError",
    "ConfigError",
    "ConflictError",
    "DuplicateKeyError",
    "ErrorCode",
    "InvalidQueryError",
    "InvalidURLError",
    "InvalidValueError",
    "MultistoreError",
    "NotFoundError",
    "Outcome",
    "StoreError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "UnsupportedError",
    "UsageError",
]


class ErrorCode(enum.IntEnum):
    """Stable error codes. The values are CLI exit codes; never renumber them.

    0 and 1 are left to success and "unexpected failure", 2 to usage errors of
    the command line itself (as click and typer use it).
    """

    UNKNOWN = 1
    CONFIG = 10
    INVALID_URL = 11
    USAGE = 20
    INVALID_QUERY = 21
    INVALID_VALUE = 22
    UNSUPPORTED = 23
    NOT_FOUND = 30
    CONFLICT = 40
    DUPLICATE_KEY = 41
    STORE = 50
    STORE_UNAVAILABLE = 51
    STORE_TIMEOUT = 52
    BENCHMARK = 60

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


class ConflictError(MultistoreError):
    """A write that contradicts what is stored; nothing was changed."""

    code = ErrorCode.CONFLICT


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


class StoreTimeoutError(StoreError):
    """No answer within the timeout: the operation may or may not have happened."""

    code = ErrorCode.STORE_TIMEOUT


class BenchmarkError(MultistoreError):
    """A benchmark that does not exist or could not run."""

    code = ErrorCode.BENCHMARK
