"""Exact recovery on reconnect, over real sockets (SPEC §3.7, §3.8, §6).

A client that reconnects with ``last_id`` (in the URL or in a ``join``) must get
every retained message of the room published after it, in order, then the live
ones: no gap, no duplicate, even while others publish and across pods. When
``last_id`` is no longer retained, ``recovered`` is false and the welcome's
``epoch``/``offset`` tell the client where the room is now.

Each test starts its own servers; Redis tests use a key prefix of their own on the
shared Redis, and the test that wipes Redis runs a redis-server of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from redis import Redis
from websockets.asyncio.client import ClientConnection

from tests.redis_support import RedisServer
from tests.support import (
    MS,
    ServerProcess,
    api,
    assert_silent,
    dumps,
    fresh_room,
    recv,
    recv_until,
)

Connect = Callable[..., Awaitable[ClientConnection]]
Serve = Callable[..., ServerProcess]
Msg = dict[str, Any]

MODES = ["native", "asgi"]
BROKERS = ["memory", "redis"]


# -- helpers -----------------------------------------------------------------------------


def pod_flags(url: str, prefix: str, *extra: str) -> tuple[str, ...]:
    """Flags of one pod of a test cluster on ``url``, with a key prefix of its test."""
    return ("--redis-url", url, "--redis-prefix", prefix, "--api-insecure", "--rate", "0", *extra)


def unique_prefix() -> str:
    """A Redis key prefix no other test uses."""
    return f"rctest-recovery-{secrets.token_hex(4)}"


def pods(serve: Serve, broker: str, redis_url: str, *extra: str, n: int = 1) -> list[ServerProcess]:
    """Start ``n`` pods: in-memory (n must be 1) or sharing a fresh prefix on Redis."""
    if broker == "memory":
        assert n == 1
        return [serve("--rate", "0", "--api-insecure", *extra)]
    prefix = unique_prefix()
    return [serve(*pod_flags(redis_url, prefix, *extra)) for _ in range(n)]


async def welcome(ws: ClientConnection) -> Msg:
    """The first message, which must be the welcome; return its data."""
    first = await recv(ws)
    assert first["type"] == "system", first
    assert first["data"]["event"] == "welcome", first
    return dict(first["data"])


async def joined(ws: ClientConnection, room: str) -> Msg:
    """Read up to the ``joined`` reply for ``room``; return its data."""
    reply = await recv_until(
        ws, lambda m: m["type"] == "system" and m["data"].get("event") in {"joined", "welcome"}
    )
    assert reply["data"]["event"] == "joined", reply
    assert reply["data"]["room"] == room, reply
    return dict(reply["data"])


async def retained(ws: ClientConnection, n: int, within: float = 5000 * MS) -> list[Msg]:
    """The next ``n`` messages carrying an offset (others, such as presence, skipped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    out: list[Msg] = []
    while len(out) < n:
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError(f"{len(out)} of {n} retained messages: {out[-3:]}")
        msg = await recv(ws, left)
        if "offset" in msg:
            out.append(msg)
    return out


async def no_more_retained(ws: ClientConnection, duration: float = 300 * MS) -> None:
    """Assert no message with an offset arrives within ``duration``."""
    await assert_silent(ws, duration, where=lambda msg: "offset" in msg)


async def say(ws: ClientConnection, **data: Any) -> None:
    await ws.send(dumps({"type": "chat", "data": data}))


async def notify(server: ServerProcess, room: str | None, **data: Any) -> Msg:
    body: Msg = {"type": "notification", "data": data}
    if room is not None:
        body["room"] = room
    response = await api(server.http, "POST", "/api/publish", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def publish_mixed(
    writer: ClientConnection, server: ServerProcess, room: str, n: int
) -> list[Msg]:
    """Publish ``n`` messages (chat by ``writer`` and API notifications, alternating).

    Returns them as ``writer`` (a member of ``room``) received them.
    """
    got: list[Msg] = []
    for i in range(n):
        if i % 2 == 0:
            await say(writer, i=i)
        else:
            await notify(server, room, i=i)
        got += await retained(writer, 1)  # one at a time: the order is known
    assert [m["data"]["i"] for m in got] == list(range(n)), got
    return got


def offsets(msgs: list[Msg]) -> list[int]:
    return [m["offset"] for m in msgs]


async def abort(ws: ClientConnection) -> None:
    """Drop the TCP connection without a close handshake."""
    ws.transport.abort()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.wait_closed(), 2000 * MS)


# -- 1, 2: exact replay on one pod ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_reconnect_with_last_id_replays_exactly_what_was_missed(
    serve: Serve, client: Connect, mode: str
) -> None:
    server = serve("--rate", "0", "--api-insecure", "--ws", mode)
    room = fresh_room()
    a = await client(f"{server.ws}/{room}")
    first_welcome = await welcome(a)
    assert first_welcome["recovered"] is False
    epoch = first_welcome["epoch"]
    assert isinstance(epoch, str) and epoch
    assert first_welcome["offset"] == 0
    b = await client(f"{server.ws}/{room}")
    await welcome(b)

    await say(b, i="seen")
    (seen,) = await retained(a, 1)
    (seen_by_b,) = await retained(b, 1)
    assert seen == seen_by_b
    assert seen["offset"] == 1
    await a.close()

    missed = await publish_mixed(b, server, room, 8)
    assert offsets(missed) == list(range(2, 10))
    assert {m["type"] for m in missed} == {"chat", "notification"}

    a = await client(f"{server.ws}/{room}?last_id={seen['id']}")
    back = await welcome(a)
    assert back["recovered"] is True
    assert back["epoch"] == epoch
    assert back["offset"] == 9
    # The replay comes right after the welcome: exactly the missed messages, as sent.
    replay = [await recv(a) for _ in missed]
    assert replay == missed
    # Then live, continuing at the next offset, with nothing repeated.
    await say(b, i="live")
    (live,) = await retained(a, 1)
    assert live["offset"] == 10
    assert live["data"] == {"i": "live"}
    await no_more_retained(a)


