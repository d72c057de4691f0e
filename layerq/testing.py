"""Test helpers shipped with layerq: a private ``redis-server`` per test session.

Nothing here imports pytest, so projects can build their own fixtures on it::

    @pytest.fixture(scope="session")
    def redis_server():
        with RedisServer() as server:
            yield server
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType

__all__ = ["RedisServer", "free_port", "redis_server_binary"]

#: how long a fresh redis-server may take to answer PING (it needs milliseconds)
_START_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_server_binary() -> str:
    """The path of ``redis-server``; RuntimeError saying how to install it when missing."""
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError(
            "redis-server not found: install it with `apt-get install -y redis-server`"
        )
    return path


def _ask(port: int, command: bytes) -> bytes:
    # A raw socket keeps this module free of redis-py and of event loops.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(command + b"\r\n")
            return sock.recv(4096)
    except OSError:
        return b""


def _ping(port: int) -> bool:
    # A server with a password answers, if only to ask for it: it is up.
    return _ask(port, b"PING").startswith((b"+PONG", b"-NOAUTH"))


class RedisServer:
    """A private, memory-only ``redis-server`` on a free port of 127.0.0.1.

    ``cluster=True`` makes it a one-node Redis Cluster holding every slot: any
    key is served, but a command or script whose keys span two hash slots is
    refused with CROSSSLOT, as on a real cluster.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: tuple[str, ...] = (),
        cluster: bool = False,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.extra_args = extra_args
        self.cluster = cluster
        self._process: subprocess.Popen[bytes] | None = None
        self._directory = tempfile.TemporaryDirectory(prefix="layerq-redis-") if cluster else None
        #: the cluster bus port (by default PORT + 10000, which may be taken or too high)
        self.bus_port = free_port() if cluster else None
        try:
            self.start()
        except BaseException:
            if self._directory is not None:
                self._directory.cleanup()
            raise

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (no-op when running) and wait until it answers PING."""
        if self.running:
            return
        command = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            *self._cluster_args(),
            *self.extra_args,
        ]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not _ping(self.port):
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"redis-server exited at start on port {self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.01)
        if self.cluster:
            self._own_every_slot(deadline)

    def _cluster_args(self) -> list[str]:
        if self._directory is None:
            return []
        # A fresh node file per start: a restarted node comes back empty, slots too.
        nodes = f"{self._directory.name}/nodes-{time.monotonic_ns()}.conf"
        return [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            nodes,
            "--cluster-port",
            str(self.bus_port),
        ]

    def _own_every_slot(self, deadline: float) -> None:
        reply = _ask(self.port, b"CLUSTER ADDSLOTSRANGE 0 16383")
        if not reply.startswith(b"+OK"):
            self.stop()
            raise RuntimeError(f"redis-server on port {self.port} refused the slots: {reply!r}")
        while b"cluster_state:ok" not in _ask(self.port, b"CLUSTER INFO"):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Redis Cluster on port {self.port} did not become ready")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop the server and wait for it to exit (its data is gone: it has none on disk)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop, then start again on the same port, as a crashed Redis coming back would."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        if self._directory is not None:
            self._directory.cleanup()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.url} {state}>"
