"""Request heads have a deadline, a size and a count (slowloris before the upgrade).

Against a real ``roomcast serve``: a half-sent upgrade request is answered 408
and closed after ``--handshake-timeout``; a head over ``--max-header-bytes`` gets
431 without the server buffering it; connections still sending a head beyond
``--max-pending-handshakes`` are refused with 503 at once, and a normal client
connects again once they are gone. The server's RSS stays flat meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator

from tests.support import MS, ServerProcess, get_metrics, rss_kib, upgrade_request, ws_connect

Serve = Callable[..., ServerProcess]


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def opened(port: int, into: list[socket.socket]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    into.append(sock)
    return sock


def read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def rejected(server: ServerProcess, status: int) -> float:
    """``realtime_connections_rejected_total{status=...}`` of ``server``."""
    metrics = asyncio.run(get_metrics(server.http))
    return metrics.get(f'realtime_connections_rejected_total{{status="{status}"}}', 0.0)


def test_a_half_sent_request_head_is_closed_at_the_deadline(serve: Serve) -> None:
    server = serve("--handshake-timeout", "0.5")
    with sockets() as socks:
        sock = opened(server.port, socks)
        request = upgrade_request("/ws/slow", f"127.0.0.1:{server.port}")
        sock.sendall(request[:40])  # and never the rest
        started = time.monotonic()
        reply = read_all(sock, 3.0)
        took = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert 0.4 <= took < 2.0, took
    assert rejected(server, 408) == 1


def test_a_request_head_over_the_limit_gets_431_and_is_not_buffered(serve: Serve) -> None:
    server = serve("--max-header-bytes", "4096")
    before = rss_kib(server.pid)
    with sockets() as socks:
        sock = opened(server.port, socks)
        sock.sendall(b"GET /ws/big HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        sent = 0
        with contextlib.suppress(ConnectionError, TimeoutError):
            sock.settimeout(2.0)
            while sent < 50 << 20:  # 50 MB of one header, if the server kept reading
                sock.sendall(b"a" * 65536)
                sent += 65536
        reply = read_all(sock, 3.0)
    assert reply.startswith(b"HTTP/1.1 431") or reply == b"", reply[:80]
    assert sent < 50 << 20, "the server went on reading a huge header"
    assert rss_kib(server.pid) - before < 8192
    assert rejected(server, 431) == 1
    # A head within the limit still works.
    request = upgrade_request("/ws/fine", f"127.0.0.1:{server.port}")
    with sockets() as socks:
        sock = opened(server.port, socks)
        sock.sendall(request)
        sock.settimeout(3.0)
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")


async def test_pending_heads_past_the_limit_are_refused_and_others_come_back(
    serve: Serve,
) -> None:
    server = serve("--max-pending-handshakes", "20", "--handshake-timeout", "30")
    with sockets() as socks:
        for _ in range(20):
            opened(server.port, socks).sendall(b"GET /ws/x HTTP/1.1\r\n")  # and stall
        await asyncio.sleep(200 * MS)
        extra = opened(server.port, socks)
        reply = await asyncio.to_thread(read_all, extra, 3.0)
        assert reply.startswith(b"HTTP/1.1 503"), reply
        for sock in socks[:20]:
            sock.close()
        await asyncio.sleep(200 * MS)
        ws = await ws_connect(f"{server.ws}/back")
        await ws.close()
    metrics = await get_metrics(server.http)
    assert metrics['realtime_connections_rejected_total{status="503"}'] == 1
