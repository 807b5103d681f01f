"""The conformance suite every broker must pass, written against the Broker interface only.

To run it against an implementation, subclass :class:`BrokerConformance` in a
``test_*.py`` module and provide two fixtures:

``make_broker``
    An async factory ``make(handler, *, history_size=100, history_ttl=300.0,
    history_bytes=1 << 20, retention=None)``
    returning a *started* broker that reports to ``handler``, given
    ``retention`` (:meth:`Broker.set_retention <roomcast.brokers.base.Broker.set_retention>`)
    before it started. The fixture closes every broker it made at teardown.

``advance_time``
    An async callable ``advance(seconds)`` that makes ``seconds`` of broker time
    pass (an injected clock for the memory broker, a real wait for a server-side
    TTL). :attr:`BrokerConformance.ttl` is the history TTL the TTL tests use; an
    implementation that has to wait in real time sets it small.

Publications may come back asynchronously (over the network), so the tests wait
for them with :meth:`Recorder.wait_for` rather than expecting them at once, and
every room name is unique so a shared backend never mixes tests up.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import orjson
import pytest

from roomcast.brokers.base import (
    Broker,
    HistoryPage,
    PresenceChange,
    PresenceMember,
    PresenceStore,
    Retention,
    RoomStats,
)
from roomcast.protocol import Encoded, Message, MessageFactory, MessageType, PresenceStatus, encode
from tests.support import MS

WAIT = 3000 * MS
"""How long to wait for a publication to come back."""

SETTLE = 50 * MS
"""How long to wait for publications that must *not* come back."""


class Recorder:
    """A :class:`~roomcast.brokers.base.BrokerHandler` that records what it is handed."""

    def __init__(self) -> None:
        self.publications: list[Encoded] = []
        self.errors: list[tuple[Message, BaseException]] = []
        self.unknown: list[tuple[Message, BaseException]] = []
        self.reconnects = 0
        self.loop_failures: list[tuple[str, BaseException]] = []
        self.subscriber_drops = 0
        self.repairs: list[tuple[str, int, int]] = []
        self.duplicates = 0
        self.expired: list[tuple[str, str]] = []
        self.vacated: list[tuple[str, bool]] = []
        self.evicted: list[tuple[str, int]] = []
        self.resets: list[tuple[str, str, int]] = []

    def handle_publication(self, encoded: Encoded) -> None:
        self.publications.append(encoded)

    def handle_publish_error(self, message: Message, exc: BaseException) -> None:
        self.errors.append((message, exc))

    def handle_history_reset(self, room: str, epoch: str, offset: int) -> None:
        self.resets.append((room, epoch, offset))

    def handle_publish_unknown(self, message: Message, exc: BaseException) -> None:
        self.unknown.append((message, exc))

    def handle_loop_failure(self, name: str, exc: BaseException) -> None:
        self.loop_failures.append((name, exc))

    def handle_reconnect(self) -> None:
        self.reconnects += 1

    def handle_history_evicted(self, budget: str, count: int) -> None:
        self.evicted.append((budget, count))

    def handle_subscriber_lost(self) -> None:
        self.subscriber_drops += 1

    def handle_repair(self, room: str, *, repaired: int, lost: int) -> None:
        self.repairs.append((room, repaired, lost))

    def handle_duplicates(self, count: int) -> None:
        self.duplicates += count

    def handle_presence_expired(self, room: str, user_id: str, *, vacated: bool = False) -> None:
        self.vacated.append((room, vacated))
        self.expired.append((room, user_id))

    async def wait_for(self, count: int) -> list[Encoded]:
        """Wait until ``count`` publications arrived, then a little more; return them all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while len(self.publications) < count:
            assert loop.time() < deadline, (
                f"expected {count} publications, got {len(self.publications)}"
            )
            await asyncio.sleep(1 * MS)
        await asyncio.sleep(SETTLE)  # anything extra (a duplicate) shows up now
        assert not self.errors, f"publish errors: {self.errors}"
        return list(self.publications)

    def ids(self, room: str | None) -> list[str]:
        """Ids of the publications for ``room``, in the order they were handed back."""
        return [e.message.id for e in self.publications if e.message and e.message.room == room]


