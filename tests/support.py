"""Test support: free ports, `roomcast serve` processes, and WebSocket client helpers.

Every timeout is a multiple of :data:`MS`, so a slow machine can scale them all
with ``ROOMCAST_TEST_SLOWDOWN``.
"""

# The helpers take their time budget as an argument, in MS units, on purpose.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

MS = 0.001 * float(os.environ.get("ROOMCAST_TEST_SLOWDOWN", "1"))
"""One millisecond, scaled: every test timeout is written as a multiple of it."""

RECV_TIMEOUT = 3000 * MS


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChildServer:
    """A server child process on ``port`` of 127.0.0.1, logging to ``log``, stopped by its PID.

    It does not see the test's ``ROOMCAST_*`` or ``REDIS_URL`` variables; ``env``
    adds to its environment.
    """

    def __init__(
        self, argv: list[str], port: int, log: IO[bytes], env: dict[str, str] | None = None
    ) -> None:
        self.port = port
        self.log = log
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
        full_env.pop("REDIS_URL", None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env)
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10000 * MS) -> int:
        """SIGTERM, wait, then SIGKILL if needed; return the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout)
        self.returncode = self.proc.returncode
        self.log.close()
        return self.returncode


class ServerProcess(ChildServer):
    """One `roomcast serve` child process, stopped by its PID at teardown."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        port = free_port()
        self.args = ["serve", "--host", "127.0.0.1", "--port", str(port), *args]
        log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix="roomcast-test-", suffix=".log", delete=False
        )
        super().__init__([sys.executable, "-m", "roomcast", *self.args], port, log, env)

    def wait_ready(self, timeout: float = 15000 * MS) -> ServerProcess:
        """Wait until /healthz answers; fail with the server's output if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.http + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server did not become ready:\n{self.output()}")

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


@contextlib.contextmanager
def running_server(*args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(*args, env=env)
    try:
        yield server.wait_ready()
    finally:
        server.cleanup()


@contextlib.asynccontextmanager
async def served_in_loop(
    server: Any,
    *,
    ready: Callable[[], bool] = lambda: True,
    start_within: float = 5000 * MS,
    stop_within: float = 10000 * MS,
) -> AsyncIterator[None]:
    """Run a ``uvicorn.Server`` in this event loop until the block ends.

    Enters once it has started and ``ready()`` holds (within ``start_within``,
    raising what stopped it if it exited first); on exit asks it to stop and
    waits for that within ``stop_within``.
    """
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(start_within):
            while not (server.started and ready()):
                if task.done():
                    task.result()  # raises what stopped it
                    raise RuntimeError("uvicorn exited before it started")
                await asyncio.sleep(5 * MS)
        yield
    finally:
        server.should_exit = True
        async with asyncio.timeout(stop_within):
            await task


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


async def ws_connect(url: str, **kwargs: Any) -> ClientConnection:
    """Open a WebSocket (no client-side keepalive pings unless asked)."""
    kwargs.setdefault("ping_interval", None)
    kwargs.setdefault("open_timeout", 5000 * MS)
    return await connect(url, **kwargs)


async def recv(ws: ClientConnection, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
    """Receive and decode one message."""
    raw = await asyncio.wait_for(ws.recv(), timeout)
    obj = orjson.loads(raw)
    assert isinstance(obj, dict)
    return obj


async def recv_until(
    ws: ClientConnection,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = RECV_TIMEOUT,
) -> dict[str, Any]:
    """Receive messages until one satisfies ``predicate``; return it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise TimeoutError("no matching message")
        msg = await recv(ws, left)
        if predicate(msg):
            return msg


async def recv_type(
    ws: ClientConnection, type_: str, timeout: float = RECV_TIMEOUT
) -> dict[str, Any]:
    """Receive messages until one of ``type_`` arrives; return it."""
    return await recv_until(ws, lambda m: m.get("type") == type_, timeout)


async def assert_silent(
    ws: ClientConnection,
    duration: float = 300 * MS,
    type_: str | None = None,
    *,
    where: Callable[[dict[str, Any]], bool] | None = None,
) -> None:
    """Assert no message arrives within ``duration``.

    Only messages of ``type_``, or only those ``where`` holds for, count when given.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await recv(ws, left)
        except TimeoutError:
            return
        if where is not None:
            assert not where(msg), f"unexpected message: {msg}"
        else:
            assert type_ is not None and msg.get("type") != type_, f"unexpected message: {msg}"


async def closed_with(ws: ClientConnection, timeout: float = RECV_TIMEOUT) -> int | None:
    """Read (and drop) messages until the server closes ``ws``; return its close code.

    None when the connection ended without a close frame from the server.
    """
    try:
        while True:
            await recv(ws, timeout)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


# -- HTTP helpers --------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """Parse the Prometheus text format into ``{"name{labels}": value}``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


async def get_metrics(base_url: str) -> dict[str, float]:
    """Fetch and parse ``/metrics`` of the server at ``base_url``."""
    async with httpx.AsyncClient(base_url=base_url, timeout=RECV_TIMEOUT) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return parse_metrics(response.text)


