"""The pod's registry of connections and rooms, and the fan-out, without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from roomcast.app import Hub
from roomcast.errors import CloseCode
from roomcast.protocol import Encoded
from tests.core.test_connection import ListConnection


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    async with Hub(send_queue=4, send_queue_bytes=1 << 20) as hub:
        yield hub


async def test_join_and_leave_report_the_first_and_last_member(hub: Hub) -> None:
    registry = hub.registry
    a, b = ListConnection(hub), ListConnection(hub)
    assert registry.join(a, "r") is True
    assert registry.join(b, "r") is False
    assert registry.join(a, "r") is False  # again: still one member more, no new room
    assert registry.members("r") == {a, b}
    assert a.rooms == {"r"}
    assert registry.leave(a, "r") is False
    assert registry.leave(a, "r") is False  # not a member any more
    assert registry.leave(b, "r") is True
    assert "r" not in registry.rooms
    assert registry.members("r") == set()
    assert registry.leave(b, "never") is False


async def test_remove_forgets_every_membership_and_says_which_rooms_emptied(hub: Hub) -> None:
    registry = hub.registry
    a, b = ListConnection(hub), ListConnection(hub)
    for conn in (a, b):
        registry.add(conn)
    registry.join(a, "shared")
    registry.join(b, "shared")
    registry.join(a, "alone")
    assert len(registry) == 2
    assert sorted(registry.remove(a)) == [("alone", True), ("shared", False)]
    assert len(registry) == 1
    assert a.id not in registry.connections
    assert a.rooms == {"alone", "shared"}  # kept for on_disconnect
    assert registry.members("shared") == {b}
    assert "alone" not in registry.rooms


async def test_fanout_queues_one_object_and_marks_each_connection_once(hub: Hub) -> None:
    conns = [ListConnection(hub, writable=False) for _ in range(3)]
    gone = ListConnection(hub)
    gone.pending = None  # closed: nothing more is queued on it
    flusher = hub.flusher
    before = len(flusher.dirty)
    first, second = Encoded(orjson.dumps({"n": 1})), Encoded(orjson.dumps({"n": 2}))
    assert hub.registry.fanout([*conns, gone], first, flusher) == 3
    assert hub.registry.fanout(conns, second, flusher) == 3
    assert len(flusher.dirty) - before == 3  # marked on the first message only
    for conn in conns:
        assert conn.pending == [first, second]
        assert conn.pending[0] is first  # the same object, not a copy
    assert gone.pending is None


@pytest.mark.parametrize("small", [0, 1 << 20], ids=["bytes-counted", "small-frames"])
async def test_fanout_closes_a_stuck_member_at_the_message_bound(hub: Hub, small: int) -> None:
    stuck, fine = ListConnection(hub, writable=False), ListConnection(hub, writable=False)
    fine.limit = 100
    frame = Encoded(orjson.dumps({"x": "y"}))
    for _ in range(hub.send_queue):
        hub.registry.fanout([stuck, fine], frame, hub.flusher, small)
    await asyncio.sleep(0)
    assert stuck.close_codes == [CloseCode.SLOW_CONSUMER]
    assert fine.close_codes == []
    assert fine.queued == (0 if small else hub.send_queue * len(frame.frame))
