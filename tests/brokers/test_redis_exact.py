"""Exactly once across pods, whatever the timing: each race forced, not hoped for.

Redis orders one connection's output, not two connections against each other,
and its pub/sub is at most once. Each test here forces one bad order or loss
with a proxy in front of Redis (:class:`~tests.redis_tools.RedisProxy`) or by
writing to Redis directly, then checks that every member receives every offset
exactly once. Pods are hubs in this process, each with its own RedisBroker.
"""

# Helpers take their time budget as an argument, in MS units, on purpose.

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from roomcast.app import Hub
from roomcast.brokers.redis import RedisBroker
from roomcast.core.admission import Admission
from roomcast.protocol import Message, MessageType
from tests.recording import RecordingConnection
from tests.redis_support import RedisServer
from tests.redis_tools import RedisProxy, attach, store_unheard, unique_prefix, welcomed
from tests.support import MS, eventually, fresh_room

WAIT = 5000 * MS


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[RedisProxy]:
    """A proxy in front of this test's own Redis."""
    proxy = RedisProxy(redis_server.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture
async def own_redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@contextlib.asynccontextmanager
async def pod(url: str, prefix: str, **options: Any) -> AsyncIterator[Hub]:
    """A started hub on its own RedisBroker (a pod), closed on exit."""
    options.setdefault("presence_ttl", 5)
    hub = Hub(broker=RedisBroker(url, prefix=prefix, **options), rate=0)
    await hub.start()
    try:
        await eventually(_ready(hub), WAIT)
        yield hub
    finally:
        await hub.close()


def _ready(hub: Hub) -> Any:
    async def ready() -> bool:
        return hub.broker.ready

    return ready


async def wait_offsets(conn: RecordingConnection, last: int, within: float = WAIT) -> None:
    async def reached() -> bool:
        seen = conn.offsets()
        return bool(seen) and seen[-1] >= last

    await eventually(reached, within)


def chat(hub: Hub, room: str, text: str, **data: Any) -> Message:
    return hub.messages.make(MessageType.CHAT, room=room, data={"text": text, **data}, sender="s")


def counter(hub: Hub, name: str) -> float:
    value = hub.metrics.registry.get_sample_value(name)
    return value or 0.0


async def test_a_join_whose_history_read_beats_the_live_copy_gets_it_once(
    redis_server: RedisServer, proxy: RedisProxy
) -> None:
    # Pod A's subscriber hears Redis 400 ms late, its commands on time: a joiner's
    # history read returns before the live copy of a message it contains.
    prefix, room = unique_prefix(), fresh_room("barrier")
    async with pod(proxy.url, prefix) as a, pod(redis_server.url, prefix) as b:
        member = attach(a, room)
        await welcomed(member)
        stored = [await b.publish(chat(b, room, f"m{i}")) for i in range(1, 4)]
        await wait_offsets(member, 3)

        proxy.delay_subscribers(400 * MS)
        stored.append(await b.publish(chat(b, room, "m4")))  # in the history now
        joiner = RecordingConnection(a)
        a.attach(joiner, Admission(room=room, last_id=stored[1].id))
        await wait_offsets(joiner, 4)
        proxy.delay_subscribers(0)
        await b.publish(chat(b, room, "m5"))
        await wait_offsets(joiner, 5)
        await wait_offsets(member, 5)
        await asyncio.sleep(600 * MS)  # any late copy would have come by now

        assert joiner.offsets() == [3, 4, 5]
        assert member.offsets() == [1, 2, 3, 4, 5]
        welcome = joiner.of_type("system")[0]["data"]
        assert welcome["recovered"] is True
        assert welcome["offset"] == 4


async def test_a_retried_publication_is_stored_and_delivered_once(
    redis_url: str,
) -> None:
    prefix, room = unique_prefix(), fresh_room("retry")
    async with pod(redis_url, prefix) as hub:
        member = attach(hub, room)
        await welcomed(member)
        message = chat(hub, room, "once")
        first = await hub.publish(message)
        assert first.offset == 1
        # The same message (same id) again, as a writer retrying a pipeline whose
        # reply was lost would send it: stored once, published once, same offset.
        again = Message.from_dict(message.to_dict())
        again.offset = None
        second = await hub.publish(again)
        assert second.offset == 1
        await hub.publish(chat(hub, room, "next"))
        await wait_offsets(member, 2)
        await asyncio.sleep(200 * MS)
        assert member.offsets() == [1, 2]
        client = Redis.from_url(redis_url)
        try:
            assert await client.xlen(f"{prefix}:history:{{{room}}}") == 2
            assert await client.hlen(f"{prefix}:ids:{{{room}}}") == 2
        finally:
            await client.aclose()


async def test_a_publish_whose_reply_is_lost_is_delivered_exactly_once(
    redis_server: RedisServer, proxy: RedisProxy, own_redis: Redis
) -> None:
    # Redis runs the publication and publishes it, but its reply to the writer
    # never arrives: the outcome is unknown. Delivering it locally would make it
    # arrive twice; it must be retried with the same id and stored once.
    prefix, room = unique_prefix(), fresh_room("doubt")
    async with pod(proxy.url, prefix, command_timeout=500 * MS) as hub:
        member = attach(hub, room)
        await welcomed(member)
        await hub.publish(chat(hub, room, "before"))
        await wait_offsets(member, 1)

        assert proxy.freeze(subscribers=False) >= 1  # the writer's connection among them
        stored = await asyncio.wait_for(hub.publish(chat(hub, room, "in doubt")), WAIT)
        assert stored.offset == 2
        await hub.publish(chat(hub, room, "after"))
        await wait_offsets(member, 3)
        await asyncio.sleep(500 * MS)

        chats = member.of_type("chat")
        assert [m["data"]["text"] for m in chats] == ["before", "in doubt", "after"]
        assert member.offsets() == [1, 2, 3]
        assert counter(hub, "realtime_redis_publish_errors_total") == 0
        assert await own_redis.xlen(f"{prefix}:history:{{{room}}}") == 3


async def test_a_subscriber_dropped_for_its_output_buffer_misses_nothing(
    redis_server: RedisServer, proxy: RedisProxy, own_redis: Redis
) -> None:
    # Redis drops a subscriber whose output buffer passes the pubsub limit. The
    # members of its pod stay connected; the pod must fill in what it missed.
    await own_redis.config_set("client-output-buffer-limit", "pubsub 262144 0 0")
    prefix, room = unique_prefix(), fresh_room("dropped")
    channel = f"{prefix}:room:{room}"
    pad = "x" * 16_384
    # The history must hold what the pod misses (hundreds of 16 KB messages): no
    # byte bound here, or the repair would rightly report them lost.
    async with (
        pod(proxy.url, prefix, health_interval=30.0, history_bytes=0) as a,
        pod(redis_server.url, prefix, history_bytes=0) as b,
    ):
        member = attach(a, room)
        await welcomed(member)
        await b.publish(chat(b, room, "first"))
        await wait_offsets(member, 1)

        proxy.stall_subscribers()
        sent = 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15000 * MS
        while (await own_redis.pubsub_numsub(channel))[0][1] > 0:  # until Redis drops it
            assert sent < 4000 and loop.time() < deadline, "Redis never dropped the subscriber"
            await asyncio.gather(*(b.publish(chat(b, room, "big", pad=pad)) for _ in range(50)))
            sent += 50
        proxy.resume()
        for _ in range(5):  # live again afterwards
            await b.publish(chat(b, room, "later"))
            sent += 1
        await wait_offsets(member, sent, 10000 * MS)
        await asyncio.sleep(300 * MS)

        assert member.offsets() == list(range(1, sent + 1))
        assert counter(a, "realtime_redis_subscriber_drops_total") >= 1
        assert counter(a, "realtime_gap_repairs_total") >= 1
        assert counter(a, "realtime_gap_repaired_messages_total") >= 1
        assert counter(a, "realtime_gap_lost_messages_total") == 0


async def test_an_offset_jump_is_filled_from_the_history(redis_url: str) -> None:
    # Messages stored but never heard by this pod (their publication went to a
    # channel nobody listens to): the next one it hears shows the jump.
    prefix, room = unique_prefix(), fresh_room("jump")
    async with pod(redis_url, prefix) as hub:
        member = attach(hub, room)
        await welcomed(member)
        await hub.publish(chat(hub, room, "one"))
        await wait_offsets(member, 1)
        for text in ("two", "three", "four"):
            await store_unheard(redis_url, prefix, chat(hub, room, text))
        await hub.publish(chat(hub, room, "five"))
        await wait_offsets(member, 5)
        await asyncio.sleep(200 * MS)

        assert [m["data"]["text"] for m in member.of_type("chat")] == [
            "one",
            "two",
            "three",
            "four",
            "five",
        ]
        assert member.offsets() == [1, 2, 3, 4, 5]
        assert counter(hub, "realtime_gap_repairs_total") == 1
        assert counter(hub, "realtime_gap_repaired_messages_total") == 3


async def test_a_copy_of_a_delivered_offset_is_dropped(redis_url: str) -> None:
    # A publication Redis hands over twice (here: the stored payload published
    # again on the room's channel) reaches the members once.
    prefix, room = unique_prefix(), fresh_room("copy")
    async with pod(redis_url, prefix) as hub:
        member = attach(hub, room)
        await welcomed(member)
        await hub.publish(chat(hub, room, "one"))
        await wait_offsets(member, 1)
        client = Redis.from_url(redis_url)
        try:
            epoch = (await client.hget(f"{prefix}:meta:{{{room}}}", "epoch")) or b""
            entries = await client.xrange(f"{prefix}:history:{{{room}}}")
            payload = entries[0][1][b"p"]
            await client.publish(f"{prefix}:room:{room}", epoch + b" " + payload)
        finally:
            await client.aclose()
        await hub.publish(chat(hub, room, "two"))
        await wait_offsets(member, 2)
        await asyncio.sleep(200 * MS)

        assert member.offsets() == [1, 2]
        assert counter(hub, "realtime_duplicates_dropped_total") == 1
