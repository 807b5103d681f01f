"""The Redis broker on Redis Cluster: sharded pub/sub, routing by slot, a shard master killed.

A real cluster of three masters and three replicas is started by the tests
(:class:`~tests.redis_topology.ClusterTopology`). The whole conformance suite
runs on it; then the drills: rooms on every shard, real pods, and the master of
one shard SIGKILLed while clients chat, until its replica is promoted.
"""

# Helpers take their time budget as an argument, in MS units, on purpose.

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

import pytest
from redis.asyncio import Redis

from roomcast.brokers.redis import RedisBroker
from roomcast.protocol import MessageFactory
from tests.brokers import test_redis
from tests.brokers.conformance import Recorder
from tests.brokers.pods import (
    FAILOVER_FLAGS,
    Inbox,
    Serve,
    assert_in_order,
    chatter,
    crossed,
    is_notice,
    start_pods,
    wait_all_ready,
)
from tests.brokers.test_redis import chat, new_room, wait_ready
from tests.redis_tools import unique_prefix
from tests.redis_topology import ClusterTopology
from tests.support import MS, eventually, fresh_room


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[ClusterTopology]:
    """One cluster for the tests that do not break it."""
    with ClusterTopology().start() as topology:
        yield topology


@pytest.fixture
def cluster() -> Iterator[ClusterTopology]:
    """A cluster of the test's own (it kills a master)."""
    with ClusterTopology().start() as topology:
        yield topology


def rooms_on_every_shard(topology: ClusterTopology, per_shard: int = 1) -> dict[int, list[str]]:
    """Fresh room names, ``per_shard`` on each master (by the room's hash tag)."""
    out: dict[int, list[str]] = {port: [] for port in topology.masters()}
    for _ in range(10_000):
        if all(len(rooms) >= per_shard for rooms in out.values()):
            return out
        room = fresh_room()
        rooms = out[topology.master_for_key(f"{{{room}}}")]
        if len(rooms) < per_shard:
            rooms.append(room)
    raise AssertionError(f"no room found on some shard: {out}")


class TestRedisClusterBroker(test_redis.TestRedisBroker):
    """Every behaviour of the broker, on a cluster."""

    @pytest.fixture
    def broker_url(self, shared_cluster: ClusterTopology) -> str:
        return shared_cluster.url()


async def test_rooms_are_spread_over_every_shard_and_published_there(
    shared_cluster: ClusterTopology,
) -> None:
    prefix = unique_prefix()
    rooms = rooms_on_every_shard(shared_cluster)
    factory = MessageFactory()
    recorder = Recorder()
    broker = RedisBroker(shared_cluster.url(), prefix=prefix)
    await broker.start(recorder)
    try:
        await wait_ready(broker)
        for port, (room,) in rooms.items():
            await broker.subscribe(room)
            stored = await broker.publish(chat(factory, room, f"on {port}"))
            assert stored.offset == 1
            # The room's keys are on its shard's master, and nowhere else.
            client = Redis(host="127.0.0.1", port=port)
            try:
                assert await client.exists(f"{prefix}:history:{{{room}}}") == 1
            finally:
                await client.aclose()

        async def delivered() -> bool:
            got = {e.message.room for e in recorder.publications if e.message is not None}
            return got >= {room for (room,) in rooms.values()}

        await eventually(delivered, 3000 * MS)
        # Control commands reach this pod through the control shard.
        assert broker.ready
    finally:
        await broker.close()


