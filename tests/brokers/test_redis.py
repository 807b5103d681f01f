"""The Redis broker: the shared conformance suite, plus what only Redis can show.

Everything runs against a real Redis: the shared one (``redis_url``, every test
with a key prefix of its own) or, for tests that flush, kill connections or stop
the server, a `redis-server` of the test's own (``redis_server``).
"""

# Helpers take their time budget as an argument, in MS units, on purpose.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from roomcast.app import Hub
from roomcast.brokers.base import Broker, PresenceChange, PresenceMember, Retention
from roomcast.brokers.redis import RedisBroker
from roomcast.protocol import Message, MessageFactory, MessageType, PresenceStatus
from tests.brokers.conformance import AdvanceTime, BrokerConformance, MakeBroker, Recorder
from tests.redis_support import RedisServer
from tests.redis_tools import attach, unique_prefix
from tests.support import MS, eventually

READY = 3000 * MS
"""How long a broker may take to connect its subscriber."""


async def wait_ready(broker: RedisBroker, timeout: float = READY) -> None:
    async def ready() -> bool:
        return broker.ready

    await eventually(ready, timeout)


@contextlib.asynccontextmanager
async def started(
    url: str, recorder: Recorder | None = None, **options: Any
) -> AsyncIterator[RedisBroker]:
    """A started, ready RedisBroker on ``url`` (a prefix of its own unless given)."""
    options.setdefault("prefix", unique_prefix())
    broker = RedisBroker(url, **options)
    await broker.start(recorder if recorder is not None else Recorder())
    try:
        await wait_ready(broker)
        yield broker
    finally:
        await broker.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client of the shared Redis, to look at what the broker stored."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def own_redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A plain client of this test's own `redis-server`."""
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def chat(factory: MessageFactory, room: str, text: str) -> Message:
    return factory.make(MessageType.CHAT, room=room, data={"text": text}, sender="alice")


def new_room() -> str:
    return f"r-{uuid.uuid4().hex[:10]}"


# -- the conformance suite ----------------------------------------------------------------


class TestRedisBroker(BrokerConformance):
    ttl = 1.0  # Redis expires keys in whole seconds: real sleeps of 0.6 to 2 s

    @pytest.fixture
    def broker_url(self, redis_url: str) -> str:
        """The Redis the suite's brokers use (a cluster's, in a subclass)."""
        return redis_url

    @pytest.fixture
    async def make_broker(self, broker_url: str) -> AsyncIterator[MakeBroker]:
        prefix = unique_prefix()
        brokers: list[RedisBroker] = []

        async def make(
            handler: Recorder,
            *,
            history_size: int = 100,
            history_ttl: float = 300.0,
            history_bytes: int = 1 << 20,
            retention: Retention | None = None,
        ) -> Broker:
            broker = RedisBroker(
                broker_url,
                prefix=prefix,
                history_size=history_size,
                history_ttl=history_ttl,
                history_bytes=history_bytes,
            )
            broker.set_retention(retention)
            brokers.append(broker)
            await broker.start(handler)
            await wait_ready(broker)
            return broker

        yield make
        for broker in brokers:
            await broker.close()

    @pytest.fixture
    def advance_time(self) -> AdvanceTime:
        async def advance(seconds: float) -> None:
            await asyncio.sleep(seconds)

        return advance


# -- what Redis holds -----------------------------------------------------------------------


async def test_keys_of_a_room_share_its_hash_tag(redis_url: str, redis: Redis) -> None:
    prefix = unique_prefix()
    room, other = "team:a.b-1", "lobby"
    factory = MessageFactory()
    async with started(redis_url, prefix=prefix) as broker:
        await broker.publish(chat(factory, room, "hello"))
        await broker.publish(chat(factory, other, "hi"))
        await broker.presence.add(room, user_id="alice", conn_id="c1", info={"name": "A"})
        await broker.presence.set_status(room, user_id="alice", status=PresenceStatus.AWAY)
        await broker.presence.add(other, user_id="bob", conn_id="c2")

        keys = sorted([k.decode() async for k in redis.scan_iter(match=f"{prefix}:*")])
        tag = f"{{{room}}}"
        room_keys = [k for k in keys if room in k]
        assert room_keys == sorted(
            [
                f"{prefix}:meta:{tag}",
                f"{prefix}:history:{tag}",
                f"{prefix}:ids:{tag}",
                *(
                    f"{prefix}:presence:{tag}:{part}"
                    for part in ("conns", "owner", "users", "status", "info")
                ),
            ]
        )
        # One hash tag each, the room's, so one Cluster slot holds them all.
        for key in room_keys:
            assert key.count("{") == key.count("}") == 1
        assert {key_slot(k.encode()) for k in room_keys} == {key_slot(room.encode())}
        other_keys = [k for k in keys if f"{{{other}}}" in k]
        assert {key_slot(k.encode()) for k in other_keys} == {key_slot(other.encode())}
        assert set(keys) - set(room_keys) - set(other_keys) == {f"{prefix}:presence:rooms"}

        assert await redis.type(f"{prefix}:history:{tag}") == b"stream"
        assert await redis.type(f"{prefix}:meta:{tag}") == b"hash"
        assert await redis.type(f"{prefix}:ids:{tag}") == b"hash"
        assert await redis.type(f"{prefix}:presence:{tag}:conns") == b"zset"


