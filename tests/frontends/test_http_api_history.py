"""``GET /api/rooms/{room}/history`` over HTTP (SPEC §2, §3.7, §3.8, §6).

``{"room", "epoch", "messages"}``, messages oldest first: without ``since`` the
newest ``limit``; with ``since`` the first ``limit`` after it, so a client pages
forward by passing the last id it got. Only retained messages (chat,
notification, system to a room) are there, each with its ``offset``.

The shared servers run once in memory and once as two pods on Redis (messages
published through one pod, history read through the other: it must answer the
same on every pod).
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.support import MS, ServerProcess, api, dumps, fresh_room, recv, running_server

Connect = Callable[..., Awaitable[ClientConnection]]
Serve = Callable[..., ServerProcess]
Msg = dict[str, Any]


class Cluster:
    """Where to publish and where to read history (the same pod in memory)."""

    def __init__(self, writer: ServerProcess, reader: ServerProcess) -> None:
        self.writer = writer
        self.reader = reader

    async def history(self, room: str, query: str = "") -> Msg:
        path = f"/api/rooms/{quote(room, safe='')}/history{query}"
        response = await api(self.reader.http, "GET", path)
        assert response.status_code == 200, response.text
        body = dict(response.json())
        assert body["room"] == room
        assert isinstance(body["epoch"], str)
        assert isinstance(body["messages"], list)
        return body

    async def publish(self, room: str, n: int, type_: str = "notification") -> list[Msg]:
        """Publish ``n`` messages to ``room`` through the API; return their API answers."""
        out = []
        async with httpx.AsyncClient(base_url=self.writer.http, timeout=5000 * MS) as http:
            for i in range(n):
                body = {"room": room, "type": type_, "data": {"i": i}}
                response = await http.post("/api/publish", json=body)
                assert response.status_code == 200, response.text
                out.append(response.json())
        return out


@pytest.fixture(scope="module", params=["memory", "redis"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    common = ("--api-insecure", "--rate", "0")
    with ExitStack() as stack:
        if request.param == "memory":
            pod = stack.enter_context(running_server(*common))
            yield Cluster(pod, pod)
            return
        url = request.getfixturevalue("redis_url")
        prefix = f"rctest-history-{secrets.token_hex(4)}"
        flags = (*common, "--redis-url", url, "--redis-prefix", prefix)
        a = stack.enter_context(running_server(*flags))
        b = stack.enter_context(running_server(*flags))
        yield Cluster(a, b)


def ids(messages: list[Msg]) -> list[str]:
    return [m["id"] for m in messages]


def offsets(messages: list[Msg]) -> list[int]:
    return [m["offset"] for m in messages]


# -- without since ---------------------------------------------------------------------


async def test_without_since_returns_the_newest_limit_oldest_first(cluster: Cluster) -> None:
    room = fresh_room()
    published = await cluster.publish(room, 12)
    newest = await cluster.history(room, "?limit=5")
    assert ids(newest["messages"]) == ids(published[7:])
    assert offsets(newest["messages"]) == [8, 9, 10, 11, 12]
    assert [m["data"]["i"] for m in newest["messages"]] == [7, 8, 9, 10, 11]

    everything = await cluster.history(room)
    assert ids(everything["messages"]) == ids(published)
    assert offsets(everything["messages"]) == list(range(1, 13))
    assert ids((await cluster.history(room, "?limit=12"))["messages"]) == ids(published)
    assert ids((await cluster.history(room, "?limit=500"))["messages"]) == ids(published)
    assert ids((await cluster.history(room, "?limit=1"))["messages"]) == ids(published[-1:])


async def test_messages_are_what_members_received(cluster: Cluster, client: Connect) -> None:
    room = fresh_room()
    ws = await client(f"{cluster.writer.ws}/{room}")
    assert (await recv(ws))["data"]["event"] == "welcome"
    await ws.send(dumps({"type": "chat", "data": {"text": "hi"}}))
    await cluster.publish(room, 1, "notification")
    await cluster.publish(room, 1, "system")
    got: list[Msg] = []
    while len(got) < 3:
        msg = await recv(ws)
        if "offset" in msg:
            got.append(msg)
    history = await cluster.history(room)
    # Exactly the retained ones, as delivered; presence (the member's own
    # "online") is not retained.
    assert history["messages"] == got
    assert [m["type"] for m in history["messages"]] == ["chat", "notification", "system"]
    for message in history["messages"]:
        assert message["room"] == room
        assert set(message) >= {"id", "type", "room", "timestamp", "offset"}


async def test_empty_and_unknown_rooms_have_an_epoch_and_no_messages(cluster: Cluster) -> None:
    history = await cluster.history(fresh_room("never-used"))
    assert history["messages"] == []
    assert history["epoch"]


async def test_epoch_is_the_rooms_and_is_stable(cluster: Cluster, client: Connect) -> None:
    room = fresh_room()
    await cluster.publish(room, 2)
    first = await cluster.history(room)
    assert first["epoch"]
    await cluster.publish(room, 2)
    again = await cluster.history(room, "?limit=1")
    assert again["epoch"] == first["epoch"]
    ws = await client(f"{cluster.reader.ws}/{room}")
    hello = await recv(ws)
    assert hello["data"]["epoch"] == first["epoch"]
    assert hello["data"]["offset"] == 4
    # Two rooms do not share an incarnation.
    other = fresh_room()
    await cluster.publish(other, 1)
    assert (await cluster.history(other))["epoch"] != first["epoch"]


# -- with since ---------------------------------------------------------------------------


async def test_since_returns_the_first_limit_after_it(cluster: Cluster) -> None:
    room = fresh_room()
    published = await cluster.publish(room, 10)
    page = await cluster.history(room, f"?since={published[2]['id']}&limit=4")
    assert ids(page["messages"]) == ids(published[3:7])
    assert offsets(page["messages"]) == [4, 5, 6, 7]
    rest = await cluster.history(room, f"?since={published[2]['id']}")
    assert ids(rest["messages"]) == ids(published[3:])


async def test_paging_forward_by_the_last_id_reads_everything_once(cluster: Cluster) -> None:
    room = fresh_room()
    published = await cluster.publish(room, 23)
    since = published[0]["id"]
    collected: list[Msg] = []
    sizes = []
    for _ in range(10):
        page = await cluster.history(room, f"?since={since}&limit=5")
        messages = page["messages"]
        sizes.append(len(messages))
        if not messages:
            break
        collected += messages
        since = messages[-1]["id"]
    assert sizes == [5, 5, 5, 5, 2, 0]
    assert ids(collected) == ids(published[1:])
    assert offsets(collected) == list(range(2, 24))


async def test_since_the_newest_id_is_empty(cluster: Cluster) -> None:
    room = fresh_room()
    published = await cluster.publish(room, 3)
    page = await cluster.history(room, f"?since={published[-1]['id']}")
    assert page["messages"] == []


async def test_unknown_since_is_empty(cluster: Cluster) -> None:
    room = fresh_room()
    await cluster.publish(room, 3)
    epoch = (await cluster.history(room))["epoch"]
    for since in (str(uuid.uuid4()), "not-an-id"):
        page = await cluster.history(room, f"?since={since}")
        assert page["messages"] == []
        assert page["epoch"] == epoch
    # An id of another room is unknown here too.
    other = fresh_room()
    (elsewhere,) = await cluster.publish(other, 1)
    assert (await cluster.history(room, f"?since={elsewhere['id']}"))["messages"] == []


async def test_since_an_evicted_id_is_empty(serve: Serve) -> None:
    server = serve("--api-insecure", "--history-size", "5")
    cluster = Cluster(server, server)
    room = fresh_room()
    published = await cluster.publish(room, 9)
    assert (await cluster.history(room, f"?since={published[0]['id']}"))["messages"] == []
    # The oldest one kept still works.
    kept = await cluster.history(room, f"?since={published[4]['id']}")
    assert ids(kept["messages"]) == ids(published[5:])
    assert offsets((await cluster.history(room))["messages"]) == [5, 6, 7, 8, 9]


# -- limit -------------------------------------------------------------------------------


async def test_limit_zero_and_negative_return_nothing(cluster: Cluster) -> None:
    room = fresh_room()
    published = await cluster.publish(room, 4)
    assert (await cluster.history(room, "?limit=0"))["messages"] == []
    since = published[0]["id"]
    assert (await cluster.history(room, f"?since={since}&limit=0"))["messages"] == []
    for query in ("?limit=-1", "?limit=-3", f"?since={since}&limit=-2"):
        path = f"/api/rooms/{room}/history{query}"
        response = await api(cluster.reader.http, "GET", path)
        # Refused, or nothing: never a slice counted from the wrong end.
        if response.status_code == 200:
            assert response.json()["messages"] == [], query
        else:
            assert response.status_code == 400, response.text
            assert "error" in response.json()


@pytest.mark.parametrize("limit", ["abc", "1.5", "5x", "0x10"])
async def test_limit_that_is_not_an_integer_is_refused(cluster: Cluster, limit: str) -> None:
    room = fresh_room()
    await cluster.publish(room, 1)
    response = await api(cluster.reader.http, "GET", f"/api/rooms/{room}/history?limit={limit}")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"]
    assert "limit" in error["message"]


async def test_limit_is_capped(serve: Serve, client: Connect) -> None:
    server = serve("--api-insecure", "--rate", "0", "--history-size", "1100")
    room = fresh_room()
    ws = await client(f"{server.ws}/{room}")
    await recv(ws)
    for i in range(1050):
        await ws.send(dumps({"type": "chat", "data": {"i": i}}))
    received: list[Msg] = []
    while not received or received[-1]["offset"] != 1050:
        msg = await recv(ws, 5000 * MS)
        if "offset" in msg:
            received.append(msg)
    assert offsets(received) == list(range(1, 1051))
    cluster = Cluster(server, server)

    newest = (await cluster.history(room, "?limit=100000"))["messages"]
    assert 0 < len(newest) <= 1000
    assert newest == received[-len(newest) :]  # the newest ones, oldest first

    after = (await cluster.history(room, f"?since={received[0]['id']}&limit=100000"))["messages"]
    assert 0 < len(after) <= 1000
    assert after == received[1 : 1 + len(after)]  # the first ones after it

    assert (await cluster.history(room, "?limit=1050"))["messages"] == newest


# -- access and validation -------------------------------------------------------------------


async def test_api_key_is_required(serve: Serve) -> None:
    key = secrets.token_urlsafe(16)
    server = serve(f"--api-key={key}")  # one argument even when the key starts with "-"
    room = fresh_room()
    path = f"/api/rooms/{room}/history"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
        response = await api(server.http, "GET", path, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"]["code"]
        assert "messages" not in response.json()
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        response = await api(server.http, "GET", path, headers=headers)
        assert response.status_code == 200, (headers, response.text)
        assert response.json()["messages"] == []


async def test_api_without_key_or_insecure_is_forbidden(serve: Serve) -> None:
    server = serve()
    response = await api(server.http, "GET", f"/api/rooms/{fresh_room()}/history")
    assert response.status_code == 403
    error = response.json()["error"]
    assert "--api-key" in error["message"]


@pytest.mark.parametrize("room", ["bad room", "x$y", "a" * 129, "ü", "semi;colon"])
async def test_invalid_room_is_400(cluster: Cluster, room: str) -> None:
    path = f"/api/rooms/{quote(room, safe='')}/history"
    response = await api(cluster.reader.http, "GET", path)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_room"


async def test_room_name_edge_characters_are_valid(cluster: Cluster) -> None:
    room = f"A-z_0.9:@{secrets.token_hex(2)}"
    (published,) = await cluster.publish(room, 1)
    history = await cluster.history(room)
    assert ids(history["messages"]) == [published["id"]]


async def test_history_answers_while_others_publish(cluster: Cluster) -> None:
    # Reads during a burst of publications see a prefix of the room's history:
    # contiguous offsets from 1, never a gap or a message twice.
    room = fresh_room()
    publishing = asyncio.create_task(cluster.publish(room, 40))
    snapshots = []
    while not publishing.done():
        snapshots.append((await cluster.history(room))["messages"])
    published = await publishing
    snapshots.append((await cluster.history(room))["messages"])
    for messages in snapshots:
        assert offsets(messages) == list(range(1, len(messages) + 1))
        assert ids(messages) == ids(published[: len(messages)])
    assert len(snapshots[-1]) == 40