@pytest.mark.parametrize("mode", MODES)
async def test_join_with_last_id_replays_exactly_what_was_missed(
    serve: Serve, client: Connect, mode: str
) -> None:
    server = serve("--rate", "0", "--api-insecure", "--ws", mode)
    room = fresh_room()
    b = await client(f"{server.ws}/{room}")
    epoch = (await welcome(b))["epoch"]
    a = await client(f"{server.ws}/{room}")
    await welcome(a)
    await say(b, i="seen")
    (seen,) = await retained(a, 1)
    await retained(b, 1)
    await a.close()

    missed = await publish_mixed(b, server, room, 6)

    a = await client(server.ws)
    hello = await welcome(a)
    assert hello["rooms"] == []
    await a.send(dumps({"type": "join", "room": room, "last_id": seen["id"], "ref": "j1"}))
    reply = await joined(a, room)
    assert reply["recovered"] is True
    assert reply["epoch"] == epoch
    assert reply["offset"] == 7
    assert reply["ref"] == "j1"
    replay = [await recv(a) for _ in missed]
    assert replay == missed
    await notify(server, room, i="live")
    (live,) = await retained(a, 1)
    assert live["offset"] == 8
    await no_more_retained(a)


async def test_join_with_last_id_while_in_another_room(serve: Serve, client: Connect) -> None:
    # The replay of one room does not disturb the live messages of the other.
    server = serve("--rate", "0", "--api-insecure")
    room, lobby = fresh_room(), fresh_room("lobby")
    b = await client(f"{server.ws}/{room}")
    await welcome(b)
    await notify(server, room, i="seen")
    (seen,) = await retained(b, 1)
    missed = await publish_mixed(b, server, room, 4)

    a = await client(f"{server.ws}/{lobby}")
    await welcome(a)
    await notify(server, lobby, k=1)
    (lobby_1,) = await retained(a, 1)
    await a.send(dumps({"type": "join", "room": room, "last_id": seen["id"]}))
    await notify(server, lobby, k=2)  # may arrive before, during or after the join
    frames: list[Msg] = []
    while len([m for m in frames if "offset" in m]) < len(missed) + 1:
        frames.append(await recv(a))
    replies = [i for i, m in enumerate(frames) if m["data"].get("event") == "joined"]
    assert len(replies) == 1, frames
    reply = frames[replies[0]]["data"]
    assert reply["recovered"] is True
    in_room = [m for m in frames if "offset" in m and m["room"] == room]
    in_lobby = [m for m in frames if "offset" in m and m["room"] == lobby]
    assert in_room == missed
    assert frames.index(in_room[0]) > replies[0]  # the replay follows the reply
    assert offsets(in_lobby) == [lobby_1["offset"] + 1]
    await no_more_retained(a)


