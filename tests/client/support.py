"""Helpers of the client tests against real servers: a TCP proxy that cuts, stalls or
refuses connections, callbacks that record, HS256 tokens, reading a client, and a
hub served in the test's process (for its hooks).

The fixtures built on them (``proxy``, ``clients``) are in ``conftest.py``.
"""

# The helpers take their time budget as an argument, in MS units, on purpose.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from roomcast import HandlerConfig, Hub, Message, MessageType
from roomcast.client import Client, Gap, RoomLeft, RoomStatus, State, StateChange, connect
from tests.support import MS, ServerProcess, api, free_port, served_in_loop

SECRET = "roomcast-client-tests-secret-0123456789abcdef"


class Proxy:
    """A TCP proxy to a server port that can cut, stall or refuse connections.

    ``drop()`` cuts every connection (the client sees 1006); ``stall = True`` stops
    forwarding while the sockets stay open (a dead connection); ``refuse = True``
    closes new connections at once; ``cut_next_upload = True`` forwards the next
    bytes a client sends to the server, then cuts that client's side at once, so
    that no reply reaches it, while the server's side stays open (the server
    handles what it got) until :meth:`release`.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: set[asyncio.StreamWriter] = set()
        self.held: list[asyncio.StreamWriter] = []
        self.stall = False
        self.refuse = False
        self.cut_next_upload = False
        self.cuts = 0
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(
            self._pump(reader, up_writer, client=writer),
            self._pump(up_reader, writer),
            return_exceptions=True,
        )

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        client: asyncio.StreamWriter | None = None,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if self.stall or writer.transport.is_closing():
                    continue
                writer.write(data)
                if client is not None and self.cut_next_upload:
                    self.cut_next_upload = False
                    self.cuts += 1
                    await writer.drain()
                    self.held.append(writer)  # the server's side stays open...
                    client.transport.abort()  # ...the client's goes before any reply
                    return
        finally:
            if writer not in self.held:
                writer.transport.abort()
            self.writers.discard(writer)

    def drop(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    def release(self) -> None:
        """Close the server's side of the connections cut by ``cut_next_upload``."""
        for writer in self.held:
            writer.transport.abort()
        self.held.clear()

    async def close(self) -> None:
        self.drop()
        self.release()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class Recorder:
    """Callbacks that record what a client reports."""

    def __init__(self) -> None:
        self.states: list[StateChange] = []
        self.joins: list[RoomStatus] = []
        self.leaves: list[RoomLeft] = []
        self.gaps: list[Gap] = []
        self.errors: list[Exception] = []

    def options(self) -> dict[str, Any]:
        return {
            "on_state": self.states.append,
            "on_join": self.joins.append,
            "on_leave": self.leaves.append,
            "on_gap": self.gaps.append,
            "on_error": self.errors.append,
        }

    def seen(self, state: State) -> list[StateChange]:
        return [s for s in self.states if s.state is state]


def make(clients: list[Client], url: str, rooms: list[str], **options: Any) -> Client:
    """A client with short backoff delays, closed at teardown (``clients`` fixture)."""
    options.setdefault("min_delay", 50 * MS)
    options.setdefault("max_delay", 200 * MS)
    client = connect(url, rooms=rooms, **options)
    clients.append(client)
    return client


async def messages(client: Client, n: int, timeout: float = 3000 * MS) -> list[Message]:
    """The next ``n`` chat/notification messages from the client's iterator."""
    out: list[Message] = []
    async with asyncio.timeout(timeout):
        async for message in client:
            if message.type in (MessageType.CHAT, MessageType.NOTIFICATION):
                out.append(message)
                if len(out) == n:
                    return out
    raise AssertionError(f"iterator ended after {out}")


async def next_matching(
    client: Client, predicate: Callable[[Message], bool], timeout: float = 3000 * MS
) -> Message:
    """The next message from the client's iterator for which ``predicate`` holds."""
    async with asyncio.timeout(timeout):
        async for message in client:
            if predicate(message):
                return message
    raise AssertionError("iterator ended")


async def publish(server: ServerProcess, room: str | None, data: Any) -> dict[str, Any]:
    """POST /api/publish a chat message; return the response body."""
    body: dict[str, Any] = {"type": "chat", "data": data}
    if room is not None:
        body["room"] = room
    response = await api(server.http, "POST", "/api/publish", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def texts(items: list[Message]) -> list[Any]:
    return [m.data["text"] for m in items]


def make_token(sub: str, ttl: float = 3600, secret: str = SECRET, **claims: Any) -> str:
    """An HS256 JWT for ``sub``, valid for ``ttl`` seconds, with more ``claims``."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    now = int(time.time())
    body = {"sub": sub, "iat": now, "exp": int(now + ttl), **claims}
    payload = b64(json.dumps(body).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{b64(signature.digest())}"


def true_when(check: Callable[[], bool]) -> Callable[[], Any]:
    """``check`` as the coroutine function ``tests.support.eventually`` polls."""

    async def probe() -> bool:
        return check()

    return probe


@dataclasses.dataclass
class Served:
    """An app served in the test's event loop: where it listens, and its hub."""

    hub: Hub
    port: int

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@contextlib.asynccontextmanager
async def serving(config: HandlerConfig) -> AsyncIterator[Served]:
    """Serve a hub's WebSocket endpoint with ``config`` (its hooks run in this process)
    by uvicorn in this event loop, on a free port; stop it on exit."""
    hub = Hub()
    port = free_port()
    app = Starlette(routes=[Mount("/ws", app=hub.websocket_app(config))], lifespan=hub.lifespan)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, ws="websockets-sansio")
    )
    async with served_in_loop(server):
        yield Served(hub, port)
