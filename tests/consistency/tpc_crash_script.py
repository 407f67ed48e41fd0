"""Run bank transfers through a 2PC coordinator and SIGKILL this process at a protocol point.

Usage: ``python -m tests.consistency.tpc_crash_script CONFIG_JSON`` where the config has
``participants`` (name -> URL), ``log`` (URL), ``node`` (null: a fresh id), ``count``
(transfers to run), ``crash_tx`` (index of the transfer to crash in), ``crash_event``
(``preparing``, ``prepared``, ``decided``, ``committed``), ``crash_nth`` (crash at the
n-th such event of that transfer), ``last_resource`` and ``lease_ttl`` (the
coordinator's options; the lease is short by default so that recovery of the killed
node need not wait long). Prints ``done`` when it was not killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from multistore.consistency import TransactionCoordinator
from multistore.core._tpc import Xid
from tests.consistency.bank import transfer


async def main(config: dict[str, object]) -> None:
    participants = dict(config["participants"])  # type: ignore[call-overload]
    current = {"tx": -1, "seen": 0}

    def on_event(event: str, xid: Xid, name: str) -> None:
        if current["tx"] == config["crash_tx"] and event == config["crash_event"]:
            current["seen"] += 1
            if current["seen"] == config["crash_nth"]:
                os.kill(os.getpid(), signal.SIGKILL)

    coordinator = await TransactionCoordinator.open(
        participants,
        log=str(config["log"]),
        node=config.get("node"),  # type: ignore[arg-type]
        on_event=on_event,
        last_resource=bool(config.get("last_resource", False)),
        lease_ttl=float(config.get("lease_ttl", 1.0)),  # type: ignore[arg-type]
    )
    try:
        for n in range(int(config["count"])):  # type: ignore[call-overload]
            current["tx"], current["seen"] = n, 0
            await transfer(coordinator, n, list(participants))
    finally:
        await coordinator.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
