"""Per-connection machinery: the token bucket, the flusher, the outbox and the inbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from roomcast.app import Hub
from roomcast.core.admission import Admission
from roomcast.core.connection import Connection
from roomcast.core.endpoint import HandlerConfig
from roomcast.core.flusher import Flusher
from roomcast.core.ratelimit import TokenBucket
from roomcast.errors import CloseCode
from roomcast.protocol import Encoded, Message, MessageType
from tests.support import MS

# -- TokenBucket ---------------------------------------------------------------------------


def test_bucket_starts_full_and_empties() -> None:
    bucket = TokenBucket(rate=4, burst=2, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]


def test_bucket_refills_at_rate() -> None:
    bucket = TokenBucket(rate=4, burst=2, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert not bucket.take(0.125)  # half a token
    assert bucket.take(0.25)  # the other half arrived
    assert not bucket.take(0.25)
    assert not bucket.take(0.375)
    assert bucket.take(0.5)


def test_bucket_saves_at_most_burst() -> None:
    bucket = TokenBucket(rate=4, burst=3, now=0.0)
    for _ in range(3):
        assert bucket.take(0.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_refused_takes_do_not_cost_tokens() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=0.0)
    assert bucket.take(0.0)
    for t in (0.25, 0.5, 0.75):
        assert not bucket.take(t)
    assert bucket.take(1.0)


def test_bucket_sustained_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    # 20 messages a second for 10 seconds: the burst plus 10 per second get through.
    taken = sum(bucket.take(i / 20) for i in range(200))
    assert taken in (5 + 100, 5 + 99)


def test_rate_zero_disables() -> None:
    bucket = TokenBucket(rate=0, burst=0, now=0.0)
    assert all(bucket.take(0.0) for _ in range(1000))


# -- a connection whose transport is a list -------------------------------------------------


class ListConnection(Connection):
    def __init__(self, hub: Hub, *, writable: bool = True, fail: bool = False) -> None:
        super().__init__(hub, HandlerConfig())
        self.can_write = writable
        self.fail = fail
        self.written: list[list[bytes]] = []
        self.close_codes: list[int] = []
        self.aborted = 0

    def writable(self) -> bool:
        return self.can_write

    def flush(self) -> None:
        if self.fail:
            raise OSError("transport broken")
        pending = self.pending
        if not pending or not self.can_write:
            return
        self.written.append([bytes(e.payload) for e in self.take_pending()])

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        self.close_codes.append(code)
        self.hub.detach(self)

    def abort(self) -> None:
        self.aborted += 1
        self.hub.detach(self)

    def decoded(self) -> list[Any]:
        return [orjson.loads(p) for batch in self.written for p in batch]


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    async with Hub(send_queue=16) as hub:
        yield hub


def frames(n: int, start: int = 0) -> list[Encoded]:
    return [Encoded(orjson.dumps({"n": i})) for i in range(start, start + n)]


# -- Flusher ----------------------------------------------------------------------------


async def test_flusher_flushes_once_per_iteration(hub: Hub) -> None:
    conn = ListConnection(hub)
    flusher = Flusher(asyncio.get_running_loop())
    for encoded in frames(10):
        assert conn.pending is not None
        conn.pending.append(encoded)
        flusher.mark(conn)
    assert conn.written == []  # nothing is written before the loop turns
    await asyncio.sleep(0)
    assert conn.written == [[bytes(e.payload) for e in frames(10)]]
    await asyncio.sleep(0)
    assert len(conn.written) == 1

    assert conn.pending is not None
    conn.pending.append(frames(1, 10)[0])
    flusher.mark(conn)
    await asyncio.sleep(0)
    assert len(conn.written) == 2
    assert conn.decoded() == [{"n": i} for i in range(11)]


async def test_push_marks_once_and_flushes_in_order(hub: Hub) -> None:
    one, two = ListConnection(hub), ListConnection(hub)
    for encoded in frames(10):
        one.push(encoded)
    two.push(frames(1, 99)[0])
    assert one.written == []
    assert two.written == []
    await asyncio.sleep(0)
    assert one.written == [[bytes(e.payload) for e in frames(10)]]
    assert two.decoded() == [{"n": 99}]


async def test_flusher_skips_connections_with_nothing_pending(hub: Hub) -> None:
    conn = ListConnection(hub, fail=True)
    flusher = Flusher(asyncio.get_running_loop())
    flusher.mark(conn)
    await asyncio.sleep(0)
    assert conn.aborted == 0


async def test_a_failing_flush_aborts_only_its_connection(hub: Hub) -> None:
    broken = ListConnection(hub, fail=True)
    fine = ListConnection(hub)
    hub.attach(broken, Admission(room=None))
    hub.attach(fine, Admission(room=None))
    await asyncio.sleep(5 * MS)
    assert broken.aborted == 1
    assert fine.decoded()[0]["data"]["event"] == "welcome"
    assert fine.aborted == 0
    assert hub.connection_count == 1


# -- outbox ------------------------------------------------------------------------------


async def test_full_outbox_of_a_writable_connection_is_written_at_once(hub: Hub) -> None:
    conn = ListConnection(hub)
    for encoded in frames(16):
        conn.push(encoded)
    assert len(conn.written) == 1  # written as soon as the queue filled, not at the next turn
    assert conn.decoded() == [{"n": i} for i in range(16)]
    assert conn.close_codes == []


async def test_full_outbox_of_a_stuck_connection_closes_it_with_4008(hub: Hub) -> None:
    conn = ListConnection(hub, writable=False)
    hub.attach(conn, Admission(room=None))
    for encoded in frames(14):
        conn.push(encoded)
    assert conn.pending is not None
    assert len(conn.pending) == 15  # the welcome and 14 frames
    conn.push(frames(1, 14)[0])
    assert conn.pending is None
    conn.push(frames(1, 15)[0])  # ignored from now on
    assert conn.close_codes == []  # closed on the next turn, not inside the push
    await asyncio.sleep(0)
    assert conn.close_codes == [CloseCode.SLOW_CONSUMER]
    assert conn.written == []
    assert hub.connection_count == 0


async def test_an_outbox_over_its_bytes_closes_a_stuck_connection_with_4008() -> None:
    # 16 KiB a message, a 64 KiB byte bound: the fourth one reaches it, long
    # before the 256-message bound.
    async with Hub(send_queue_bytes=64 << 10) as hub:
        conn = ListConnection(hub, writable=False)
        hub.attach(conn, Admission(room=None))
        await asyncio.sleep(0)
        big = [Encoded(orjson.dumps({"pad": "x" * (16 << 10), "n": i})) for i in range(4)]
        for encoded in big[:3]:
            conn.push(encoded)
        assert conn.pending is not None
        # Frames up to small_frame (the welcome) are bounded by the count alone.
        assert conn.queued == sum(len(e.frame) for e in conn.pending[1:]) == 3 * len(big[0].frame)
        assert len(conn.pending[0].frame) <= hub.small_frame
        conn.push(big[3])
        assert conn.pending is None
        await asyncio.sleep(0)
        assert conn.close_codes == [CloseCode.SLOW_CONSUMER]


async def test_an_outbox_over_its_bytes_is_written_at_once_when_it_can_be() -> None:
    async with Hub(send_queue_bytes=64 << 10) as hub:
        conn = ListConnection(hub)
        big = [Encoded(orjson.dumps({"pad": "x" * (16 << 10), "n": i})) for i in range(4)]
        for encoded in big:
            conn.push(encoded)
        assert len(conn.written) == 1
        assert conn.queued == 0
        assert [m["n"] for m in conn.decoded()] == [0, 1, 2, 3]
        assert conn.close_codes == []


async def test_the_fanout_counts_bytes_as_push_does() -> None:
    async with Hub(send_queue_bytes=64 << 10) as hub:
        stuck = [ListConnection(hub, writable=False) for _ in range(3)]
        for conn in stuck:
            hub.attach(conn, Admission(room="r"))
        await asyncio.sleep(5 * MS)
        pad = "x" * (16 << 10)
        for i in range(3):
            hub.broadcast(hub.messages.make(MessageType.CHAT, room="r", data={"pad": pad, "n": i}))
        assert all(conn.pending is not None for conn in stuck)
        hub.broadcast(hub.messages.make(MessageType.CHAT, room="r", data={"pad": pad, "n": 3}))
        await asyncio.sleep(0)
        assert [conn.close_codes for conn in stuck] == [[CloseCode.SLOW_CONSUMER]] * 3


async def test_send_encodes_the_message(hub: Hub) -> None:
    conn = ListConnection(hub)
    message = hub.messages.system("hello", {"x": 1})
    conn.send(message)
    await asyncio.sleep(0)
    assert conn.decoded() == [message.to_dict()]


# -- ids -----------------------------------------------------------------------------------


async def test_each_hub_numbers_its_own_connections() -> None:
    async with Hub() as one, Hub() as two:
        first = [ListConnection(one).id for _ in range(2)]
        other = ListConnection(two).id
        assert first == [f"c1-{one.node_id}", f"c2-{one.node_id}"]
        assert other == f"c1-{two.node_id}"  # no counter shared between hubs


async def test_connection_ids_can_be_injected() -> None:
    numbers = iter([7, 42])
    async with Hub(connection_ids=lambda: next(numbers)) as hub:
        assert [ListConnection(hub).id for _ in range(2)] == [
            f"c7-{hub.node_id}",
            f"c42-{hub.node_id}",
        ]


# -- inbox -------------------------------------------------------------------------------


async def test_inbox_is_bounded_while_a_hook_waits() -> None:
    release = asyncio.Event()

    async def wait(conn: Connection, message: Message) -> Message:
        await release.wait()
        return message

    async with Hub(send_queue=4) as hub:
        conn = ListConnection(hub)
        conn.config = HandlerConfig(on_message=wait)
        hub.attach(conn, Admission(room="r"))
        await asyncio.sleep(5 * MS)
        for i in range(7):
            conn.receive(orjson.dumps({"type": "chat", "data": {"text": f"m{i}"}}).decode())
        await asyncio.sleep(5 * MS)
        errors = [m["data"]["code"] for m in conn.decoded() if m["type"] == "error"]
        assert errors == ["rate_limited", "rate_limited"]  # 1 running + 4 waiting; 2 dropped
        release.set()
        await asyncio.sleep(5 * MS)
        texts = [m["data"]["text"] for m in conn.decoded() if m["type"] == "chat"]
        assert texts == [f"m{i}" for i in range(5)]
        assert conn.inbox is None
        assert conn.worker is None
