"""The common base of the lab's server launchers: one process, one temporary directory.

``start()`` returns only once the server answers its own protocol, polling with a bound
and never sleeping a fixed time; a server that dies or never becomes ready raises
:class:`ServerStartError` carrying the tail of its log. The port and data directory are
kept across ``stop()``/``start()`` and ``kill()``/``start()`` so URLs stay valid.

Servers that refuse root run as their own OS user through ``subprocess.Popen(user=...)``
(the effect of ``runuser -u`` without a wrapper process, so ``pid`` is the server itself).
Every process gets its own session and process group; an ``atexit`` hook kills and
removes whatever is still running when the interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

__all__ = [
    "LOOPBACK",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "BinaryNotFoundError",
    "LabError",
    "ServerGroup",
    "ServerProcess",
    "ServerStartError",
    "free_port",
    "tcp_request",
    "unique_name",
]

LOOPBACK = "127.0.0.1"
#: Upper bound on waiting for a server to accept connections.
START_TIMEOUT = 60.0
#: Upper bound on waiting for a graceful shutdown before falling back to SIGKILL.
STOP_TIMEOUT = 30.0
#: Upper bound on waiting for the last processes of a stopped server to go.
LINGER_TIMEOUT = 30.0
_POLL_INTERVAL = 0.05


class LabError(Exception):
    """Base of the lab's own errors (tooling, not part of the multistore error tree)."""


class BinaryNotFoundError(LabError):
    """A server binary is not installed; the message names it and where it comes from."""

    def __init__(self, binary: str, package: str) -> None:
        super().__init__(f"server binary {binary} not found; install {package}")
        self.binary = binary
        self.package = package


