"""Request and response bodies of the HTTP API (they make the OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CartItemBody",
    "CartOut",
    "LoginBody",
    "OrderBody",
    "OrderItem",
    "OrderOut",
    "PaymentBody",
    "PaymentOut",
    "ProductBody",
    "ProductOut",
    "ReadingIn",
    "ReadingsBody",
    "RegisterBody",
    "SessionOut",
    "UserOut",
]

Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Money = Annotated[Decimal, Field(gt=0, le=Decimal("1000000"), decimal_places=2, max_digits=9)]
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e9, le=1e9)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterBody(Strict):
    username: Annotated[str, Field(min_length=2, max_length=32, pattern=r"^[a-z][a-z0-9_.-]+$")]
    password: Annotated[str, Field(min_length=8, max_length=200)]
    profile: dict[str, Any] = Field(default_factory=dict, max_length=50)


class UserOut(BaseModel):
    id: str
    username: str
    role: str


class LoginBody(Strict):
    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=200)]


class SessionOut(BaseModel):
    token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: float
    user: UserOut


class OrderItem(Strict):
    sku: Sku
    qty: Annotated[int, Field(ge=1, le=100)]


class OrderBody(Strict):
    items: Annotated[list[OrderItem], Field(min_length=1, max_length=50)]
    mode: Literal["saga", "2pc"] | None = None


class OrderLineOut(BaseModel):
    sku: str
    qty: int
    price_cents: int


class OrderOut(BaseModel):
    id: str
    user_id: str
    status: str
    mode: str
    total_cents: int
    created_at: float
    updated_at: float
    items: list[OrderLineOut]
    history: list[dict[str, Any]]
    saga: dict[str, Any] | None = None
    transaction: str | None = None


class PaymentBody(Strict):
    amount: Money
    description: Annotated[str, Field(max_length=255)] = ""


class PaymentOut(BaseModel):
    id: str
    amount: str
    amount_cents: int
    status: str
    description: str


class ProductBody(Strict):
    sku: Sku
    name: Annotated[str, Field(min_length=1, max_length=255)]
    description: Annotated[str, Field(max_length=5000)] = ""
    category: Annotated[str, Field(min_length=1, max_length=64)]
    price: Money
    stock: Annotated[int, Field(ge=0, le=1_000_000_000)] | None = None


class ProductOut(BaseModel):
    sku: str
    name: str
    description: str
    category: str
    price_cents: int
    stock: int


class CartItemBody(Strict):
    qty: Annotated[int, Field(ge=0, le=100)]


class CartOut(BaseModel):
    node: str
    items: dict[str, int]


class ReadingIn(Strict):
    timestamp: datetime
    temperature: Finite
    humidity: Finite


class ReadingsBody(Strict):
    readings: Annotated[list[ReadingIn], Field(min_length=1, max_length=1000)]
