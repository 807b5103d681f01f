"""Several `roomcast serve` pods on one Redis behave as one hub (SPEC §3, §6).

Each test starts its own pods with a key prefix of its own on the shared Redis.
Presence of one user on two pods needs the same user id on both, which only
authenticated connections have: it runs across processes with tokens
(``--jwt-secret``), and with two hubs in this process, where two first
connections of one user can also be made to race.
"""

# Helpers take their time budget as an argument, in MS units, on purpose.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from roomcast.app import Hub
from roomcast.brokers.redis import RedisBroker
from tests.recording import RecordingConnection
from tests.redis_tools import attach, pod_flags, unique_prefix, welcomed
from tests.support import (
    MS,
    RECV_TIMEOUT,
    ServerProcess,
    api,
    assert_silent,
    dumps,
    eventually,
    fresh_room,
    recv,
    recv_until,
)

Client = Callable[..., Awaitable[ClientConnection]]


class Cluster:
    """Pods started together on one Redis with one key prefix."""

    def __init__(self, pods: list[ServerProcess], prefix: str) -> None:
        self.pods = pods
        self.prefix = prefix

    def channel(self, room: str) -> bytes:
        return f"{self.prefix}:room:{room}".encode()


@pytest.fixture
def cluster(serve: Callable[..., ServerProcess], redis_url: str) -> Callable[..., Cluster]:
    """Start ``n`` pods sharing one Redis and one prefix (in parallel)."""

    def start(n: int, *extra: str) -> Cluster:
        prefix = unique_prefix()
        pods = [serve(*pod_flags(redis_url, prefix, *extra), ready=False) for _ in range(n)]
        return Cluster([pod.wait_ready() for pod in pods], prefix)

    return start


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def join(client: Client, pod: ServerProcess, room: str | None = None) -> ClientConnection:
    """Connect to ``pod`` (joining ``room``), read the welcome; return the socket."""
    ws = await client(f"{pod.ws}/{room}" if room else pod.ws)
    welcome = await recv(ws)
    assert welcome["type"] == "system"
    assert welcome["data"]["event"] == "welcome"
    ws.user_id = welcome["data"]["user_id"]  # type: ignore[attr-defined]
    return ws


def user(ws: ClientConnection) -> str:
    user_id: str = ws.user_id  # type: ignore[attr-defined]
    return user_id


async def chats(ws: ClientConnection, count: int, timeout: float) -> list[dict[str, Any]]:
    """Receive until ``count`` chat messages arrived; return them in order."""
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(out) < count:
        msg = await recv(ws, max(0.0, deadline - loop.time()))
        assert msg["type"] != "error", msg
        if msg["type"] == "chat":
            out.append(msg)
    return out


async def get_json(pod: ServerProcess, path: str) -> Any:
    response = await api(pod.http, "GET", path)
    assert response.status_code == 200, response.text
    return response.json()


# -- messages ----------------------------------------------------------------------------


async def test_chat_reaches_the_room_on_every_pod_and_nobody_else(
    cluster: Callable[..., Cluster], client: Client, redis: Redis
) -> None:
    c = cluster(3)
    a, b, pod_c = c.pods
    room, other = fresh_room(), fresh_room()
    a1, b1, c1 = [await join(client, pod, room) for pod in (a, b, pod_c)]
    outsiders = [
        await join(client, pod_c, other),
        await join(client, b),
        await join(client, a),
    ]
    # Every pod with a member of the room listens to its channel; only C to the other.
    assert await redis.pubsub_numsub(c.channel(room), c.channel(other)) == [
        (c.channel(room), 3),
        (c.channel(other), 1),
    ]

    await a1.send(dumps({"type": "chat", "data": {"text": "hello"}}))
    got = [(await chats(ws, 1, 3000 * MS))[0] for ws in (a1, b1, c1)]
    first = got[0]
    assert first["room"] == room
    assert first["from"] == user(a1)
    assert first["data"] == {"text": "hello"}
    assert first["offset"] == 1
    assert got == [first, first, first]
    await asyncio.gather(*(assert_silent(ws, 300 * MS, type_="chat") for ws in outsiders))

    # The last member of a room on a pod leaves: that pod stops listening.
    await outsiders[0].close()
    await c1.close()

    async def released() -> bool:
        counts = dict(await redis.pubsub_numsub(c.channel(room), c.channel(other)))
        return counts == {c.channel(room): 2, c.channel(other): 0}

    await eventually(released)


