"""Failure drills: Redis stops, a pod dies, a subscriber goes deaf (SPEC §6).

Each drill runs real `roomcast serve` pods. Drills that stop Redis or cut its
traffic use a `redis-server` of their own (``redis_server``); the rest share the
session's Redis with a key prefix of their own.
"""

# Helpers take their time budget as an argument, in MS units, on purpose.

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.brokers.pods import Inbox, Serve, metric, readyz, start_pods, wait_all_ready
from tests.redis_support import RedisServer
from tests.redis_tools import RedisProxy, unique_prefix
from tests.support import MS, api, eventually, fresh_room, until


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[RedisProxy]:
    deaf = RedisProxy(redis_server.port).start()
    yield deaf
    deaf.stop()


# -- Redis goes away, then comes back ------------------------------------------------------


async def test_redis_outage_degrades_to_local_delivery_and_recovers(
    serve: Serve, redis_server: RedisServer, inbox: Callable[..., Awaitable[Inbox]]
) -> None:
    a, b = start_pods(serve, redis_server.url, redis_server.url)
    pids = (a.pid, b.pid)
    await wait_all_ready([a, b], 200, 3000 * MS)
    room = fresh_room()
    a1, a2 = await inbox(a, room), await inbox(a, room)
    b1, b2 = await inbox(b, room), await inbox(b, room)
    everyone = [a1, a2, b1, b2]

    await a1.send_chat("before")
    assert (await b1.chat("before"))["offset"] == 1
    for pod in (a, b):
        assert await metric(pod, "realtime_redis_publish_errors_total") == 0

    redis_server.stop()

    # Each pod keeps serving its own members at once, without an offset.
    started = time.monotonic()
    await a1.send_chat("down-a")
    await b2.send_chat("down-b")
    for box, text in ((a1, "down-a"), (a2, "down-a"), (b1, "down-b"), (b2, "down-b")):
        got = await box.chat(text, 1000 * MS)
        assert "offset" not in got
    assert time.monotonic() - started < 1.5
    assert (await a2.chat("down-a"))["from"] == a1.user_id

    await wait_all_ready([a, b], 503, 5000 * MS)
    for pod in (a, b):
        assert await metric(pod, "realtime_redis_publish_errors_total") >= 1
        assert (await api(pod.http, "GET", "/healthz")).status_code == 200
    # Joining another room meanwhile works too (its subscription is made later).
    late_room = fresh_room()
    a3, b3 = await asyncio.gather(inbox(a, late_room), inbox(b, late_room))

    redis_server.start()  # same port
    restarted = time.monotonic()
    await wait_all_ready([a, b], 200, 10000 * MS)

    # Cross-pod delivery resumes, through the history again (offsets restart at 1).
    async def crossed() -> dict[str, Any] | None:
        text = f"after-{time.monotonic():.3f}"
        await a1.send_chat(text)
        with contextlib.suppress(TimeoutError):
            return await b1.chat(text, 300 * MS)
        return None

    resumed = await eventually(crossed, 10000 * MS - (time.monotonic() - restarted), 0)
    assert time.monotonic() - restarted < 10.0
    assert resumed["offset"] >= 1
    for pod in (a, b):
        assert await metric(pod, "realtime_redis_reconnects_total") >= 1
        assert pod.proc.poll() is None
    assert (a.pid, b.pid) == pids

    # The room joined during the outage was subscribed on reconnect, on both pods.
    await b3.send_chat("late")
    assert "offset" in await a3.chat("late")

    # Presence written back by each pod's heartbeats: the restarted Redis knows everyone.
    async def everyone_present() -> bool:
        for pod in (a, b):
            response = await api(pod.http, "GET", f"/api/rooms/{room}/presence")
            if {m["user_id"] for m in response.json()["members"]} != {
                box.user_id for box in everyone
            }:
                return False
        return True

    await eventually(everyone_present, 3000 * MS)

    # Nothing degraded reached the other pod; no error reached anyone; nobody dropped.
    assert "down-a" not in b1.texts() + b2.texts()
    assert "down-b" not in a1.texts() + a2.texts()
    for box in [*everyone, a3, b3]:
        assert box.errors() == []
        assert not box.closed


async def test_publish_while_redis_is_down_comes_back_to_the_sender(
    serve: Serve, redis_server: RedisServer, inbox: Callable[..., Awaitable[Inbox]]
) -> None:
    (pod,) = start_pods(serve, redis_server.url)
    room = fresh_room()
    alice = await inbox(pod, room)
    redis_server.kill()  # no goodbye to the pod

    await alice.send_chat("anyone?", ref="q1")
    got = await alice.chat("anyone?", 1000 * MS)
    assert got["from"] == alice.user_id
    assert got["room"] == room
    assert "offset" not in got
    # The ack says it was delivered but not stored.
    ack = await alice.wait_for(lambda m: m["data"].get("event") == "published", 1000 * MS)
    assert ack["data"] == {
        "event": "published",
        "ref": "q1",
        "room": room,
        "id": got["id"],
        "stored": False,
    }

    response = await api(
        pod.http, "POST", "/api/publish", json={"room": room, "type": "notification", "data": {}}
    )
    assert response.status_code == 200, response.text
    assert "offset" not in response.json()
    note = await alice.wait_for(lambda m: m["type"] == "notification", 1000 * MS)
    assert note["id"] == response.json()["id"]

    await asyncio.sleep(200 * MS)
    assert alice.errors() == []
    assert not alice.closed
    assert pod.proc.poll() is None
    assert await metric(pod, "realtime_redis_publish_errors_total") >= 2


