"""The shop: every store of the seed's e-commerce layout, opened from the config,
and the work that runs beside the requests.

=============  ============  ===================================================
role           model         what the shop keeps there
=============  ============  ===================================================
sessions       key-value     sessions (TTL), rate-limit counters
profiles       document      user profiles
catalog        search        the product index (fed by the outbox)
orders         relational    users, orders and their items (the orders database)
social         graph         who follows whom
metrics        time series   one point per request answered
readings       wide-column   sensor readings
idempotency    key-value     ``Idempotency-Key`` records
sagas          relational    the order sagas' log
transactions   relational    the two-phase-commit decision log
=============  ============  ===================================================

The payments and inventory databases are the ``[participants]`` named
``payments`` and ``inventory`` in ``multistore.toml`` (``orders`` too, to put the
orders elsewhere than the ``orders`` role), else SQLite files in the data directory:
they are the participants of the shop's two-phase commits, so ``multistore
recover`` finds them there too. The carts live on the ``[replication.multimaster]``
nodes, else on two embedded nodes.

Beside the requests the shop runs the outbox relay (products to the search index),
cart replication, saga recovery (sagas a crashed server left unfinished) and the
writer of request points.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from multistore.config import Config
from multistore.consistency import (
    EtcdLeases,
    Idempotency,
    IdempotencyPolicy,
    Outbox,
    OutboxRelay,
    SagaEngine,
    TransactionCoordinator,
)
from multistore.core import Xid
from multistore.errors import MultistoreError
from multistore.service._accounts import Accounts
from multistore.service._carts import Carts
from multistore.service._catalog import Catalog
from multistore.service._instruments import NO_INSTRUMENTS, Instruments
from multistore.service._orders import Orders, order_saga
from multistore.service._schema import DATABASES, TABLES
from multistore.service._series import Readings, RequestSeries
from multistore.service._settings import ServiceSettings
from multistore.service._social import Social
from multistore.stores import Store, open_store
from multistore.stores.document import DocumentStore
from multistore.stores.graph import GraphStore
from multistore.stores.kv import KeyValueStore
from multistore.stores.relational import RelationalStore
from multistore.stores.search import SearchStore
from multistore.stores.timeseries import TimeSeriesStore
from multistore.stores.widecolumn import WideColumnStore
from multistore.urls import StoreURL, parse_url

__all__ = ["OUTBOX_TABLE", "Shop", "cart_node_urls", "database_urls"]

log = logging.getLogger("multistore.service")

OUTBOX_TABLE = "shop_outbox"


def database_urls(config: Config) -> dict[str, StoreURL]:
    """The orders, payments and inventory databases (see the module docstring)."""
    urls: dict[str, StoreURL] = {}
    for name in DATABASES:
        if name in config.participants:
            urls[name] = config.participants[name]
        elif name == "orders":
            urls[name] = config.role("orders").url
        else:
            urls[name] = parse_url(f"sqlite:///{config.data_dir / f'shop-{name}.db'}")
    return urls


def cart_node_urls(config: Config) -> dict[str, str]:
    spec = config.replication
    if spec is not None and spec.multimaster_nodes:
        return {k: u.render(hide_password=False) for k, u in spec.multimaster_nodes.items()}
    return {n: f"sqlite:///{config.data_dir / f'carts-{n}.db'}" for n in ("a", "b")}


async def _open_url(url: StoreURL) -> RelationalStore:
    if url.is_file and url.path != ":memory:":
        await asyncio.to_thread(Path(url.path).parent.mkdir, parents=True, exist_ok=True)
    store = await open_store(url, model="relational")
    assert isinstance(store, RelationalStore)
    return store


class Shop:
    """Open with :meth:`open`, close with :meth:`close` (or ``async with``)."""

    def __init__(self, config: Config, settings: ServiceSettings, instruments: Instruments):
        self.config = config
        self.settings = settings
        self.instruments = instruments
        self._opened: list[Store] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.coordinator: TransactionCoordinator | None = None
        self.carts_: Carts | None = None
        self.relay: OutboxRelay | None = None

    # -- opening -------------------------------------------------------------------------

    async def _role(self, role: str) -> Store:
        store = await self.config.open(role)
        self._opened.append(store)
        return store

    @classmethod
    async def open(
        cls,
        config: Config,
        settings: ServiceSettings | None = None,
        *,
        instruments: Instruments = NO_INSTRUMENTS,
        background: bool = True,
    ) -> Shop:
        """Open every store, create what is missing, recover what a crash left, and
        (with ``background``) start the relay, replication and recovery tasks."""
        shop = cls(config, settings or ServiceSettings(), instruments)
        try:
            await shop._open(background=background)
        except BaseException:
            await shop.close()
            raise
        return shop

    async def _open(self, *, background: bool) -> None:
        settings, instruments = self.settings, self.instruments
        sessions = await self._role("sessions")
        assert isinstance(sessions, KeyValueStore)
        self.sessions = sessions
        profiles = await self._role("profiles")
        assert isinstance(profiles, DocumentStore)
        self.profiles = profiles
        search = await self._role("catalog")
        assert isinstance(search, SearchStore)
        self.search = search
        graph = await self._role("social")
        assert isinstance(graph, GraphStore)
        self.graph = graph
        metrics = await self._role("metrics")
        assert isinstance(metrics, TimeSeriesStore)
        self.metrics = metrics
        readings_store = await self._role("readings")
        assert isinstance(readings_store, WideColumnStore)
        self.readings_store = readings_store
        saga_log = await self._role("sagas")
        assert isinstance(saga_log, RelationalStore)
        self.saga_log = saga_log
        idem_store = await self._role("idempotency")
        self.database_urls = database_urls(self.config)
        self.dbs: dict[str, RelationalStore] = {}
        for name, url in self.database_urls.items():
            self.dbs[name] = await _open_url(url)
            self._opened.append(self.dbs[name])
            for statement in TABLES[name]:
                await self.dbs[name].execute(statement)

        self.idempotency = Idempotency(
            idem_store,
            policy=IdempotencyPolicy(
                lease=settings.idempotency_lease, expires_after=settings.idempotency_expiry
            ),
        )
        self.accounts = Accounts(
            self.dbs["orders"],
            self.sessions,
            self.profiles,
            session_ttl=settings.session_ttl,
            instruments=instruments,
        )
        await self.accounts.setup()
        self.outbox = Outbox(self.dbs["inventory"], table=OUTBOX_TABLE)
        await self.outbox.setup()
        self.catalog = Catalog(
            self.dbs["inventory"], self.search, self.outbox, instruments=instruments
        )
        await self.catalog.setup()
        self.social = Social(self.graph, instruments=instruments)
        self.readings = Readings(self.readings_store, instruments=instruments)
        await self.readings.setup()
        self.requests = RequestSeries(self.metrics, instruments=instruments)

        self.saga = order_saga(
            self.dbs, instruments=instruments, compensation_retry=settings.compensation_retry
        )
        etcd = self.config.leases
        self.engine = SagaEngine(
            self.saga_log,
            [self.saga],
            worker_id=settings.name,
            lease=settings.saga_lease,
            leases=None if etcd is None else EtcdLeases(etcd),
        )
        await self.engine.setup()
        self.coordinator = await TransactionCoordinator.open(
            dict(self.database_urls),
            log=self.config.role("transactions").url,
            node=settings.name,
            on_event=self._tpc_event,
            # The node's lease is as long as the sagas' (a server restarted under the
            # same name waits it out); in-doubt transactions are looked for as often.
            lease_ttl=settings.saga_lease,
            recover_interval=settings.recovery_interval,
        )
        self.orders = Orders(
            self.dbs, self.engine, self.saga, self.coordinator, instruments=instruments
        )
        self.carts_ = await Carts.open(cart_node_urls(self.config), instruments=instruments)
        await self._ensure_admin()
        if background:
            self._start(self._relay(), "outbox relay")
            self._start(self.carts_.replicate(self._stop, settings.cart_sync_interval), "carts")
            self._start(self._recover_sagas(), "saga recovery")
            if settings.telemetry:
                self._start(
                    self.requests.run(self._stop, settings.metrics_flush_interval), "metrics"
                )

    @property
    def carts(self) -> Carts:
        assert self.carts_ is not None, "the shop is not open"
        return self.carts_

    def _tpc_event(self, event: str, xid: Xid, participant: str) -> None:
        self.instruments.tpc_event(event, str(xid), participant)

    async def _ensure_admin(self) -> None:
        settings = self.settings
        if settings.admin_password is not None:
            await self.accounts.ensure_admin(settings.admin_user, settings.admin_password)
        elif not await self.accounts.has_admin():
            password = secrets.token_urlsafe(12)
            await self.accounts.ensure_admin(settings.admin_user, password)
            log.warning(
                "created the console's admin user %r with password %s (set one with "
                "--admin-password or $MULTISTORE_ADMIN_PASSWORD)",
                settings.admin_user,
                password,
            )

    # -- background work -----------------------------------------------------------------

    def _start(self, work: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: log it, never take the server down
                log.exception("background task %s stopped", name)

        self._tasks.append(asyncio.create_task(guarded(), name=f"shop {name}"))

    async def _relay(self) -> None:
        etcd = self.config.leases
        relay = OutboxRelay(
            self.outbox,
            self.catalog.apply_event,
            worker_id=f"{self.settings.name}-relay",
            leases=None if etcd is None else EtcdLeases(etcd),
        )
        self.relay = relay
        await relay.run(self._stop)

    async def _recover_sagas(self) -> None:
        while not self._stop.is_set():
            try:
                await self.engine.recover()
            except MultistoreError as exc:
                log.warning("saga recovery failed, trying again: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.recovery_interval)

    async def wait_for(
        self, check: Callable[[], Awaitable[bool]], what: str, *, within: float = 30.0
    ) -> None:
        """Wait until ``check()`` is true (polled), at most ``within`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not await check():
            if loop.time() > deadline:
                raise TimeoutError(f"{what}: not within {within} s")
            await asyncio.sleep(0.02)

    # -- closing -------------------------------------------------------------------------

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        with contextlib.suppress(MultistoreError):
            await self.requests.flush() if hasattr(self, "requests") else None
        with contextlib.suppress(Exception):
            await self.engine.close() if hasattr(self, "engine") else None
        if self.coordinator is not None:
            await self.coordinator.close()
            self.coordinator = None
        if self.carts_ is not None:
            await self.carts_.close()
            self.carts_ = None
        for store in reversed(self._opened):
            with contextlib.suppress(Exception):
                await store.close()
        self._opened.clear()

    async def __aenter__(self) -> Shop:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def statistics(self) -> dict[str, Any]:
        relay = getattr(self, "relay", None)
        return {
            "request_points_written": self.requests.written,
            "request_points_dropped": self.requests.dropped,
            "relay": None if relay is None else relay.statistics(),
        }
