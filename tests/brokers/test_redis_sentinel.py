"""Failover drills with Redis Sentinel: real pods, a master, a replica, three sentinels.

The topology is started by the test (:class:`~tests.redis_topology.SentinelTopology`)
and its master SIGKILLed while clients chat; the pods find the new master through
the sentinels by themselves. The last drill makes the promoted replica lack the
master's last writes, so that its room counter restarts below what the members
saw: they must be told (``joined``, ``recovered: false``, a new epoch) and get the
new messages, never have them dropped as copies.
"""

# Helpers take their time budget as an argument, in MS units, on purpose.

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

import pytest

from roomcast import MessageType
from roomcast.client import Client, RoomStatus, connect
from tests.brokers.pods import (
    FAILOVER_FLAGS,
    Inbox,
    Serve,
    assert_in_order,
    chatter,
    crossed,
    is_notice,
    retained,
    start_pods,
    wait_all_ready,
)
from tests.redis_topology import SentinelTopology
from tests.support import MS, ServerProcess, eventually, fresh_room


@pytest.fixture
def sentinel() -> Iterator[SentinelTopology]:
    with SentinelTopology().start() as topology:
        yield topology


async def test_pods_follow_a_failover_to_the_new_master_while_clients_chat(
    serve: Serve, sentinel: SentinelTopology, inbox: Callable[..., Awaitable[Inbox]]
) -> None:
    a, b = start_pods(serve, sentinel.url(), sentinel.url(), flags=FAILOVER_FLAGS)
    await wait_all_ready([a, b], 200, 5000 * MS)
    room = fresh_room()
    a1, b1 = await inbox(a, room), await inbox(b, room)
    await crossed(a1, b1, "before", 3000 * MS)

    stop = asyncio.Event()
    talkers = [
        asyncio.create_task(chatter(box, tag, stop, every=20 * MS, most=2000))
        for box, tag in ((a1, "a"), (b1, "b"))
    ]
    await asyncio.sleep(300 * MS)
    old = await asyncio.to_thread(sentinel.kill_master)
    new = await asyncio.to_thread(sentinel.wait_for_failover)
    assert new != old
    # Every pod reconnects to the new master by itself and serves across pods again.
    await wait_all_ready([a, b], 200, 15000 * MS)
    after_a = await crossed(a1, b1, "after-a", 10000 * MS)
    after_b = await crossed(b1, a1, "after-b", 5000 * MS)
    await asyncio.sleep(300 * MS)
    stop.set()
    await asyncio.gather(*talkers)
    await asyncio.sleep(500 * MS)

    for box in (a1, b1):
        assert not box.closed and box.errors() == []
        assert_in_order(box)  # no offset skipped or repeated, failover or not
    # What was published after the failover reached both pods, from both.
    for got in (after_a, after_b):
        text = got["data"]["text"]
        assert text in a1.texts() and text in b1.texts()
    # Every chat that went through the new master (an offset past the marker) is on both.
    mark = after_a["offset"]
    for box, other in ((a1, b1), (b1, a1)):
        late = [m["data"]["text"] for m in retained(box) if not is_notice(m) and m["offset"] > mark]
        assert late and set(late) <= set(other.texts())


async def test_a_promoted_replica_without_the_last_writes_resets_the_room(
    serve: Serve, sentinel: SentinelTopology, inbox: Callable[..., Awaitable[Inbox]]
) -> None:
    a, b = start_pods(serve, sentinel.url(), sentinel.url(), flags=FAILOVER_FLAGS)
    await wait_all_ready([a, b], 200, 5000 * MS)
    room = fresh_room()
    a1, b1 = await inbox(a, room), await inbox(b, room)
    statuses: list[RoomStatus] = []
    texts: list[str] = []
    async with connect(a.ws, rooms=[room], on_join=statuses.append) as client:
        reader = asyncio.create_task(_read_client(client, texts))
        try:
            await _drill(sentinel, [a, b], inbox, a1, b1, room, statuses, texts)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _drill(
    sentinel: SentinelTopology,
    pods: list[ServerProcess],
    inbox: Callable[..., Awaitable[Inbox]],
    a1: Inbox,
    b1: Inbox,
    room: str,
    statuses: list[RoomStatus],
    texts: list[str],
) -> None:
    for i in (1, 2, 3):
        await a1.send_chat(f"kept-{i}")
        assert (await b1.chat(f"kept-{i}"))["offset"] == i
    late = await inbox(pods[0], room)  # its welcome names the room's epoch and offset
    welcome = late.messages[0]["data"]
    assert welcome["offset"] == 3
    epoch = welcome["epoch"]

    # The replica stops applying writes; three more are delivered, then the master dies.
    replica = await asyncio.to_thread(sentinel.stall_replica)
    for i in (4, 5, 6):
        await a1.send_chat(f"lost-{i}")
        assert (await b1.chat(f"lost-{i}"))["offset"] == i
    assert await asyncio.to_thread(sentinel.replication_stalled)
    await asyncio.to_thread(sentinel.kill_master)
    sentinel.resume(replica)
    assert await asyncio.to_thread(sentinel.wait_for_failover) == replica
    await wait_all_ready(pods, 200, 15000 * MS)

    # Every member is told: its position no longer means anything past offset 3.
    for box in (a1, b1):
        notice = await box.wait_for(is_notice, 10000 * MS)
        assert notice["data"]["room"] == room
        assert notice["data"]["recovered"] is False
        assert notice["data"]["offset"] == 3
        assert notice["data"]["epoch"] != epoch
    # New messages take offsets 4, 5, 6 again, and every member gets them. (A sender's
    # publication caught on a connection to the dead master is retried with its id,
    # so it may come after the next ones: the room's order is what Redis assigned.)
    for i in (1, 2, 3):
        await b1.send_chat(f"new-{i}")
    for box in (a1, b1):
        got = [await box.chat(f"new-{i}", 5000 * MS) for i in (1, 2, 3)]
        assert sorted(m["offset"] for m in got) == [4, 5, 6]
        assert_in_order(box)
        assert box.errors() == []

    # The Python client resyncs, and does not drop the new messages as seen.
    async def resynced() -> bool:
        return any(s.resync and not s.recovered for s in statuses) and {
            "new-1",
            "new-2",
            "new-3",
        } <= set(texts)

    await eventually(resynced, 5000 * MS)
    assert texts.index("lost-6") < texts.index("new-1")


async def _read_client(client: Client, texts: list[str]) -> None:
    async for message in client:
        if message.type == MessageType.CHAT and isinstance(message.data, dict):
            texts.append(message.data.get("text"))
