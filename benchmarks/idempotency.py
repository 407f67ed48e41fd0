"""``multistore bench idempotency``: first calls and replayed calls per second on Redis,
through ``@idempotent`` against AWS Powertools' ``idempotent_function`` with its Redis
persistence layer (the benchmark-only dependency ``aws-lambda-powertools[redis]``,
imported lazily). Both run one call at a time against the same local Redis server.

Both do two round trips for a first call (claim, then store the outcome) and
Powertools two for a replay (``SET NX`` fails, then ``GET``) where ours does one. A
third row shows how close a first call is to its floor: the same two scripts sent on
the same lean connection with nothing else around them (no fingerprint, no lease
timer, no record objects). When that row's ratio is near 1, what is left is the
round trips themselves.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from benchmarks._harness import BenchEnv, Row, compare
from multistore._resp import RespPool, RespScript
from multistore.consistency._idempotency import Idempotency, idempotent
from multistore.consistency._idempotency_backends import _REDIS_ADVANCE, _REDIS_CLAIM
from multistore.errors import BenchmarkError
from multistore.stores import open_store
from multistore.stores.kv._redis import RedisKeyValueStore


def _per_second(row: Row) -> Row:
    """A latency row (us/op) as a throughput row (ops/s); the speedup is unchanged."""
    return replace(
        row,
        metric="throughput",
        unit="ops/s",
        ours=round(1e6 / row.ours, 1),
        anchor=round(1e6 / row.anchor, 1),
    )


class _LambdaContext:
    """The one method Powertools reads from a Lambda context: time left (15 minutes)."""

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def _powertools(redis_url: str) -> Any:
    try:
        import redis
        from aws_lambda_powertools.utilities.idempotency import (
            IdempotencyConfig,
            idempotent_function,
        )
        from aws_lambda_powertools.utilities.idempotency.persistence.cache import (
            CachePersistenceLayer,
        )
    except ImportError as exc:
        raise BenchmarkError(
            "the idempotency benchmark needs aws-lambda-powertools[redis] "
            f"(pip install 'aws-lambda-powertools[redis]'): {exc}"
        ) from exc
    client: Any = redis.Redis.from_url(redis_url)
    with warnings.catch_warnings():
        # Powertools 3.x builds CachePersistenceLayer on its own deprecated Redis class.
        warnings.simplefilter("ignore", DeprecationWarning)
        layer = CachePersistenceLayer(client=client)
    config = IdempotencyConfig(expires_after_seconds=3600)
    context: Any = _LambdaContext()
    config.register_lambda_context(context)  # as inside a Lambda invocation

    def process(order: dict[str, Any]) -> dict[str, Any]:
        return {"order": order["id"], "status": "paid"}

    return idempotent_function(
        process, data_keyword_argument="order", persistence_store=layer, config=config
    )


def _two_round_trips(idem: Idempotency) -> Callable[[], Awaitable[object]]:
    """The two scripts of a first call on a fresh key, packed once each, on the lean
    pool ``idem``'s store runs scripts on: what a first call cannot do without."""
    store = idem.store
    assert isinstance(store, RedisKeyValueStore) and isinstance(store._link, RespPool)
    lean = store._link
    claim_script, advance_script = RespScript(_REDIS_CLAIM), RespScript(_REDIS_ADVANCE)
    fresh = itertools.count()
    fp, owner, result = "f" * 64, "o" * 28, '{"value":{"order":1,"status":"paid"}}'

    async def both() -> object:
        key = f"idem:5:floor:{next(fresh)}"
        claim, claim_eval = claim_script.pack((key,), (fp, "30000", "86400000", owner))
        claimed: Any = await lean.call(claim, claim_eval)
        advance, advance_eval = advance_script.pack(
            (key,), (str(claimed[1]), owner, "", "86400000", "completed", "", "", "null", result)
        )
        return await lean.call(advance, advance_eval)

    return both


async def run() -> list[Row]:
    env = BenchEnv()
    try:
        url = await env.url("redis")
        process = _powertools(url)
        store = await open_store(url, model="kv")
        try:
            idem = Idempotency(store)

            @idempotent(idem, key=lambda order: f"order-{order['id']}", client="bench")
            async def ours(order: dict[str, Any]) -> dict[str, Any]:
                return {"order": order["id"], "status": "paid"}

            fresh_ours, fresh_theirs = itertools.count(), itertools.count()
            first = await compare(
                "idempotency first call (redis)",
                lambda: ours({"id": next(fresh_ours)}),
                lambda: process(order={"id": f"pt-{next(fresh_theirs)}"}),
                "powertools idempotent_function (redis)",
                ops=200,
            )
            floor = await compare(
                "idempotency first call vs its two bare round trips (redis)",
                lambda: ours({"id": next(fresh_ours)}),
                _two_round_trips(idem),
                "the claim and completion scripts alone (lean client)",
                ops=200,
            )
            await ours({"id": "replayed"})
            process(order={"id": "replayed"})
            replayed = await compare(
                "idempotency replayed call (redis)",
                lambda: ours({"id": "replayed"}),
                lambda: process(order={"id": "replayed"}),
                "powertools idempotent_function (redis)",
                ops=300,
            )
        finally:
            await store.close()
        return [_per_second(first), _per_second(replayed), _per_second(floor)]
    finally:
        env.close()
