"""``multistore bench service``: orders per second and p50/p99 latency through
``multistore serve`` (embedded stores), against a plain FastAPI app doing the same
database writes with ``sqlite3`` (``benchmarks/_service_plain.py``).

Both are real uvicorn processes on loopback; the load comes from this process, 8
concurrent clients each placing orders one after another (one order line), with
httpx. Rounds alternate ours and the anchor after a warm-up; throughput and latency
percentiles are medians over the rounds.

What ours does per order and the anchor does not, charged to ours: the session
lookup and the rate-limit count (two key-value operations), the ``Idempotency-Key``
claim and the stored response (idempotency store), the saga log (the saga and each
of its four steps: started, completed), the price lookup and Prometheus metrics and
the request's time-series point. The database writes of the order itself are the
same: the order and its line, the payment, the stock update and the reservation,
the confirmation.

The telemetry rows run ours as it is by default (metrics on, traces off) against
ours with ``--no-telemetry`` (no metrics middleware, no request points, no hooks):
a ratio near 1 means the telemetry costs nothing measurable. A last row shows what
turning traces on costs (spans printed to stderr by the console exporter).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from benchmarks._harness import BenchEnv, Row

CLIENTS = 8
ORDERS = 160  # per measured round
WARMUP = 40
ROUNDS = 3
ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, command: list[str], folder: Path, env: dict[str, str], port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        folder.mkdir(parents=True, exist_ok=True)
        full = {k: v for k, v in os.environ.items() if k != "MULTISTORE_CONFIG"}
        full.update(env)
        full["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
        self.log = (folder / "server.log").open("wb")
        self.proc = subprocess.Popen(
            command, cwd=folder, env=full, stdout=self.log, stderr=subprocess.STDOUT
        )

    async def ready(self) -> None:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=self.base) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"benchmark server exited ({self.proc.returncode})")
                try:
                    if (await client.get("/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("benchmark server did not start within 60 s")
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def _ours(env: BenchEnv, name: str, *flags: str) -> tuple[Server, dict[str, str], str]:
    port = _port()
    server = Server(
        [sys.executable, "-m", "multistore", "serve", "--port", str(port), "--admin-password",
         "bench-admin", "--rate-limit", "100000000", "--log-level", "warning", *flags],
        env.tmp / name,
        {},
        port,
    )  # fmt: skip
    await server.ready()
    async with httpx.AsyncClient(base_url=server.base) as client:
        login = await client.post(
            "/sessions", json={"username": "admin", "password": "bench-admin"}
        )
        headers = {"Authorization": f"Bearer {login.json()['token']}"}
        sku = "bench-item"
        created = await client.post(
            "/products",
            json={"sku": sku, "name": "Bench", "category": "b", "price": "1.00",
                  "stock": 100_000_000},
            headers=headers,
        )  # fmt: skip
        created.raise_for_status()
    return server, headers, sku


async def _plain(env: BenchEnv) -> tuple[Server, dict[str, str], str]:
    port = _port()
    folder = env.tmp / "plain"
    server = Server(
        [sys.executable, "-m", "uvicorn", "benchmarks._service_plain:app", "--port", str(port),
         "--log-level", "warning"],
        folder,
        {"PLAIN_DATA": str(folder)},
        port,
    )  # fmt: skip
    await server.ready()
    async with httpx.AsyncClient(base_url=server.base) as client:
        made = await client.post(
            "/products/bench-item", params={"price_cents": 100, "stock": 100_000_000}
        )
        made.raise_for_status()
    return server, {}, "bench-item"


async def _round(
    server: Server, headers: dict[str, str], sku: str, orders: int
) -> tuple[float, list[float]]:
    """``orders`` orders by :data:`CLIENTS` clients; (orders per second, latencies)."""
    latencies: list[float] = []
    per_client = orders // CLIENTS

    async def client_run(client: httpx.AsyncClient) -> None:
        for _ in range(per_client):
            key = {"Idempotency-Key": f'"{uuid.uuid4().hex}"'}
            start = time.perf_counter()
            response = await client.post(
                "/orders", json={"items": [{"sku": sku, "qty": 1}]}, headers={**headers, **key}
            )
            latencies.append(time.perf_counter() - start)
            if response.status_code != 201:
                raise RuntimeError(f"order failed: {response.status_code} {response.text}")

    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=server.base, limits=limits, timeout=60) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_run(client) for _ in range(CLIENTS)))
        elapsed = time.perf_counter() - start
    return per_client * CLIENTS / elapsed, latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _compare(
    label: str,
    ours: tuple[Server, dict[str, str], str],
    anchor: tuple[Server, dict[str, str], str],
    anchor_name: str,
) -> list[Row]:
    await _round(*ours, WARMUP)
    await _round(*anchor, WARMUP)
    rates: dict[str, list[float]] = {"ours": [], "anchor": []}
    lat: dict[str, list[float]] = {"ours": [], "anchor": []}
    for i in range(ROUNDS):
        order = [("ours", ours), ("anchor", anchor)]
        for side, target in order if i % 2 == 0 else reversed(order):
            rate, latencies = await _round(*target, ORDERS)
            rates[side].append(rate)
            lat[side].extend(latencies)
    ours_rate, anchor_rate = statistics.median(rates["ours"]), statistics.median(rates["anchor"])
    rows = [
        Row(f"{label}, {CLIENTS} clients", "throughput", "orders/s", round(ours_rate, 1),
            round(anchor_rate, 1), anchor_name, round(ours_rate / anchor_rate, 3)),
    ]  # fmt: skip
    for q, tag in ((0.5, "p50"), (0.99, "p99")):
        o, a = _pct(lat["ours"], q), _pct(lat["anchor"], q)
        rows.append(
            Row(f"{label}, {CLIENTS} clients", f"{tag} latency", "ms", round(o, 2), round(a, 2),
                anchor_name, round(a / o, 3))
        )  # fmt: skip
    return rows


async def run() -> list[Row]:
    env = BenchEnv()
    servers: list[Server] = []
    try:
        ours = await _ours(env, "ours")
        servers.append(ours[0])
        plain = await _plain(env)
        servers.append(plain[0])
        rows = await _compare(
            "POST /orders: saga, idempotency key, session, telemetry (embedded SQLite)",
            ours,
            plain,
            "plain FastAPI + sqlite3, same writes",
        )
        bare = await _ours(env, "bare", "--no-telemetry")
        servers.append(bare[0])
        rows += (await _compare(
            "telemetry as by default (metrics on, traces off) vs none",
            ours,
            bare,
            "the same service with --no-telemetry",
        ))[:1]  # fmt: skip
        traced = await _ours(env, "traced", "--traces")
        servers.append(traced[0])
        rows += (await _compare(
            "traces on (console exporter) vs the default (traces off)",
            traced,
            ours,
            "the same service, traces off",
        ))[:1]  # fmt: skip
        return rows
    finally:
        for server in servers:
            server.stop()
        env.close()
