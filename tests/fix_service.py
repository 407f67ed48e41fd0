"""``multistore serve`` as a real process on a free loopback port, and an HTTP client.

:class:`ServiceProcess` starts the server (``python -m multistore serve``) in a folder
of its own, waits until ``/health`` answers, and can SIGKILL and restart it on the
same port and data. :class:`ShopClient` is httpx with the shop's calls. The
session fixture ``service`` is one server shared by the tests that need no special
settings; each test makes users of its own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
ADMIN_PASSWORD = "console-admin-pw"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within} s")
        time.sleep(0.02)


class ServiceProcess:
    """One ``multistore serve`` process; ``start`` it, ``kill`` it, ``start`` it again."""

    def __init__(self, folder: Path, *args: str, config: Path | None = None) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.args = list(args)
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.folder / "serve.log"

    def start(self, within: float = 60.0) -> None:
        command = [
            sys.executable,
            "-m",
            "multistore",
            "serve",
            "--port",
            str(self.port),
            "--admin-password",
            ADMIN_PASSWORD,
            "--log-level",
            "warning",
            *self.args,
        ]
        if self.config is not None:
            command += ["--config", str(self.config)]
        env = {k: v for k, v in os.environ.items() if k != "MULTISTORE_CONFIG"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
        with self.log.open("ab") as log:
            log.write(f"\n--- start {self.starts}\n".encode())
            self.proc = subprocess.Popen(
                command, cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.starts += 1
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode}):\n{self.tail()}")
            try:
                return httpx.get(f"{self.base}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, "multistore serve answering /health", within)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no cleanup runs, as when the machine dies."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def client(self, token: str | None = None) -> ShopClient:
        return ShopClient(self.base, token)

    def admin(self) -> ShopClient:
        with self.client() as anonymous:
            return anonymous.login("admin", ADMIN_PASSWORD)

    def new_user(self, prefix: str = "u", **profile: Any) -> ShopClient:
        name = f"{prefix}{uuid.uuid4().hex[:10]}"
        with self.client() as anonymous:
            response = anonymous.post(
                "/users", json={"username": name, "password": "secret-pw-1", "profile": profile}
            )
            assert response.status_code == 201, response.text
            return anonymous.login(name, "secret-pw-1")


class ShopClient(httpx.Client):
    def __init__(self, base: str, token: str | None = None) -> None:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        super().__init__(base_url=base, headers=headers, timeout=60)
        self.base = base
        self.token = token
        self.user: dict[str, Any] = {}

    @classmethod
    def connect(cls, base: str, username: str, password: str) -> ShopClient:
        """A client logged in as ``username``."""
        with cls(base) as anonymous:
            return anonymous.login(username, password)

    def login(self, username: str, password: str) -> ShopClient:
        response = self.post("/sessions", json={"username": username, "password": password})
        assert response.status_code == 201, response.text
        client = ShopClient(self.base, response.json()["token"])
        client.user = response.json()["user"]
        return client

    def order(self, items: dict[str, int], key: str | None = None, **extra: Any) -> httpx.Response:
        headers = {"Idempotency-Key": key or f'"{uuid.uuid4().hex}"'}
        body = {"items": [{"sku": s, "qty": q} for s, q in items.items()], **extra}
        return self.post("/orders", json=body, headers=headers)


def assert_problem(
    response: httpx.Response, status: int, slug: str | None = None
) -> dict[str, Any]:
    """The response is ``application/problem+json`` with ``status`` (and type ``slug``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    body = response.json()
    assert body["status"] == status
    # The service's own problems are urn:multistore:problem:<slug>; the idempotency
    # middleware's link to the section of the idempotency docs that explains them.
    assert body["type"].startswith(("urn:multistore:", "https://")), body
    assert "Traceback" not in response.text
    if slug is not None:
        assert body["type"].endswith((":" + slug, "#" + slug)), body
    return dict(body)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A shared server with a high rate limit and short leases."""
    server = ServiceProcess(
        tmp_path_factory.mktemp("service"),
        "--rate-limit",
        "1000000",
        "--idempotency-lease",
        "2",
        "--saga-lease",
        "2",
        "--compensation-attempts",
        "2",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
