"""The hub's ASGI apps mounted into Starlette and FastAPI apps (SPEC §7).

Each app is served by uvicorn inside the test's event loop on a free port, so
the hooks run in the test's process and can record what they see.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount
from websockets.asyncio.client import ClientConnection

from roomcast import Connection, HandlerConfig, Hub, Message, MessageType
from tests.support import (
    MS,
    api,
    assert_silent,
    dumps,
    eventually,
    free_port,
    recv,
    recv_type,
    recv_until,
    served_in_loop,
)

Connect = Callable[..., Awaitable[ClientConnection]]
FRAMEWORKS = ["starlette", "fastapi"]


def build_app(framework: str, hub: Hub, config: HandlerConfig) -> Any:
    """The seed's composition: the WebSocket endpoint at /ws, the API at /."""
    if framework == "starlette":
        return Starlette(
            routes=[
                Mount("/ws", app=hub.websocket_app(config)),
                Mount("/", app=hub.api_app(insecure=True)),
            ],
            lifespan=hub.lifespan,
        )
    app = FastAPI(lifespan=hub.lifespan)

    @app.post("/notify/{room}")
    async def notify(room: str, body: dict[str, Any]) -> dict[str, Any]:
        # The seed's "sending from HTTP handlers" pattern.
        stored = await hub.publish(Message(type=MessageType.NOTIFICATION, room=room, data=body))
        return {"id": stored.id, "offset": stored.offset}

    app.mount("/ws", hub.websocket_app(config))
    app.mount("/", hub.api_app(insecure=True))
    return app


@dataclass
class Served:
    """A running app: where it listens and the hub behind it."""

    hub: Hub
    port: int

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def serving(framework: str, config: HandlerConfig) -> AsyncIterator[Served]:
    """Serve the framework's app with uvicorn in this event loop; stop it on exit."""
    hub = Hub()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(framework, hub, config),
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan="on",
            ws="websockets-sansio",  # what `roomcast serve --ws asgi` uses
        )
    )
    async with served_in_loop(server):
        yield Served(hub, port)
    assert not hub.started, "the lifespan did not close the hub"


@dataclass
class Recorder:
    """What the hooks saw."""

    connected: list[tuple[str, set[str]]] = field(default_factory=list)
    disconnected: list[tuple[str, set[str]]] = field(default_factory=list)
    messages: list[tuple[str, Any]] = field(default_factory=list)


def hooks(kind: str, seen: Recorder) -> HandlerConfig:
    """Hooks that record every call, drop ``{"drop": true}`` and tag what they pass."""

    def on_message(conn: Connection, message: Message) -> Message | None:
        seen.messages.append((conn.id, message.data))
        if message.data.get("drop"):
            return None
        message.data = {**message.data, "hook": kind}
        return message

    def on_connect(conn: Connection) -> None:
        seen.connected.append((conn.id, set(conn.rooms)))

    def on_disconnect(conn: Connection) -> None:
        seen.disconnected.append((conn.id, set(conn.rooms)))

    if kind == "sync":
        return HandlerConfig(
            on_connect=on_connect, on_disconnect=on_disconnect, on_message=on_message
        )

    async def a_on_message(conn: Connection, message: Message) -> Message | None:
        await asyncio.sleep(0)
        return on_message(conn, message)

    async def a_on_connect(conn: Connection) -> None:
        await asyncio.sleep(0)
        on_connect(conn)

    async def a_on_disconnect(conn: Connection) -> None:
        await asyncio.sleep(0)
        on_disconnect(conn)

    return HandlerConfig(
        on_connect=a_on_connect, on_disconnect=a_on_disconnect, on_message=a_on_message
    )


async def welcome_id(ws: ClientConnection) -> str:
    first = await recv(ws)
    assert first["type"] == "system" and first["data"]["event"] == "welcome", first
    return str(first["data"]["connection_id"])


# -- chat through the mounted apps ----------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_chat_through_the_mounted_apps(framework: str, client: Connect) -> None:
    async with serving(framework, HandlerConfig()) as app:
        a = await client(f"{app.ws}/general")
        b = await client(f"{app.ws}/general")
        roomless = await client(f"{app.ws}/")  # Mount("/ws") serves "/ws/" without a room
        a_id = await welcome_id(a)
        await welcome_id(b)
        assert (await recv(roomless))["data"]["rooms"] == []
        await recv_until(a, lambda m: m["type"] == "presence" and m["data"]["user_id"] != a_id)

        await a.send(dumps({"type": "chat", "data": {"text": "hi"}}))
        for ws in (a, b):
            got = await recv_type(ws, "chat")
            assert (got["room"], got["from"], got["data"]) == ("general", a_id, {"text": "hi"})
        await assert_silent(roomless, 200 * MS)

        # The mounted HTTP API serves the same hub.
        rooms = (await api(app.http, "GET", "/api/rooms")).json()["rooms"]
        assert [(r["room"], r["connections"]) for r in rooms] == [("general", 2)]
        response = await api(
            app.http, "POST", "/api/publish", json={"type": "notification", "data": {"g": 1}}
        )
        assert response.status_code == 200
        for ws in (a, b, roomless):
            assert (await recv_type(ws, "notification"))["id"] == response.json()["id"]
        assert (await api(app.http, "GET", "/healthz")).status_code == 200


