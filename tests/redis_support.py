"""Redis for tests: a server of the test's own, or the one the environment names.

Tests that stop and restart Redis use :class:`RedisServer` (a `redis-server` child
on a free port, stopped by its PID). Others use :func:`redis_url`: ``REDIS_URL``
when set, else a server of their own when `redis-server` is installed, else
127.0.0.1:6379.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from tests.support import MS, free_port

INSTALL_HINT = (
    "redis-server not found: install it (Debian/Ubuntu: apt-get install redis-server; "
    "macOS: brew install redis) or set REDIS_URL to a Redis you can use"
)


def redis_server_binary() -> str:
    """Path of `redis-server`, or skip the test with one line saying how to get it."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip(INSTALL_HINT)
    return path


class RedisServer:
    """A `redis-server` child process on a fixed free port, with nothing on disk."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="roomcast-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 5000 * MS) -> RedisServer:
        """Start (or restart, on the same port) and wait until it answers."""
        binary = redis_server_binary()
        self.proc = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.dir,
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.02)
        raise TimeoutError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        """Stop it by its PID (SIGTERM, then SIGKILL)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self) -> None:
        """SIGKILL it (no goodbye to clients)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def shared_redis_url() -> tuple[str, RedisServer | None]:
    """A Redis URL for tests that do not stop Redis, and the server to clean up (if any)."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    if shutil.which("redis-server"):
        server = RedisServer().start()
        return server.url, server
    return "redis://127.0.0.1:6379/0", None
