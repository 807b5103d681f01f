"""In-process pods for the control API tests: a hub served by uvicorn in the test's event loop.

:func:`serving` runs the standalone server's app (:func:`roomcast.server.assemble.uvicorn_config`,
native or ASGI front end) on a free port, so a test holds the :class:`~roomcast.Hub`
itself (to call the control API) while its clients use real sockets. Users are
named by the ``user`` query parameter (:func:`identify`).
"""

# Helpers take their time budget as an argument, in MS units, on purpose.
# ruff: noqa: ASYNC109

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from roomcast.app import Hub
from roomcast.brokers.base import Broker
from roomcast.core.auth import ConnectRequest, Identity
from roomcast.core.endpoint import HandlerConfig
from roomcast.server.assemble import uvicorn_config
from roomcast.settings import Settings
from tests.support import MS, RECV_TIMEOUT, free_port, recv, served_in_loop

Connect = Callable[..., Awaitable[ClientConnection]]


def identify(request: ConnectRequest) -> Identity | None:
    """The test authenticator: ``?user=NAME`` connects as NAME; without it, anonymous."""
    user = request.query.get("user")
    return Identity(user_id=user) if user else None


@dataclass
class Pod:
    """A running in-process pod: its hub and where it listens."""

    hub: Hub
    port: int

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, user: str, room: str | None = None) -> str:
        """The WebSocket URL that connects as ``user`` (to ``room``, when given)."""
        path = f"/ws/{room}" if room else "/ws"
        return f"ws://127.0.0.1:{self.port}{path}?user={user}"


@contextlib.asynccontextmanager
async def serving(
    *,
    front: str = "native",
    broker: Broker | None = None,
    hub: Hub | None = None,
    config: HandlerConfig | None = None,
    **settings: Any,
) -> AsyncIterator[Pod]:
    """Serve a hub until the block ends: ``hub``, or one built from the settings (on
    ``broker``, in memory when None); ``config`` defaults to :func:`identify` users."""
    options = Settings(port=free_port(), ws=front, api_insecure=True, rate=0, **settings)
    if hub is None:
        hub = Hub.from_settings(options, **({"broker": broker} if broker is not None else {}))
    config = config or HandlerConfig(authenticator=identify)
    server = uvicorn.Server(uvicorn_config(hub, options, config))
    pod_hub = hub  # narrowed, for the lambda
    async with served_in_loop(
        server,
        ready=lambda: pod_hub.ready,
        start_within=10000 * MS,
        stop_within=15000 * MS,
    ):
        yield Pod(hub, options.port)


async def connect(
    client: Connect, pod: Pod, user: str, room: str | None = None
) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect ``user`` to ``pod`` (joining ``room``); return the socket and its welcome data."""
    url = f"{pod.ws}/{room}" if room else pod.ws
    ws = await client(f"{url}?user={user}")
    welcome = await recv(ws)
    assert welcome["data"]["event"] == "welcome", welcome
    assert welcome["data"]["user_id"] == user
    return ws, welcome["data"]


async def close_of(ws: ClientConnection, timeout: float = RECV_TIMEOUT) -> tuple[int | None, str]:
    """Read until the server closes ``ws``; return its close code and reason."""
    try:
        while True:
            await recv(ws, timeout)
    except ConnectionClosed as exc:
        if exc.rcvd is None:
            return None, ""
        return exc.rcvd.code, exc.rcvd.reason


async def alive(ws: ClientConnection) -> bool:
    """Whether ``ws`` still answers an application ping (messages before the pong are dropped)."""
    try:
        await ws.send('{"type": "ping"}')
        while (await recv(ws))["type"] != "pong":
            pass
    except ConnectionClosed:
        return False
    return True