# -- 3: reconnect storms while someone publishes -------------------------------------------


class Subscriber:
    """A client that keeps reconnecting with ``last_id``, alternating between pods."""

    def __init__(self, client: Connect, servers: list[ServerProcess], room: str, seed: int):
        self.client = client
        self.servers = servers
        self.room = room
        self.rng = random.Random(seed)
        self.seed = seed
        self.offsets: list[int] = []
        self.last_id: str | None = None
        self.epoch: str | None = None
        self.ws: ClientConnection | None = None
        self.connects = 0

    def _check(self, data: Msg) -> None:
        where = f"(seed {self.seed}, connect {self.connects})"
        if self.last_id is None:
            assert data["recovered"] is False, where
            self.epoch = data["epoch"]
        else:
            assert data["recovered"] is True, f"{where}: {data}"
            assert data["epoch"] == self.epoch, where
        seen = self.offsets[-1] if self.offsets else 0
        assert data["offset"] >= seen, f"{where}: {data} after offset {seen}"

    async def connect(self) -> None:
        server = self.servers[self.connects % len(self.servers)]
        self.connects += 1
        query = f"?last_id={self.last_id}" if self.last_id else ""
        if self.rng.random() < 0.5:
            ws = await self.client(f"{server.ws}/{self.room}{query}")
            self._check(await welcome(ws))
        else:
            ws = await self.client(server.ws)
            await welcome(ws)
            join: Msg = {"type": "join", "room": self.room}
            if self.last_id:
                join["last_id"] = self.last_id
            await ws.send(dumps(join))
            self._check(await joined(ws, self.room))
        self.ws = ws

    def _take(self, msg: Msg) -> None:
        if "offset" in msg:
            assert msg["room"] == self.room, msg
            self.offsets.append(msg["offset"])
            self.last_id = msg["id"]

    async def read_for(self, seconds: float) -> None:
        assert self.ws is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                self._take(await recv(self.ws, left))
            except TimeoutError:
                return

    async def read_until(self, offset: int, within: float) -> None:
        assert self.ws is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not self.offsets or self.offsets[-1] < offset:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"stuck at offset {self.offsets[-1:]}, expected {offset}")
            self._take(await recv(self.ws, left))

    async def drop(self) -> None:
        assert self.ws is not None
        ws, self.ws = self.ws, None
        if self.rng.random() < 0.4:
            await abort(ws)
        else:
            await ws.close()


async def reconnect_storm(
    client: Connect,
    publish_to: ServerProcess,
    subscribe_to: list[ServerProcess],
    *,
    max_messages: int = 1500,
    max_seconds: float = 3.0,
) -> None:
    # ROOMCAST_TEST_SEED replays a failed run (its seed is in the failure message).
    seed = int(os.environ.get("ROOMCAST_TEST_SEED") or int.from_bytes(os.urandom(4), "big"))
    rng = random.Random(seed)
    room = fresh_room("storm")
    publisher = await client(f"{publish_to.ws}/{room}")
    await welcome(publisher)
    sub = Subscriber(client, subscribe_to, room, seed)
    await sub.connect()

    sent = 0
    done = asyncio.Event()

    async def publish() -> None:
        # About 400 messages/s, bounded by count and time; stops by itself.
        nonlocal sent
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_seconds
        while sent < max_messages and loop.time() < deadline and not done.is_set():
            for _ in range(2):
                await say(publisher, n=sent)
                sent += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(publish())
    try:
        # A subscriber dropped before its first message would reconnect without a
        # last_id (nothing to recover from), and rightly miss what came before.
        await sub.read_until(1, 5000 * MS)
        cycles = rng.randint(15, 30)
        started = time.monotonic()
        for _ in range(cycles):
            if task.done() or time.monotonic() - started > max_seconds:
                break
            await sub.read_for(rng.uniform(0, 0.1))
            await sub.drop()
            await asyncio.sleep(rng.uniform(0, 0.05))
            await sub.connect()
        done.set()
        await task
    finally:
        done.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sub.connects >= 10, f"too few reconnects to mean anything (seed {seed})"
    assert sent >= 200, f"too few messages to mean anything (seed {seed})"
    await sub.read_until(sent, 8000 * MS)
    await no_more_retained(sub.ws)  # type: ignore[arg-type]
    where = f"seed {seed}, {sub.connects} connects, {sent} messages"
    assert len(sub.offsets) == len(set(sub.offsets)), f"duplicates ({where})"
    assert sub.offsets == list(range(1, sent + 1)), f"gap or disorder ({where})"


