"""Shared helpers of the router tests: bounded polling and an embedded setup."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from multistore.replication import Backoff, LogShipping, ReadPolicy, Router, RouterConfig

FAST = RouterConfig(
    max_lag=60.0,
    readmit_after=0.3,
    probe_interval=0.05,
    probe_timeout=1.0,
    causal_wait=3.0,
    retry=Backoff(initial=0.05, cap=0.5),
)


async def wait_until(condition: Callable[[], object], what: str, bound: float = 20.0) -> None:
    """Poll ``condition`` (sync) with a bound; fail naming ``what``."""
    deadline = time.monotonic() + bound
    delay = 0.005
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {bound:g} s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def open_embedded(
    tmp: Path,
    *,
    replicas: int = 2,
    config: RouterConfig = FAST,
    shipping: LogShipping | None = None,
    policy: ReadPolicy | None = None,
) -> Router:
    return await Router.open(
        f"sqlite:///{tmp / 'primary.db'}",
        [f"sqlite:///{tmp / f'replica{i}.db'}" for i in range(1, replicas + 1)],
        config=config,
        shipping=shipping or LogShipping(delay=0.0, interval=0.02),
        policy=policy,
    )
