"""Limits and close codes of `roomcast serve` (SPEC §4), over real sockets, both front ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import (
    MS,
    RawWebSocket,
    ServerProcess,
    api,
    close_code,
    closed_with,
    dumps,
    fresh_room,
    get_metrics,
    recv,
    recv_type,
    recv_until,
    running_server,
    ws_connect,
)

Connect = Callable[..., Awaitable[ClientConnection]]
RawConnect = Callable[..., Awaitable[RawWebSocket]]
MODES = ["native", "asgi"]
MAX_BYTES = 1024
RATE = 5


@pytest.fixture(scope="module", params=MODES)
def limited(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """One server per front end with small frame and rate limits."""
    with running_server(
        "--ws",
        request.param,
        "--api-insecure",
        "--max-message-bytes",
        str(MAX_BYTES),
        "--rate",
        str(RATE),
        "--burst",
        str(RATE),
    ) as proc:
        yield proc


async def joined(connect: Connect, server: ServerProcess, room: str) -> ClientConnection:
    """Connect to ``room`` and wait until the server has joined it (own presence seen)."""
    ws = await connect(f"{server.ws}/{room}")
    welcome = await recv(ws)
    assert welcome["data"]["event"] == "welcome"
    me = welcome["data"]["connection_id"]
    await recv_until(ws, lambda m: m["type"] == "presence" and m["from"] == me)
    return ws


async def replies_until_closed(ws: ClientConnection, within: float) -> list[dict[str, Any]]:
    """Every message until the server closes the connection."""
    out: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + within
    try:
        while True:
            out.append(await recv(ws, deadline - asyncio.get_running_loop().time()))
    except ConnectionClosed:
        return out


# -- refused upgrades -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws/bad%20room", "/ws/bad!room", "/ws/" + "r" * 129])
async def test_invalid_room_in_url_is_http_400(limited: ServerProcess, path: str) -> None:
    with pytest.raises(InvalidStatus) as caught:
        await ws_connect(f"ws://127.0.0.1:{limited.port}{path}")
    response = caught.value.response
    assert response.status_code == 400
    assert b"invalid room" in bytes(response.body)


async def test_longest_valid_room_name_is_accepted(limited: ServerProcess, client: Connect) -> None:
    room = "r" * 124 + ".:@_"
    ws = await client(f"{limited.ws}/{room}")
    assert (await recv(ws))["data"]["rooms"] == [room]


@pytest.mark.parametrize("mode", MODES)
async def test_max_connections_refuses_with_503_before_upgrade(
    serve: Callable[..., ServerProcess], client: Connect, mode: str
) -> None:
    server = serve("--ws", mode, "--max-connections", "3")
    room = fresh_room()
    first, *others = [await client(f"{server.ws}/{room}") for _ in range(3)]
    for ws in (first, *others):
        await recv(ws)  # welcome
    with pytest.raises(InvalidStatus) as caught:
        await ws_connect(f"{server.ws}/{room}")
    assert caught.value.response.status_code == 503
    assert b"server at capacity" in bytes(caught.value.response.body)
    with pytest.raises(InvalidStatus) as caught:
        await ws_connect(server.ws)  # the roomless endpoint counts too
    assert caught.value.response.status_code == 503

    # A freed slot can be taken again.
    await first.close()
    deadline = time.monotonic() + 3000 * MS
    while True:
        try:
            again = await client(f"{server.ws}/{room}")
            break
        except InvalidStatus as exc:
            assert exc.response.status_code == 503
            assert time.monotonic() < deadline, "the closed connection's slot was never freed"
            await asyncio.sleep(20 * MS)
    assert (await recv(again))["data"]["event"] == "welcome"
    metrics = await get_metrics(server.http)
    assert metrics["realtime_connections_total"] == 3
    assert metrics['realtime_connections_rejected_total{status="503"}'] >= 2


# -- frame size -----------------------------------------------------------------------------------


def chat_of_size(size: int) -> str:
    """A chat frame of exactly ``size`` bytes."""
    frame = dumps({"type": "chat", "data": {"pad": ""}})
    return dumps({"type": "chat", "data": {"pad": "x" * (size - len(frame))}})


async def test_frame_at_the_limit_passes_and_larger_closes_1009(
    limited: ServerProcess, client: Connect
) -> None:
    room = fresh_room()
    ws = await joined(client, limited, room)
    other = await joined(client, limited, room)
    exact = chat_of_size(MAX_BYTES)
    assert len(exact.encode()) == MAX_BYTES
    await ws.send(exact)
    assert len((await recv_type(other, "chat"))["data"]["pad"]) > MAX_BYTES - 50

    start = time.monotonic()
    await ws.send(chat_of_size(2 * MAX_BYTES))
    assert await closed_with(ws, 3000 * MS) == 1009
    assert time.monotonic() - start < 1000 * MS, "the TCP connection lingered after 1009"
    # The oversized message went nowhere; the other member is fine.
    await other.send(dumps({"type": "ping"}))
    await recv_type(other, "pong")


# -- rate limit -----------------------------------------------------------------------------------


async def test_rate_limit_drops_messages_with_an_error_and_keeps_the_connection(
    limited: ServerProcess, client: Connect
) -> None:
    room = fresh_room()
    ws = await joined(client, limited, room)
    other = await joined(client, limited, room)
    sent = RATE + 3
    for i in range(sent):
        await ws.send(dumps({"type": "chat", "data": {"i": i}}))
    replies = [await recv_until(ws, lambda m: m["type"] in ("chat", "error")) for _ in range(sent)]
    passed = [m["data"]["i"] for m in replies if m["type"] == "chat"]
    errors = [m["data"] for m in replies if m["type"] == "error"]
    # The burst passes (plus at most one token refilled meanwhile); the rest is dropped.
    assert passed == list(range(len(passed)))
    assert RATE <= len(passed) <= RATE + 1
    assert [e["code"] for e in errors] == ["rate_limited"] * (sent - len(passed))
    assert all(e["error"] for e in errors)
    # Dropped means dropped: the other member got the same messages and no more.
    got = [(await recv_type(other, "chat"))["data"]["i"] for _ in passed]
    assert got == passed
    with pytest.raises(TimeoutError):
        await recv_type(other, "chat", 300 * MS)

    # After 300 ms the bucket holds a token again and the connection is still served.
    await asyncio.sleep(300 * MS)
    await ws.send(dumps({"type": "ping", "data": "again"}))
    assert (await recv_type(ws, "pong"))["data"] == "again"
    metrics = await get_metrics(limited.http)
    assert metrics["realtime_rate_limited_messages_total"] >= len(errors)


async def test_rate_limited_error_echoes_ref(limited: ServerProcess, client: Connect) -> None:
    ws = await joined(client, limited, fresh_room())
    sent = RATE + 3
    for i in range(sent):
        await ws.send(dumps({"type": "ping", "ref": f"p{i}", "data": i}))
    replies = [await recv_until(ws, lambda m: m["type"] in ("pong", "error")) for _ in range(sent)]
    answered = {m["data"] for m in replies if m["type"] == "pong"}
    errors = [m["data"] for m in replies if m["type"] == "error"]
    assert errors and all(e["code"] == "rate_limited" for e in errors)
    assert [e.get("ref") for e in errors] == [f"p{i}" for i in range(sent) if i not in answered]


async def test_persistent_abuse_closes_1008(limited: ServerProcess, client: Connect) -> None:
    room = fresh_room()
    ws = await joined(client, limited, room)
    other = await joined(client, limited, room)
    for i in range(200):
        try:
            await ws.send(dumps({"type": "ping", "data": i}))
        except ConnectionClosed:
            break
    replies = await replies_until_closed(ws, 3000 * MS)
    assert ws.close_code == 1008
    metrics = await get_metrics(limited.http)
    assert metrics['realtime_policy_closes_total{reason="rate"}'] == 1
    pongs = [m for m in replies if m["type"] == "pong"]
    errors = [m for m in replies if m["type"] == "error"]
    assert RATE <= len(pongs) <= RATE + 2  # the burst, plus what refilled meanwhile
    assert errors and all(e["data"]["code"] == "rate_limited" for e in errors)
    assert len(pongs) + len(errors) < 200, "the abuser was never cut off"
    # Only the abuser is gone.
    await other.send(dumps({"type": "ping"}))
    assert (await recv_type(other, "pong"))["type"] == "pong"


# -- slow consumer --------------------------------------------------------------------------------

READERS = 50
PAD = "x" * 4096


@pytest.mark.parametrize("mode", MODES)
async def test_slow_consumer_alone_is_closed_with_4008(
    serve: Callable[..., ServerProcess], client: Connect, raw_client: RawConnect, mode: str
) -> None:
    server = serve("--ws", mode, "--api-insecure", "--send-queue", "64", "--rate", "0")
    room = fresh_room()
    readers = [await client(f"{server.ws}/{room}", max_size=None) for _ in range(READERS)]
    for ws in readers:
        await recv(ws)  # welcome
    # Never reads: its small receive window fills, then the server's buffers.
    slow = await raw_client(server.port, f"/ws/{room}", rcvbuf=4096)
    assert slow.status == 101

    async def slow_consumers() -> float:
        return (await get_metrics(server.http)).get("realtime_slow_consumer_disconnects_total", 0)

    sender = readers[0]
    sent = 0

    async def publish() -> None:
        # Send in batches until the server gives up on the slow one (how much it
        # buffers depends on the kernel), then an end marker.
        nonlocal sent
        while sent < 5000 and not await slow_consumers():
            for _ in range(50):
                await sender.send(dumps({"type": "chat", "data": {"i": sent, "pad": PAD}}))
                sent += 1
        await sender.send(dumps({"type": "chat", "data": {"end": True}}))

    async def read(ws: ClientConnection) -> list[int]:
        seen = []
        while True:
            msg = await recv(ws, 5000 * MS)
            if msg["type"] == "chat":
                if msg["data"].get("end"):
                    return seen
                seen.append(msg["data"]["i"])

    _, *received = await asyncio.gather(publish(), *(read(ws) for ws in readers))
    assert await slow_consumers() == 1
    assert sent < 5000
    for seen in received:  # every reader got every message, in order
        assert seen == list(range(sent))

    # The slow one got a prefix of the stream, then a close frame with 4008.
    frames = await slow.read_until_close(4000 * MS)
    opcode, payload = frames[-1]
    assert opcode == 0x8
    assert close_code(payload) == 4008
    texts = [p for op, p in frames if op == 0x1]
    chats = [m["data"]["i"] for m in map(orjson.loads, texts) if m["type"] == "chat"]
    assert chats == list(range(len(chats)))
    assert len(chats) < sent

    metrics = await get_metrics(server.http)
    assert metrics["realtime_connections_total"] == READERS
    rooms = {r["room"]: r for r in (await api(server.http, "GET", "/api/rooms")).json()["rooms"]}
    assert rooms[room]["connections"] == READERS
