"""The catch-up on its own (:class:`~roomcast.core.recovery.Recovery`), without sockets.

What a joiner is replayed (every page of the history after its ``last_id``),
which live publications are held for it while the history is read, and what
happens when the history cannot be read. :mod:`tests.core.test_recovery_merge`
covers :func:`~roomcast.core.recovery.merge`; :mod:`tests.core.test_recovery`
the whole recovery through real servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from roomcast.app import Hub
from roomcast.protocol import Encoded, Message, MessageType
from tests.core.controlled_broker import ControlledBroker
from tests.recording import RecordingConnection
from tests.support import MS, until

WAIT = 2000 * MS


@pytest.fixture
def broker() -> ControlledBroker:
    return ControlledBroker()


@pytest.fixture
async def hub(broker: ControlledBroker) -> AsyncIterator[Hub]:
    async with Hub(broker=broker, send_queue=4) as hub:  # history pages of 2
        yield hub


async def publish(hub: Hub, room: str | None, n: int) -> list[Message]:
    return [
        await hub.publish(Message(type=MessageType.CHAT, room=room, data={"n": i}))
        for i in range(n)
    ]


def numbers(encoded: list[Encoded]) -> list[int]:
    return [e.message.data["n"] for e in encoded if e.message is not None]


async def test_the_replay_is_every_page_after_last_id(hub: Hub, broker: ControlledBroker) -> None:
    sent = await publish(hub, "r", 6)
    replay, page = await hub.recovery.missed("r", sent[0].id)
    assert numbers(replay) == [1, 2, 3, 4, 5]
    assert len(broker.reads_asked) == 3  # pages of 2, 2 and 1
    assert (page.offset, page.recovered) == (sent[-1].offset, True)
    assert page.epoch == (await hub.broker.history("r", limit=0)).epoch

    replay, page = await hub.recovery.missed("r", sent[-1].id)  # missed nothing
    assert (replay, page.offset, page.recovered) == ([], sent[-1].offset, True)

    replay, page = await hub.recovery.missed("r", None)  # no last_id: nothing to replay
    assert (replay, page.offset) == ([], sent[-1].offset)

    replay, page = await hub.recovery.missed("r", "not-retained")
    assert (replay, page.recovered) == ([], False)


async def test_live_messages_are_held_for_whoever_catches_up_on_their_room(
    hub: Hub, broker: ControlledBroker
) -> None:
    joiner = RecordingConnection(hub)
    attaching = RecordingConnection(hub)
    before = await publish(hub, "r", 1)
    attached = hub.recovery.attach(attaching)
    held: list[Encoded] = []
    broker.reads.clear()
    catching_up = asyncio.create_task(hub.recovery.catch_up(joiner, "r", before[0].id, held))
    await until(lambda: broker.reads_asked)
    assert hub.recovery.catching_up("r")
    assert broker.subscribed == ["r"]  # subscribed before the history is read
    await publish(hub, "r", 2)
    await publish(hub, "other", 1)
    await publish(hub, None, 1)
    broker.reads.set()
    replay, _ = await asyncio.wait_for(catching_up, WAIT)
    assert numbers(held) == [0, 1]  # the room's publications only
    assert numbers(replay) == [0, 1]  # also retained: merge drops the held copies
    assert not hub.recovery.catching_up("r")
    assert numbers(attached) == [0]  # an attaching connection holds messages to everyone
    hub.recovery.attached(attaching)
    await publish(hub, None, 1)
    assert numbers(attached) == [0]
    assert hub.attaching == 0


async def test_without_history_the_joiner_gets_no_replay(
    hub: Hub, broker: ControlledBroker
) -> None:
    await publish(hub, "r", 3)
    broker.failing_reads = True
    joiner = RecordingConnection(hub)
    replay, page = await hub.recovery.catch_up(joiner, "r", "some-id", [])
    assert replay == []
    assert (page.epoch, page.offset, page.recovered) == ("", 0, False)
    assert not hub.recovery.catching_up("r")
