"""The reference service: the seed's e-commerce shop on multistore, over HTTP.

:class:`Shop` is the shop itself (its stores, orders as a saga or a two-phase
commit, sessions, profiles, the catalog fed by an outbox, multi-master carts, the
social graph, readings and request metrics); ``multistore demo`` runs parts of it
too. :func:`create_app` serves it with FastAPI (``multistore serve``): the API with
OpenAPI at ``/openapi.json``, the operations console under ``/console``, Prometheus
metrics at ``/metrics``, OpenTelemetry traces. The HTTP part needs the ``service``
extra (``pip install multistore[service]``); the shop alone does not.
"""

from __future__ import annotations

import typing
from typing import Any

from multistore.service._cart_demo import partitioned_carts
from multistore.service._errors import OrderCancelledError, OutOfStockError
from multistore.service._instruments import Instruments
from multistore.service._orders import (
    ORDER_SAGA,
    OrderLine,
    create_tables,
    order_input,
    order_saga,
    place_order_atomically,
    stock_products,
)
from multistore.service._schema import READINGS
from multistore.service._settings import ServiceSettings
from multistore.service._shop import Shop

if typing.TYPE_CHECKING:
    from multistore.service._app import create_app

__all__ = [
    "ORDER_SAGA",
    "READINGS",
    "Instruments",
    "OrderCancelledError",
    "OrderLine",
    "OutOfStockError",
    "ServiceSettings",
    "Shop",
    "create_app",
    "create_tables",
    "order_input",
    "order_saga",
    "partitioned_carts",
    "place_order_atomically",
    "stock_products",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":  # imports FastAPI, which the demo does without
        from multistore.service._app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
