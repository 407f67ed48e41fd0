"""Who is asking, and how often: session tokens and the per-client rate limit.

:class:`SessionAuth` (ASGI middleware) reads the session token from
``Authorization: Bearer <token>`` or, for the console in a browser, the
``multistore_session`` cookie, looks the session up in the key-value store and puts
the user in ``scope["user"]`` (an object with ``identity`` and ``is_authenticated``,
as Starlette's authentication does); then it counts the request against the
client's rate limit (the user, or the address for anonymous requests) and answers
429 when the window is full.

Endpoints ask for a user with the :func:`current_user` / :func:`admin_user`
dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from fastapi import Request

from multistore.errors import MultistoreError
from multistore.service._accounts import User
from multistore.service._asgi import ASGIApp, Receive, Scope, Send
from multistore.service._errors import ForbiddenError, NotAuthenticatedError, RateLimitedError
from multistore.service._problems import error_response
from multistore.service._shop import Shop

__all__ = [
    "COOKIE",
    "Principal",
    "SessionAuth",
    "admin_user",
    "current_user",
    "idempotency_client",
    "shop_of",
]

COOKIE: Final = "multistore_session"
UNLIMITED: Final = ("/metrics", "/health", "/console/static")


@dataclass(frozen=True)
class Principal:
    """``scope["user"]``: the session's user, or nobody."""

    user: User | None
    token: str | None = None

    @property
    def is_authenticated(self) -> bool:
        return self.user is not None

    @property
    def identity(self) -> str:
        return "" if self.user is None else self.user.id

    @property
    def display_name(self) -> str:
        return "" if self.user is None else self.user.username


def shop_of(scope: Scope) -> Shop:
    shop: object = scope["app"].state.shop
    assert isinstance(shop, Shop)
    return shop


def _token(scope: Scope) -> str | None:
    cookie: str | None = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = bytes(value).decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
        elif name == b"cookie":
            for part in bytes(value).decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                if key == COOKIE and val:
                    cookie = val
    return cookie


def idempotency_client(scope: Scope) -> str:
    """The idempotency client scope: the authenticated user's id (the service routes
    only authenticated requests through the idempotency middleware)."""
    principal = scope.get("user")
    assert isinstance(principal, Principal) and principal.user is not None
    return "user:" + principal.user.id


class SessionAuth:
    """See the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        shop = shop_of(scope)
        token = _token(scope)
        try:
            user = None if token is None else await shop.accounts.session(token)
            scope["user"] = Principal(user, token if user is not None else None)
            path = scope.get("path", "")
            if not path.startswith(UNLIMITED):
                await self._count(shop, scope, user)
        except MultistoreError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _count(self, shop: Shop, scope: Scope, user: User | None) -> None:
        if user is not None:
            client = "user:" + user.id
        else:
            host = (scope.get("client") or ("unknown", 0))[0]
            client = f"addr:{host}"
        settings = shop.settings
        with shop.instruments.store_op("sessions", "rate_limit"):
            decision = await shop.sessions.rate_limit(
                f"rate:{client}", settings.rate_limit, settings.rate_window
            )
        if not decision.allowed:
            raise RateLimitedError(
                f"more than {settings.rate_limit} requests in {settings.rate_window:g} s; "
                f"retry in {decision.retry_after:.1f} s",
                retry_after=decision.retry_after,
            )


def current_user(request: Request) -> User:
    """Dependency: the session's user, else 401."""
    principal = request.scope.get("user")
    if not isinstance(principal, Principal) or principal.user is None:
        raise NotAuthenticatedError(
            "this needs a session: POST /sessions, then send Authorization: Bearer <token>"
        )
    return principal.user


def admin_user(request: Request) -> User:
    """Dependency: the session's user if an admin, else 401/403."""
    user = current_user(request)
    if not user.is_admin:
        raise ForbiddenError("this is an operator action; it needs the admin role")
    return user
