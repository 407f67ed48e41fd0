"""The DBOS Transact anchor of ``benchmarks/sagas.py``, run in its own process.

    python -m benchmarks._sagas_dbos SYSTEM_DATABASE_URL

A workflow of three trivial steps. Reads commands from stdin, one per line:
``CONCURRENCY COUNT`` runs COUNT workflows (one at a time, or on CONCURRENCY
threads) and prints the workflows completed per second; an empty line ends it.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

from dbos import DBOS


def main(url: str) -> None:
    DBOS(config={"name": "msbench", "system_database_url": url})

    @DBOS.step()
    def step_a() -> int:
        return 1

    @DBOS.step()
    def step_b() -> int:
        return 2

    @DBOS.step()
    def step_c() -> int:
        return 3

    @DBOS.workflow()
    def workflow() -> int:
        return step_a() + step_b() + step_c()

    DBOS.launch()
    try:
        for _ in range(20):
            workflow()
        print("ready", flush=True)
        for line in sys.stdin:
            if not line.strip():
                break
            concurrency, count = (int(x) for x in line.split())
            start = time.perf_counter()
            if concurrency == 1:
                for _ in range(count):
                    workflow()
            else:
                with ThreadPoolExecutor(concurrency) as pool:
                    list(pool.map(lambda _: workflow(), range(count)))
            print(count / (time.perf_counter() - start), flush=True)
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    main(sys.argv[1])