async def test_a_history_read_is_ordered_against_the_shard_feed(
    shared_cluster: ClusterTopology,
) -> None:
    # The barrier travels on the room's own shard channel: a page read while
    # another pod publishes, and the live feed after the page's offset, add up to
    # every offset once, on every shard.
    prefix = unique_prefix()
    factory = MessageFactory()
    heard = Recorder()
    async with contextlib.AsyncExitStack() as stack:
        brokers = []
        for recorder in (Recorder(), heard):
            broker = RedisBroker(shared_cluster.url(), prefix=prefix)
            await broker.start(recorder)
            stack.push_async_callback(broker.close)
            await wait_ready(broker)
            brokers.append(broker)
        writer, reader = brokers
        for (room,) in rooms_on_every_shard(shared_cluster).values():
            await reader.subscribe(room)
            for i in range(10):
                await writer.publish(chat(factory, room, f"m{i}"))
            sent = [writer.publish(chat(factory, room, f"n{i}")) for i in range(20)]
            page = await reader.history(room, limit=100)
            await asyncio.gather(*sent)
            paged = [e.message.offset for e in page.messages if e.message]
            assert page.offset >= 10 and paged == list(range(1, page.offset + 1))

            async def live_after_page(room: str = room, after: int = page.offset) -> bool:
                got = [
                    e.message.offset
                    for e in heard.publications
                    if e.message and e.message.room == room and (e.message.offset or 0) > after
                ]
                return got == list(range(after + 1, 31))

            await eventually(live_after_page, 3000 * MS)


async def test_pods_keep_every_room_through_a_shard_failover(
    serve: Serve, cluster: ClusterTopology, inbox: Callable[..., Awaitable[Inbox]]
) -> None:
    a, b = start_pods(serve, cluster.url(), cluster.url(), flags=FAILOVER_FLAGS)
    await wait_all_ready([a, b], 200, 8000 * MS)
    rooms = rooms_on_every_shard(cluster)
    boxes: dict[str, tuple[Inbox, Inbox]] = {}
    for (room,) in rooms.values():
        boxes[room] = (await inbox(a, room), await inbox(b, room))
    for room, (on_a, on_b) in boxes.items():
        await crossed(on_a, on_b, f"before-{room}", 5000 * MS)

    stop = asyncio.Event()
    talkers = [
        asyncio.create_task(chatter(box, f"{room}-{side}", stop, every=30 * MS, most=1000))
        for room, pair in boxes.items()
        for side, box in zip("ab", pair, strict=True)
    ]
    await asyncio.sleep(300 * MS)
    victim_port, (victim_room,) = next(iter(rooms.items()))
    await asyncio.to_thread(cluster.kill, victim_port)
    promoted = await asyncio.to_thread(cluster.wait_for_promotion, victim_port)
    assert promoted != victim_port
    await wait_all_ready([a, b], 200, 20000 * MS)
    # Every room, the failed-over shard's too, crosses between the pods again.
    for room, (on_a, on_b) in boxes.items():
        await crossed(on_a, on_b, f"after-a-{room}", 10000 * MS)
        await crossed(on_b, on_a, f"after-b-{room}", 5000 * MS)
    stop.set()
    await asyncio.gather(*talkers)
    await asyncio.sleep(500 * MS)
    for on_a, on_b in boxes.values():
        for box in (on_a, on_b):
            assert not box.closed and box.errors() == []
            assert_in_order(box)
    # The room whose shard failed over kept its order on both pods.
    assert victim_room in boxes


def test_rooms_on_every_shard_finds_one_per_master(shared_cluster: ClusterTopology) -> None:
    rooms = rooms_on_every_shard(shared_cluster, per_shard=2)
    assert len(rooms) == 3 and all(len(r) == 2 for r in rooms.values())
    for port, names in rooms.items():
        assert all(shared_cluster.master_for_key(f"{{{n}}}") == port for n in names)
    assert new_room() != new_room()