async def test_every_member_sees_one_order(cluster: Callable[..., Cluster], client: Client) -> None:
    per_sender = 50
    c = cluster(3, "--history-size", "500")
    a, b, pod_c = c.pods
    room = fresh_room()
    senders = [await join(client, pod, room) for pod in (a, b, pod_c)]
    listeners = [*senders, await join(client, a, room), await join(client, pod_c, room)]

    async def send_all(ws: ClientConnection, tag: str) -> None:
        for i in range(per_sender):
            await ws.send(dumps({"type": "chat", "data": {"text": f"{tag}-{i}"}}))

    receiving = [asyncio.create_task(chats(ws, 3 * per_sender, 10000 * MS)) for ws in listeners]
    await asyncio.gather(*(send_all(ws, tag) for ws, tag in zip(senders, "abc", strict=True)))
    sequences = await asyncio.gather(*receiving)

    reference = sequences[0]
    assert [m["offset"] for m in reference] == list(range(1, 3 * per_sender + 1))
    for sequence in sequences[1:]:
        assert [m["id"] for m in sequence] == [m["id"] for m in reference]
        assert [m["offset"] for m in sequence] == [m["offset"] for m in reference]
    # Each sender's messages keep the order it sent them in; none is lost.
    for ws, tag in zip(senders, "abc", strict=True):
        mine = [m["data"]["text"] for m in reference if m["from"] == user(ws)]
        assert mine == [f"{tag}-{i}" for i in range(per_sender)]
    # The history, read from any pod, is that same order.
    for pod in c.pods:
        history = await get_json(pod, f"/api/rooms/{room}/history?limit=1000")
        assert [m["id"] for m in history["messages"]] == [m["id"] for m in reference]