@pytest.mark.parametrize("mode", MODES)
async def test_reconnect_storm_on_one_pod_loses_and_repeats_nothing(
    serve: Serve, client: Connect, mode: str
) -> None:
    server = serve("--rate", "0", "--history-size", "2000", "--ws", mode)
    await reconnect_storm(client, server, [server])


async def test_reconnect_storm_across_two_pods_loses_and_repeats_nothing(
    serve: Serve, client: Connect, redis_url: str
) -> None:
    a, b = pods(serve, "redis", redis_url, "--history-size", "2000", n=2)
    await reconnect_storm(client, a, [a, b])


# -- 4: recovery across pods ---------------------------------------------------------------


async def test_recovery_on_another_pod_replays_exactly(
    serve: Serve, client: Connect, redis_url: str
) -> None:
    a, b = pods(serve, "redis", redis_url, n=2)
    room = fresh_room()
    x = await client(f"{a.ws}/{room}")
    epoch = (await welcome(x))["epoch"]
    writer = await client(f"{b.ws}/{room}")
    writer_welcome = await welcome(writer)
    assert writer_welcome["epoch"] == epoch  # one history, whatever the pod
    await say(writer, i="seen")
    (seen,) = await retained(x, 1)
    await retained(writer, 1)
    await x.close()

    # Chats through pod B, notifications through pod A's API.
    missed = await publish_mixed(writer, a, room, 8)
    assert offsets(missed) == list(range(2, 10))

    x = await client(f"{b.ws}/{room}?last_id={seen['id']}")
    back = await welcome(x)
    assert back["recovered"] is True
    assert back["epoch"] == epoch
    assert back["offset"] == 9
    assert [await recv(x) for _ in missed] == missed
    await notify(a, room, i="live")
    (live,) = await retained(x, 1)
    assert live["offset"] == 10
    await no_more_retained(x)


# -- 5: when last_id is no longer retained -------------------------------------------------


@pytest.mark.parametrize("broker", BROKERS)
async def test_unknown_last_id_is_not_recovered(
    serve: Serve, client: Connect, redis_url: str, broker: str
) -> None:
    (server,) = pods(serve, broker, redis_url)
    room = fresh_room()
    b = await client(f"{server.ws}/{room}")
    epoch = (await welcome(b))["epoch"]
    for i in range(3):
        await notify(server, room, i=i)
    await retained(b, 3)

    a = await client(f"{server.ws}/{room}?last_id={uuid.uuid4()}")
    data = await welcome(a)
    assert data["recovered"] is False
    assert data["epoch"] == epoch  # the history was not lost, only the id is unknown
    assert data["offset"] == 3
    # No replay: the first retained message it gets is the next live one.
    await notify(server, room, i="live")
    (live,) = await retained(a, 1)
    assert live["offset"] == 4
    assert live["data"] == {"i": "live"}

    # Same through join.
    c = await client(server.ws)
    await welcome(c)
    await c.send(dumps({"type": "join", "room": room, "last_id": str(uuid.uuid4())}))
    reply = await joined(c, room)
    assert reply["recovered"] is False
    assert reply["epoch"] == epoch
    assert reply["offset"] == 4
    await no_more_retained(c)

    # An id retained in another room is unknown in this one.
    other = fresh_room()
    elsewhere = await notify(server, other, i="elsewhere")
    d = await client(f"{server.ws}/{room}?last_id={elsewhere['id']}")
    data = await welcome(d)
    assert data["recovered"] is False
    assert data["epoch"] == epoch
    await no_more_retained(d)