async def test_a_wrong_slot_map_is_corrected_by_moved_and_nothing_is_lost(
    shared_cluster: ClusterTopology,
) -> None:
    # Force the map to send everything to one master: publications and reads for
    # rooms of the other shards get MOVED, are not applied there, and are sent
    # again to the right master (publications retried with their ids).
    factory = MessageFactory()
    recorder = Recorder()
    broker = RedisBroker(shared_cluster.url(), prefix=unique_prefix())
    await broker.start(recorder)
    try:
        await wait_ready(broker)
        slots = broker._slots
        assert slots is not None
        rooms = [room for (room,) in rooms_on_every_shard(shared_cluster).values()]
        for room in rooms:
            await broker.subscribe(room)
        wrong = slots.masters[0]
        slots._assign(0, 16383, wrong)
        stored = await asyncio.gather(*(broker.publish(chat(factory, r, "x")) for r in rooms))
        assert [m.offset for m in stored] == [1, 1, 1]
        assert all(m.degraded is None for m in stored)
        for room in rooms:
            assert slots.node_for(f"{{{room}}}")[1] == shared_cluster.master_for_key(f"{{{room}}}")
        page = await broker.history(rooms[-1])
        assert [e.message.offset for e in page.messages if e.message] == [1]

        async def delivered() -> bool:
            return {e.message.room for e in recorder.publications if e.message} >= set(rooms)

        await eventually(delivered, 5000 * MS)
        assert recorder.errors == [] and recorder.unknown == []
    finally:
        await broker.close()


async def test_per_user_counts_route_by_user_on_a_cluster(shared_cluster: ClusterTopology) -> None:
    from roomcast.brokers.redis.users import RedisUserConnections

    users = RedisUserConnections.from_url(shared_cluster.url(), prefix=unique_prefix(), ttl=5)
    await users.start()
    try:
        names = [f"user-{i}" for i in range(12)]  # spread over the shards
        assert len({shared_cluster.master_for_key(users.key(n)) for n in names}) == 3
        for name in names:
            assert await users.acquire(name, "s1", 2)
            assert await users.acquire(name, "s2", 2)
            assert not await users.acquire(name, "s3", 2)  # the cluster-wide count
        await users.refresh()
        await users.release(names[0], "s1")
        assert await users.acquire(names[0], "s3", 2)
    finally:
        await users.close()


def test_a_cluster_needs_sharded_pub_sub_in_redis_py(monkeypatch: pytest.MonkeyPatch) -> None:
    from roomcast.brokers.redis import connect
    from roomcast.errors import ConfigError

    monkeypatch.setattr(connect, "_sharded_pubsub", lambda: False)
    with pytest.raises(ConfigError, match=r"redis-py 8\.0"):
        RedisBroker("redis+cluster://127.0.0.1:7000")


async def test_a_promoted_shard_replica_without_the_last_writes_resets_the_room(
    serve: Serve, cluster: ClusterTopology, inbox: Callable[..., Awaitable[Inbox]]
) -> None:
    a, b = start_pods(serve, cluster.url(), cluster.url(), flags=FAILOVER_FLAGS)
    await wait_all_ready([a, b], 200, 8000 * MS)
    port, (room,) = next(iter(rooms_on_every_shard(cluster).items()))
    a1, b1 = await inbox(a, room), await inbox(b, room)
    for i in (1, 2, 3):
        await a1.send_chat(f"kept-{i}")
        assert (await b1.chat(f"kept-{i}"))["offset"] == i
    epoch = (await inbox(a, room)).messages[0]["data"]["epoch"]

    replica = await asyncio.to_thread(cluster.stall_replica, port)
    for i in (4, 5, 6):
        await a1.send_chat(f"lost-{i}")
        assert (await b1.chat(f"lost-{i}"))["offset"] == i
    await asyncio.to_thread(cluster.kill, port)
    cluster.resume(replica)
    assert await asyncio.to_thread(cluster.wait_for_promotion, port) == replica
    await wait_all_ready([a, b], 200, 20000 * MS)

    for box in (a1, b1):
        notice = await box.wait_for(is_notice, 10000 * MS)
        assert (notice["data"]["recovered"], notice["data"]["offset"]) == (False, 3)
        assert notice["data"]["epoch"] != epoch
    for i in (1, 2, 3):
        await b1.send_chat(f"new-{i}")
    for box in (a1, b1):
        got = [await box.chat(f"new-{i}", 5000 * MS) for i in (1, 2, 3)]
        assert sorted(m["offset"] for m in got) == [4, 5, 6]
        assert_in_order(box)
