"""A client's retry across pods, and per-room retention as Redis stores it.

Two :class:`~roomcast.brokers.redis.RedisBroker` instances on one Redis with the
same key prefix are two pods of one cluster: a retry (same sender, same
``ref``) published on the other pod is recognised by the publish script, so
it gets the first one's id and offset and nobody receives it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from roomcast.app import Hub
from roomcast.brokers.redis import RedisBroker
from roomcast.core.admission import Admission
from roomcast.core.namespaces import Namespace
from roomcast.protocol import Message, MessageFactory, MessageType
from tests.brokers.conformance import Recorder, wait_for_room
from tests.brokers.test_redis import started
from tests.recording import RecordingConnection
from tests.redis_tools import unique_prefix
from tests.support import MS, until

SETTLE = 50 * MS


def client_chat(factory: MessageFactory, room: str, *, ref: str, sender: str = "alice") -> Message:
    message = factory.make(MessageType.CHAT, room=room, data={"text": "hi"}, sender=sender)
    message.ref = ref
    return message


def new_room() -> str:
    return f"retry-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_a_retry_on_another_pod_gets_the_first_ones_id_and_offset(redis_url: str) -> None:
    prefix, room = unique_prefix(), new_room()
    factory = MessageFactory()
    seen_a, seen_b = Recorder(), Recorder()
    async with (
        started(redis_url, seen_a, prefix=prefix) as pod_a,
        started(redis_url, seen_b, prefix=prefix) as pod_b,
    ):
        await pod_a.subscribe(room)
        await pod_b.subscribe(room)
        first = await pod_a.publish(client_chat(factory, room, ref="m1"))
        assert first.offset == 1
        retry = client_chat(factory, room, ref="m1")
        answered = await pod_b.publish(retry)
        assert (answered.id, answered.offset) == (first.id, first.offset)
        # Another user's m1 on pod B is a message of its own.
        bob = await pod_b.publish(client_chat(factory, room, ref="m1", sender="bob"))
        assert bob.offset == 2
        for seen in (seen_a, seen_b):
            await wait_for_room(seen, room, 2)
            assert seen.ids(room) == [first.id, bob.id]
        page = await pod_b.history(room)
        assert [e.message.id for e in page.messages if e.message] == [first.id, bob.id]


async def test_the_same_retry_on_two_pods_at_once_is_stored_once(redis_url: str) -> None:
    prefix = unique_prefix()
    factory = MessageFactory()
    seen_a, seen_b = Recorder(), Recorder()
    async with (
        started(redis_url, seen_a, prefix=prefix) as pod_a,
        started(redis_url, seen_b, prefix=prefix) as pod_b,
    ):
        rooms = [new_room() for _ in range(5)]
        for room in rooms:
            await pod_a.subscribe(room)
            await pod_b.subscribe(room)
        for room in rooms:
            one, two = await asyncio.gather(
                pod_a.publish(client_chat(factory, room, ref="m1")),
                pod_b.publish(client_chat(factory, room, ref="m1")),
            )
            assert (one.id, one.offset) == (two.id, two.offset) == (one.id, 1)
        await asyncio.sleep(SETTLE)
        for seen in (seen_a, seen_b):
            await wait_for_room(seen, rooms[-1], 1)
            assert [len(seen.ids(room)) for room in rooms] == [1] * 5


@contextlib.asynccontextmanager
async def pods(redis_url: str, count: int, **options: Any) -> AsyncIterator[list[Hub]]:
    """``count`` hubs on one Redis (one key prefix): pods of one cluster."""
    prefix = unique_prefix()
    async with contextlib.AsyncExitStack() as stack:
        hubs = []
        for _ in range(count):
            broker = RedisBroker(redis_url, prefix=prefix)
            hub = await stack.enter_async_context(Hub(broker=broker, **options))
            await until(lambda b=broker: b.ready)
            hubs.append(hub)
        yield hubs


async def attached(hub: Hub, room: str, user_id: str) -> RecordingConnection:
    conn = RecordingConnection(hub, user_id=user_id)
    hub.attach(conn, Admission(room=room, user_id=user_id))
    await until(lambda: bool(conn.received))
    return conn


def acks(conn: RecordingConnection) -> list[dict[str, object]]:
    return [m["data"] for m in conn.of_type("system") if m["data"]["event"] == "published"]


async def test_a_client_reconnected_to_another_pod_retries_safely(redis_url: str) -> None:
    room = new_room()
    async with pods(redis_url, 2) as (pod_a, pod_b):
        bob = await attached(pod_a, room, "bob")
        carol = await attached(pod_b, room, "carol")
        alice = await attached(pod_a, room, "alice")
        alice.say("hello", room=room, ref="m1")
        await until(lambda: len(acks(alice)) == 1)
        alice.close()  # the ack was lost with the connection: it retries on pod B
        again = await attached(pod_b, room, "alice")
        again.say("hello", room=room, ref="m1")
        await until(lambda: len(acks(again)) == 1)
        await asyncio.sleep(SETTLE)
        assert acks(again) == acks(alice)
        assert acks(again)[0]["offset"] == 1
        for conn in (bob, carol):
            assert conn.texts() == ["hello"]
            assert conn.of_type("chat")[0]["id"] == acks(alice)[0]["id"]


async def test_namespace_retention_as_redis_keeps_it(redis_url: str, redis: Redis) -> None:
    short, brief, plain = new_room(), new_room(), new_room()
    namespaces = [
        Namespace(short, history_size=2),
        Namespace(brief, history_ttl=7),
    ]
    async with pods(redis_url, 1, namespaces=namespaces) as (hub,):
        broker = hub.broker
        assert isinstance(broker, RedisBroker)
        for room in (short, brief, plain):
            for i in range(4):
                await hub.publish(Message(type=MessageType.CHAT, room=room, data={"i": i}))
        meta, stream = broker._keys.history_keys(short)
        assert await redis.xlen(stream) == 2
        assert await redis.xlen(broker._keys.history_keys(plain)[1]) == 4
        assert 0 < await redis.ttl(broker._keys.history_keys(brief)[0]) <= 7
        assert await redis.ttl(broker._keys.history_keys(plain)[0]) > 7
        assert await redis.ttl(meta) > 7


async def test_the_retry_keys_go_with_the_messages_trimmed(redis_url: str, redis: Redis) -> None:
    # The ids hash holds each retained message's id and its retry key, no more:
    # trimming (by count or bytes) takes both away.
    factory = MessageFactory()
    room, heavy = new_room(), new_room()
    async with started(redis_url, history_size=2, history_bytes=1200) as broker:
        for i in range(10):
            await broker.publish(client_chat(factory, room, ref=f"m{i}"))
        ids_key = broker._keys.publish_keys(room)[2]
        assert await redis.hlen(ids_key) == 4  # 2 messages x (id, "r:" retry key)
        for i in range(6):  # ~500 bytes each: the byte bound keeps two
            message = client_chat(factory, heavy, ref=f"h{i}")
            message.data = {"pad": "x" * 500}
            await broker.publish(message)
        heavy_ids = broker._keys.publish_keys(heavy)[2]
        retained = await redis.xlen(broker._keys.history_keys(heavy)[1])
        assert retained < 6
        assert await redis.hlen(heavy_ids) == 2 * retained
