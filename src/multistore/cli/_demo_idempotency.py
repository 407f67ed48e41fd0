"""Demo section "idempotency keys": a payment retried with the same Idempotency-Key.

The first request charges the card; the retries (a client that timed out and tries
again) get the stored result back without charging a second time; the same key with
another amount is refused with the 422-class error. The keys live in the
``idempotency`` role's store, so the section runs unchanged on Redis or PostgreSQL.

Each run uses its own client scope (records expire after ten minutes and are reaped
at the start of the next run), so the demo can run again and again over one store.
"""

from __future__ import annotations

import uuid
from typing import Any

from multistore.cli._demo import SectionReport
from multistore.cli._human import table
from multistore.config import Config
from multistore.consistency import Idempotency, IdempotencyPolicy
from multistore.errors import IdempotencyKeyReusedError

KEY = "pay-order-1001"
"""The Idempotency-Key header the shop's client sends with the payment."""


async def _pay(
    idem: Idempotency, client: str, payload: dict[str, Any], charges: list[dict[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """The payment endpoint: charge once per key, replay the stored result after."""
    async with idem.begin(KEY, payload, client=client) as run:
        if run.replayed:
            return dict(run.result()), True
        charges.append(payload)
        result = {
            "payment_id": f"ch_{len(charges):04d}",
            "order_id": payload["order_id"],
            "amount_cents": payload["amount_cents"],
            "status": "charged",
        }
        run.set_result(result)
        return result, False


async def idempotency_section(config: Config) -> SectionReport:
    """Idempotency keys: retry a payment safely."""
    report = SectionReport("idempotency keys: a payment retried with one Idempotency-Key")
    store = await config.open("idempotency")
    try:
        idem = Idempotency(store, policy=IdempotencyPolicy(expires_after=600.0, lease=10.0))
        reaped = await idem.reap()  # expired records of earlier runs (relational stores)
        client = f"demo-{uuid.uuid4().hex[:12]}"
        charges: list[dict[str, Any]] = []
        payload = {"order_id": 1001, "amount_cents": 4999, "card": "visa-4242"}
        rows: list[dict[str, Any]] = []
        for label in ("first request", "retry after a timeout", "second retry"):
            result, replayed = await _pay(idem, client, dict(payload), charges)
            rows.append(
                {
                    "request": label,
                    "amount_cents": payload["amount_cents"],
                    "outcome": "replayed" if replayed else "executed",
                    "result": result,
                    "executions": len(charges),
                }
            )
        other = {**payload, "amount_cents": 5999}
        try:
            await _pay(idem, client, other, charges)
        except IdempotencyKeyReusedError as exc:
            refused: dict[str, Any] = {
                "error": type(exc).__name__,
                "http_status": exc.http_status,
                "code": int(exc.code),
                "slug": exc.code.slug,
                "problem": exc.to_problem(),
            }
            rows.append(
                {
                    "request": "same key, other amount",
                    "amount_cents": other["amount_cents"],
                    "outcome": "refused",
                    "error": refused,
                    "executions": len(charges),
                }
            )
        else:  # pragma: no cover - the idempotency layer is broken
            raise AssertionError("a reused key with another payload was not refused")
        record = await idem.get(KEY, client=client)
    finally:
        await store.close()

    shown = table("request", ">amount", "outcome", "answer", ">charges")
    for row in rows:
        if "error" in row:
            err = row["error"]
            outcome = f"[red]refused[/] {err['http_status']}"
            answer = f"key reused with another payload (error {err['code']})"
        else:
            outcome = "[green]executed[/]" if row["outcome"] == "executed" else "[cyan]replayed[/]"
            res = row["result"]
            answer = f"{res['payment_id']} {res['status']} {res['amount_cents'] / 100:.2f}"
        shown.add_row(
            row["request"],
            f"{row['amount_cents'] / 100:.2f}",
            outcome,
            answer,
            str(row["executions"]),
        )
    state = record.state if record else "missing"
    times = "once" if len(charges) == 1 else f"{len(charges)} times"
    report.add(
        shown,
        f"POST /payments with Idempotency-Key: {KEY}",
        f"The card was charged {times}; the key's record is {state}. A client that timed "
        "out cannot know whether the payment went through, so it sends the request again "
        "with the same key: it gets the stored answer back instead of a second charge. "
        "The same key with another amount is a client bug, refused with HTTP 422.",
    )
    report.proved = (
        f"a payment sent three times with one key charged the card {times}; the key "
        "reused for another amount was refused"
    )
    report.data.update(
        {
            "backend": config.role("idempotency").url.scheme,
            "key": KEY,
            "client_scope": client,
            "requests": rows,
            "executions": len(charges),
            "record_state": record.state if record else None,
            "refused": refused,
            "reaped_expired_records": reaped,
        }
    )
    return report