async def test_global_publish_reaches_every_connection_on_every_pod(
    cluster: Callable[..., Cluster], client: Client
) -> None:
    c = cluster(3)
    room = fresh_room()
    everyone = []
    for pod in c.pods:
        everyone += [await join(client, pod, room), await join(client, pod)]
    everyone.append(await join(client, c.pods[2], fresh_room()))

    response = await api(
        c.pods[1].http, "POST", "/api/publish", json={"type": "notification", "data": {"n": 7}}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "offset" not in body

    for ws in everyone:
        got = await recv_until(ws, lambda m: m["type"] == "notification")
        assert got["id"] == body["id"]
        assert got["data"] == {"n": 7}
        assert got.get("room") is None
        assert "offset" not in got
    await asyncio.gather(*(assert_silent(ws, 200 * MS, type_="notification") for ws in everyone))


# -- rooms and presence ------------------------------------------------------------------


async def test_rooms_and_presence_answer_the_same_on_every_pod(
    cluster: Callable[..., Cluster], client: Client
) -> None:
    c = cluster(3)
    a, b, pod_c = c.pods
    room, other = fresh_room(), fresh_room()
    a1 = await join(client, a, room)
    a2 = await join(client, a, room)
    b1 = await join(client, b, room)
    c1 = await join(client, pod_c, other)
    await join(client, pod_c)  # in no room: counted nowhere

    # b1 came online on pod B: a1, on pod A, hears of it once.
    online = await recv_until(
        a1, lambda m: m["type"] == "presence" and m["data"]["user_id"] == user(b1)
    )
    assert online["data"]["status"] == "online"
    assert online["room"] == room

    local = {room: [2, 1, 0], other: [0, 0, 1]}
    cluster_counts = {room: 3, other: 1}

    async def rooms_agree() -> bool:
        for pod, want in zip(c.pods, range(3), strict=True):
            listed = {r["room"]: r for r in (await get_json(pod, "/api/rooms"))["rooms"]}
            for name in (room, other):
                entry = listed.get(name)
                if entry is None or entry != {
                    "room": name,
                    "connections": local[name][want],
                    "cluster_connections": cluster_counts[name],
                    "users": cluster_counts[name],
                }:
                    return False
        return True

    await eventually(rooms_agree)

    expected = {
        "room": room,
        "members": sorted(
            ({"user_id": user(ws), "status": "online", "connections": 1} for ws in (a1, a2, b1)),
            key=lambda m: str(m["user_id"]),
        ),
    }
    for pod in c.pods:
        assert await get_json(pod, f"/api/rooms/{room}/presence") == expected
    assert (await get_json(b, f"/api/rooms/{other}/presence"))["members"] == [
        {"user_id": user(c1), "status": "online", "connections": 1}
    ]

    # A status change on pod B shows on every pod; a departure on pod A too.
    await b1.send(dumps({"type": "presence", "data": {"status": "away"}}))
    away = await recv_until(a2, lambda m: m["type"] == "presence" and m["data"]["status"] == "away")
    assert away["data"]["user_id"] == user(b1)
    await a1.close()
    gone = await recv_until(
        b1, lambda m: m["type"] == "presence" and m["data"]["status"] == "offline"
    )
    assert gone["data"]["user_id"] == user(a1)
    for pod in c.pods:
        members = (await get_json(pod, f"/api/rooms/{room}/presence"))["members"]
        assert {m["user_id"]: m["status"] for m in members} == {
            user(a2): "online",
            user(b1): "away",
        }


@pytest.fixture
async def two_hubs(redis_url: str) -> AsyncIterator[tuple[Hub, Hub]]:
    """Two hubs in this process, each with its own RedisBroker, sharing a prefix: two pods."""
    prefix = unique_prefix()
    hubs = [Hub(broker=RedisBroker(redis_url, prefix=prefix, presence_ttl=5)) for _ in range(2)]
    for hub in hubs:
        await hub.start()
    try:
        yield hubs[0], hubs[1]
    finally:
        for hub in hubs:
            await hub.close()


async def test_presence_fires_once_per_user_across_pods(two_hubs: tuple[Hub, Hub]) -> None:
    hub1, hub2 = two_hubs
    room = fresh_room()
    bob = attach(hub1, room, user_id="bob")
    carol = attach(hub2, room, user_id="carol")
    await welcomed(bob, carol, within=RECV_TIMEOUT)

    async def heard(conn: RecordingConnection, event: tuple[str, str]) -> bool:
        return event in conn.presence()

    await eventually(lambda: heard(bob, ("carol", "online")))

    alice1 = attach(hub1, room, user_id="alice")
    await eventually(lambda: heard(carol, ("alice", "online")))
    alice2 = attach(hub2, room, user_id="alice")
    await welcomed(alice2, within=RECV_TIMEOUT)
    await asyncio.sleep(300 * MS)
    for watcher in (bob, carol):
        assert watcher.presence().count(("alice", "online")) == 1, watcher.presence()

    for hub in (hub1, hub2):
        members = await hub.presence(room)
        assert [(m.user_id, m.connections) for m in members] == [
            ("alice", 2),
            ("bob", 1),
            ("carol", 1),
        ]

    alice1.close()
    await asyncio.sleep(300 * MS)
    assert ("alice", "offline") not in bob.presence() + carol.presence()
    members = await hub2.presence(room)
    assert (members[0].user_id, members[0].connections) == ("alice", 1)

    alice2.close()
    await eventually(lambda: heard(bob, ("alice", "offline")))
    await eventually(lambda: heard(carol, ("alice", "offline")))
    await asyncio.sleep(200 * MS)
    for watcher in (bob, carol):
        assert watcher.presence().count(("alice", "offline")) == 1, watcher.presence()

    # Two first connections at once, one on each pod: still one "online".
    dave = [attach(hub1, room, user_id="dave"), attach(hub2, room, user_id="dave")]
    await welcomed(*dave, within=RECV_TIMEOUT)
    await eventually(lambda: heard(bob, ("dave", "online")))
    await asyncio.sleep(300 * MS)
    for watcher in (bob, carol):
        assert watcher.presence().count(("dave", "online")) == 1, watcher.presence()
    for hub in (hub1, hub2):
        counts = {m.user_id: m.connections for m in await hub.presence(room)}
        assert counts == {"bob": 1, "carol": 1, "dave": 2}


async def test_presence_fires_once_per_user_across_pods_with_tokens(
    cluster: Callable[..., Cluster], client: Client
) -> None:
    secret = "cluster-test-secret-0123456789abcdef"
    c = cluster(2, "--jwt-secret", secret)
    a, b = c.pods
    room = fresh_room()

    def token(sub: str) -> str:
        return jwt.encode({"sub": sub, "exp": int(time.time()) + 300}, secret, algorithm="HS256")

    async def connect(pod: ServerProcess, sub: str) -> ClientConnection:
        ws = await client(f"{pod.ws}/{room}?token={token(sub)}")
        welcome = await recv(ws)
        assert welcome["data"]["event"] == "welcome"
        assert welcome["data"]["user_id"] == sub
        return ws

    watchers = [await connect(a, "bob"), await connect(b, "carol")]
    await recv_until(
        watchers[0], lambda m: m["type"] == "presence" and m["data"]["user_id"] == "carol"
    )
    events: list[list[tuple[str, str]]] = [[], []]

    async def watch(ws: ClientConnection, seen: list[tuple[str, str]]) -> None:
        while True:
            msg = await recv(ws, 30000 * MS)
            if msg["type"] == "presence":
                seen.append((msg["data"]["user_id"], msg["data"]["status"]))

    tasks = [
        asyncio.create_task(watch(ws, seen)) for ws, seen in zip(watchers, events, strict=True)
    ]
    try:

        async def saw(event: tuple[str, str]) -> bool:
            return all(event in seen for seen in events)

        alice_a = await connect(a, "alice")
        await eventually(lambda: saw(("alice", "online")))
        alice_b = await connect(b, "alice")

        async def two_connections() -> bool:
            for pod in c.pods:
                members = (await get_json(pod, f"/api/rooms/{room}/presence"))["members"]
                if {m["user_id"]: m["connections"] for m in members} != {
                    "alice": 2,
                    "bob": 1,
                    "carol": 1,
                }:
                    return False
            return True

        await eventually(two_connections)
        await alice_a.close()
        await asyncio.sleep(300 * MS)
        assert [seen.count(("alice", "online")) for seen in events] == [1, 1]
        assert [seen.count(("alice", "offline")) for seen in events] == [0, 0]

        await alice_b.close()
        await eventually(lambda: saw(("alice", "offline")))
        await asyncio.sleep(200 * MS)
        assert [seen.count(("alice", "offline")) for seen in events] == [1, 1]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
