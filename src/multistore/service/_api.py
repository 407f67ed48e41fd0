"""The shop's HTTP API (everything but the console and ``/metrics``)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from multistore.consistency import current_run
from multistore.errors import InvalidValueError, NotFoundError, UsageError
from multistore.service._accounts import User
from multistore.service._auth import Principal, admin_user, current_user, shop_of
from multistore.service._models import (
    CartItemBody,
    CartOut,
    LoginBody,
    OrderBody,
    OrderOut,
    PaymentBody,
    PaymentOut,
    ProductBody,
    ProductOut,
    ReadingsBody,
    RegisterBody,
    SessionOut,
    UserOut,
)
from multistore.service._ops import note_idempotency_key
from multistore.service._problems import PROBLEM
from multistore.service._shop import Shop

__all__ = ["router"]

router = APIRouter()

Me = Annotated[User, Depends(current_user)]
Admin = Annotated[User, Depends(admin_user)]
IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        description='A key of your choice (an RFC 8941 string, e.g. "order-42"); a retry '
        "with the same key and body gets the first response instead of running again.",
        min_length=1,
        max_length=257,
    ),
]

_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"description": text, "content": {PROBLEM: {}}}
    for status, text in (
        (400, "bad request (e.g. a malformed Idempotency-Key)"),
        (401, "no session, or a wrong password"),
        (403, "not allowed for this user"),
        (404, "not found"),
        (409, "conflict"),
        (422, "invalid input; the problem names each bad field"),
        (429, "rate limited; see Retry-After"),
    )
}


_FILTER_HELP: Final = 'a Mongo-style filter as JSON, e.g. {"age": {"$gt": 30}}'


def shop(request: Request) -> Shop:
    return shop_of(request.scope)


ShopDep = Annotated[Shop, Depends(shop)]


def _user_out(user: User) -> UserOut:
    return UserOut(id=user.id, username=user.username, role=user.role)


def _idempotent_id(prefix: str) -> str:
    """An id derived from the request's client and Idempotency-Key, so that a retry
    that runs again (after a crash took the first run down) finds the first run's work."""
    run = current_run()
    if run is None:  # pragma: no cover - the app routes these through the middleware
        raise UsageError("this request must come through the idempotency middleware")
    digest = hashlib.sha256(f"{run.client}\x00{run.key}".encode()).hexdigest()
    return f"{prefix}_{digest[:24]}"


async def _note_key(shop: Shop) -> None:
    run = current_run()
    if run is not None:
        await note_idempotency_key(shop, run.client, run.key)


def _cents(amount: Decimal) -> int:
    return int(amount * 100)


# -- health --------------------------------------------------------------------------------


@router.get("/health", tags=["service"], summary="Liveness")
async def health() -> dict[str, str]:
    return {"status": "ok"}


# -- users and sessions --------------------------------------------------------------------


@router.post(
    "/users", status_code=201, response_model=UserOut, tags=["sessions"], responses=_ERRORS
)
async def register(body: RegisterBody, shop: ShopDep) -> UserOut:
    """Create a user (and their profile document)."""
    user = await shop.accounts.register(body.username, body.password, body.profile)
    await shop.social.add_user(user)
    return _user_out(user)


@router.post(
    "/sessions", status_code=201, response_model=SessionOut, tags=["sessions"], responses=_ERRORS
)
async def login(body: LoginBody, shop: ShopDep) -> SessionOut:
    """Log in: a bearer token for a session that lasts ``expires_in`` seconds."""
    session = await shop.accounts.login(body.username, body.password)
    return SessionOut(
        token=session.token, expires_in=session.expires_in, user=_user_out(session.user)
    )


@router.get("/sessions/current", tags=["sessions"], responses=_ERRORS)
async def session_info(request: Request, me: Me, shop: ShopDep) -> dict[str, Any]:
    """The session's user and how long the session has left."""
    principal = request.scope["user"]
    assert isinstance(principal, Principal) and principal.token is not None
    left = await shop.accounts.session_ttl_left(principal.token)
    return {"user": _user_out(me).model_dump(), "expires_in": left}


@router.delete("/sessions/current", status_code=204, tags=["sessions"], responses=_ERRORS)
async def logout(request: Request, me: Me, shop: ShopDep) -> Response:
    """Log out: the token stops working at once."""
    principal = request.scope["user"]
    assert isinstance(principal, Principal) and principal.token is not None
    await shop.accounts.logout(principal.token)
    return Response(status_code=204)


# -- profiles -------------------------------------------------------------------------------


@router.get("/profiles/me", tags=["profiles"], responses=_ERRORS)
async def my_profile(me: Me, shop: ShopDep) -> dict[str, Any]:
    """The user's profile document."""
    found = await shop.accounts.profile(me.id)
    if found is None:
        raise NotFoundError(f"no profile for {me.username!r}")
    return found


