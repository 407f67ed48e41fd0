"""The operations console in a real browser: Playwright drives Debian's Chromium
(``/usr/bin/chromium``, never a downloaded browser) through every view of a real
``multistore serve``; it retries a stuck saga and resolves an in-doubt transaction
from the page and checks what the page and the databases show afterwards.

The stuck saga is made for real: a trigger in the payments database refuses
refunds, so the order saga's compensation fails. The in-doubt transaction is left
by a coordinator of another node that stops right after logging its commit
decision (the coordinator's event hook, as in the demo), with the server's own
participant databases and decision log. Screenshots go to ``tmp_path``, or to the
folder named by ``$MULTISTORE_SCREENSHOTS`` (docs/images when refreshing the docs).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from multistore.consistency import TransactionCoordinator
from multistore.core import Xid
from tests.fix_service import ADMIN_PASSWORD, ServiceProcess
from tests.service.test_api import product

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


class CoordinatorCrash(BaseException):
    """The coordinator process dying right after its commit decision is logged."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(
        tmp_path_factory.mktemp("console"),
        "--rate-limit",
        "1000000",
        "--compensation-attempts",
        "1",
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MULTISTORE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def login(page: Page, base: str, user: str, password: str) -> None:
    page.goto(f"{base}/console")
    expect(page).to_have_url(f"{base}/console/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def leave_in_doubt(data: Path) -> None:
    """A 2PC order of node ``crashed`` over the server's three databases, stopped
    after its commit decision reached the server's decision log."""

    def stop(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            raise CoordinatorCrash

    async def run() -> None:
        coordinator = await TransactionCoordinator.open(
            {
                "orders": f"sqlite:///{data / 'orders.db'}",
                "payments": f"sqlite:///{data / 'shop-payments.db'}",
                "inventory": f"sqlite:///{data / 'shop-inventory.db'}",
            },
            log=f"sqlite:///{data / 'transactions.db'}",
            node="crashed",
            on_event=stop,
        )
        try:
            async with coordinator.transaction(["orders", "payments", "inventory"]) as tx:
                await tx.sql("orders").execute(
                    "INSERT INTO shop_orders (id, user_id, status, mode, total_cents, reference, "
                    "created_at, updated_at) VALUES ('ord_indoubt', 'usr_x', 'confirmed', '2pc', "
                    "500, 'in doubt', 0, 0)"
                )
                await tx.sql("payments").execute(
                    "INSERT INTO shop_payments (id, order_id, user_id, amount_cents, status, "
                    "description, created_at) VALUES ('pay_indoubt', 'ord_indoubt', 'usr_x', 500, "
                    "'charged', 'in doubt', 0)"
                )
                await tx.sql("inventory").execute(
                    "INSERT INTO shop_reservations (order_id, sku, qty) "
                    "VALUES ('ord_indoubt', 'none', 1)"
                )
        except CoordinatorCrash:
            pass
        finally:
            await coordinator.close()

    # (In a thread of its own: Playwright's sync API runs an event loop in this one.)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result(timeout=120)
    # A process that dies keeps its node's lease until it runs out: the server's
    # recovery leaves the node alone until then.
    node_lease(data, time.time() + 3600)


def node_lease(data: Path, expires: float) -> None:
    """Set node ``crashed``'s lease in the server's decision log to run out at ``expires``."""
    with closing(sqlite3.connect(data / "transactions.db", timeout=30)) as log:
        log.execute(
            "UPDATE multistore_tpc_nodes SET owner = 'coordinator gone:1:0', expires = ? "
            "WHERE node = 'crashed'",
            (expires,),
        )
        log.commit()


def test_console_in_a_browser(server: ServiceProcess, browser: Browser, tmp_path: Path) -> None:
    data = server.folder / ".multistore"
    pictures = shots(tmp_path)
    with server.admin() as admin, server.new_user() as alice:
        sku = product(admin, stock=1, price="25.00")
        with closing(sqlite3.connect(data / "shop-payments.db", timeout=30)) as payments:
            payments.execute(
                "CREATE TRIGGER no_refunds BEFORE UPDATE OF status ON shop_payments "
                "WHEN NEW.status = 'refunded' "
                "BEGIN SELECT RAISE(ABORT, 'the payment provider refuses refunds'); END"
            )
            payments.commit()
            ids = []
            for _ in range(2):
                stuck = alice.order({sku: 2})  # out of stock -> refund -> refused -> stuck
                assert stuck.status_code == 202, stuck.text
                assert stuck.json()["saga"]["state"] == "stuck"
                ids.append(stuck.json()["id"])
            order_id, given_up = ids
            payments.execute("DROP TRIGGER no_refunds")  # the provider is back
            payments.commit()
        assert alice.order({sku: 1}).status_code == 201
        leave_in_doubt(data)
        assert admin.get("/orders/ord_indoubt").status_code == 404  # not visible yet

        page = browser.new_page(viewport={"width": 1360, "height": 820})
        try:
            # A non-admin may log in but is turned away.
            login(page, server.base, alice.user["username"], "secret-pw-1")
            expect(page.locator("h1")).to_have_text("Not allowed")
            page.goto(f"{server.base}/console/logout")
            login(page, server.base, "admin", ADMIN_PASSWORD)

            expect(page.locator("h1")).to_have_text("Overview")
            expect(page.locator(".card", has_text="sagas stuck")).to_contain_text("2")
            expect(page.locator(".card", has_text="in-doubt 2PC branches")).to_contain_text("3")
            health = page.locator("table tbody tr")
            expect(health).to_have_count(11)
            expect(page.locator("table")).not_to_contain_text("down")
            page.screenshot(path=pictures / "console-overview.png", full_page=True)

            page.click("header nav >> text=Sagas")
            page.click(".tabs >> text=stuck 2")
            page.click(f"a.id[title='{order_id}']")
            expect(page.locator("h1")).to_have_text("Saga")
            expect(page.locator(".toolbar")).to_contain_text("stuck")
            expect(page.locator(".timeline")).to_contain_text("refuses refunds")
            page.screenshot(path=pictures / "console-saga-stuck.png", full_page=True)
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("text=Retry compensation")
            expect(page.locator(".flash")).to_have_text("retried: the saga is now compensated")
            expect(page.locator(".toolbar")).to_contain_text("compensated")
            expect(page.locator("text=Retry compensation")).to_have_count(0)
            page.screenshot(path=pictures / "console-saga-retried.png", full_page=True)

            # The other one: the operator refunds by hand and gives up on it.
            page.goto(f"{server.base}/console/sagas/{given_up}")
            expect(page.locator(".toolbar")).to_contain_text("stuck")
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("text=Cancel saga")
            expect(page.locator(".flash")).to_have_text("cancelled: the saga is now cancelled")
            expect(page.locator(".toolbar")).to_contain_text("cancelled by an operator")
            expect(page.locator("text=Retry compensation")).to_have_count(0)
            expect(page.locator("text=Cancel saga")).to_have_count(0)
            page.click("header nav >> text=Sagas")
            expect(page.locator(".tabs")).to_contain_text("cancelled 1")
            expect(page.locator(".tabs")).to_contain_text("stuck 0")

            page.click("header nav >> text=2PC")
            rows = page.locator("table tbody tr")
            expect(rows).to_have_count(3)
            expect(page.locator("table")).to_contain_text("crashed")
            expect(page.locator("table")).to_contain_text("commit")
            page.screenshot(path=pictures / "console-in-doubt.png", full_page=True)
            node_lease(data, 1.0)  # the dead process's lease runs out
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("text=Resolve all")
            # (The server's background recovery may have committed some first.)
            expect(page.locator(".flash")).to_have_text(
                re.compile(r"committed [0-3] branches, rolled back 0$")
            )
            expect(page.locator("table")).to_contain_text("nothing here")

            page.click("header nav >> text=Outbox")
            expect(page.locator(".card", has_text="delivered")).to_contain_text("1")
            expect(page.locator(".card", has_text="parked")).to_contain_text("0")

            page.click("header nav >> text=Idempotency")
            expect(page.locator("table")).to_contain_text("completed")
            expect(page.locator("table")).to_contain_text(alice.user["id"])

            page.click("header nav >> text=Replication")
            expect(page.locator("table tbody tr")).to_have_count(2)  # cart nodes a and b
            page.screenshot(path=pictures / "console-replication.png", full_page=True)

            page.click("header nav >> text=Metrics")
            expect(page.locator("svg")).to_have_count(3)
            expect(page.locator("table")).to_contain_text("/orders")
            page.screenshot(path=pictures / "console-metrics.png", full_page=True)
        finally:
            page.close()

        # What the pages said is what the databases hold.
        assert admin.get(f"/orders/{order_id}").json()["status"] == "cancelled"
        assert admin.get("/orders/ord_indoubt").json()["status"] == "confirmed"
    with closing(sqlite3.connect(data / "shop-payments.db", timeout=30)) as payments:
        refunded = payments.execute(
            "SELECT status FROM shop_payments WHERE order_id = ?", (order_id,)
        ).fetchall()
    assert refunded == [("refunded",)]