async def wait_for_room(recorder: Recorder, room: str, count: int) -> None:
    """Wait until ``count`` publications of ``room`` arrived, then a little more."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while len(recorder.ids(room)) < count:
        assert loop.time() < deadline, f"expected {count} publications of {room}"
        await asyncio.sleep(1 * MS)
    await asyncio.sleep(SETTLE)


class MakeBroker(Protocol):
    def __call__(
        self,
        handler: Recorder,
        *,
        history_size: int = ...,
        history_ttl: float = ...,
        history_bytes: int = ...,
        retention: Retention | None = ...,
    ) -> Awaitable[Broker]: ...


AdvanceTime = Callable[[float], Awaitable[None]]

_rooms = itertools.count(1)


def decoded(encoded: Encoded) -> dict[str, Any]:
    obj = orjson.loads(encoded.payload)
    assert isinstance(obj, dict)
    return obj


def offsets(page: HistoryPage) -> list[int]:
    return [decoded(e)["offset"] for e in page.messages]


def page_ids(page: HistoryPage) -> list[str]:
    return [decoded(e)["id"] for e in page.messages]


class BrokerConformance:
    """Behaviour every :class:`~roomcast.brokers.base.Broker` must have."""

    ttl: float = 10.0
    """History TTL (seconds) used by the TTL tests."""

    # -- fixtures an implementation provides --------------------------------------------

    @pytest.fixture
    async def make_broker(self) -> AsyncIterator[MakeBroker]:
        raise NotImplementedError("subclasses provide a make_broker fixture")
        yield  # pragma: no cover

    @pytest.fixture
    def advance_time(self) -> AdvanceTime:
        raise NotImplementedError("subclasses provide an advance_time fixture")

    # -- shared fixtures ----------------------------------------------------------------

    @pytest.fixture
    def recorder(self) -> Recorder:
        return Recorder()

    @pytest.fixture
    async def broker(self, make_broker: MakeBroker, recorder: Recorder) -> Broker:
        return await make_broker(recorder)

    @pytest.fixture
    def factory(self) -> MessageFactory:
        return MessageFactory()

    @pytest.fixture
    def room(self) -> str:
        return self.new_room()

    @staticmethod
    def new_room() -> str:
        return f"conf-{uuid.uuid4().hex[:12]}-{next(_rooms)}"

    @staticmethod
    def chat(factory: MessageFactory, room: str | None, text: str) -> Message:
        return factory.make(MessageType.CHAT, room=room, data={"text": text}, sender="alice")

    async def publish_chats(
        self, broker: Broker, factory: MessageFactory, room: str, count: int
    ) -> list[Message]:
        futures = [broker.publish(self.chat(factory, room, f"m{i}")) for i in range(count)]
        return list(await asyncio.gather(*futures))

    # -- interface ------------------------------------------------------------------------

    async def test_implements_the_protocols(self, broker: Broker) -> None:
        assert isinstance(broker, Broker)
        assert isinstance(broker.presence, PresenceStore)
        assert broker.ready

    # -- publish --------------------------------------------------------------------------

    async def test_offsets_count_per_room(
        self, broker: Broker, recorder: Recorder, factory: MessageFactory
    ) -> None:
        room_a, room_b = self.new_room(), self.new_room()
        await broker.subscribe(room_a)
        await broker.subscribe(room_b)
        plan = [room_a, room_a, room_b, room_a, room_b]
        sent = [self.chat(factory, r, f"m{i}") for i, r in enumerate(plan)]
        stored = [await broker.publish(m) for m in sent]

        assert [m.id for m in stored] == [m.id for m in sent]
        assert [m.offset for m in stored] == [1, 2, 1, 3, 2]
        got = await recorder.wait_for(len(sent))
        assert len(got) == len(sent)
        assert recorder.ids(room_a) == [sent[0].id, sent[1].id, sent[3].id]
        assert recorder.ids(room_b) == [sent[2].id, sent[4].id]
        by_id = {m.id: m for m in stored}
        for encoded in got:
            assert encoded.message is not None
            wire = decoded(encoded)
            expected = by_id[wire["id"]]
            assert wire["offset"] == expected.offset
            assert encoded.message.offset == expected.offset
            assert encoded.payload == encode(expected)
            assert wire["data"] == expected.data
            assert wire["from"] == "alice"

    async def test_concurrent_publishes_get_consecutive_offsets_in_order(
        self, broker: Broker, recorder: Recorder, factory: MessageFactory, room: str
    ) -> None:
        await broker.subscribe(room)
        stored = await self.publish_chats(broker, factory, room, 40)
        assert [m.offset for m in stored] == list(range(1, 41))
        await recorder.wait_for(40)
        assert recorder.ids(room) == [m.id for m in stored]
        assert [e.message.offset for e in recorder.publications if e.message] == list(range(1, 41))

    async def test_future_resolves_to_stored_message(
        self, broker: Broker, factory: MessageFactory, room: str
    ) -> None:
        await broker.subscribe(room)
        message = factory.make(MessageType.NOTIFICATION, room=room, data={"n": 1})
        stored = await broker.publish(message)
        assert stored.id == message.id
        assert stored.type is MessageType.NOTIFICATION
        assert stored.room == room
        assert stored.data == {"n": 1}
        assert stored.timestamp == message.timestamp
        assert stored.offset == 1
        page = await broker.history(room)
        assert [e.payload for e in page.messages] == [encode(stored)]

    async def test_non_retained_messages_get_no_offset(
        self, broker: Broker, recorder: Recorder, factory: MessageFactory, room: str
    ) -> None:
        await broker.subscribe(room)
        presence = factory.presence(room, "alice", PresenceStatus.ONLINE)
        global_chat = self.chat(factory, None, "to everyone")
        global_note = factory.make(MessageType.NOTIFICATION, data={"n": 2})
        stored = [await broker.publish(m) for m in (presence, global_chat, global_note)]

        assert [m.offset for m in stored] == [None, None, None]
        got = await recorder.wait_for(3)
        assert len(got) == 3
        assert sorted(decoded(e)["id"] for e in got) == sorted(m.id for m in stored)
        for encoded in got:
            assert "offset" not in decoded(encoded)
            assert encoded.message is not None
            assert encoded.message.offset is None
            assert encoded.payload == encode(encoded.message)
        assert recorder.ids(None) == [global_chat.id, global_note.id]
        assert recorder.ids(room) == [presence.id]
        page = await broker.history(room)
        assert page.messages == []
        assert page.offset == 0

    async def test_non_retained_do_not_consume_offsets(
        self, broker: Broker, recorder: Recorder, factory: MessageFactory, room: str
    ) -> None:
        await broker.subscribe(room)
        first = await broker.publish(self.chat(factory, room, "a"))
        await broker.publish(factory.presence(room, "bob", PresenceStatus.AWAY))
        second = await broker.publish(self.chat(factory, room, "b"))
        assert (first.offset, second.offset) == (1, 2)
        await recorder.wait_for(3)

    # -- history ----------------------------------------------------------------------------

    async def test_history_newest_first_limit(
        self, broker: Broker, factory: MessageFactory, room: str
    ) -> None:
        stored = await self.publish_chats(broker, factory, room, 5)
        page = await broker.history(room)
        assert page.room == room
        assert page.offset == 5
        assert page_ids(page) == [m.id for m in stored]
        assert offsets(page) == [1, 2, 3, 4, 5]
        assert [e.payload for e in page.messages] == [encode(m) for m in stored]

        newest = await broker.history(room, limit=2)
        assert page_ids(newest) == [stored[3].id, stored[4].id]
        assert newest.offset == 5
        assert page_ids(await broker.history(room, limit=10)) == [m.id for m in stored]
        assert (await broker.history(room, limit=0)).messages == []

    async def test_history_since(self, broker: Broker, factory: MessageFactory, room: str) -> None:
        stored = await self.publish_chats(broker, factory, room, 5)
        page = await broker.history(room, since=stored[1].id)
        assert page.recovered is True
        assert page_ids(page) == [m.id for m in stored[2:]]
        assert offsets(page) == [3, 4, 5]

        newest = await broker.history(room, since=stored[4].id)
        assert newest.recovered is True
        assert newest.messages == []

    async def test_history_since_unknown_id(
        self, broker: Broker, factory: MessageFactory, room: str
    ) -> None:
        await self.publish_chats(broker, factory, room, 3)
        page = await broker.history(room, since=str(uuid.uuid4()))
        assert page.recovered is False
        assert page.messages == []
        assert page.offset == 3

    async def test_history_pages_forward(
        self, broker: Broker, factory: MessageFactory, room: str
    ) -> None:
        stored = await self.publish_chats(broker, factory, room, 7)
        seen: list[str] = []
        since = stored[0].id
        pages = 0
        while True:
            page = await broker.history(room, since=since, limit=2)
            assert page.recovered is True
            assert len(page.messages) <= 2
            if not page.messages:
                break
            pages += 1
            seen += page_ids(page)
            since = seen[-1]
        assert seen == [m.id for m in stored[1:]]
        assert pages == 3

    async def test_history_epoch_is_stable(
        self, broker: Broker, factory: MessageFactory, room: str
    ) -> None:
        await self.publish_chats(broker, factory, room, 2)
        first = await broker.history(room)
        assert isinstance(first.epoch, str)
        assert first.epoch
        await self.publish_chats(broker, factory, room, 2)
        second = await broker.history(room, limit=1)
        third = await broker.history(room, since=str(uuid.uuid4()))
        assert second.epoch == first.epoch == third.epoch
        assert second.offset == 4

    async def test_history_of_rooms_is_separate(
        self, broker: Broker, factory: MessageFactory
    ) -> None:
        room_a, room_b = self.new_room(), self.new_room()
        in_a = await self.publish_chats(broker, factory, room_a, 2)
        in_b = await self.publish_chats(broker, factory, room_b, 3)
        assert page_ids(await broker.history(room_a)) == [m.id for m in in_a]
        assert page_ids(await broker.history(room_b)) == [m.id for m in in_b]
        cross = await broker.history(room_a, since=in_b[0].id)
        assert cross.recovered is False
        assert cross.messages == []

    async def test_history_of_unknown_room(self, broker: Broker, room: str) -> None:
        page = await broker.history(room)
        assert page.room == room
        assert page.messages == []
        assert page.offset == 0
        assert (await broker.history(room, since=str(uuid.uuid4()))).recovered is False

    async def test_history_size_evicts_oldest(
        self, make_broker: MakeBroker, factory: MessageFactory, room: str
    ) -> None:
        broker = await make_broker(Recorder(), history_size=3)
        stored = await self.publish_chats(broker, factory, room, 5)
        page = await broker.history(room)
        assert page_ids(page) == [m.id for m in stored[2:]]
        assert offsets(page) == [3, 4, 5]
        assert page.offset == 5

        for evicted in stored[:2]:
            lost = await broker.history(room, since=evicted.id)
            assert lost.recovered is False
            assert lost.messages == []
        kept = await broker.history(room, since=stored[2].id)
        assert kept.recovered is True
        assert page_ids(kept) == [stored[3].id, stored[4].id]

    async def test_history_bytes_evict_oldest_and_keep_offsets_honest(
        self, make_broker: MakeBroker, factory: MessageFactory, room: str
    ) -> None:
        # About 3 KiB a message and 10 KiB a room: three are kept, whatever the count bound.
        recorder = Recorder()
        broker = await make_broker(recorder, history_size=100, history_bytes=10 << 10)
        pad = "x" * (3 << 10)
        stored = [
            await broker.publish(factory.make(MessageType.CHAT, room=room, data={"pad": pad}))
            for _ in range(8)
        ]
        page = await broker.history(room)
        assert offsets(page) == [6, 7, 8]  # the newest, contiguous, numbered as published
        assert page.offset == 8
        assert sum(len(e) for e in page.messages) <= 10 << 10
        epoch = page.epoch
        assert (await broker.history(room, since=stored[4].id)).recovered is False
        kept = await broker.history(room, since=stored[5].id)
        assert kept.recovered is True
        assert page_ids(kept) == [stored[6].id, stored[7].id]
        assert sum(n for budget, n in recorder.evicted if budget == "room") == 5
        # Offsets go on from where they were, in the same epoch.
        nxt = await broker.publish(factory.make(MessageType.CHAT, room=room, data="small"))
        assert nxt.offset == 9
        after = await broker.history(room)
        assert after.epoch == epoch
        assert offsets(after) == [6, 7, 8, 9]

    async def test_history_bytes_keep_the_newest_message_whatever_its_size(
        self, make_broker: MakeBroker, factory: MessageFactory, room: str
    ) -> None:
        broker = await make_broker(Recorder(), history_bytes=1024)
        for _ in range(3):
            await broker.publish(factory.make(MessageType.CHAT, room=room, data="x" * 4096))
        page = await broker.history(room)
        assert offsets(page) == [3]

    async def test_history_size_zero_keeps_nothing(
        self, make_broker: MakeBroker, factory: MessageFactory, room: str
    ) -> None:
        recorder = Recorder()
        broker = await make_broker(recorder, history_size=0)
        await broker.subscribe(room)
        stored = await self.publish_chats(broker, factory, room, 3)
        got = await recorder.wait_for(3)
        assert [decoded(e)["id"] for e in got] == [m.id for m in stored]
        page = await broker.history(room)
        assert page.messages == []
        since = await broker.history(room, since=stored[0].id)
        assert since.recovered is False
        assert since.messages == []

    async def test_history_ttl_expiry(
        self, make_broker: MakeBroker, advance_time: AdvanceTime, factory: MessageFactory
    ) -> None:
        room = self.new_room()
        broker = await make_broker(Recorder(), history_ttl=self.ttl)
        old = await self.publish_chats(broker, factory, room, 2)
        before = await broker.history(room)
        assert page_ids(before) == [m.id for m in old]

        await advance_time(self.ttl * 2)
        after = await broker.history(room, since=old[0].id)
        assert after.recovered is False
        assert after.messages == []
        assert after.epoch != before.epoch

        fresh = await broker.publish(self.chat(factory, room, "again"))
        assert fresh.offset == 1
        page = await broker.history(room)
        assert page_ids(page) == [fresh.id]
        assert page.offset == 1
        assert page.epoch != before.epoch

    async def test_history_ttl_counts_from_last_publication(
        self, make_broker: MakeBroker, advance_time: AdvanceTime, factory: MessageFactory
    ) -> None:
        room = self.new_room()
        broker = await make_broker(Recorder(), history_ttl=self.ttl)
        first = await broker.publish(self.chat(factory, room, "1"))
        epoch = (await broker.history(room)).epoch
        await advance_time(self.ttl * 0.6)
        second = await broker.publish(self.chat(factory, room, "2"))
        await advance_time(self.ttl * 0.6)
        page = await broker.history(room, since=first.id)
        assert page.recovered is True
        assert page_ids(page) == [second.id]
        assert page.epoch == epoch
        assert second.offset == 2

    # -- per-room retention (namespaces) ------------------------------------------------

    async def test_retention_overrides_the_history_size_per_room(
        self, make_broker: MakeBroker, factory: MessageFactory
    ) -> None:
        short, wide, plain, unset, off = (self.new_room() for _ in range(5))
        limits: dict[str, tuple[int | None, float | None] | None] = {
            short: (2, None),
            wide: (6, None),
            plain: (None, None),  # both the broker's own
            off: (0, None),
        }  # unset: None, the broker's own
        recorder = Recorder()
        broker = await make_broker(recorder, history_size=4, retention=limits.get)
        for room in (short, wide, plain, unset):
            stored = await self.publish_chats(broker, factory, room, 8)
            assert [m.offset for m in stored] == list(range(1, 9))
        assert offsets(await broker.history(short)) == [7, 8]
        assert offsets(await broker.history(wide)) == [3, 4, 5, 6, 7, 8]
        assert offsets(await broker.history(plain)) == [5, 6, 7, 8]
        assert offsets(await broker.history(unset)) == [5, 6, 7, 8]
        assert (await broker.history(short)).offset == 8

        # Size 0: nothing kept, no offsets, still delivered.
        await broker.subscribe(off)
        kept_nothing = await self.publish_chats(broker, factory, off, 3)
        assert [m.offset for m in kept_nothing] == [None, None, None]
        await wait_for_room(recorder, off, 3)
        assert recorder.ids(off) == [m.id for m in kept_nothing]
        for encoded in recorder.publications:
            if encoded.message is not None and encoded.message.room == off:
                assert "offset" not in decoded(encoded)
        page = await broker.history(off)
        assert page.messages == []
        assert page.offset == 0
        assert (await broker.history(off, since=kept_nothing[0].id)).recovered is False

    async def test_retention_overrides_the_history_ttl_per_room(
        self, make_broker: MakeBroker, advance_time: AdvanceTime, factory: MessageFactory
    ) -> None:
        brief, plain, lasting = (self.new_room() for _ in range(3))
        limits = {brief: (None, self.ttl), lasting: (None, self.ttl * 100)}
        broker = await make_broker(
            Recorder(), history_ttl=self.ttl * 3, retention=lambda room: limits.get(room)
        )
        first = {room: await broker.publish(self.chat(factory, room, "1")) for room in limits}
        first[plain] = await broker.publish(self.chat(factory, plain, "1"))
        epochs = {room: (await broker.history(room)).epoch for room in first}

        await advance_time(self.ttl * 2)  # past brief's TTL, within the broker's
        gone = await broker.history(brief, since=first[brief].id)
        assert gone.recovered is False
        assert gone.messages == []
        assert gone.epoch != epochs[brief]
        for room in (plain, lasting):
            page = await broker.history(room)
            assert page_ids(page) == [first[room].id], room
            assert page.epoch == epochs[room]

        await advance_time(self.ttl * 2)  # past the broker's TTL too
        gone = await broker.history(plain, since=first[plain].id)
        assert gone.recovered is False
        assert gone.epoch != epochs[plain]
        kept = await broker.history(lasting)
        assert page_ids(kept) == [first[lasting].id]
        assert kept.epoch == epochs[lasting]

    # -- a client's retry (same sender and ref) -------------------------------------------

    @staticmethod
    def client_chat(
        factory: MessageFactory, room: str, text: str, *, ref: str | None, sender: str = "alice"
    ) -> Message:
        message = factory.make(MessageType.CHAT, room=room, data={"text": text}, sender=sender)
        message.ref = ref
        return message

    async def test_a_client_retry_is_answered_with_the_first(
        self, broker: Broker, recorder: Recorder, factory: MessageFactory, room: str
    ) -> None:
        other_room = self.new_room()
        await broker.subscribe(room)
        await broker.subscribe(other_room)
        first = await broker.publish(self.client_chat(factory, room, "hi", ref="r1"))
        retry = self.client_chat(factory, room, "hi", ref="r1")
        assert retry.id != first.id
        answered = await broker.publish(retry)
        assert (answered.id, answered.offset) == (first.id, 1)
        again = await broker.publish(self.client_chat(factory, room, "hi", ref="r1"))
        assert (again.id, again.offset) == (first.id, 1)
        # Another sender, another ref, no ref, another room: new messages.
        bob = await broker.publish(self.client_chat(factory, room, "hi", ref="r1", sender="bob"))
        r2 = await broker.publish(self.client_chat(factory, room, "hi", ref="r2"))
        plain = [
            await broker.publish(self.client_chat(factory, room, "hi", ref=None)) for _ in range(2)
        ]
        elsewhere = await broker.publish(self.client_chat(factory, other_room, "hi", ref="r1"))
        assert [m.offset for m in (bob, r2, *plain)] == [2, 3, 4, 5]
        assert elsewhere.offset == 1
        assert len({m.id for m in (first, bob, r2, *plain, elsewhere)}) == 6

        await recorder.wait_for(6)
        assert recorder.ids(room) == [m.id for m in (first, bob, r2, *plain)]
        assert recorder.ids(other_room) == [elsewhere.id]
        page = await broker.history(room)
        assert page_ids(page) == [m.id for m in (first, bob, r2, *plain)]
        assert offsets(page) == [1, 2, 3, 4, 5]
        # Still recognised after the others.
        late = await broker.publish(self.client_chat(factory, room, "hi", ref="r1"))
        assert (late.id, late.offset) == (first.id, 1)
        await asyncio.sleep(SETTLE)
        assert len(recorder.publications) == 6

    @pytest.mark.parametrize("fillers_have_refs", [True, False], ids=["refs", "no-refs"])
    async def test_a_retry_after_the_first_left_the_history_is_new(
        self, make_broker: MakeBroker, factory: MessageFactory, fillers_have_refs: bool
    ) -> None:
        room = self.new_room()
        broker = await make_broker(Recorder(), history_size=2)
        first = await broker.publish(self.client_chat(factory, room, "x", ref="m1"))
        for i in range(2):
            ref = f"f{i}" if fillers_have_refs else None
            await broker.publish(self.client_chat(factory, room, "filler", ref=ref))
        retry = await broker.publish(self.client_chat(factory, room, "x", ref="m1"))
        assert retry.id != first.id
        assert retry.offset == 4
        assert offsets(await broker.history(room)) == [3, 4]
        again = await broker.publish(self.client_chat(factory, room, "x", ref="m1"))
        assert (again.id, again.offset) == (retry.id, 4)

    async def test_a_ref_used_again_stays_recognised_while_retained(
        self, make_broker: MakeBroker, factory: MessageFactory
    ) -> None:
        # m1 a b (1-3), three without refs push them out (4-6), m1 again is new (7),
        # c (8): the history is 6 7 8 and the second m1 is in it.
        room = self.new_room()
        broker = await make_broker(Recorder(), history_size=3)
        for ref in ("m1", "a", "b", None, None, None):
            await broker.publish(self.client_chat(factory, room, "x", ref=ref))
        second = await broker.publish(self.client_chat(factory, room, "x", ref="m1"))
        assert second.offset == 7
        await broker.publish(self.client_chat(factory, room, "x", ref="c"))
        assert offsets(await broker.history(room)) == [6, 7, 8]
        retry = await broker.publish(self.client_chat(factory, room, "x", ref="m1"))
        assert (retry.id, retry.offset) == (second.id, 7)

    async def test_a_retry_after_the_history_expired_is_new(
        self, make_broker: MakeBroker, advance_time: AdvanceTime, factory: MessageFactory
    ) -> None:
        room = self.new_room()
        broker = await make_broker(Recorder(), history_ttl=self.ttl)
        first = await broker.publish(self.client_chat(factory, room, "x", ref="m1"))
        await advance_time(self.ttl * 2)
        retry = await broker.publish(self.client_chat(factory, room, "x", ref="m1"))
        assert retry.id != first.id
        assert retry.offset == 1
        assert page_ids(await broker.history(room)) == [retry.id]

    async def test_without_history_a_retry_is_published_again(
        self, make_broker: MakeBroker, factory: MessageFactory
    ) -> None:
        room, off = self.new_room(), self.new_room()
        recorder = Recorder()
        broker = await make_broker(recorder, retention={off: (0, None)}.get)
        await broker.subscribe(off)
        both = [await broker.publish(self.client_chat(factory, off, "x", ref="m1")) for _ in "ab"]
        assert [m.offset for m in both] == [None, None]
        assert both[0].id != both[1].id
        await wait_for_room(recorder, off, 2)
        assert recorder.ids(off) == [m.id for m in both]
        # The control: with history, the same is recognised.
        kept = [await broker.publish(self.client_chat(factory, room, "x", ref="m1")) for _ in "ab"]
        assert kept[0].id == kept[1].id

    # -- presence ---------------------------------------------------------------------------

    async def test_presence_add_reports_first_connection(self, broker: Broker, room: str) -> None:
        presence = broker.presence
        assert await presence.add(room, user_id="alice", conn_id="c1") is PresenceChange.ROOM
        assert await presence.add(room, user_id="alice", conn_id="c2") is PresenceChange.NONE
        assert await presence.add(room, user_id="bob", conn_id="c3") is PresenceChange.USER
        other = self.new_room()
        assert await presence.add(other, user_id="alice", conn_id="c1") is PresenceChange.ROOM

    async def test_presence_remove_reports_last_connection(self, broker: Broker, room: str) -> None:
        presence = broker.presence
        await presence.add(room, user_id="alice", conn_id="c1")
        await presence.add(room, user_id="alice", conn_id="c2")
        await presence.add(room, user_id="bob", conn_id="c3")
        none, user, last = PresenceChange.NONE, PresenceChange.USER, PresenceChange.ROOM
        assert await presence.remove(room, user_id="alice", conn_id="c1") is none
        assert await presence.remove(room, user_id="alice", conn_id="c1") is none
        assert await presence.remove(room, user_id="alice", conn_id="c2") is user
        assert await presence.remove(room, user_id="alice", conn_id="c2") is none
        assert await presence.remove(room, user_id="nobody", conn_id="c9") is none
        assert await presence.remove(room, user_id="bob", conn_id="c3") is last
        assert await presence.members(room) == []
        assert await presence.add(room, user_id="alice", conn_id="c4") is PresenceChange.ROOM

    async def test_presence_set_status(self, broker: Broker, room: str) -> None:
        presence = broker.presence
        await presence.add(room, user_id="alice", conn_id="c1")
        assert await presence.set_status(room, user_id="alice", status=PresenceStatus.ONLINE) is (
            False
        )
        assert await presence.set_status(room, user_id="alice", status=PresenceStatus.AWAY)
        assert not await presence.set_status(room, user_id="alice", status=PresenceStatus.AWAY)
        assert [m.status for m in await presence.members(room)] == [PresenceStatus.AWAY]
        assert await presence.set_status(room, user_id="alice", status=PresenceStatus.ONLINE)
        assert [m.status for m in await presence.members(room)] == [PresenceStatus.ONLINE]
        assert not await presence.set_status(room, user_id="ghost", status=PresenceStatus.AWAY)
        assert [m.user_id for m in await presence.members(room)] == ["alice"]

    async def test_presence_members(self, broker: Broker, room: str) -> None:
        presence = broker.presence
        await presence.add(room, user_id="carol", conn_id="c1")
        await presence.add(room, user_id="alice", conn_id="c2", info={"name": "Alice"})
        await presence.add(room, user_id="bob", conn_id="c3")
        await presence.add(room, user_id="alice", conn_id="c4")
        await presence.set_status(room, user_id="bob", status=PresenceStatus.AWAY)
        assert await presence.members(room) == [
            PresenceMember("alice", PresenceStatus.ONLINE, 2, {"name": "Alice"}),
            PresenceMember("bob", PresenceStatus.AWAY, 1),
            PresenceMember("carol", PresenceStatus.ONLINE, 1),
        ]
        assert await presence.members(self.new_room()) == []

    async def test_presence_rooms(self, broker: Broker) -> None:
        presence = broker.presence
        room_b, room_a = sorted([self.new_room(), self.new_room()], reverse=True)
        await presence.add(room_b, user_id="alice", conn_id="c1")
        await presence.add(room_b, user_id="alice", conn_id="c2")
        await presence.add(room_b, user_id="bob", conn_id="c3")
        await presence.add(room_a, user_id="carol", conn_id="c4")

        def mine(stats: list[RoomStats]) -> list[RoomStats]:
            return [s for s in stats if s.room in (room_a, room_b)]

        stats = await presence.rooms()
        assert [s.room for s in stats] == sorted(s.room for s in stats)
        assert mine(stats) == [RoomStats(room_a, 1, 1), RoomStats(room_b, 3, 2)]

        await presence.remove(room_a, user_id="carol", conn_id="c4")
        await presence.remove(room_b, user_id="alice", conn_id="c1")
        assert mine(await presence.rooms()) == [RoomStats(room_b, 2, 2)]

    # -- subscriptions and lifecycle -----------------------------------------------------

    async def test_subscribe_and_unsubscribe(
        self, broker: Broker, recorder: Recorder, factory: MessageFactory, room: str
    ) -> None:
        await broker.subscribe(room)
        await broker.subscribe(room)
        sent = await broker.publish(self.chat(factory, room, "hello"))
        await recorder.wait_for(1)
        assert recorder.ids(room) == [sent.id]
        await broker.unsubscribe(room)
        await broker.unsubscribe(room)
        await broker.unsubscribe(self.new_room())
        # History does not depend on subscriptions.
        assert page_ids(await broker.history(room)) == [sent.id]

    async def test_close_is_idempotent(self, make_broker: MakeBroker) -> None:
        broker = await make_broker(Recorder())
        await broker.close()
        await broker.close()
