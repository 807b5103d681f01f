"""The pod's room subscriptions and what keeps them (no sockets, no Redis).

:class:`ControlledBroker` is the in-memory broker recording its subscribe and
unsubscribe calls; it can hold subscribes and history reads until let through,
so that joins, leaves and disconnects can be made to overlap on purpose.
"""

from __future__ import annotations

import asyncio

from roomcast.app import Hub
from roomcast.core.admission import Admission, Refusal
from roomcast.core.auth import ConnectRequest
from roomcast.core.endpoint import HandlerConfig
from roomcast.core.subscriptions import Subscriptions
from tests.core.controlled_broker import ControlledBroker
from tests.recording import RecordingConnection
from tests.support import MS, until

WAIT = 2000 * MS


async def settle() -> None:
    await asyncio.sleep(20 * MS)


def connect(hub: Hub, room: str, user_id: str) -> RecordingConnection:
    conn = RecordingConnection(hub, HandlerConfig(), user_id=user_id)
    hub.attach(conn, Admission(room=room))
    return conn


def welcomed(conn: RecordingConnection) -> bool:
    return "welcome" in conn.events()


# -- Subscriptions alone -------------------------------------------------------------------


async def test_concurrent_subscribes_share_one_broker_subscription() -> None:
    broker = ControlledBroker()
    async with Hub(broker=broker) as hub:
        subscriptions = Subscriptions(hub)
        broker.subscribes.clear()
        waiters = [asyncio.create_task(subscriptions.subscribe("r")) for _ in range(3)]
        await settle()
        assert broker.subscribed == ["r"]
        assert not any(w.done() for w in waiters)  # nobody returns before the broker did
        broker.subscribes.set()
        await asyncio.wait_for(asyncio.gather(*waiters), WAIT)
        await subscriptions.subscribe("r")  # already subscribed: no second call
        assert broker.subscribed == ["r"]
        assert "r" in subscriptions and len(subscriptions) == 1

        subscriptions.release("r")
        subscriptions.release("r")  # released already: nothing more
        subscriptions.release("never")
        await settle()
        assert broker.unsubscribed == ["r"]
        assert "r" not in subscriptions

        await subscriptions.subscribe("r")  # a later join subscribes again
        assert broker.subscribed == ["r", "r"]


async def test_a_cancelled_joiner_does_not_cancel_the_others_subscription() -> None:
    broker = ControlledBroker()
    async with Hub(broker=broker) as hub:
        subscriptions = Subscriptions(hub)
        broker.subscribes.clear()
        first = asyncio.create_task(subscriptions.subscribe("r"))
        second = asyncio.create_task(subscriptions.subscribe("r"))
        await settle()
        first.cancel()
        await asyncio.sleep(0)
        broker.subscribes.set()
        await asyncio.wait_for(second, WAIT)
        assert first.cancelled()
        assert broker.subscribed == ["r"]


async def test_a_release_once_closed_only_forgets_the_room() -> None:
    broker = ControlledBroker()
    hub = Hub(broker=broker)
    subscriptions = Subscriptions(hub)
    async with hub:
        await subscriptions.subscribe("r")
    subscriptions.release("r")  # no task may be started on a closed hub
    assert "r" not in subscriptions
    assert broker.unsubscribed == []


# -- what keeps a room subscribed: its local members and its joiners ------------------------


async def test_the_last_local_member_leaving_unsubscribes() -> None:
    broker = ControlledBroker()
    async with Hub(broker=broker) as hub:
        a, b = connect(hub, "r", "a"), connect(hub, "r", "b")
        await until(lambda: welcomed(a) and welcomed(b))
        assert broker.subscribed == ["r"]
        a.send_json(type="leave", room="r")
        await until(lambda: "left" in a.events())
        await settle()
        assert broker.unsubscribed == []  # b is still here
        b.close()
        await until(lambda: broker.unsubscribed == ["r"])
        assert "r" not in hub.subscriptions


async def test_a_joiner_catching_up_keeps_the_room_subscribed() -> None:
    broker = ControlledBroker()
    async with Hub(broker=broker) as hub:
        a, b = connect(hub, "r", "a"), connect(hub, "other", "b")
        await until(lambda: welcomed(a) and welcomed(b))
        broker.reads.clear()  # b's history read waits: b is catching up on "r"
        b.send_json(type="join", room="r", last_id="whatever")
        await until(lambda: hub.recovery.catching_up("r"))
        a.close()  # the last member of "r" goes while b catches up on it
        await settle()
        assert broker.unsubscribed == []
        broker.reads.set()
        await until(lambda: "joined" in b.events())
        assert b.rooms == {"other", "r"}
        b.send_json(type="leave", room="r")
        await until(lambda: broker.unsubscribed == ["r"])


async def test_a_connection_gone_while_joining_releases_the_room() -> None:
    broker = ControlledBroker()
    async with Hub(broker=broker) as hub:
        broker.subscribes.clear()
        conn = connect(hub, "r", "a")
        await until(lambda: broker.subscribed == ["r"])
        assert hub.attaching == 1
        conn.close()
        broker.subscribes.set()
        await until(lambda: broker.unsubscribed == ["r"])
        assert "r" not in hub.subscriptions
        assert hub.attaching == 0
        assert not welcomed(conn)
        assert hub.connection_count == 0


async def test_a_connection_counts_once_against_capacity_while_its_presence_is_written() -> None:
    # Welcomed (so registered) but still joining: its presence write is held. It
    # once counted twice, and a pod at exactly its share refused connections.
    broker = ControlledBroker()
    async with Hub(broker=broker, max_connections=3) as hub:
        broker.presence_adds.clear()
        first = connect(hub, "r", "a")
        await until(lambda: welcomed(first))
        assert hub.attaching == 1  # the join is not over: presence is being written
        assert hub.occupied == 1
        second = connect(hub, "r", "b")
        await until(lambda: welcomed(second))
        assert hub.occupied == 2
        assert isinstance(hub.admit(ConnectRequest(route="/r"), HandlerConfig()), Admission)
        third = connect(hub, "r", "c")
        await until(lambda: welcomed(third))
        full = hub.admit(ConnectRequest(route="/r"), HandlerConfig())
        assert isinstance(full, Refusal) and full.status == 503
        broker.presence_adds.set()
        await until(lambda: hub.attaching == 0)
        assert hub.occupied == hub.connection_count == 3


async def test_a_connection_gone_before_its_welcome_frees_its_place() -> None:
    broker = ControlledBroker()
    async with Hub(broker=broker, max_connections=1) as hub:
        broker.subscribes.clear()
        conn = connect(hub, "r", "a")
        await until(lambda: broker.subscribed == ["r"])
        assert hub.occupied == 1 and hub.connection_count == 0  # expected, not registered
        refused = hub.admit(ConnectRequest(route="/r"), HandlerConfig())
        assert isinstance(refused, Refusal) and refused.status == 503
        conn.close()
        broker.subscribes.set()
        await until(lambda: hub.attaching == 0)
        assert hub.occupied == 0
        assert isinstance(hub.admit(ConnectRequest(route="/r"), HandlerConfig()), Admission)