async def test_history_stream_is_bounded_by_history_size(redis_url: str, redis: Redis) -> None:
    room = new_room()
    factory = MessageFactory()
    async with started(redis_url, history_size=5, history_ttl=60) as broker:
        futures = [broker.publish(chat(factory, room, f"m{i}")) for i in range(12)]
        stored = await asyncio.gather(*futures)
        assert [m.offset for m in stored] == list(range(1, 13))
        meta, stream = f"{broker.prefix}:meta:{{{room}}}", f"{broker.prefix}:history:{{{room}}}"
        assert await redis.xlen(stream) == 5
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(stream)  # type: ignore[assignment]
        assert [entry_id.decode() for entry_id, _ in entries] == [f"{n}-0" for n in range(8, 13)]
        assert [fields[b"i"].decode() for _, fields in entries] == [m.id for m in stored[7:]]
        assert await redis.hget(meta, "offset") == b"12"
        # The id -> offset index (idempotent publish, O(page) history reads) keeps
        # exactly the retained messages.
        ids = f"{broker.prefix}:ids:{{{room}}}"
        assert await redis.hgetall(ids) == {
            m.id.encode(): str(m.offset).encode() for m in stored[7:]
        }
        for key in (meta, stream, ids):
            assert 0 < await redis.ttl(key) <= 60
        page = await broker.history(room, since=stored[8].id, limit=2)
        assert page.recovered is True
        assert [e.message.offset for e in page.messages if e.message] == [10, 11]
        newest = await broker.history(room, limit=3)
        assert [e.message.offset for e in newest.messages if e.message] == [10, 11, 12]
        evicted = await broker.history(room, since=stored[6].id)
        assert evicted.recovered is False
        assert evicted.messages == []


async def test_a_hole_in_the_history_is_not_recovered(redis_url: str, redis: Redis) -> None:
    # If an entry after ``since`` is missing, replaying the rest would be a silent gap.
    room = new_room()
    factory = MessageFactory()
    async with started(redis_url) as broker:
        stored = [await broker.publish(chat(factory, room, f"m{i}")) for i in range(5)]
        assert await redis.xdel(f"{broker.prefix}:history:{{{room}}}", "3-0") == 1
        hole = await broker.history(room, since=stored[1].id)
        assert hole.recovered is False
        assert hole.messages == []
        after = await broker.history(room, since=stored[2].id)  # 3 itself is gone
        assert after.recovered is True
        assert [e.message.offset for e in after.messages if e.message] == [4, 5]
        latest = await broker.history(room, since=stored[4].id)
        assert (latest.recovered, latest.messages, latest.offset) == (True, [], 5)


async def test_epoch_changes_after_the_room_keys_are_lost(
    redis_server: RedisServer, own_redis: Redis
) -> None:
    room = new_room()
    factory = MessageFactory()
    recorder = Recorder()
    async with started(redis_server.url, recorder) as broker:
        await broker.subscribe(room)
        old = [await broker.publish(chat(factory, room, f"m{i}")) for i in range(3)]
        before = await broker.history(room)
        assert before.offset == 3

        assert await own_redis.flushall()  # this test's own server only

        lost = await broker.history(room, since=old[-1].id)
        assert lost.recovered is False
        assert lost.messages == []
        assert lost.offset == 0
        assert lost.epoch
        assert lost.epoch != before.epoch

        fresh = await broker.publish(chat(factory, room, "again"))
        assert fresh.offset == 1
        page = await broker.history(room)
        # A client told the new epoch before the first new message keeps it.
        assert page.epoch == lost.epoch
        assert [e.message.id for e in page.messages if e.message] == [fresh.id]
        # The subscriber survived the flush: the new message came back, offset 1.
        await recorder.wait_for(4)
        assert [e.message.offset for e in recorder.publications if e.message] == [1, 2, 3, 1]

        # Lost again, this time with no reader in between: a new epoch all the same.
        assert await own_redis.flushall()
        again = await broker.publish(chat(factory, room, "third life"))
        assert again.offset == 1
        assert (await broker.history(room)).epoch not in ("", before.epoch, lost.epoch)


