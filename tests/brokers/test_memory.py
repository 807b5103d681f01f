"""The in-memory broker: the shared conformance suite plus what is specific to it."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import orjson
import pytest

from roomcast.brokers.base import Broker
from roomcast.brokers.memory import MemoryBroker, MemoryPresence
from roomcast.errors import HubClosed
from roomcast.protocol import Message, MessageFactory, MessageType
from tests.brokers.conformance import AdvanceTime, BrokerConformance, MakeBroker, Recorder


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
            handler: Recorder, *, history_size: int = 100, history_ttl: float = 300.0
        ) -> Broker:
            broker = MemoryBroker(history_size=history_size, history_ttl=history_ttl, clock=clock)
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
            assert stored.payload is handed.payload  # encoded once, kept as is
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
        assert [orjson.loads(payload)["data"]["n"] for _, payload in entries] == list(range(30, 80))
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