@router.patch("/profiles/me", tags=["profiles"], responses=_ERRORS)
async def update_profile(
    update: dict[str, dict[str, Any]], me: Me, shop: ShopDep
) -> dict[str, Any]:
    """Change the profile with Mongo-style operators: ``{"$set": {"address.city":
    "Berlin"}, "$inc": {"visits": 1}}`` (``$set``, ``$unset``, ``$inc``, ``$push``)."""
    if not update:
        raise InvalidValueError("update: give at least one operator, e.g. {'$set': {...}}")
    return await shop.accounts.update_profile(me.id, update)


@router.get("/profiles", tags=["profiles"], responses=_ERRORS)
async def find_profiles(
    admin: Admin,
    shop: ShopDep,
    filter: Annotated[str, Query(description=_FILTER_HELP, max_length=2000)] = "{}",
    sort: Annotated[
        str | None, Query(description="a field, '-field' for descending", max_length=200)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[dict[str, Any]]:
    """Profiles that match a filter (operators ``$eq $ne $lt $lte $gt $gte $in $nin
    $exists $and $or``, dotted paths into nested fields). Admin only."""
    try:
        parsed = json.loads(filter)
    except ValueError:
        raise InvalidValueError("filter: not valid JSON") from None
    if not isinstance(parsed, dict):
        raise InvalidValueError("filter: a JSON object")
    order = None
    if sort:
        order = [(sort.removeprefix("-"), -1 if sort.startswith("-") else 1)]
    return await shop.accounts.find_profiles(parsed, sort=order, limit=limit)


# -- catalog ----------------------------------------------------------------------------------


@router.post(
    "/products", status_code=201, response_model=ProductOut, tags=["catalog"], responses=_ERRORS
)
async def save_product(body: ProductBody, admin: Admin, shop: ShopDep) -> dict[str, Any]:
    """Create or change a product (admin). The search index follows through the outbox."""
    return await shop.catalog.save(
        {
            "sku": body.sku,
            "name": body.name,
            "description": body.description,
            "category": body.category,
            "price_cents": _cents(body.price),
            "stock": body.stock,
        }
    )


@router.get("/products/{sku}", response_model=ProductOut, tags=["catalog"], responses=_ERRORS)
async def get_product(sku: str, shop: ShopDep) -> dict[str, Any]:
    return await shop.catalog.get(sku)


@router.get("/catalog/search", tags=["catalog"], responses=_ERRORS)
async def search(
    shop: ShopDep,
    q: Annotated[str, Query(max_length=200)] = "",
    category: Annotated[list[str] | None, Query(max_length=20)] = None,
    min_price: Annotated[float | None, Query(ge=0, le=1e9)] = None,
    max_price: Annotated[float | None, Query(ge=0, le=1e9)] = None,
    sort: Annotated[str, Query(pattern="^(relevance|price_asc|price_desc)$")] = "relevance",
    limit: Annotated[int, Query(ge=0, le=100)] = 10,
    offset: Annotated[int, Query(ge=0, le=10_000)] = 0,
) -> dict[str, Any]:
    """Full-text search over names and descriptions, filtered by category and price,
    with the number of hits per category."""
    return await shop.catalog.search(
        q,
        categories=category or [],
        min_price=min_price,
        max_price=max_price,
        sort=sort,
        limit=limit,
        offset=offset,
    )


# -- orders and payments ----------------------------------------------------------------------


@router.post(
    "/orders",
    status_code=201,
    response_model=OrderOut,
    tags=["orders"],
    responses={**_ERRORS, 202: {"description": "accepted, still running (poll the order)"}},
)
async def place_order(
    body: OrderBody, idempotency_key: IdempotencyKey, me: Me, shop: ShopDep
) -> Any:
    """Place an order: a saga (create order → charge → reserve stock → confirm,
    compensated on failure) or, with ``"mode": "2pc"``, one two-phase-commit
    transaction. Send an ``Idempotency-Key``: a retry gets the first answer."""
    await _note_key(shop)
    lines = await shop.orders.price([(item.sku, item.qty) for item in body.items])
    order = await shop.orders.place(
        _idempotent_id("ord"), me.id, lines, mode=body.mode or shop.settings.order_mode
    )
    status = 201 if order["status"] == "confirmed" else 202
    headers = {"Location": f"/orders/{order['id']}"}
    return JSONResponse(OrderOut(**order).model_dump(mode="json"), status, headers=headers)


@router.get("/orders", tags=["orders"], responses=_ERRORS)
async def my_orders(
    me: Me, shop: ShopDep, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> list[dict[str, Any]]:
    """The user's orders, newest first."""
    return await shop.orders.of_user(me.id, limit=limit)


@router.get("/orders/{order_id}", response_model=OrderOut, tags=["orders"], responses=_ERRORS)
async def get_order(order_id: str, me: Me, shop: ShopDep) -> dict[str, Any]:
    """One of the user's orders (any order for an admin) with its step history."""
    return await shop.orders.get(order_id, user_id=None if me.is_admin else me.id)


@router.post(
    "/payments", status_code=201, response_model=PaymentOut, tags=["orders"], responses=_ERRORS
)
async def charge(
    body: PaymentBody, idempotency_key: IdempotencyKey, me: Me, shop: ShopDep
) -> dict[str, Any]:
    """Charge an amount, as the seed's ``IdempotentPaymentService.charge``: the same
    ``Idempotency-Key`` charges once and answers every retry with the same payment."""
    await _note_key(shop)
    return await shop.orders.pay(
        _idempotent_id("pay"), me.id, _cents(body.amount), body.description
    )


# -- carts ------------------------------------------------------------------------------------

NodeQuery = Annotated[
    str | None, Query(max_length=64, description="the multi-master node to use (default: yours)")
]


@router.get("/carts/me", response_model=CartOut, tags=["carts"], responses=_ERRORS)
async def my_cart(me: Me, shop: ShopDep, node: NodeQuery = None) -> dict[str, Any]:
    """The user's cart as one node holds it."""
    return await shop.carts.get(me.id, shop.carts.node_for(me.id, node))


@router.put("/carts/me/items/{sku}", response_model=CartOut, tags=["carts"], responses=_ERRORS)
async def set_cart_item(
    sku: str, body: CartItemBody, me: Me, shop: ShopDep, node: NodeQuery = None
) -> dict[str, Any]:
    """Set an item's quantity (0 removes it) on one node; the others merge it in."""
    if not sku or len(sku) > 64:
        raise InvalidValueError("sku: 1 to 64 characters")
    return await shop.carts.set_item(me.id, shop.carts.node_for(me.id, node), sku, body.qty)


# -- social -----------------------------------------------------------------------------------


async def _named(shop: Shop, username: str) -> User:
    other = await shop.accounts.user_named(username)
    if other is None:
        raise NotFoundError(f"username: no user {username!r}")
    return other


@router.put("/social/following/{username}", status_code=204, tags=["social"], responses=_ERRORS)
async def follow(username: str, me: Me, shop: ShopDep) -> Response:
    """Follow another user."""
    await shop.social.follow(me, await _named(shop, username))
    return Response(status_code=204)


@router.get("/social/me", tags=["social"], responses=_ERRORS)
async def social(me: Me, shop: ShopDep) -> dict[str, Any]:
    """Following, followers, friends of friends and recommendations."""
    return await shop.social.view(me)


@router.get("/social/path/{username}", tags=["social"], responses=_ERRORS)
async def path(username: str, me: Me, shop: ShopDep) -> dict[str, Any]:
    """The shortest chain of follows between the user and another (either direction)."""
    return {"path": await shop.social.path(me, await _named(shop, username))}


# -- readings and request metrics -------------------------------------------------------------

_EARLIEST: Final = datetime(1970, 1, 2, tzinfo=UTC)
_LATEST: Final = datetime(2200, 1, 1, tzinfo=UTC)


def _utc(value: datetime, field: str) -> datetime:
    when = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not _EARLIEST <= when <= _LATEST:
        raise InvalidValueError(f"{field}: must be between 1970 and 2200")
    return when.astimezone(UTC)


@router.post("/readings/{sensor_id}", status_code=201, tags=["readings"], responses=_ERRORS)
async def add_readings(sensor_id: str, body: ReadingsBody, me: Me, shop: ShopDep) -> dict[str, int]:
    """Store a sensor's readings (a partition per sensor, newest first)."""
    if not 1 <= len(sensor_id) <= 64:
        raise InvalidValueError("sensor_id: 1 to 64 characters")
    rows = [
        {
            "timestamp": _utc(r.timestamp, f"body.readings.{i}.timestamp"),
            "temperature": r.temperature,
            "humidity": r.humidity,
        }
        for i, r in enumerate(body.readings)
    ]
    return {"stored": await shop.readings.add(sensor_id, rows)}


@router.get("/readings/{sensor_id}", tags=["readings"], responses=_ERRORS)
async def readings(
    sensor_id: str,
    me: Me,
    shop: ShopDep,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """A sensor's readings after ``since``, newest first."""
    return await shop.readings.recent(
        sensor_id, since=None if since is None else _utc(since, "since"), limit=limit
    )


@router.get("/metrics/requests", tags=["metrics"], responses=_ERRORS)
async def request_metrics(
    me: Me,
    shop: ShopDep,
    fn: Annotated[str, Query(pattern="^(mean|min|max|count|median|p50|p90|p95|p99)$")] = "mean",
    every: Annotated[int, Query(ge=1, le=86_400, description="window length, seconds")] = 60,
    window: Annotated[int, Query(ge=1, le=7 * 86_400, description="how far back, seconds")] = 3600,
    route: Annotated[str | None, Query(max_length=200)] = None,
) -> list[dict[str, Any]]:
    """Response times of the requests the service answered (ms), ``fn`` per window."""
    if window // every > 10_000:
        raise InvalidValueError("every: at most 10000 windows per query")
    return await shop.requests.windows(
        fn=fn, every=timedelta(seconds=every), window=timedelta(seconds=window), route=route
    )