async def test_losing_the_meta_alone_starts_a_new_history(redis_url: str, redis: Redis) -> None:
    # Under maxmemory eviction Redis may drop a room's meta hash and keep its stream.
    room = new_room()
    factory = MessageFactory()
    recorder = Recorder()
    async with started(redis_url, recorder) as broker:
        old = [await broker.publish(chat(factory, room, f"m{i}")) for i in range(3)]
        before = await broker.history(room)
        assert await redis.delete(f"{broker.prefix}:meta:{{{room}}}") == 1

        # A reader (any join) comes first: the old entries are not this epoch's.
        lost = await broker.history(room, since=old[0].id)
        assert lost.epoch != before.epoch
        assert lost.recovered is False
        assert lost.messages == []
        assert (await broker.history(room)).messages == []

        # Publishing still works, from offset 1, in the epoch the reader was told.
        fresh = [await broker.publish(chat(factory, room, f"n{i}")) for i in range(2)]
        assert recorder.errors == []
        assert [m.offset for m in fresh] == [1, 2]
        page = await broker.history(room)
        assert page.epoch == lost.epoch
        assert [e.message.id for e in page.messages if e.message] == [m.id for m in fresh]


# -- subscriptions ------------------------------------------------------------------------


async def test_pod_subscribes_to_a_room_only_while_it_has_local_members(
    redis_url: str, redis: Redis
) -> None:
    room = new_room()
    broker = RedisBroker(redis_url, prefix=unique_prefix())
    channel = broker.room_channel(room).encode()

    async def subscribed() -> bool:
        return channel in await redis.pubsub_channels(f"{broker.prefix}:room:*")

    async def unsubscribed() -> bool:
        return not await subscribed()

    async with Hub(broker=broker) as hub:
        await wait_ready(broker)
        lobby = attach(hub, None)
        await asyncio.sleep(100 * MS)
        assert not await subscribed()

        first = attach(hub, room, user_id="u1")
        second = attach(hub, room, user_id="u2")
        await eventually(subscribed)
        assert await redis.pubsub_numsub(channel) == [(channel, 1)]  # one per pod

        first.receive(f'{{"type":"leave","room":"{room}"}}')

        async def left() -> bool:
            return any(m["data"].get("event") == "left" for m in first.received)

        await eventually(left)
        await asyncio.sleep(200 * MS)
        assert await subscribed(), "unsubscribed while a member was still here"

        second.close()
        await eventually(unsubscribed)

        lobby.receive(f'{{"type":"join","room":"{room}"}}')
        await eventually(subscribed)
        lobby.close()
        await eventually(unsubscribed)


async def test_one_subscriber_connection_per_pod(
    redis_server: RedisServer, own_redis: Redis
) -> None:
    rooms = [new_room() for _ in range(25)]
    prefix = unique_prefix()
    factory = MessageFactory()
    recorder = Recorder()

    async def pubsub_clients() -> list[dict[str, Any]]:
        return list(await own_redis.client_list(_type="pubsub"))

    async with started(redis_server.url, recorder, prefix=prefix) as broker:
        assert len(await pubsub_clients()) == 1
        for room in rooms:
            await broker.subscribe(room)
        (sub,) = await pubsub_clients()
        assert int(sub["sub"]) == len(rooms) + 3  # the rooms, global, health, control

        async with started(redis_server.url, prefix=prefix):
            assert len(await pubsub_clients()) == 2

            # Drop every subscriber: each pod reconnects with one connection again
            # and resubscribes every room it needs.
            await own_redis.client_kill_filter(_type="pubsub")

            async def back() -> bool:
                clients = await pubsub_clients()
                return len(clients) == 2 and len(rooms) + 3 in [int(c["sub"]) for c in clients]

            await eventually(back, 5000 * MS)
            assert recorder.reconnects == 1
            await asyncio.sleep(300 * MS)
            assert len(await pubsub_clients()) == 2

        sent = await broker.publish(chat(factory, rooms[-1], "after the drop"))
        await recorder.wait_for(1)
        assert recorder.ids(rooms[-1]) == [sent.id]


