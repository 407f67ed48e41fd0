"""The shop's own errors. Each is a :class:`~multistore.errors.MultistoreError` with an
HTTP status and a ``slug`` that names its problem type
(``urn:multistore:problem:<slug>``)."""

from __future__ import annotations

from typing import ClassVar

from multistore.errors import ConflictError, InvalidValueError, NotFoundError, UsageError

__all__ = [
    "ForbiddenError",
    "LoginFailedError",
    "NotAuthenticatedError",
    "OrderCancelledError",
    "OrderNotFoundError",
    "OutOfStockError",
    "RateLimitedError",
    "UnknownProductError",
    "UsernameTakenError",
]


class NotAuthenticatedError(UsageError):
    """No valid session: log in (``POST /sessions``) and send the token."""

    http_status = 401
    slug: ClassVar[str] = "not-authenticated"


class LoginFailedError(UsageError):
    """Unknown user name or wrong password (the answer does not say which)."""

    http_status = 401
    slug: ClassVar[str] = "login-failed"


class ForbiddenError(UsageError):
    """The session's user may not do this (an operator action without the admin role)."""

    http_status = 403
    slug: ClassVar[str] = "forbidden"


class RateLimitedError(UsageError):
    """Too many requests from this client in the current window."""

    http_status = 429
    slug: ClassVar[str] = "rate-limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UsernameTakenError(ConflictError):
    """Another user has this name."""

    http_status = 409
    slug: ClassVar[str] = "username-taken"


class OrderCancelledError(ConflictError):
    """The order saga failed and compensated: the payment is refunded, the order
    cancelled (its history says why)."""

    http_status = 409
    slug: ClassVar[str] = "order-cancelled"

    def __init__(self, message: str, *, order_id: str | None = None) -> None:
        super().__init__(message)
        self.order_id = order_id


class OutOfStockError(OrderCancelledError):
    """An ordered item has not enough stock; the order was cancelled (saga) or never
    written (two-phase commit)."""

    slug: ClassVar[str] = "out-of-stock"


class UnknownProductError(InvalidValueError):
    """An order names a product the catalog does not have."""

    http_status = 422
    slug: ClassVar[str] = "unknown-product"


class OrderNotFoundError(NotFoundError):
    """No such order for this user."""

    http_status = 404
    slug: ClassVar[str] = "order-not-found"
