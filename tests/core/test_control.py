"""The control API on one pod (in memory), through real sockets, on both front ends.

``hub.disconnect`` closes a user's connections (or one) with the code asked
(4000-4999, checked); ``hub.subscribe`` / ``hub.unsubscribe`` join and leave a
room for them, each connection getting an unsolicited ``joined`` / ``left``
with ``"server": true`` and then the room's messages (or no more of them);
``hub.connections`` lists them and ``hub.room_info`` describes a room. The
cluster-wide side (Redis, pods that do not answer) is in
``tests/brokers/test_redis_control.py``; the HTTP API in
``tests/frontends/test_http_api_control.py``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from roomcast.app import Hub
from roomcast.errors import CloseCode, ErrorCode, HubClosed, ProtocolError
from roomcast.protocol import Message, MessageType
from tests.control_support import Connect, Pod, alive, close_of, connect, serving
from tests.support import MS, assert_silent, fresh_room, recv_until

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(params=["native", "asgi"])
async def pod(request: pytest.FixtureRequest) -> AsyncIterator[Pod]:
    async with serving(front=request.param) as served:
        yield served


def is_event(event: str, room: str) -> Any:
    def check(msg: dict[str, Any]) -> bool:
        return bool(
            msg["type"] == "system"
            and msg["data"].get("event") == event
            and msg["data"].get("room") == room
        )

    return check


def is_note(text: str) -> Any:
    def check(msg: dict[str, Any]) -> bool:
        return bool(msg["type"] == "notification" and msg["data"].get("text") == text)

    return check


async def notify(hub: Hub, room: str, text: str) -> Message:
    return await hub.publish(Message(type=MessageType.NOTIFICATION, room=room, data={"text": text}))


def sample(hub: Hub, name: str, **labels: str) -> float:
    value = hub.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# -- disconnect --------------------------------------------------------------------------------


async def test_disconnect_by_user_closes_each_of_its_connections(pod: Pod, client: Connect) -> None:
    room = fresh_room()
    first, _ = await connect(client, pod, "alice", room)
    second, _ = await connect(client, pod, "alice")
    bob, _ = await connect(client, pod, "bob", room)

    closed = await pod.hub.disconnect(
        user_id="alice", code=CloseCode.DISCONNECT_FINAL, reason="banned"
    )

    assert closed == 2
    assert await close_of(first) == (4500, "banned")
    assert await close_of(second) == (4500, "banned")
    assert await alive(bob)
    assert sample(pod.hub, "realtime_control_commands_total", command="disconnect") == 1


async def test_disconnect_by_connection_closes_that_one_with_4100(
    pod: Pod, client: Connect
) -> None:
    target, welcome = await connect(client, pod, "alice")
    other, _ = await connect(client, pod, "alice")

    closed = await pod.hub.disconnect(connection_id=welcome["connection_id"])

    assert closed == 1
    assert await close_of(target) == (4100, "disconnected by the server")
    assert await alive(other)
    # Nobody by that name or id: nothing closed, no error.
    assert await pod.hub.disconnect(connection_id=welcome["connection_id"] + "x") == 0
    assert await pod.hub.disconnect(user_id="nobody") == 0
    assert await alive(other)


@pytest.mark.parametrize("code", [4000, 4499, 4999])
async def test_disconnect_accepts_every_code_from_4000_to_4999(
    pod: Pod, client: Connect, code: int
) -> None:
    ws, _ = await connect(client, pod, "carol")
    assert await pod.hub.disconnect(user_id="carol", code=code, reason="r" * 123) == 1
    assert await close_of(ws) == (code, "r" * 123)


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"user_id": "alice", "code": 3999}, "4000 to 4999"),
        ({"user_id": "alice", "code": 5000}, "4000 to 4999"),
        ({"user_id": "alice", "code": 1000}, "4000 to 4999"),
        ({"user_id": "alice", "code": True}, "4000 to 4999"),
        ({"user_id": "alice", "code": "4100"}, "4000 to 4999"),
        ({"user_id": "alice", "code": 4100.0}, "4000 to 4999"),
        ({}, "exactly one"),
        ({"user_id": "alice", "connection_id": "c1-abc"}, "exactly one"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "a" * 257}, "user_id"),
        ({"connection_id": 7}, "connection_id"),
        ({"user_id": "alice", "reason": "é" * 62}, "123 bytes"),
        ({"user_id": "alice", "reason": None}, "reason"),
        ({"user_id": "alice", "timeout": 0}, "timeout"),
        ({"user_id": "alice", "timeout": 61}, "timeout"),
    ],
)
async def test_disconnect_refuses_bad_arguments_and_closes_nothing(
    pod: Pod, client: Connect, arguments: dict[str, Any], says: str
) -> None:
    ws, _ = await connect(client, pod, "alice")
    with pytest.raises(ProtocolError) as caught:
        await pod.hub.disconnect(**arguments)
    assert caught.value.code is ErrorCode.INVALID_MESSAGE
    assert says in caught.value.detail
    assert await alive(ws)
    assert sample(pod.hub, "realtime_control_commands_total", command="disconnect") == 0


# -- subscribe and unsubscribe ------------------------------------------------------------------


async def test_subscribe_joins_each_connection_with_a_server_joined(
    pod: Pod, client: Connect
) -> None:
    room = fresh_room()
    lobby = fresh_room()
    first, _ = await connect(client, pod, "alice")
    second, _ = await connect(client, pod, "alice", lobby)
    watcher, _ = await connect(client, pod, "bob", room)
    before = await notify(pod.hub, room, "before")

    assert await pod.hub.subscribe("alice", room) == 2

    for ws in (first, second):
        joined = await recv_until(ws, is_event("joined", room))
        assert joined["room"] == room
        data = joined["data"]
        assert data["server"] is True
        assert data["recovered"] is False
        assert "ref" not in data
        assert data["offset"] == before.offset == 1
        assert isinstance(data["epoch"], str) and data["epoch"]
    # Presence followed: the room's member saw alice come online (once: one user).
    online = await recv_until(watcher, lambda m: m["type"] == "presence" and m["from"] == "alice")
    assert online["data"] == {"status": "online", "user_id": "alice"}
    await assert_silent(watcher, 200 * MS, where=lambda m: m["type"] == "presence")
    # From now on each gets the room's messages.
    await notify(pod.hub, room, "after")
    for ws in (first, second):
        got = await recv_until(ws, is_note("after"))
        assert got["offset"] == 2
    # Already in the room: not joined again.
    assert await pod.hub.subscribe("alice", room) == 0
    await assert_silent(first, 200 * MS, where=is_event("joined", room))
    assert pod.hub.registry.members(room) == {
        c for c in pod.hub.registry.connections.values() if c.user_id in ("alice", "bob")
    }


async def test_unsubscribe_leaves_with_a_server_left_and_stops_the_rooms_messages(
    pod: Pod, client: Connect
) -> None:
    room = fresh_room()
    first, _ = await connect(client, pod, "alice", room)
    second, _ = await connect(client, pod, "alice", room)
    outside, _ = await connect(client, pod, "alice")
    bob, _ = await connect(client, pod, "bob", room)

    assert await pod.hub.unsubscribe("alice", room, reason="moved to another room") == 2

    for ws in (first, second):
        left = await recv_until(ws, is_event("left", room))
        assert left["data"] == {
            "event": "left",
            "room": room,
            "server": True,
            "reason": "moved to another room",
        }
    offline = await recv_until(
        bob, lambda m: m["type"] == "presence" and m["data"]["status"] == "offline"
    )
    assert offline["data"] == {"status": "offline", "user_id": "alice"}
    await notify(pod.hub, room, "after")
    await recv_until(bob, is_note("after"))
    for ws in (first, second, outside):
        await assert_silent(ws, 200 * MS, where=is_note("after"))
        assert await alive(ws)
    # Not in the room any more: nothing to do, nothing sent.
    assert await pod.hub.unsubscribe("alice", room) == 0
    await assert_silent(first, 200 * MS, where=is_event("left", room))


async def test_a_server_left_without_a_reason_has_none(pod: Pod, client: Connect) -> None:
    room = fresh_room()
    ws, _ = await connect(client, pod, "alice", room)
    assert await pod.hub.unsubscribe("alice", room) == 1
    left = await recv_until(ws, is_event("left", room))
    assert left["data"] == {"event": "left", "room": room, "server": True}


async def test_a_connection_that_left_a_room_can_be_subscribed_back(
    pod: Pod, client: Connect
) -> None:
    # The client's own leave, then the server's join: it is back in the room.
    room = fresh_room()
    ws, _ = await connect(client, pod, "alice", room)
    await ws.send(f'{{"type": "leave", "room": "{room}", "ref": "l1"}}')
    await recv_until(ws, lambda m: m["data"].get("ref") == "l1")
    assert await pod.hub.subscribe("alice", room) == 1
    await recv_until(ws, is_event("joined", room))
    await notify(pod.hub, room, "back")
    await recv_until(ws, is_note("back"))


@pytest.mark.parametrize(
    ("user_id", "room", "code"),
    [
        ("alice", "bad room!", ErrorCode.INVALID_ROOM),
        ("alice", "", ErrorCode.INVALID_ROOM),
        ("alice", "x" * 129, ErrorCode.INVALID_ROOM),
        ("", "lobby", ErrorCode.INVALID_MESSAGE),
        (None, "lobby", ErrorCode.INVALID_MESSAGE),
    ],
)
async def test_subscribe_and_unsubscribe_refuse_bad_arguments(
    pod: Pod, user_id: Any, room: str, code: ErrorCode
) -> None:
    with pytest.raises(ProtocolError) as caught:
        await pod.hub.subscribe(user_id, room)
    assert caught.value.code is code
    with pytest.raises(ProtocolError) as caught:
        await pod.hub.unsubscribe(user_id, room)
    assert caught.value.code is code
    with pytest.raises(ProtocolError) as caught:
        await pod.hub.unsubscribe("alice", "lobby", reason="x" * 124)
    assert caught.value.code is ErrorCode.INVALID_MESSAGE


# -- connections and room info ------------------------------------------------------------------


async def test_connections_lists_every_connection_of_the_user(pod: Pod, client: Connect) -> None:
    room, other = sorted([fresh_room(), fresh_room()])
    _, first = await connect(client, pod, "alice", room)
    await asyncio.sleep(5 * MS)  # a later connected_at (millisecond resolution)
    second_ws, second = await connect(client, pod, "alice")
    await second_ws.send(f'{{"type": "join", "room": "{other}", "ref": "j"}}')
    await recv_until(second_ws, lambda m: m["data"].get("ref") == "j")
    await second_ws.send(f'{{"type": "join", "room": "{room}", "ref": "k"}}')
    await recv_until(second_ws, lambda m: m["data"].get("ref") == "k")
    await connect(client, pod, "bob", room)

    listed = await pod.hub.connections("alice")

    assert [c["connection_id"] for c in listed] == [first["connection_id"], second["connection_id"]]
    assert listed[0]["rooms"] == [room]
    assert listed[1]["rooms"] == [room, other]
    for conn in listed:
        assert set(conn) == {"connection_id", "user_id", "node", "rooms", "remote", "connected_at"}
        assert conn["user_id"] == "alice"
        assert conn["node"] == pod.hub.node_id
        assert conn["connection_id"].endswith("-" + pod.hub.node_id)
        assert conn["remote"].startswith("127.0.0.1:")
        assert TIMESTAMP.fullmatch(conn["connected_at"])
    assert listed[0]["connected_at"] < listed[1]["connected_at"]
    assert await pod.hub.connections("nobody") == []
    with pytest.raises(ProtocolError):
        await pod.hub.connections("")


async def test_room_info_counts_the_rooms_connections_and_users(pod: Pod, client: Connect) -> None:
    room = fresh_room()
    _, welcome = await connect(client, pod, "alice", room)
    await connect(client, pod, "alice", room)
    await connect(client, pod, "bob", room)
    await connect(client, pod, "carol")
    for i in range(3):
        await notify(pod.hub, room, f"n{i}")

    info = await pod.hub.room_info(room)

    assert info == {
        "room": room,
        "epoch": welcome["epoch"],
        "offset": 3,
        "members": [
            {"user_id": "alice", "status": "online", "connections": 2},
            {"user_id": "bob", "status": "online", "connections": 1},
        ],
        "connections": 3,
        "users": 2,
    }
    empty = await pod.hub.room_info(fresh_room())
    assert (empty["offset"], empty["members"], empty["connections"], empty["users"]) == (
        0,
        [],
        0,
        0,
    )
    with pytest.raises(ProtocolError) as caught:
        await pod.hub.room_info("no such room")
    assert caught.value.code is ErrorCode.INVALID_ROOM


async def test_the_control_api_needs_a_running_hub() -> None:
    hub = Hub()
    with pytest.raises(HubClosed):
        await hub.disconnect(user_id="alice")
    with pytest.raises(HubClosed):
        await hub.connections("alice")
    with pytest.raises(HubClosed):
        await hub.room_info("lobby")
    async with hub:
        assert await hub.connections("alice") == []
    with pytest.raises(HubClosed):
        await hub.subscribe("alice", "lobby")