# -- failures -------------------------------------------------------------------------------


async def test_publish_while_redis_is_down_settles_without_raising(
    redis_server: RedisServer,
) -> None:
    room = new_room()
    factory = MessageFactory()
    recorder = Recorder()
    async with started(redis_server.url, recorder, health_interval=0.2) as broker:
        await broker.subscribe(room)
        redis_server.stop()
        messages = [chat(factory, room, f"m{i}") for i in range(3)]
        stored = await asyncio.wait_for(
            asyncio.gather(*(broker.publish(m) for m in messages)), 3000 * MS
        )
        assert [m.id for m in stored] == [m.id for m in messages]
        assert [m.offset for m in stored] == [None, None, None]
        assert [m.id for m, _ in recorder.errors] == [m.id for m in messages]
        assert recorder.publications == []  # nothing came back through Redis

        async def not_ready() -> bool:
            return not broker.ready

        await eventually(not_ready)

        redis_server.start()
        await wait_ready(broker, 8000 * MS)
        assert recorder.reconnects >= 1
        again = await broker.publish(chat(factory, room, "back"))
        assert again.offset == 1  # the restarted server lost the history
        assert len(recorder.errors) == 3
        recorder.errors.clear()
        await recorder.wait_for(1)
        assert recorder.ids(room) == [again.id]


async def test_presence_of_a_vanished_pod_expires_once(redis_url: str) -> None:
    room = new_room()
    prefix = unique_prefix()
    survivors = [Recorder(), Recorder()]
    async with (
        started(redis_url, survivors[0], prefix=prefix, presence_ttl=1.0) as a,
        started(redis_url, survivors[1], prefix=prefix, presence_ttl=1.0) as c,
    ):
        await a.presence.add(room, user_id="alice", conn_id="a1")
        await c.presence.add(room, user_id="carol", conn_id="c1")
        async with started(redis_url, prefix=prefix, presence_ttl=1.0) as b:
            assert await b.presence.add(room, user_id="bob", conn_id="b1")
            assert await b.presence.add(room, user_id="alice", conn_id="b2") is PresenceChange.NONE
        # b stopped refreshing without removing anything, as a killed pod would.

        async def reaped() -> bool:
            return bool(survivors[0].expired or survivors[1].expired)

        await eventually(reaped, 3000 * MS)
        await asyncio.sleep(1500 * MS)  # a second reaper, if any, would have spoken by now
        assert survivors[0].expired + survivors[1].expired == [(room, "bob")]
        # alice and carol are still there: the room is not vacated.
        assert survivors[0].vacated + survivors[1].vacated == [(room, False)]
        # alice still has a connection on a live pod: she stays, with one connection.
        assert await a.presence.members(room) == [
            PresenceMember("alice", PresenceStatus.ONLINE, 1),
            PresenceMember("carol", PresenceStatus.ONLINE, 1),
        ]
        assert await c.presence.members(room) == await a.presence.members(room)


async def test_a_vanished_pod_that_held_the_last_user_vacates_the_room(redis_url: str) -> None:
    room = new_room()
    prefix = unique_prefix()
    survivor = Recorder()
    async with started(redis_url, survivor, prefix=prefix, presence_ttl=1.0):
        async with started(redis_url, prefix=prefix, presence_ttl=1.0) as b:
            assert await b.presence.add(room, user_id="bob", conn_id="b1") is PresenceChange.ROOM
            assert await b.presence.add(room, user_id="dan", conn_id="b2") is PresenceChange.USER

        async def reaped() -> bool:
            return len(survivor.expired) == 2

        await eventually(reaped, 3000 * MS)
        assert sorted(survivor.expired) == [(room, "bob"), (room, "dan")]
        # One reap took both: only the last of them is told the room is empty.
        assert survivor.vacated == [(room, False), (room, True)]


async def test_close_returns_while_a_publish_is_in_flight(redis_url: str) -> None:
    # Closing right after a publish, at every point of its round trip, must not hang.
    factory = MessageFactory()
    prefix = unique_prefix()
    for spins in range(10):
        broker = RedisBroker(redis_url, prefix=prefix)
        await broker.start(Recorder())
        await wait_ready(broker)
        broker.publish(chat(factory, "r", f"m{spins}"))
        for _ in range(spins):
            await asyncio.sleep(0)
        await asyncio.wait_for(broker.close(), 2000 * MS)
        assert not broker.ready