@pytest.mark.parametrize("broker", BROKERS)
async def test_evicted_last_id_is_not_recovered(
    serve: Serve, client: Connect, redis_url: str, broker: str
) -> None:
    (server,) = pods(serve, broker, redis_url, "--history-size", "5")
    room = fresh_room()
    b = await client(f"{server.ws}/{room}")
    epoch = (await welcome(b))["epoch"]
    a = await client(f"{server.ws}/{room}")
    await welcome(a)
    await notify(server, room, i="seen")
    (seen,) = await retained(a, 1)
    await retained(b, 1)
    await a.close()
    missed = await publish_mixed(b, server, room, 11)
    assert missed[-1]["offset"] == 12

    a = await client(f"{server.ws}/{room}?last_id={seen['id']}")
    data = await welcome(a)
    assert data["recovered"] is False
    assert data["epoch"] == epoch  # evicted, not lost: same history, same epoch
    assert data["offset"] == 12
    await notify(server, room, i="live")
    (live,) = await retained(a, 1)
    assert live["offset"] == 13

    # A last_id still retained (the oldest of the 5 kept) recovers exactly.
    history = (await api(server.http, "GET", f"/api/rooms/{room}/history")).json()
    kept = history["messages"]
    assert offsets(kept) == [9, 10, 11, 12, 13]
    c = await client(f"{server.ws}/{room}?last_id={kept[0]['id']}")
    recovered = await welcome(c)
    assert recovered["recovered"] is True
    assert [await recv(c) for _ in kept[1:]] == kept[1:]


@pytest.mark.parametrize("broker", BROKERS)
async def test_expired_history_is_not_recovered_and_restarts(
    serve: Serve, client: Connect, redis_url: str, broker: str
) -> None:
    (server,) = pods(serve, broker, redis_url, "--history-ttl", "1")
    room = fresh_room()
    a = await client(f"{server.ws}/{room}")
    old_epoch = (await welcome(a))["epoch"]
    for i in range(3):
        await notify(server, room, i=i)
    got = await retained(a, 3)
    await a.close()

    await asyncio.sleep(1600 * MS)  # idle past the TTL: the history is gone

    a = await client(f"{server.ws}/{room}?last_id={got[-1]['id']}")
    data = await welcome(a)
    assert data["recovered"] is False
    # The history was lost, so it is a new incarnation: new epoch, offsets from 0.
    assert data["epoch"] != old_epoch
    assert data["offset"] == 0
    new_epoch = data["epoch"]
    await notify(server, room, i="after")
    (after,) = await retained(a, 1)
    assert after["offset"] == 1
    # Whoever connects now sees the same new epoch.
    c = await client(f"{server.ws}/{room}")
    fresh = await welcome(c)
    assert fresh["epoch"] == new_epoch
    assert fresh["offset"] == 1
    history = (await api(server.http, "GET", f"/api/rooms/{room}/history")).json()
    assert history["epoch"] == new_epoch
    assert [m["id"] for m in history["messages"]] == [after["id"]]


async def test_wiped_redis_history_is_not_recovered_and_restarts(
    serve: Serve, client: Connect, redis_server: RedisServer
) -> None:
    server = serve(*pod_flags(redis_server.url, unique_prefix()))
    room = fresh_room()
    a = await client(f"{server.ws}/{room}")
    old_epoch = (await welcome(a))["epoch"]
    for i in range(3):
        await notify(server, room, i=i)
    got = await retained(a, 3)
    await a.close()

    with Redis.from_url(redis_server.url) as redis:  # this test's own redis-server
        redis.flushall()

    a = await client(f"{server.ws}/{room}?last_id={got[-1]['id']}")
    data = await welcome(a)
    assert data["recovered"] is False
    assert data["epoch"] != old_epoch
    assert data["offset"] == 0
    await notify(server, room, i="after")
    (after,) = await retained(a, 1)
    assert after["offset"] == 1
    history = (await api(server.http, "GET", f"/api/rooms/{room}/history")).json()
    assert history["epoch"] == data["epoch"]
    assert [m["id"] for m in history["messages"]] == [after["id"]]


# -- 6: a large gap, read in pages ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_large_gap_is_replayed_in_full_one_message_per_frame(
    serve: Serve, client: Connect, mode: str
) -> None:
    server = serve(
        "--rate", "0", "--api-insecure", "--send-queue", "16", "--history-size", "200",
        "--ws", mode,
    )  # fmt: skip
    room = fresh_room()
    a = await client(f"{server.ws}/{room}")
    await welcome(a)
    writer = await client(f"{server.ws}/{room}")
    await welcome(writer)
    await say(writer, i="seen")
    (seen,) = await retained(a, 1)
    await retained(writer, 1)
    await abort(a)

    # 150 messages of ~4 KB: far more than the send queue and a page of history.
    pad = "x" * 4000
    async with httpx.AsyncClient(base_url=server.http, timeout=5000 * MS) as http:
        for i in range(150):
            body = {"room": room, "type": "notification", "data": {"i": i, "pad": pad}}
            response = await http.post("/api/publish", json=body)
            assert response.status_code == 200
    assert (await retained(writer, 150))[-1]["offset"] == 151

    a = await client(f"{server.ws}/{room}?last_id={seen['id']}")
    back = await welcome(a)
    assert back["recovered"] is True
    assert back["offset"] == 151
    # recv() returns one frame; each must hold exactly one message, in order.
    replay = [await recv(a) for _ in range(150)]
    assert offsets(replay) == list(range(2, 152))
    assert [m["data"]["i"] for m in replay] == list(range(150))
    # Still open and served.
    await a.send(dumps({"type": "ping", "data": {"probe": 1}}))
    pong = await recv_until(a, lambda m: m["type"] == "pong")
    assert pong["data"] == {"probe": 1}
    await no_more_retained(a)


