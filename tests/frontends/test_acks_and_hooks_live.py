"""Acks, namespaces and the on_join hook over real WebSockets, on both front ends.

A hub with namespaces and hooks is served by uvicorn in the test's event loop
(the standalone server's app, native or ``--ws asgi``), so the hooks run in the
test's process; the clients are real ``websockets`` clients on real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from roomcast.app import Hub
from roomcast.core.connection import Connection
from roomcast.core.endpoint import HandlerConfig
from roomcast.core.namespaces import Namespace
from roomcast.protocol import Message, MessageType
from tests.control_support import Pod, identify
from tests.control_support import serving as serve_pod
from tests.support import MS, RECV_TIMEOUT, assert_silent, dumps, recv, recv_until

Connect = Callable[..., Awaitable[ClientConnection]]
MODES = ["native", "asgi"]


async def members_only(conn: Connection, room: str) -> bool | str:
    """The on_join hook: ``vip:`` rooms are for the user ``vip`` (decided after some I/O)."""
    await asyncio.sleep(2 * MS)
    if room.startswith("vip:") and conn.user_id != "vip":
        return "members only"
    return True


@contextlib.asynccontextmanager
async def serving(mode: str) -> AsyncIterator[Pod]:
    """A hub with namespaces and on_join, served on a free port until the block ends."""
    hub = Hub(rate=0, namespaces=[Namespace("news:*", client_publish=False)])
    config = HandlerConfig(authenticator=identify, on_join=members_only)
    async with serve_pod(front=mode, hub=hub, config=config) as pod:
        yield pod


@pytest.fixture(params=MODES)
async def pod(request: pytest.FixtureRequest) -> AsyncIterator[Pod]:
    async with serving(request.param) as served:
        yield served


async def welcomed(client: Connect, url: str) -> ClientConnection:
    ws = await client(url)
    welcome = await recv(ws)
    assert welcome["data"]["event"] == "welcome", welcome
    return ws


def event(name: str, ref: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def matches(msg: dict[str, Any]) -> bool:
        data = msg.get("data")
        return (
            msg.get("type") == "system"
            and isinstance(data, dict)
            and data.get("event") == name
            and (ref is None or data.get("ref") == ref)
        )

    return matches


def error(ref: str) -> Callable[[dict[str, Any]], bool]:
    return lambda msg: msg.get("type") == "error" and msg["data"].get("ref") == ref


async def test_a_ref_gets_published_and_a_retry_is_not_delivered_again(
    pod: Pod, client: Connect
) -> None:
    alice = await welcomed(client, pod.url("alice", "lobby"))
    bob = await welcomed(client, pod.url("bob", "lobby"))
    await recv_until(alice, lambda m: m.get("type") == "presence" and m["from"] == "bob")
    chat = {"type": "chat", "room": "lobby", "data": {"text": "hello"}, "ref": "m1"}
    await alice.send(dumps(chat))
    ack = await recv_until(alice, event("published", "m1"))
    delivered = await recv_until(bob, lambda m: m.get("type") == "chat")
    assert ack["data"] == {
        "event": "published",
        "ref": "m1",
        "room": "lobby",
        "id": delivered["id"],
        "offset": delivered["offset"],
    }
    assert delivered["offset"] == 1
    assert "ref" not in delivered

    await alice.send(dumps(chat))  # the retry
    again = await recv_until(alice, event("published", "m1"))
    assert again["data"] == ack["data"]
    await assert_silent(bob, 200 * MS, "chat")


async def test_a_server_only_namespace_refuses_a_clients_message(pod: Pod, client: Connect) -> None:
    alice = await welcomed(client, pod.url("alice"))
    await alice.send(dumps({"type": "join", "room": "news:sport", "ref": "j"}))
    await recv_until(alice, event("joined", "j"))
    await alice.send(dumps({"type": "chat", "room": "news:sport", "data": {}, "ref": "m"}))
    refused = await recv_until(alice, error("m"))
    assert refused["data"] == {
        "code": "forbidden_publish",
        "error": "room 'news:sport' takes messages from the server only",
        "ref": "m",
    }
    await pod.hub.publish(Message(type=MessageType.CHAT, room="news:sport", data={"t": "s"}))
    news = await recv_until(alice, lambda m: m.get("type") == "chat")
    assert news["data"] == {"t": "s"}


async def test_on_join_refuses_a_join(pod: Pod, client: Connect) -> None:
    alice = await welcomed(client, pod.url("alice"))
    await alice.send(dumps({"type": "join", "room": "vip:lounge", "ref": "j1"}))
    refused = await recv_until(alice, error("j1"))
    assert refused["data"] == {"code": "forbidden_room", "error": "members only", "ref": "j1"}
    vip = await welcomed(client, pod.url("vip"))
    await vip.send(dumps({"type": "join", "room": "vip:lounge", "ref": "j2"}))
    await recv_until(vip, event("joined", "j2"))
    await vip.send(dumps({"type": "chat", "room": "vip:lounge", "data": {"t": "x"}}))
    await assert_silent(alice, 200 * MS, "chat")


async def test_the_connect_urls_room_refused_closes_4503_with_the_reason(
    pod: Pod, client: Connect
) -> None:
    ws = await client(pod.url("alice", "vip:lounge"))  # the upgrade itself succeeds
    with pytest.raises(ConnectionClosed) as caught:
        await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)  # no welcome: the close comes first
    received = caught.value.rcvd
    assert received is not None
    assert (received.code, received.reason) == (4503, "members only")
    assert len(pod.hub.registry.connections) == 0
    # The member gets in.
    vip = await welcomed(client, pod.url("vip", "vip:lounge"))
    await vip.send(dumps({"type": "ping"}))
    await recv_until(vip, lambda m: m.get("type") == "pong")
