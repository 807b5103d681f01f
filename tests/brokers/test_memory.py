"""The in-memory broker: the shared conformance suite plus what is specific to it."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import pytest

from roomcast.brokers.base import Broker, Retention
from roomcast.brokers.memory import MemoryBroker, MemoryPresence
from roomcast.errors import HubClosed
from roomcast.protocol import Encoded, Message, MessageFactory, MessageType
from tests.brokers.conformance import (
    AdvanceTime,
    BrokerConformance,
    MakeBroker,
    Recorder,
    offsets,
)


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class TestMemoryBroker(BrokerConformance):
    @pytest.fixture
    async def make_broker(self, clock: FakeClock) -> AsyncIterator[MakeBroker]:
        brokers: list[MemoryBroker] = []

        async def make(
            handler: Recorder,
            *,
            history_size: int = 100,
            history_ttl: float = 300.0,
            history_bytes: int = 1 << 20,
            retention: Retention | None = None,
        ) -> Broker:
            broker = MemoryBroker(
                history_size=history_size,
                history_ttl=history_ttl,
                history_bytes=history_bytes,
                clock=clock,
            )
            broker.set_retention(retention)
            await broker.start(handler)
            brokers.append(broker)
            return broker

        yield make
        for broker in brokers:
            await broker.close()

    @pytest.fixture
    def advance_time(self, clock: FakeClock) -> AdvanceTime:
        async def advance(seconds: float) -> None:
            clock.now += seconds

        return advance


def chat(factory: MessageFactory, room: str | None, text: str) -> Message:
    return factory.make(MessageType.CHAT, room=room, data={"text": text})


async def test_publication_is_handed_back_within_the_call() -> None:
    recorder = Recorder()
    broker = MemoryBroker()
    await broker.start(recorder)
    try:
        message = chat(MessageFactory(), "r", "x")
        publication = broker.publish(message)
        # Handed back and stored before publish returns, not at the next await.
        assert len(recorder.publications) == 1
        assert recorder.publications[0].message is message
        assert message.offset == 1
        assert await publication is message
    finally:
        await broker.close()


async def test_history_keeps_the_published_bytes() -> None:
    recorder = Recorder()
    broker = MemoryBroker()
    await broker.start(recorder)
    try:
        factory = MessageFactory()
        for i in range(3):
            broker.publish(chat(factory, "r", str(i)))
        page = await broker.history("r")
        assert len(page.messages) == 3
        for stored, handed in zip(page.messages, recorder.publications, strict=True):
            assert stored.frame is handed.frame  # encoded once, kept as is (one copy)
            assert stored.message == handed.message
    finally:
        await broker.close()


async def test_history_adds_nothing_to_the_cyclic_collector() -> None:
    # A full history must not make every full collection walk it: once the
    # collector has looked at them, retained entries are no longer tracked.
    broker = MemoryBroker(history_size=50)
    await broker.start(Recorder())
    try:
        factory = MessageFactory()
        for i in range(80):
            broker.publish(factory.make(MessageType.CHAT, room="r", data={"n": i, "list": [i]}))
        gc.collect()
        entries = list(broker._streams["r"].entries)
        assert len(entries) == 50
        assert not any(gc.is_tracked(entry) for entry in entries)
        assert not any(gc.is_tracked(record) for record in broker._order)  # eviction order
        assert [Encoded.from_frame(frame).message.data["n"] for _, frame in entries] == list(
            range(30, 80)
        )
    finally:
        await broker.close()


async def test_zero_ttl_disables_history(clock: FakeClock) -> None:
    broker = MemoryBroker(history_ttl=0, clock=clock)
    await broker.start(Recorder())
    try:
        stored = await broker.publish(chat(MessageFactory(), "r", "x"))
        assert stored.offset is None
        page = await broker.history("r")
        assert page.messages == []
        assert page.recovered is False
    finally:
        await broker.close()


def sweeper_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "roomcast-history-sweeper"]


async def test_lifecycle() -> None:
    broker = MemoryBroker(history_ttl=5)
    assert not broker.ready
    with pytest.raises(HubClosed):
        broker.publish(chat(MessageFactory(), "r", "early"))
    await broker.start(Recorder())
    assert broker.ready
    assert len(sweeper_tasks()) == 1
    await broker.publish(chat(MessageFactory(), "r", "x"))
    await broker.close()
    assert not broker.ready
    assert sweeper_tasks() == []
    with pytest.raises(HubClosed):
        broker.publish(chat(MessageFactory(), "r", "late"))


async def test_no_sweeper_without_history() -> None:
    for broker in (MemoryBroker(history_size=0), MemoryBroker(history_ttl=0)):
        await broker.start(Recorder())
        try:
            assert sweeper_tasks() == []
        finally:
            await broker.close()


def test_default_presence_store() -> None:
    assert isinstance(MemoryBroker().presence, MemoryPresence)


async def test_the_pod_byte_bound_evicts_the_oldest_messages_of_any_room() -> None:
    recorder = Recorder()
    broker = MemoryBroker(history_bytes=0, history_max_bytes=20 << 10)
    await broker.start(recorder)
    try:
        factory = MessageFactory()
        pad = "x" * (3 << 10)
        # Rooms a, b, c in turn: a1 b1 c1 a2 b2 c2 ... about 3 KiB each.
        for i in range(1, 5):
            for room in "abc":
                broker.publish(factory.make(MessageType.CHAT, room=room, data={"pad": pad, "i": i}))
        assert broker.retained_bytes <= 20 << 10
        kept = {room: offsets(await broker.history(room)) for room in "abc"}
        # 12 published, 6 fit: the six oldest went, over all rooms, oldest first.
        assert kept == {"a": [3, 4], "b": [3, 4], "c": [3, 4]}
        assert sum(n for budget, n in recorder.evicted if budget == "pod") == 6
        frames = [f for s in broker._streams.values() for _, f in s.entries]
        assert broker.retained_bytes == sum(len(f) for f in frames)
        assert [(await broker.history(room)).offset for room in "abc"] == [4, 4, 4]
    finally:
        await broker.close()


async def test_retained_bytes_are_given_back_when_a_history_expires(clock: FakeClock) -> None:
    broker = MemoryBroker(history_ttl=10, clock=clock)
    await broker.start(Recorder())
    try:
        factory = MessageFactory()
        for _ in range(5):
            broker.publish(chat(factory, "r", "x" * 1000))
        assert broker.retained_bytes > 5000
        epoch = (await broker.history("r")).epoch
        clock.now += 11
        page = await broker.history("r")  # expired: a new history in a new epoch
        assert page.epoch != epoch
        assert page.messages == []
        assert broker.retained_bytes == 0
    finally:
        await broker.close()


async def test_the_eviction_order_does_not_grow_past_the_retained_entries() -> None:
    # Rooms that only ever evict by their own count bound leave stale records
    # in the pod's eviction order; they are compacted away.
    broker = MemoryBroker(history_size=2)
    await broker.start(Recorder())
    try:
        factory = MessageFactory()
        for i in range(20_000):
            broker.publish(chat(factory, f"r{i % 10}", "x"))
        assert sum(len(s.entries) for s in broker._streams.values()) == 20
        assert len(broker._order) <= 2 * 20 + 1024
    finally:
        await broker.close()