class ServerStartError(LabError):
    """A server exited or did not accept connections in time; the message has its log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, chosen below the ephemeral range.

    Servers keep their port across restarts; a port from the ephemeral range could be
    taken meanwhile as the local end of some client connection, and the restart would
    fail. So ports come from just below that range, checked by binding them.
    """
    low, _ = _ephemeral_range()
    candidates = range(max(1024, low - 12000), low)
    for _ in range(200):
        port = random.choice(candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        fallback: int = sock.getsockname()[1]
        return fallback


def _listen_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (IPv4 or IPv6), from /proc/net."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(fields[9])
    return inodes


def _listens(group: int, port: int) -> bool:
    """True when a process of process group ``group`` holds the socket listening on
    ``port``. Where /proc cannot tell (not Linux), assume it does."""
    inodes = _listen_inodes(port)
    if not Path("/proc/net/tcp").exists():
        return True
    if not inodes:
        return False
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != group:
                continue
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        return True
        except (OSError, ProcessLookupError):
            continue
    return False


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def unique_name(prefix: str = "t") -> str:
    """A fresh lower-case identifier usable as a database or graph name."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


_live: set[ServerProcess] = set()
_live_lock = threading.Lock()


@atexit.register
def _cleanup_at_exit() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.kill()
        with contextlib.suppress(Exception):
            server.cleanup()


_sigterm_hooked = False


def _hook_sigterm() -> None:
    """Make SIGTERM (not just a normal exit) remove our servers, then die as before.

    atexit does not run when the process is killed by a signal. Only the default SIGTERM
    disposition is replaced, and only from the main thread (where handlers can be set).
    SIGKILL cannot be caught: servers of a SIGKILLed test run are left behind.
    """
    global _sigterm_hooked
    if _sigterm_hooked or threading.current_thread() is not threading.main_thread():
        return
    _sigterm_hooked = True
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_sigterm(signum: int, frame: object) -> None:
        _cleanup_at_exit()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


class ServerGroup(ABC):
    """Server processes started and thrown away together: one server, or a cluster. As
    a context manager it starts them, and cleans up what did start if one fails."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def cleanup(self) -> None: ...

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class ServerProcess(ServerGroup):
    """One server process with a private temporary directory.

    Subclasses say how to initialise the data directory once (:meth:`_prepare`), how
    to start (:meth:`_command`) and how to tell the server is ready (:meth:`_ready`).
    """

    #: Short name used in directory names and messages.
    name: ClassVar[str] = "server"
    #: OS user the server runs as (None: the current user).
    run_as: ClassVar[str | None] = None
    #: Signal for a graceful shutdown.
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(self, *, port: int | None = None) -> None:
        self.host = LOOPBACK
        self._port = port
        self._port_fixed = port is not None
        self.rootdir = Path(tempfile.mkdtemp(prefix=f"multistore-{self.name}-"))
        # mkdtemp makes the directory 0700 for root; the server user must reach it.
        self.rootdir.chmod(0o755)
        self._chown(self.rootdir)
        self.datadir = self.rootdir / "data"
        self.logfile = self.rootdir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._prepared = False
        self._removed = False
        with _live_lock:
            _live.add(self)

    # -- what subclasses provide ------------------------------------------------------

    @abstractmethod
    def required_binaries(self) -> list[tuple[str, str]]:
        """(binary path, where to get it) for each executable the server needs."""

    @abstractmethod
    def _command(self) -> list[str]:
        """The command line that runs the server in the foreground."""

    @abstractmethod
    def _ready(self) -> bool:
        """True once the server answers its protocol (called repeatedly while starting)."""

    def _own_port(self) -> int:
        """The port that the launched process itself listens on (where a child of
        another session serves ``port``, as PostgreSQL under Patroni does)."""
        return self.port

    def _prepare(self) -> None:
        """One-time initialisation of the data directory before the first start."""

    def _after_first_start(self) -> None:
        """One-time setup through the running server (users, grants)."""

    # -- public API -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The server's TCP port, chosen on first use and kept across restarts."""
        if self._port is None:
            self._port = free_port()
        return self._port

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self.is_running() and self._proc is not None else None

    def check_binaries(self) -> None:
        """Raise :class:`BinaryNotFoundError` if an executable the server needs is missing."""
        for binary, package in self.required_binaries():
            if not os.path.exists(binary):
                raise BinaryNotFoundError(binary, package)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server (a no-op if it runs) and wait until it accepts connections."""
        if self.is_running():
            return
        if self._removed:
            raise LabError(f"{self.name} server was cleaned up; its data directory is gone")
        self.check_binaries()
        _hook_sigterm()
        first = not self._prepared
        if first:
            self._prepare()
            self._prepared = True
        attempts = 3 if first and not self._port_fixed else 1
        attempt = 1
        lingering_until = time.monotonic() + LINGER_TIMEOUT
        while True:
            offset = self.logfile.stat().st_size if self.logfile.exists() else 0
            self._spawn()
            try:
                self._wait_ready(timeout)
            except ServerStartError:
                log = self._log_since(offset).lower()
                # Another process took the port between choosing and binding it: before
                # any restart has relied on the port, choose another one.
                if attempt < attempts and "already in use" in log:
                    attempt += 1
                    self._choose_new_ports()
                    continue
                # The previous server's last processes are still exiting (a slow
                # shutdown on a loaded machine) and hold its shared memory: wait.
                if "pre-existing shared memory" in log and time.monotonic() < lingering_until:
                    time.sleep(0.5)
                    continue
                raise
            break
        if first:
            self._after_first_start()

    def launch(self) -> None:
        """Start the process without waiting for it to answer, for members of a cluster
        that answer only once enough of them run (etcd); then :meth:`wait_started`.
        No port retries: give the launcher fixed ports."""
        if self.is_running():
            return
        if self._removed:
            raise LabError(f"{self.name} server was cleaned up; its data directory is gone")
        self.check_binaries()
        _hook_sigterm()
        if not self._prepared:
            self._prepare()
            self._prepared = True
            self._launched_first = True
        self._spawn()

    def wait_started(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until a server started with :meth:`launch` answers (bounded)."""
        self._wait_ready(timeout)
        if getattr(self, "_launched_first", False):
            self._launched_first = False
            self._after_first_start()

    def _spawn(self) -> None:
        with self.logfile.open("ab") as log:
            log.write(
                f"--- multistore lab: starting {self.name} on port {self.port} ---\n".encode()
            )
            log.flush()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.rootdir,
                env=self._env(),
                start_new_session=True,
                **self._user_kwargs(),
            )

    def _choose_new_ports(self) -> None:
        self._port = free_port()

    def _log_since(self, offset: int) -> str:
        try:
            with self.logfile.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut the server down gracefully; SIGKILL it if that takes longer than ``timeout``."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._reap()
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(self.stop_signal)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server and everything in its process group, and wait for it: a crash."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        self._reap()

    def pause(self) -> None:
        """SIGSTOP the server's process group: it keeps its connections and answers
        nothing (a long GC pause, a frozen VM) until :meth:`resume`."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise LabError(f"{self.name} on port {self._port} is not running; cannot pause it")
        os.killpg(proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT what :meth:`pause` stopped."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        self.stop()
        self.start(timeout)

    def cleanup(self) -> None:
        """Stop the server and remove its directory; the launcher cannot start again."""
        self.stop()
        shutil.rmtree(self.rootdir, ignore_errors=True)
        self._removed = True
        with _live_lock:
            _live.discard(self)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<{type(self).__name__} {self.host}:{self._port} {state} {self.rootdir}>"

    # -- helpers ----------------------------------------------------------------------

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        proc = self._proc
        assert proc is not None
        while True:
            code = proc.poll()
            if code is not None:
                self._reap()
                raise ServerStartError(
                    f"{self.name} exited with code {code} while starting on port {self.port};"
                    f" log {self.logfile}:\n{self.log_tail()}"
                )
            # Ready only when the answer comes from *our* process: another server that
            # took the port while ours was down would answer too, and tests would then
            # kill, restart and query the wrong server without noticing.
            if self._ready() and _listens(proc.pid, self._own_port()):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(
                    f"{self.name} did not accept connections on port {self.port} within"
                    f" {timeout:.0f} s; log {self.logfile}:\n{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)

    def _reap(self) -> None:
        """Wait (bounded) until no process of the server's group is left."""
        proc = self._proc
        if proc is None:
            return
        deadline = time.monotonic() + LINGER_TIMEOUT
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                break
            if not _group_has_live_process(proc.pid):
                break
            time.sleep(_POLL_INTERVAL)

    def _env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.rootdir),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
        }
        return env

    def _user_kwargs(self) -> dict[str, Any]:
        if self.run_as is None or os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam(self.run_as)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if self.run_as is None or os.geteuid() != 0:
            return
        entry = pwd.getpwnam(self.run_as)
        os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, args: Sequence[str], what: str) -> None:
        """Run a helper command as the server user; raise with its output if it fails."""
        result = subprocess.run(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.rootdir,
            env=self._env(),
            timeout=START_TIMEOUT * 2,
            check=False,
            **self._user_kwargs(),
        )
        if result.returncode != 0:
            output = result.stdout.decode(errors="replace")[-4000:]
            raise ServerStartError(f"{what} failed with code {result.returncode}:\n{output}")


def _group_has_live_process(pgid: int) -> bool:
    """True if a non-zombie process is in process group ``pgid`` (zombies may never be reaped
    in containers whose init does not reap orphans)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def tcp_request(host: str, port: int, payload: bytes, timeout: float = 1.0) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        return sock.recv(256)