# -- hooks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_hooks_run(framework: str, kind: str, client: Connect) -> None:
    seen = Recorder()
    async with serving(framework, hooks(kind, seen)) as app:
        a = await client(f"{app.ws}/general")
        b = await client(f"{app.ws}/general")
        a_id, b_id = await welcome_id(a), await welcome_id(b)

        async def both_connected() -> bool:
            return len(seen.connected) == 2

        await eventually(both_connected)
        assert sorted(seen.connected) == sorted([(a_id, {"general"}), (b_id, {"general"})])

        await a.send(dumps({"type": "chat", "data": {"n": 1}}))
        await a.send(dumps({"type": "chat", "data": {"n": 2, "drop": True}}))
        await a.send(dumps({"type": "chat", "data": {"n": 3}}))
        for ws in (a, b):
            first, second = await recv_type(ws, "chat"), await recv_type(ws, "chat")
            assert [first["data"], second["data"]] == [
                {"n": 1, "hook": kind},
                {"n": 3, "hook": kind},
            ]
        assert seen.messages == [
            (a_id, {"n": 1}),
            (a_id, {"n": 2, "drop": True}),
            (a_id, {"n": 3}),
        ]
        assert seen.disconnected == []

        await b.close()

        async def b_gone() -> bool:
            return len(seen.disconnected) == 1

        await eventually(b_gone)
        assert seen.disconnected == [(b_id, {"general"})]  # it still sees its rooms
        offline = await recv_type(a, "presence")
        assert offline["data"] == {"status": "offline", "user_id": b_id}
    # Shutting the app down disconnects the rest.
    assert sorted(c for c, _ in seen.disconnected) == sorted([a_id, b_id])


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_slow_async_hook_delays_only_its_own_connection(
    framework: str, client: Connect
) -> None:
    delay = 500 * MS
    slow_ids: set[str] = set()

    async def on_message(conn: Connection, message: Message) -> Message:
        if conn.id in slow_ids:
            await asyncio.sleep(delay)
        return message

    async with serving(framework, HandlerConfig(on_message=on_message)) as app:
        slow = await client(f"{app.ws}/general")
        fast = await client(f"{app.ws}/general")
        watcher = await client(f"{app.ws}/general")
        slow_ids.add(await welcome_id(slow))
        fast_id = await welcome_id(fast)
        await welcome_id(watcher)
        # Wait until all three have joined (the watcher sees its own presence last).
        watcher_id = (await recv_until(watcher, lambda m: m["type"] == "presence"))["from"]
        assert watcher_id not in slow_ids and watcher_id != fast_id

        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(3):
            await slow.send(dumps({"type": "chat", "data": {"slow": i}}))
        await fast.send(dumps({"type": "chat", "data": {"fast": 0}}))

        arrivals: list[tuple[float, Any]] = []
        while len(arrivals) < 4:
            msg = await recv_type(watcher, "chat", 3000 * MS)
            arrivals.append((loop.time() - start, msg["data"]))
        assert arrivals[0][1] == {"fast": 0}
        assert arrivals[0][0] < 200 * MS, f"the fast connection waited {arrivals[0][0]:.3f}s"
        assert [data for _, data in arrivals[1:]] == [{"slow": 0}, {"slow": 1}, {"slow": 2}]
        for i, (at, _) in enumerate(arrivals[1:], start=1):
            assert at >= i * delay - 50 * MS  # one after the other, each behind the hook


# -- publishing from an HTTP handler ------------------------------------------------------------


async def test_fastapi_handler_publishes_to_the_room(client: Connect) -> None:
    async with serving("fastapi", HandlerConfig()) as app:
        member = await client(f"{app.ws}/general")
        outsider = await client(f"{app.ws}/random")
        await welcome_id(member)
        await welcome_id(outsider)

        response = await api(app.http, "POST", "/notify/general", json={"text": "deployed"})
        assert response.status_code == 200, response.text
        body = response.json()
        got = await recv_type(member, "notification")
        assert got["id"] == body["id"]
        assert got["room"] == "general"
        assert got["data"] == {"text": "deployed"}
        assert got["offset"] == body["offset"] == 1
        await assert_silent(outsider, 300 * MS, type_="notification")