# -- 7: offsets while connected ---------------------------------------------------------------


@pytest.mark.parametrize("broker", BROKERS)
async def test_offsets_grow_by_one_per_room_message_whatever_its_origin(
    serve: Serve, client: Connect, redis_url: str, broker: str
) -> None:
    servers = pods(serve, broker, redis_url, n=2 if broker == "redis" else 1)
    first, last = servers[0], servers[-1]
    room = fresh_room()
    m = await client(f"{first.ws}/{room}")
    start = (await welcome(m))["offset"]
    assert start == 0
    o = await client(f"{last.ws}/{room}")
    await welcome(o)

    def away(x: Msg) -> bool:
        return x["type"] == "presence" and x["data"]["status"] == "away"

    def everyone(x: Msg) -> bool:
        return x["type"] == "notification" and "room" not in x

    seen: list[Msg] = []
    unnumbered: list[Msg] = []

    async def collect(n: int, *extra: Callable[[Msg], bool]) -> None:
        while len(seen) < n or not all(any(map(f, unnumbered)) for f in extra):
            msg = await recv(m)
            (seen if "offset" in msg else unnumbered).append(msg)

    # Each step waits for the previous one, so the room's order is known.
    await say(m, who="m")
    await say(o, who="o")
    await collect(2)
    answers = [await notify(first, room, who="api")]
    system = await api(
        last.http, "POST", "/api/publish", json={"room": room, "type": "system", "data": {}}
    )
    assert system.status_code == 200
    answers.append(system.json())
    await collect(4)
    await notify(last, None, who="everyone")  # global: not retained, no offset
    await o.send(dumps({"type": "presence", "data": {"status": "away"}}))
    await say(o, who="o-again")
    await collect(5, away, everyone)
    assert offsets(seen) == [1, 2, 3, 4, 5]
    assert [x["type"] for x in seen] == ["chat", "chat", "notification", "system", "chat"]
    assert [x["id"] for x in seen[2:4]] == [a["id"] for a in answers]
    assert [x["offset"] for x in seen[2:4]] == [a["offset"] for a in answers]
    # Presence and messages to everyone are not retained: no offset.
    assert all("offset" not in x for x in unnumbered)
    # Every member sees the same order: the history's.
    assert [x["id"] for x in await retained(o, 5)] == [x["id"] for x in seen]
    await assert_silent(m, 200 * MS, type_="chat")


async def test_offsets_are_per_room(serve: Serve, client: Connect) -> None:
    server = serve("--rate", "0", "--api-insecure")
    r1, r2 = fresh_room(), fresh_room()
    a = await client(f"{server.ws}/{r1}")
    await welcome(a)
    await a.send(dumps({"type": "join", "room": r2}))
    await joined(a, r2)
    for i in range(6):
        await notify(server, r1 if i % 3 else r2, i=i)
    got = await retained(a, 6)
    assert [(x["room"], x["offset"]) for x in got] == [
        (r2, 1), (r1, 1), (r1, 2), (r2, 2), (r1, 3), (r1, 4),
    ]  # fmt: skip


