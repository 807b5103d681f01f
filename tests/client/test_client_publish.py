"""Client.publish() against real servers: the ack, refusals, waiting for a connection,
and the retry under the same ref after the ack was lost with the connection.

The lost ack is made by a TCP proxy that forwards the publication to the server,
then cuts the client's side at once (the server's side stays open, so the server
stores the message and answers into the void).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from roomcast import Connection, HandlerConfig, Message, MessageType
from roomcast.client import Client, Published, ReplyError, State
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


def is_chat(data: Any) -> Callable[[Message], bool]:
    return lambda m: m.type is MessageType.CHAT and m.data == data


async def history(server: ServerProcess, room: str) -> list[dict[str, Any]]:
    response = await api(server.http, "GET", f"/api/rooms/{room}/history?limit=100")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["messages"]
    return found


async def test_publish_returns_the_servers_ack(
    server: ServerProcess, clients: list[Client]
) -> None:
    room = fresh_room("ack")
    async with make(clients, server.ws, [room]) as client:
        first = await client.publish(room, {"text": "one"})
        second = await client.publish(room, {"text": "two"})
        assert isinstance(first, Published) and first.room == room
        assert (first.offset, second.offset) == (1, 2) and first.id != second.id
        # The echo is an ordinary message, with the id of the ack; the ack is consumed.
        got = [m async for m in _until_chat(client, {"text": "two"})]
        chats = [m for m in got if m.type is MessageType.CHAT]
        assert [(m.id, m.offset) for m in chats] == [(first.id, 1), (second.id, 2)]
        assert not [m for m in got if m.type is MessageType.SYSTEM]
        stored = await history(server, room)
        assert [m["id"] for m in stored] == [first.id, second.id]


async def _until_chat(client: Client, data: Any) -> Any:
    async with asyncio.timeout(3000 * MS):
        async for message in client:
            yield message
            if message.type is MessageType.CHAT and message.data == data:
                return


async def test_publish_raises_what_the_server_refused(
    serve: Callable[..., ServerProcess], clients: list[Client]
) -> None:
    server = serve("--rate", "1", "--burst", "1")
    room = fresh_room("refused")
    async with make(clients, server.ws, [room]) as client:
        with pytest.raises(ReplyError) as info:
            await client.publish(fresh_room("elsewhere"), {"text": "x"})
        assert info.value.code == "not_member" and info.value.ref
        assert client.state is State.CONNECTED
        await asyncio.sleep(1100 * MS)  # a full bucket again
        results = await asyncio.gather(
            client.publish(room, {"n": 1}), client.publish(room, {"n": 2}), return_exceptions=True
        )
        assert isinstance(results[0], Published)
        assert isinstance(results[1], ReplyError) and results[1].code == "rate_limited"
        assert results[1].ref != info.value.ref


async def test_publish_refused_by_the_servers_hooks(clients: list[Client]) -> None:
    def on_publish(conn: Connection, message: Message) -> bool | str | None:
        return "read-only room" if message.room and message.room.startswith("news") else None

    def on_message(conn: Connection, message: Message) -> Message | None:
        return None if message.data == {"drop": True} else message

    async with serving(HandlerConfig(on_publish=on_publish, on_message=on_message)) as app:
        news, chat = fresh_room("news"), fresh_room("chat")
        async with make(clients, app.ws, [news, chat]) as client:
            await client.join(chat)
            with pytest.raises(ReplyError) as info:
                await client.publish(news, {"text": "x"})
            assert (info.value.code, info.value.detail) == ("forbidden_publish", "read-only room")
            with pytest.raises(ReplyError) as dropped:
                await client.publish(chat, {"drop": True})
            assert dropped.value.code == "forbidden_publish"
            assert (await client.publish(chat, {"ok": True})).room == chat


async def test_publish_waits_for_the_connection(
    server: ServerProcess, clients: list[Client], proxy: Callable[[int], Any]
) -> None:
    p: Proxy = await proxy(server.port)
    room = fresh_room("wait")
    rec = Recorder()
    async with make(clients, server.ws, [room]) as member:
        client = make(clients, p.ws, [room], ping_interval=0, **rec.options())
        await client.start()
        p.refuse = True
        p.drop()
        await eventually(true_when(lambda: client.state is not State.CONNECTED))
        pending = asyncio.create_task(client.publish(room, {"text": "later"}, timeout=5000 * MS))
        await asyncio.sleep(200 * MS)
        assert not pending.done()
        p.refuse = False
        published = await asyncio.wait_for(pending, 5000 * MS)
        message = await next_matching(member, is_chat({"text": "later"}))
        assert message.id == published.id


async def test_publish_gives_up_after_its_timeout(
    server: ServerProcess, clients: list[Client], proxy: Callable[[int], Any]
) -> None:
    p: Proxy = await proxy(server.port)
    room = fresh_room("late")
    async with make(clients, server.ws, [room]) as member:
        client = make(clients, p.ws, [room], ping_interval=0)
        await client.start()
        p.refuse = True
        p.drop()
        await eventually(true_when(lambda: client.state is not State.CONNECTED))
        with pytest.raises(TimeoutError):
            await client.publish(room, {"text": "never"}, timeout=300 * MS)
        p.refuse = False
        await client.wait_connected()
        marker = await client.publish(room, {"text": "marker"})
        got = await next_matching(member, lambda m: m.type is MessageType.CHAT)
        assert (got.data, got.id) == ({"text": "marker"}, marker.id)  # the other was not sent


async def test_a_publication_whose_ack_was_lost_is_resent_and_delivered_once(
    server: ServerProcess, clients: list[Client], proxy: Callable[[int], Any]
) -> None:
    # The server takes a repeated ref from the same user in the same room for a
    # retry: the user must be the same after reconnecting, so both are authenticated.
    p: Proxy = await proxy(server.port)
    room = fresh_room("once")
    rec = Recorder()
    async with make(clients, server.ws, [room], token=make_token("bob")) as member:
        opts = rec.options() | {"token": make_token("alice"), "ping_interval": 0}
        client = make(clients, p.ws, [room], **opts)
        await client.start()
        first_connection = client.connection_id
        p.refuse = True  # no reconnection before the server stored the message
        p.cut_next_upload = True  # the publication gets through; its ack does not
        pending = asyncio.create_task(client.publish(room, {"text": "once"}, timeout=8000 * MS))

        delivered = await next_matching(member, is_chat({"text": "once"}))
        await eventually(true_when(lambda: bool(rec.seen(State.DISCONNECTED))))
        assert p.cuts == 1 and not pending.done()
        p.refuse = False
        published = await asyncio.wait_for(pending, 8000 * MS)

        assert client.connection_id != first_connection  # acked on the next connection
        assert (published.room, published.id, published.offset) == (
            room,
            delivered.id,
            delivered.offset,
        )
        # Exactly once: nothing more before a marker published after it, and one in history.
        await publish(server, room, {"text": "marker"})
        rest = await next_matching(member, lambda m: m.type is MessageType.CHAT)
        assert texts([rest]) == ["marker"]
        stored = [m["data"] for m in await history(server, room)]
        assert stored == [{"text": "once"}, {"text": "marker"}]
        p.release()
