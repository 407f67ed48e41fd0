"""Saga definitions for ``multistore sagas worker`` in the worker tests.

    multistore sagas worker --definitions tests.consistency.worker_sagas:SAGAS

Each step of saga ``transfer`` writes two rows into the side tables of
``$SAGA_EFFECTS_URL``: one in ``executions`` per call of the action (with
``$SAGA_WORKER_NAME``), and its effect in ``effects``, idempotent by the step's
idempotency key. ``$SAGA_KILL_AFTER=n`` SIGKILLs the process right after its n-th
effect, before the log records the step.
"""

from __future__ import annotations

import os
import signal

from multistore.consistency import Saga, Step, StepContext
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore

TABLES = (
    "CREATE TABLE IF NOT EXISTS executions (saga_id VARCHAR(100) NOT NULL, "
    "step VARCHAR(50) NOT NULL, worker VARCHAR(50) NOT NULL)",
    "CREATE TABLE IF NOT EXISTS effects (effect_key VARCHAR(200) PRIMARY KEY, "
    "saga_id VARCHAR(100) NOT NULL, step VARCHAR(50) NOT NULL)",
)

_effects: list[RelationalStore] = []
_done = [0]


async def _store() -> RelationalStore:
    if not _effects:
        store = await open_store(os.environ["SAGA_EFFECTS_URL"], model="relational")
        assert isinstance(store, RelationalStore)
        _effects.append(store)
    return _effects[0]


async def act(ctx: StepContext) -> str:
    store = await _store()
    await store.execute(
        "INSERT INTO executions (saga_id, step, worker) VALUES (:s, :step, :w)",
        {"s": ctx.saga_id, "step": ctx.step, "w": os.environ.get("SAGA_WORKER_NAME", "?")},
    )
    await store.execute(
        "INSERT INTO effects (effect_key, saga_id, step) VALUES (:k, :s, :step) "
        "ON CONFLICT (effect_key) DO NOTHING",
        {"k": ctx.idempotency_key, "s": ctx.saga_id, "step": ctx.step},
    )
    _done[0] += 1
    if str(_done[0]) == os.environ.get("SAGA_KILL_AFTER"):
        os.kill(os.getpid(), signal.SIGKILL)
    return ctx.step


SAGAS = [Saga("transfer", [Step("debit", act), Step("credit", act), Step("notify", act)])]
