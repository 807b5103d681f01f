from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from tests.redis_support import RedisServer
from tests.support import MS, RawWebSocket, ServerProcess, ws_connect


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerProcess]]:
    """Start `roomcast serve` processes with extra flags; all are killed at teardown."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True) -> ServerProcess:
        server = ServerProcess(*args, env=env)
        started.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in started:
        server.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[Callable[..., Awaitable[ClientConnection]]]:
    """Open WebSocket clients (``await client(url)``); all are closed at teardown."""
    opened: list[ClientConnection] = []

    async def open_(url: str, **kwargs: Any) -> ClientConnection:
        kwargs.setdefault("close_timeout", 2000 * MS)
        # Unbounded: a client that stopped reading must still see the close
        # handshake at teardown (with a bounded queue it stops reading the socket).
        kwargs.setdefault("max_queue", None)
        ws = await ws_connect(url, **kwargs)
        opened.append(ws)
        return ws

    yield open_
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)


@pytest.fixture
async def raw_client() -> AsyncIterator[Callable[..., Awaitable[RawWebSocket]]]:
    """Open hand-driven WebSocket clients (``await raw_client(port, path)``); closed at teardown."""
    opened: list[RawWebSocket] = []

    async def open_(port: int, path: str, **kwargs: Any) -> RawWebSocket:
        raw = await RawWebSocket.connect(port, path, **kwargs)
        opened.append(raw)
        return raw

    yield open_
    for raw in opened:
        raw.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis for tests that do not stop it (REDIS_URL, an own server, or :6379)."""
    from tests.redis_support import shared_redis_url

    url, server = shared_redis_url()
    yield url
    if server is not None:
        server.cleanup()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A `redis-server` of this test's own, which the test may stop and restart."""
    server = RedisServer().start()
    yield server
    server.cleanup()