async def api(
    base_url: str,
    method: str,
    path: str,
    *,
    json: Any = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Make one HTTP request to the server at ``base_url``."""
    async with httpx.AsyncClient(base_url=base_url, timeout=RECV_TIMEOUT) as client:
        return await client.request(method, path, json=json, headers=headers)


async def eventually(
    check: Callable[[], Any], timeout: float = RECV_TIMEOUT, interval: float = 20 * MS
) -> Any:
    """Call the coroutine function ``check`` until it returns a truthy value; return it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() >= deadline:
            raise TimeoutError(f"condition still false after {timeout:.2f}s (last: {result!r})")
        await asyncio.sleep(interval)


async def until(check: Callable[[], object], timeout: float = RECV_TIMEOUT) -> None:
    """Wait until the plain function ``check`` returns a truthy value (polled every ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() >= deadline:
            raise TimeoutError(f"condition still false after {timeout:.2f}s")
        await asyncio.sleep(1 * MS)


# -- a WebSocket client driven by hand --------------------------------------------------


class RawWebSocket:
    """A WebSocket client on a plain socket, doing everything by hand.

    It answers nothing on its own (no pongs, no close echo) and reads only when
    asked, which is how the tests play dead or slow clients.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.status = 0
        self.head = b""

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str,
        *,
        rcvbuf: int | None = None,
        timeout: float = RECV_TIMEOUT,
    ) -> RawWebSocket:
        """Connect to 127.0.0.1:``port``, send the upgrade request for ``path``, read the response.

        ``rcvbuf`` sets SO_RCVBUF before connecting (a small window fills up fast).
        The response status is in :attr:`status`; frames that followed it stay buffered.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        self = cls(sock)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), timeout)
            await loop.sock_sendall(sock, upgrade_request(path, f"127.0.0.1:{port}"))
            while b"\r\n\r\n" not in self.buffer:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)
                if not chunk:
                    raise ConnectionError(f"connection closed during handshake: {self.buffer!r}")
                self.buffer += chunk
        except BaseException:
            sock.close()
            raise
        self.head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.status = int(self.head.split(b" ", 2)[1])
        return self

    async def _read(self, timeout: float) -> bytes:
        chunk = await asyncio.wait_for(
            asyncio.get_running_loop().sock_recv(self.sock, 65536), timeout
        )
        return chunk

    async def _need(self, n: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while len(self.buffer) < n:
            chunk = await self._read(max(0.0, deadline - loop.time()))
            if not chunk:
                raise EOFError("connection closed by the server")
            self.buffer += chunk

    async def read_frame(self, timeout: float = RECV_TIMEOUT) -> tuple[int, bytes]:
        """Read one server frame; return ``(opcode, payload)``."""
        deadline = asyncio.get_running_loop().time() + timeout
        await self._need(2, deadline)
        head, size = self.buffer[0], self.buffer[1] & 0x7F
        assert self.buffer[1] & 0x80 == 0, "server frames must not be masked"
        offset = 2
        if size == 126:
            await self._need(4, deadline)
            size, offset = int.from_bytes(self.buffer[2:4], "big"), 4
        elif size == 127:
            await self._need(10, deadline)
            size, offset = int.from_bytes(self.buffer[2:10], "big"), 10
        await self._need(offset + size, deadline)
        payload = self.buffer[offset : offset + size]
        self.buffer = self.buffer[offset + size :]
        return head & 0x0F, payload

    async def read_message(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        """Read frames until a text frame; return it decoded (fails on a close frame)."""
        while True:
            opcode, payload = await self.read_frame(timeout)
            if opcode == 0x1:
                obj = orjson.loads(payload)
                assert isinstance(obj, dict)
                return obj
            assert opcode != 0x8, f"closed: {close_code(payload)}"

    async def send_text(self, text: str) -> None:
        """Send one masked text frame."""
        await asyncio.get_running_loop().sock_sendall(self.sock, mask_frame(0x1, text.encode()))

    async def read_until_eof(self, timeout: float) -> bytes:
        """Read until the server closes the TCP connection; return everything read.

        A connection reset counts as closed. Raises TimeoutError if it stays open.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        data = self.buffer
        self.buffer = b""
        while True:
            try:
                chunk = await self._read(max(0.0, deadline - loop.time()))
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    async def read_until_close(self, timeout: float = RECV_TIMEOUT) -> list[tuple[int, bytes]]:
        """Read frames up to and including the server's close frame; return them all."""
        deadline = asyncio.get_running_loop().time() + timeout
        frames = []
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"no close frame after {len(frames)} frames")
            frame = await self.read_frame(left)
            frames.append(frame)
            if frame[0] == 0x8:
                return frames

    def close(self) -> None:
        self.sock.close()


def upgrade_request(path: str, host: str = "127.0.0.1") -> bytes:
    """A WebSocket opening handshake request for ``path`` (RFC 6455 §4.1)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """Build one masked client frame (FIN set)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def close_code(payload: bytes) -> int | None:
    """The status code of a close frame's payload (None when it has none)."""
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None


def split_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames; a truncated last frame is left out."""
    frames = []
    i = 0
    while i + 2 <= len(data):
        opcode, size = data[i] & 0x0F, data[i + 1] & 0x7F
        offset = i + 2
        if size == 126:
            size, offset = int.from_bytes(data[i + 2 : i + 4], "big"), i + 4
        elif size == 127:
            size, offset = int.from_bytes(data[i + 2 : i + 10], "big"), i + 10
        if offset + size > len(data):
            break
        frames.append((opcode, data[offset : offset + size]))
        i = offset + size
    return frames


def fresh_room(prefix: str = "room") -> str:
    """A room name no other test uses."""
    return f"{prefix}-{secrets.token_hex(4)}"