async def test_pod_started_while_redis_is_down_becomes_ready_when_it_comes_up(
    serve: Serve, redis_server: RedisServer, inbox: Callable[..., Awaitable[Inbox]]
) -> None:
    redis_server.stop()
    prefix = unique_prefix()
    (late,) = start_pods(serve, redis_server.url, prefix=prefix)
    assert await readyz(late) == 503
    room = fresh_room()
    member = await inbox(late, room)  # it serves its own members meanwhile
    await member.send_chat("alone")
    assert "offset" not in await member.chat("alone")

    redis_server.start()
    (other,) = start_pods(serve, redis_server.url, prefix=prefix)
    await wait_all_ready([late, other], 200, 8000 * MS)
    peer = await inbox(other, room)
    await peer.send_chat("together")
    assert (await member.chat("together"))["offset"] == 1
    assert member.errors() == []


# -- a pod dies ------------------------------------------------------------------------------


async def test_users_of_a_killed_pod_go_offline(
    serve: Serve, redis_url: str, inbox: Callable[..., Awaitable[Inbox]]
) -> None:
    a, b = start_pods(serve, redis_url, redis_url)
    room = fresh_room()
    a1 = await inbox(a, room)
    b1, b2 = await inbox(b, room), await inbox(b, room)
    doomed = {b1.user_id, b2.user_id}

    def presence(status: str, user_id: str) -> Callable[[dict[str, Any]], bool]:
        return lambda m: (
            m["type"] == "presence"
            and m["data"]
            == {
                "status": status,
                "user_id": user_id,
            }
        )

    for user_id in doomed:
        await a1.wait_for(presence("online", user_id))

    async def members() -> set[str]:
        response = await api(a.http, "GET", f"/api/rooms/{room}/presence")
        return {m["user_id"] for m in response.json()["members"]}

    assert await members() == {a1.user_id, *doomed}

    b.signal(signal.SIGKILL)
    b.proc.wait(5)
    killed = time.monotonic()
    for user_id in doomed:
        await a1.wait_for(presence("offline", user_id), 1500 * MS + 2500 * MS)
    assert time.monotonic() - killed < 4.0
    assert await members() == {a1.user_id}
    rooms = (await api(a.http, "GET", "/api/rooms")).json()["rooms"]
    assert [(r["cluster_connections"], r["users"]) for r in rooms if r["room"] == room] == [(1, 1)]

    await asyncio.sleep(500 * MS)  # a duplicate "offline" would have arrived by now
    for user_id in doomed:
        statuses = [
            m["data"]["status"]
            for m in a1.messages
            if m["type"] == "presence" and m["data"]["user_id"] == user_id
        ]
        assert statuses == ["online", "offline"]
    assert a1.errors() == []


# -- a subscriber goes deaf --------------------------------------------------------------------


async def test_deaf_subscriber_is_detected_and_replaced(
    serve: Serve,
    redis_server: RedisServer,
    proxy: RedisProxy,
    inbox: Callable[..., Awaitable[Inbox]],
) -> None:
    deaf, healthy = start_pods(serve, proxy.url, redis_server.url)
    await wait_all_ready([deaf, healthy], 200, 3000 * MS)
    room = fresh_room()
    listener = await inbox(deaf, room)
    speaker = await inbox(healthy, room)
    await speaker.send_chat("before")
    await listener.chat("before")

    assert proxy.freeze() >= 2  # the subscriber and the command connection at least
    frozen = time.monotonic()

    async def heard() -> dict[str, Any] | None:
        text = f"deaf-{time.monotonic():.3f}"
        await speaker.send_chat(text)
        with contextlib.suppress(TimeoutError):
            return await listener.chat(text, 250 * MS)
        return None

    resumed = await eventually(heard, 12000 * MS, 0)
    assert time.monotonic() - frozen < 12.0
    assert resumed["from"] == speaker.user_id
    assert proxy.dropped() > 0  # the frozen connections really went deaf

    assert any("subscriber" in line and "deaf" in line for line in deaf.output().splitlines())
    assert await metric(deaf, "realtime_redis_reconnects_total") >= 1
    assert await metric(healthy, "realtime_redis_reconnects_total") == 0
    await wait_all_ready([deaf], 200, 3000 * MS)
    assert listener.errors() == []
    assert not listener.closed


async def test_a_subscriber_behind_a_backlog_is_kept_and_loses_nothing(
    serve: Serve,
    redis_server: RedisServer,
    proxy: RedisProxy,
    inbox: Callable[..., Awaitable[Inbox]],
) -> None:
    # A pod that still reads, but far behind (a slow link here; a pod starved of
    # CPU alike), is not deaf: replacing its connection would throw the backlog
    # away, and messages to everyone are not retained.
    slow, fast = start_pods(serve, proxy.url, redis_server.url)
    await wait_all_ready([slow, fast], 200, 3000 * MS)
    listener = await inbox(slow, fresh_room())  # welcomed, its room subscribed

    proxy.throttle_subscribers(20_000)  # bytes a second
    count, padding = 300, "x" * 300  # ~120 KB through Redis: 6 s behind at that rate
    async with httpx.AsyncClient(base_url=fast.http, timeout=5.0) as http:
        for n in range(count):  # one after the other: one order
            body = {"type": "notification", "data": {"n": n, "pad": padding}}
            assert (await http.post("/api/publish", json=body)).status_code == 200
    published = time.monotonic()

    def received() -> list[int]:
        return [m["data"]["n"] for m in listener.messages if m["type"] == "notification"]

    await until(lambda: len(received()) >= count, 20000 * MS)
    # The backlog outlived three health intervals (1 s each): probes were that late.
    assert time.monotonic() - published > 3.5
    assert received() == list(range(count))  # every one, in order, once
    assert await metric(slow, "realtime_redis_reconnects_total") == 0
    assert not any("deaf" in line for line in slow.output().splitlines())
    assert listener.errors() == []
