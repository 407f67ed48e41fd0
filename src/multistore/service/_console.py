"""The operations console under ``/console`` (admin only).

Pages: overview (store health per role, the key numbers), sagas by state with each
saga's timeline and a retry or cancel for stuck ones, in-doubt two-phase-commit
branches with resolve, the outbox backlog with parked events and retry, recent idempotency keys
by state, replication (cart nodes, router replicas, quorum nodes, hints and
repairs), and the request metrics as charts. It logs in with the shop's sessions (a
cookie); every action is a POST form with a token tied to the session.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from multistore.core import SagaState
from multistore.errors import MultistoreError
from multistore.service._accounts import User
from multistore.service._auth import COOKIE, Principal, shop_of
from multistore.service._html import CSS, Cell, badge, bar_chart, esc, page, table, when
from multistore.service._ops import (
    COUNT_LIMIT,
    in_doubt,
    outbox_report,
    recent_idempotency_keys,
    replication_report,
    role_health,
    saga_counts,
    shop_numbers,
)
from multistore.service._shop import Shop

__all__ = ["console_router"]

Handler = Callable[[Request, Shop, User], Awaitable[Response]]
_STEP_KIND: Final = {"completed": "ok", "compensated": "warn", "failed": "bad", "started": "info"}


def _csrf(request: Request) -> str:
    principal = request.scope.get("user")
    token = principal.token if isinstance(principal, Principal) else None
    return hmac.new((token or "").encode(), b"console", hashlib.sha256).hexdigest()


def _form(
    request: Request,
    action: str,
    label: str,
    fields: dict[str, str],
    confirm: str,
    kind: str = "primary",
) -> Cell:
    hidden = "".join(
        f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">'
        for k, v in {**fields, "csrf": _csrf(request)}.items()
    )
    return (
        f'<form class="inline" method="post" action="{esc(action)}" data-confirm="{esc(confirm)}">'
        f'{hidden}<button class="{kind}" type="submit">{esc(label)}</button></form>'
    )


def _flash(request: Request) -> Cell:
    message = request.query_params.get("msg")
    if not message:
        return ""
    kind = "bad" if request.query_params.get("kind") == "bad" else "ok"
    return f'<div class="flash {kind}" role="status">{esc(message)}</div>'


def _back(path: str, message: str, *, bad: bool = False) -> Response:
    query = urllib.parse.urlencode({"msg": message, **({"kind": "bad"} if bad else {})})
    return RedirectResponse(f"{path}?{query}", status_code=303)


async def _posted(request: Request) -> dict[str, str]:
    fields = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
    return {k: v[0] for k, v in fields.items()}


def _html(request: Request, title: str, body: Cell, here: str, user: User) -> HTMLResponse:
    return HTMLResponse(page(title, body, here=here, user=user.username, flash=_flash(request)))


def console_router() -> APIRouter:
    router = APIRouter(prefix="/console", include_in_schema=False)

    def admin_page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            principal = request.scope.get("user")
            user = principal.user if isinstance(principal, Principal) else None
            if user is None:
                return RedirectResponse("/console/login", status_code=303)
            if not user.is_admin:
                body = "<p>The console is for operators: log in with the admin role.</p>"
                html = page("Not allowed", body, here="", user=user.username)
                return HTMLResponse(html, status_code=403)
            if request.method == "POST":
                form = await _posted(request)
                if not hmac.compare_digest(form.get("csrf", ""), _csrf(request)):
                    return HTMLResponse(
                        page(
                            "Form expired",
                            "<p>Reload the page and try again.</p>",
                            here="",
                            user=user.username,
                        ),
                        status_code=403,
                    )
                request.state.form = form
            return await handler(request, shop_of(request.scope), user)

        return run

    # -- login -------------------------------------------------------------------------

    @router.get("/login")
    async def login_form(request: Request) -> HTMLResponse:
        error = request.query_params.get("error")
        note = f'<div class="flash bad">{esc(error)}</div>' if error else ""
        return HTMLResponse(
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>Log in · multistore "
            f"console</title><style>{CSS}</style></head><body><form class=login "
            f'method=post action="/console/login"><h1>multistore console</h1>{note}'
            '<label>User<input name="username" autocomplete="username" autofocus></label>'
            '<label>Password<input name="password" type="password" '
            'autocomplete="current-password"></label>'
            '<button class="primary" type="submit">Log in</button></form></body></html>'
        )

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await _posted(request)
        shop = shop_of(request.scope)
        try:
            session = await shop.accounts.login(form.get("username", ""), form.get("password", ""))
        except MultistoreError as exc:
            query = urllib.parse.urlencode({"error": exc.message})
            return RedirectResponse(f"/console/login?{query}", status_code=303)
        response = RedirectResponse("/console", status_code=303)
        response.set_cookie(
            COOKIE,
            session.token,
            max_age=int(session.expires_in),
            httponly=True,
            samesite="strict",
            path="/",
        )
        return response

    @router.get("/logout")
    async def logout(request: Request) -> Response:
        principal = request.scope.get("user")
        if isinstance(principal, Principal) and principal.token:
            await shop_of(request.scope).accounts.logout(principal.token)
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- pages -------------------------------------------------------------------------

    async def overview(request: Request, shop: Shop, user: User) -> Response:
        found = await shop_numbers(shop)
        sagas = found["sagas"]
        outbox = found["outbox"]
        behind = sum(n for peers in found["replication_behind"].values() for n in peers.values())
        cards = [
            (sagas["running"] + sagas["pending"] + sagas["compensating"], "sagas running"),
            (sagas["stuck"], "sagas stuck"),
            (found["in_doubt"], "in-doubt 2PC branches"),
            (outbox["pending"], "outbox pending"),
            (outbox["parked"], "outbox parked"),
            (f"{found['outbox_lag_seconds']:.1f} s", "outbox lag"),
            (behind, "cart changes not replicated"),
        ]
        health = await role_health(shop)
        rows = [
            [
                esc(r["role"]),
                esc(r["model"]),
                esc(r["backend"]),
                f"<code>{esc(r['url'])}</code>",
                badge("ok") if r["ok"] else badge("down"),
                f"{r['ms']:.1f}",
                f'<span class="muted">{esc(r["detail"])}</span>',
            ]
            for r in health
        ]
        body = (
            _cards(cards)
            + "<h2>Stores by role</h2>"
            + table(
                ["role", "model", "backend", "url", "health", "read ms", "detail"],
                rows,
                numeric=[5],
            )
        )
        return _html(request, "Overview", body, "/console", user)

    async def sagas(request: Request, shop: Shop, user: User) -> Response:
        state = request.query_params.get("state") or None
        if state is not None and state not in {s.value for s in SagaState}:
            state = None
        counts = await saga_counts(shop.saga_log)
        tabs = [f'<a href="/console/sagas" class="{"" if state else "here"}">all</a>']
        for name, count in counts.items():
            shown = f"{count}+" if count >= COUNT_LIMIT else str(count)
            here = "here" if name == state else ""
            tabs.append(f'<a href="/console/sagas?state={name}" class="{here}">{name} {shown}</a>')
        listed = await shop.engine.list_sagas(state=state, limit=100)
        rows = []
        for s in listed:
            error = _error_text(s.get("compensation_error") or s.get("error"))
            link = f"/console/sagas/{urllib.parse.quote(s['saga_id'])}"
            rows.append(
                [
                    f'<a class="id" href="{esc(link)}" title="{esc(s["saga_id"])}">'
                    f"{esc(s['saga_id'])}</a>",
                    esc(s["name"]),
                    badge(s["state"]),
                    when(s["created_at"]),
                    when(s["updated_at"]),
                    f'<span class="muted">{esc(error)}</span>',
                ]
            )
        body = f'<div class="tabs">{"".join(tabs)}</div>' + table(
            ["saga", "definition", "state", "started", "last change", "error"], rows
        )
        return _html(request, "Sagas", body, "/console/sagas", user)

    async def saga(request: Request, shop: Shop, user: User) -> Response:
        saga_id = request.path_params["saga_id"]
        try:
            shown = await shop.engine.show(saga_id)
        except MultistoreError as exc:
            return _html(request, "Saga", f"<p>{esc(exc.message)}</p>", "/console/sagas", user)
        items = []
        for step in shown["steps"]:
            kind = _STEP_KIND.get(step["state"], "none")
            detail = []
            if step.get("error"):
                detail.append(f"error: {_error_text(step['error'])}")
            if step.get("compensation_error"):
                detail.append(f"compensation failed: {_error_text(step['compensation_error'])}")
            attempts = f"{step['attempts']} attempt{'s' if step['attempts'] != 1 else ''}"
            if step.get("compensation_attempts"):
                attempts += f", {step['compensation_attempts']} to undo"
            items.append(
                f'<li><span class="dot {kind}"></span><span><b>{esc(step["name"])}</b></span>'
                f"<span>{badge(step['state'])}</span><span>{when(step['updated_at'])} · "
                f'{esc(attempts)}<br><span class="muted">{esc("; ".join(detail))}</span>'
                "</span></li>"
            )
        actions = ""
        if shown["state"] == SagaState.STUCK.value:
            quoted = urllib.parse.quote(saga_id)
            actions = _form(
                request,
                f"/console/sagas/{quoted}/retry",
                "Retry compensation",
                {},
                "Run this saga's compensations again?",
            ) + _form(
                request,
                f"/console/sagas/{quoted}/cancel",
                "Cancel saga",
                {},
                "Give up on this saga's compensation? What its steps did stays as it is, "
                "for you to undo by hand.",
                kind="",
            )
        error = _error_text(shown.get("compensation_error") or shown.get("error"))
        head = (
            f'<div class="toolbar"><p><code>{esc(saga_id)}</code> · {esc(shown["name"])} · '
            f"{badge(shown['state'])} · started {when(shown['created_at'])}"
            f"{' · ' + esc(error) if error else ''}</p><div>{actions}</div></div>"
        )
        body = head + f'<h2>Timeline</h2><ul class="timeline">{"".join(items)}</ul>'
        return _html(request, "Saga", body, "/console/sagas", user)

    async def retry_saga(request: Request, shop: Shop, user: User) -> Response:
        saga_id = request.path_params["saga_id"]
        back = f"/console/sagas/{urllib.parse.quote(saga_id)}"
        try:
            result = await shop.engine.retry_stuck(saga_id)
        except MultistoreError as exc:
            return _back(back, f"retry failed: {exc.message}", bad=True)
        return _back(
            back,
            f"retried: the saga is now {result.state.value}",
            bad=result.state is SagaState.STUCK,
        )

    async def cancel_saga(request: Request, shop: Shop, user: User) -> Response:
        saga_id = request.path_params["saga_id"]
        back = f"/console/sagas/{urllib.parse.quote(saga_id)}"
        try:
            result = await shop.engine.cancel_stuck(saga_id, f"from the console by {user.username}")
        except MultistoreError as exc:
            return _back(back, f"cancel failed: {exc.message}", bad=True)
        return _back(back, f"cancelled: the saga is now {result.state.value}")

    async def transactions(request: Request, shop: Shop, user: User) -> Response:
        assert shop.coordinator is not None
        found = await in_doubt(shop.coordinator)
        rows = [
            [
                esc(b["participant"]),
                f'<code class="id" title="{esc(b["branch"])}">{esc(b["branch"])}</code>',
                esc(b["node"]),
                badge(b["decision"], "ok" if b["decision"] == "commit" else "warn"),
            ]
            for b in found
        ]
        action = ""
        if found:
            action = _form(
                request,
                "/console/transactions/resolve",
                "Resolve all",
                {},
                "Commit the branches whose commit decision is logged and roll back the others?",
            )
        body = (
            f'<div class="toolbar"><p class="muted">Prepared branches nobody has finished. '
            "Resolving commits those with a logged commit decision and rolls back the rest "
            f"(presumed abort).</p><div>{action}</div></div>"
            + table(["participant", "branch", "coordinator", "decision log"], rows)
        )
        return _html(request, "In-doubt transactions", body, "/console/transactions", user)

    async def resolve(request: Request, shop: Shop, user: User) -> Response:
        assert shop.coordinator is not None
        report = await shop.coordinator.recover()  # its own node and nodes nobody holds
        message = (
            f"committed {len(report.committed)} branches, rolled back "
            f"{len(report.rolled_back)}"
            + (f"; unreachable: {', '.join(report.unreachable)}" if report.unreachable else "")
            + (f"; {len(report.heuristics)} heuristic outcomes" if report.heuristics else "")
            + (
                f"; left to live coordinators: {', '.join(report.skipped)}"
                if report.live_branches
                else ""
            )
        )
        return _back("/console/transactions", message, bad=not report.resolved)

    async def outbox(request: Request, shop: Shop, user: User) -> Response:
        found = await outbox_report(shop)
        counts = found["counts"]
        cards = [
            (counts["pending"], "pending"),
            (counts["delivered"], "delivered"),
            (counts["parked"], "parked"),
            (f"{found['lag_seconds']:.1f} s", "oldest pending"),
        ]
        rows = []
        for record in found["parked"]:
            event = record.event
            rows.append(
                [
                    f'<code class="id" title="{esc(event.event_id)}">{esc(event.event_id)}</code>',
                    esc(event.aggregate),
                    f"{event.seq}",
                    esc(event.event_type),
                    f"{record.attempts}",
                    f'<span class="muted">{esc(record.error or "")}</span>',
                    when(event.created_at),
                    _form(
                        request,
                        "/console/outbox/retry",
                        "Retry",
                        {"event_id": event.event_id},
                        "Deliver this event again?",
                    ),
                ]
            )
        retry_all = ""
        if rows:
            retry_all = _form(
                request,
                "/console/outbox/retry",
                "Retry all parked",
                {},
                "Put every parked event back in the queue?",
            )
        body = (
            _cards(cards)
            + f'<div class="toolbar"><h2>Parked events</h2><div>{retry_all}</div></div>'
            + table(
                ["event", "aggregate", "seq", "type", "attempts", "last error", "created", ""],
                rows,
                numeric=[2, 4],
            )
        )
        return _html(request, "Outbox", body, "/console/outbox", user)

    async def retry_outbox(request: Request, shop: Shop, user: User) -> Response:
        event_id = request.state.form.get("event_id") or None
        count = await shop.outbox.retry_parked(event_id=event_id)
        return _back("/console/outbox", f"{count} parked event(s) put back in the queue")

    async def idempotency(request: Request, shop: Shop, user: User) -> Response:
        keys = await recent_idempotency_keys(shop)
        rows = [
            [
                f"<code>{esc(k['client'])}</code>",
                f'<code class="id" title="{esc(k["key"])}">{esc(k["key"])}</code>',
                badge(k["state"]),
                esc(k["status"] or ""),
                when(k["created_at"]),
                when(k["lease_until"]) if k["lease_until"] else '<span class="muted">-</span>',
                _until(k["expires_at"]),
            ]
            for k in keys
        ]
        by_state: dict[str, int] = {}
        for k in keys:
            by_state[k["state"]] = by_state.get(k["state"], 0) + 1
        body = _cards([(n, s) for s, n in sorted(by_state.items())]) + table(
            ["client", "key", "state", "stored status", "first seen", "lease until", "expires"],
            rows,
        )
        return _html(request, "Idempotency keys (most recent)", body, "/console/idempotency", user)

    async def replication(request: Request, shop: Shop, user: User) -> Response:
        found = await replication_report(shop)
        rows = [
            [
                esc(node),
                esc(info["backend"]),
                f"{info['log_head']}",
                esc(", ".join(f"{p}: {n}" for p, n in info["behind"].items()) or "-"),
                f"{info['conflicts']}",
            ]
            for node, info in found["carts"].items()
        ]
        body = "<h2>Cart nodes (multi-master)</h2>" + table(
            ["node", "backend", "log head", "changes behind peer", "conflicts merged"],
            rows,
            numeric=[2, 4],
        )
        router = found.get("router")
        if router is not None:
            body += "<h2>Primary and replicas</h2>"
            if not router["ok"]:
                body += f'<div class="flash bad">{esc(router["error"])}</div>'
            else:
                body += table(
                    ["node", "role", "health", "lag s", "lag positions", "url"],
                    [
                        [
                            esc(n["name"]),
                            esc(n["role"]),
                            badge(n["health"]),
                            f"{n['lag_seconds']:.3f}",
                            f"{n['lag_positions']}",
                            f"<code>{esc(n['url'])}</code>",
                        ]
                        for n in router["nodes"]
                    ],
                    numeric=[3, 4],
                )
        quorum = found.get("quorum")
        if quorum is not None:
            body += "<h2>Quorum cluster</h2>"
            if not quorum["ok"]:
                body += f'<div class="flash bad">{esc(quorum["error"])}</div>'
            else:
                hints = quorum["hints"]
                body += _cards(
                    [
                        (f"{quorum['n']}/{quorum['r']}/{quorum['w']}", "N / R / W"),
                        (hints["pending"], "hints pending"),
                        (hints["delivered"], "hints delivered"),
                        (quorum["read_repairs"], "read repairs"),
                    ]
                ) + table(
                    ["node", "state", "failures", "latency ms"],
                    [
                        [
                            esc(n["name"]),
                            badge(n["state"]),
                            f"{n['failures']}",
                            esc(n["latency_ms"]),
                        ]
                        for n in quorum["nodes"]
                    ],
                    numeric=[2, 3],
                )
        return _html(request, "Replication", body, "/console/replication", user)

    async def metrics(request: Request, shop: Shop, user: User) -> Response:
        every = timedelta(minutes=1)
        window = timedelta(hours=1)
        charts = []
        for fn, title, unit in (
            ("count", "Requests per minute", "requests"),
            ("p50", "Median response time", "ms"),
            ("p99", "99th percentile response time", "ms"),
        ):
            windows = await shop.requests.windows(fn=fn, every=every, window=window, route=None)
            found = {w["start"][11:16]: w["value"] for w in windows}
            now = datetime.now(UTC).replace(second=0, microsecond=0)
            slots = [(now - every * i).strftime("%H:%M") for i in range(59, -1, -1)]
            charts.append(bar_chart(title, [(t, found.get(t)) for t in slots], unit))
        routes = await shop.requests.by_route(window=window)
        rows = [
            [
                f"<code>{esc(r['route'])}</code>",
                f"{r['count']:.0f}",
                f"{r['p50']:.1f}",
                f"{r['p99']:.1f}",
            ]
            for r in routes
        ]
        body = (
            '<p class="muted">The last hour, from the time series of every request '
            "(the metrics role). Prometheus scrapes the same service at <code>/metrics</code>."
            f'</p><div class="bar-row">{"".join(charts)}</div><h2>By route</h2>'
            + table(["route", "requests", "p50 ms", "p99 ms"], rows, numeric=[1, 2, 3])
        )
        return _html(request, "Metrics", body, "/console/metrics", user)

    router.add_api_route("", admin_page(overview), methods=["GET"])
    router.add_api_route("/sagas", admin_page(sagas), methods=["GET"])
    router.add_api_route("/sagas/{saga_id}", admin_page(saga), methods=["GET"])
    router.add_api_route("/sagas/{saga_id}/retry", admin_page(retry_saga), methods=["POST"])
    router.add_api_route("/sagas/{saga_id}/cancel", admin_page(cancel_saga), methods=["POST"])
    router.add_api_route("/transactions", admin_page(transactions), methods=["GET"])
    router.add_api_route("/transactions/resolve", admin_page(resolve), methods=["POST"])
    router.add_api_route("/outbox", admin_page(outbox), methods=["GET"])
    router.add_api_route("/outbox/retry", admin_page(retry_outbox), methods=["POST"])
    router.add_api_route("/idempotency", admin_page(idempotency), methods=["GET"])
    router.add_api_route("/replication", admin_page(replication), methods=["GET"])
    router.add_api_route("/metrics", admin_page(metrics), methods=["GET"])
    return router


def _cards(cards: list[tuple[object, str]]) -> Cell:
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="n">{esc(n)}</div>'
            f'<div class="l">{esc(label)}</div></div>'
            for n, label in cards
        )
        + "</div>"
    )


def _until(epoch: float) -> Cell:
    left = epoch - time.time()
    text = f"in {left / 3600:.1f} h" if left >= 3600 else f"in {max(0, left) / 60:.0f} min"
    return f'<span title="{esc(epoch)}">{esc(text)}</span>'


def _error_text(value: object) -> str:
    """A logged error (JSON ``{"type", "message"}``) as one line."""
    if not value:
        return ""
    try:
        data = json.loads(str(value))
    except ValueError:
        return str(value)
    if isinstance(data, dict):
        return f"{data.get('type', '')}: {data.get('message', '')}"
    return str(value)
