"""What the server decides for a client, against real servers: rooms it subscribes the
client to (the token's ``channels``, the control API) or takes it out of, and
control-API disconnects whose close code says whether to come back.

The client follows the server: a room it is put in is one of its rooms (rejoined
after a reconnection), a room it is taken out of is dropped (not rejoined);
close codes 4000-4499 reconnect, 4500-4999 stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from roomcast import Connection, HandlerConfig, Message, MessageType
from roomcast.client import Client, ClientClosed, CloseAction, RoomLeft, State
from tests.client.support import (
    SECRET,
    Proxy,
    Recorder,
    make,
    make_token,
    next_matching,
    publish,
    serving,
    texts,
    true_when,
)
from tests.support import MS, ServerProcess, api, eventually, fresh_room


@pytest.fixture
def server(serve: Callable[..., ServerProcess]) -> ServerProcess:
    return serve("--rate", "0", "--api-insecure", "--jwt-secret", SECRET)


def is_chat(text: str) -> Callable[[Message], bool]:
    return lambda m: m.type is MessageType.CHAT and m.data == {"text": text}


async def control(server: ServerProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await api(server.http, "POST", path, json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def members(server: ServerProcess, room: str) -> int:
    """The connections the server counts in ``room``."""
    rooms = (await api(server.http, "GET", "/api/rooms")).json()["rooms"]
    return sum(r["connections"] for r in rooms if r["room"] == room)


async def test_the_tokens_channels_are_rooms_of_the_client(
    server: ServerProcess, clients: list[Client], proxy: Callable[[int], Any]
) -> None:
    p: Proxy = await proxy(server.port)
    news = fresh_room("news")
    rec = Recorder()
    token = make_token("erin", channels=[news])
    async with make(clients, p.ws, [], token=token, **rec.options()) as client:
        await eventually(true_when(lambda: bool(rec.joins)))
        [joined] = rec.joins
        assert (joined.room, joined.server, joined.rejoin, joined.recovered) == (
            news,
            True,
            False,
            False,
        )
        assert client.rooms == [news]
        await publish(server, news, {"text": "n1"})
        seen = await next_matching(client, is_chat("n1"))

        # It is rejoined after a reconnection, recovering what was missed meanwhile.
        rec.joins.clear()
        p.refuse = True
        p.drop()
        await eventually(true_when(lambda: client.state is not State.CONNECTED))
        await publish(server, news, {"text": "n2"})
        p.refuse = False
        await next_matching(client, is_chat("n2"), 5000 * MS)
        statuses = [j for j in rec.joins if j.room == news]
        assert statuses and statuses[0].rejoin and statuses[0].last_id == seen.id
        assert statuses[0].recovered and not statuses[0].resync


async def test_rooms_the_server_subscribes_and_unsubscribes(
    server: ServerProcess, clients: list[Client], proxy: Callable[[int], Any]
) -> None:
    p: Proxy = await proxy(server.port)
    lobby, extra = fresh_room("lobby"), fresh_room("extra")
    rec = Recorder()
    async with make(clients, p.ws, [lobby], token=make_token("carol"), **rec.options()) as client:
        rec.joins.clear()
        result = await control(server, "/api/subscribe", {"user_id": "carol", "room": extra})
        assert result == {"subscribed": 1}
        await eventually(true_when(lambda: bool(rec.joins)))
        [joined] = rec.joins
        assert (joined.room, joined.server) == (extra, True)
        assert client.rooms == [lobby, extra]
        published = await client.publish(extra, {"text": "x1"})  # a member now
        assert published.room == extra
        await next_matching(client, is_chat("x1"))

        result = await control(server, "/api/unsubscribe", {"user_id": "carol", "room": extra})
        assert result == {"unsubscribed": 1}
        await eventually(true_when(lambda: bool(rec.leaves)))
        assert rec.leaves == [RoomLeft(room=extra, server=True, reason=rec.leaves[0].reason)]
        assert client.rooms == [lobby] and client.room_state(extra) is None

        # Not rejoined after a reconnection.
        first = client.connection_id
        p.drop()
        await eventually(true_when(lambda: client.connection_id not in (None, first)), 5000 * MS)
        await client.wait_connected()
        await publish(server, extra, {"text": "x2"})
        await publish(server, lobby, {"text": "l1"})
        got = await next_matching(client, lambda m: m.type is MessageType.CHAT)
        assert texts([got]) == ["l1"]
        assert await members(server, extra) == 0


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (4100, CloseAction.RECONNECT),  # DISCONNECT: e.g. moved to another pod
        (4321, CloseAction.RECONNECT),  # an application's code below 4500
    ],
)
async def test_a_disconnect_below_4500_reconnects(
    server: ServerProcess, clients: list[Client], code: int, action: CloseAction
) -> None:
    rec = Recorder()
    room = fresh_room("moved")
    token = make_token("dave")
    async with make(clients, server.ws, [room], token=token, **rec.options()) as client:
        first = client.connection_id
        body = {"user_id": "dave", "code": code, "reason": "moving you"}
        assert await control(server, "/api/disconnect", body) == {"disconnected": 1}
        await eventually(true_when(lambda: bool(rec.seen(State.DISCONNECTED))))
        [change] = rec.seen(State.DISCONNECTED)
        assert (change.code, change.reason, change.action) == (code, "moving you", action)
        await asyncio.wait_for(client.wait_connected(), 5000 * MS)
        assert client.connection_id != first


@pytest.mark.parametrize("code", [4500, 4599, 4999])
async def test_a_disconnect_from_4500_is_final(
    server: ServerProcess, clients: list[Client], code: int
) -> None:
    rec = Recorder()
    client = make(clients, server.ws, [fresh_room("banned")], token=make_token("eve"))
    client.on_state = rec.states.append
    await client.start()
    body = {"user_id": "eve", "code": code, "reason": "banned"}
    assert await control(server, "/api/disconnect", body) == {"disconnected": 1}
    with pytest.raises(ClientClosed) as info:
        async with asyncio.timeout(5000 * MS):
            async for _ in client:
                pass
    assert (info.value.code, info.value.reason, info.value.deliberate) == (code, "banned", False)
    assert client.state is State.CLOSED and rec.seen(State.DISCONNECTED) == []


async def test_a_refused_connect_room_is_final(clients: list[Client]) -> None:
    def on_join(conn: Connection, room: str) -> bool | str | None:
        return "members only" if room.startswith("vip") else None

    async with serving(HandlerConfig(on_join=on_join)) as app:
        rec = Recorder()
        client = make(clients, app.ws, [fresh_room("vip")], **rec.options())
        with pytest.raises(ClientClosed) as info:
            async with asyncio.timeout(5000 * MS):
                await client.start()
        assert (info.value.code, info.value.reason) == (4503, "members only")
        assert [s.state for s in rec.states][-1] is State.CLOSED
        assert rec.seen(State.DISCONNECTED) == []