async def test_dropping_mid_replay_and_recovering_again_loses_nothing(
    serve: Serve, client: Connect
) -> None:
    # A connection dropped in the middle of its replay recovers from the last
    # message it actually received: in the end, every offset exactly once.
    server = serve("--rate", "0", "--api-insecure", "--history-size", "500")
    room = fresh_room()
    sub = await client(f"{server.ws}/{room}")
    await welcome(sub)
    writer = await client(f"{server.ws}/{room}")
    await welcome(writer)
    for i in range(300):
        await say(writer, i=i)
    await retained(writer, 300)
    got = await retained(sub, 1)
    await abort(sub)
    for take in (37, 100, 0, 162):
        ws = await client(f"{server.ws}/{room}?last_id={got[-1]['id']}")
        data = await welcome(ws)
        assert data["recovered"] is True
        assert data["offset"] == 300
        got += [await recv(ws) for _ in range(take)]
        await abort(ws)
    assert offsets(got) == list(range(1, 301))
    assert [m["data"]["i"] for m in got] == list(range(300))


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_quick_reconnects_to_the_same_pod_stay_live(
    serve: Serve, client: Connect, redis_url: str, how: str
) -> None:
    # The subscriber is pod B's only member of the room: each disconnect makes B
    # leave the room's channel, each reconnect join it again, back to back. After
    # every reconnect a message published on pod A must still arrive live.
    a, b = pods(serve, "redis", redis_url, n=2)
    room = fresh_room()
    ws = await client(f"{b.ws}/{room}")
    epoch = (await welcome(ws))["epoch"]
    got: list[Msg] = []
    for cycle in range(20):
        await notify(a, room, cycle=cycle)
        got += await retained(ws, 1, 3000 * MS)
        if how == "abort":
            await abort(ws)
        else:
            await ws.close()
        ws = await client(f"{b.ws}/{room}?last_id={got[-1]['id']}")
        data = await welcome(ws)
        assert data["recovered"] is True, (cycle, data)
        assert data["epoch"] == epoch
    await notify(a, room, cycle="last")
    got += await retained(ws, 1, 3000 * MS)
    assert offsets(got) == list(range(1, 22))


async def test_frames_sent_while_recovering_are_answered_after_the_replay(
    serve: Serve, client: Connect
) -> None:
    # The welcome is the first frame; the client's own frames, sent before it
    # arrived, are handled once the replay is out, so nothing cuts into it.
    server = serve("--rate", "0", "--api-insecure")
    room = fresh_room()
    writer = await client(f"{server.ws}/{room}")
    await welcome(writer)
    await say(writer, i="seen")
    (seen,) = await retained(writer, 1)
    for i in range(60):
        await say(writer, i=i)
    missed = await retained(writer, 60)

    ws = await client(f"{server.ws}/{room}?last_id={seen['id']}")
    await ws.send(dumps({"type": "ping", "data": {"probe": 1}}))
    await say(ws, i="mine")
    data = await welcome(ws)
    assert data["recovered"] is True
    assert [await recv(ws) for _ in missed] == missed
    rest = [await recv(ws) for _ in range(3)]
    assert {m["type"] for m in rest} == {"presence", "pong", "chat"}
    (mine,) = [m for m in rest if m["type"] == "chat"]
    assert mine["offset"] == 62
    assert mine["data"] == {"i": "mine"}


async def test_join_of_a_room_already_joined_still_carries_the_epoch(
    serve: Serve, client: Connect
) -> None:
    server = serve("--rate", "0", "--api-insecure")
    room = fresh_room()
    ws = await client(f"{server.ws}/{room}")
    epoch = (await welcome(ws))["epoch"]
    await notify(server, room, i=0)
    (first,) = await retained(ws, 1)
    await ws.send(dumps({"type": "join", "room": room, "last_id": first["id"]}))
    reply = await joined(ws, room)
    assert reply["epoch"] == epoch
    assert isinstance(reply.get("offset"), int)


async def test_member_rejoining_with_last_id_gets_the_replay_once(
    serve: Serve, client: Connect
) -> None:
    # A member that saw an offset gap joins its own room again with last_id: it
    # receives every retained message after last_id, once, then live ones, and
    # its presence is not announced again.
    server = serve("--rate", "0", "--api-insecure")
    room = fresh_room()
    ws = await client(f"{server.ws}/{room}")
    await welcome(ws)
    for i in range(4):
        await notify(server, room, i=i)
    got = await retained(ws, 4)
    await ws.send(dumps({"type": "join", "room": room, "last_id": got[0]["id"]}))
    reply = await joined(ws, room)
    assert reply["recovered"] is True
    replay = await retained(ws, 3)
    assert [m["id"] for m in replay] == [m["id"] for m in got[1:]]
    await notify(server, room, i=4)
    (live,) = await retained(ws, 1)
    assert live["offset"] == got[-1]["offset"] + 1
    await assert_silent(ws, 300 * MS, "presence")
