"""``hub.events``: room occupied / vacated and member online / offline, for integrations.

A listener sees ``room_occupied`` then ``member_online`` for a room's first
user, ``member_online`` alone for the next users, ``member_offline`` for a
user's last connection leaving, then ``room_vacated`` after the room's last
user; joins, leaves and disconnects alike. A raising listener is logged and
the others are still called; unsubscribing stops the calls.
"""

from __future__ import annotations

import logging

import pytest

from roomcast.app import Hub
from roomcast.core.events import Events, HubEvent
from tests.core.test_engine import connect, settle

Seen = list[tuple[HubEvent, str, str | None]]

OCCUPIED, VACATED = HubEvent.ROOM_OCCUPIED, HubEvent.ROOM_VACATED
ONLINE, OFFLINE = HubEvent.MEMBER_ONLINE, HubEvent.MEMBER_OFFLINE


def recorder(hub: Hub) -> Seen:
    seen: Seen = []
    hub.events.subscribe(lambda event, room, user_id: seen.append((event, room, user_id)))
    return seen


async def test_events_of_joins_leaves_and_disconnects() -> None:
    async with Hub() as hub:
        seen = recorder(hub)
        alice1 = await connect(hub, "r", user_id="alice")
        assert seen == [(OCCUPIED, "r", None), (ONLINE, "r", "alice")]
        alice2 = await connect(hub, user_id="alice")
        alice2.send_json(type="join", room="r")
        await settle()
        assert len(seen) == 2  # not the user's first connection
        bob = await connect(hub, user_id="bob")
        bob.send_json(type="join", room="r")
        await settle()
        assert seen[2:] == [(ONLINE, "r", "bob")]  # not the room's first user
        bob.send_json(type="leave", room="r")
        await settle()
        assert seen[3:] == [(OFFLINE, "r", "bob")]
        alice1.close()
        await settle()
        assert len(seen) == 4  # alice is still there on her other connection
        alice2.close()
        await settle()
        assert seen[4:] == [(OFFLINE, "r", "alice"), (VACATED, "r", None)]

        # A room comes back to life: occupied again.
        carol = await connect(hub, "r", user_id="carol")
        assert seen[6:] == [(OCCUPIED, "r", None), (ONLINE, "r", "carol")]
        carol.send_json(type="leave", room="r")
        await settle()
        assert seen[8:] == [(OFFLINE, "r", "carol"), (VACATED, "r", None)]


async def test_events_are_per_room() -> None:
    async with Hub() as hub:
        seen = recorder(hub)
        alice = await connect(hub, "a", user_id="alice")
        alice.send_json(type="join", room="b")
        await settle()
        bob = await connect(hub, "b", user_id="bob")
        alice.close()
        await settle()
        assert seen[:5] == [
            (OCCUPIED, "a", None),
            (ONLINE, "a", "alice"),
            (OCCUPIED, "b", None),
            (ONLINE, "b", "alice"),
            (ONLINE, "b", "bob"),
        ]
        # Alice's disconnect: she leaves both rooms (in either order); only a empties.
        tail = seen[5:]
        assert [e for e in tail if e[1] == "a"] == [(OFFLINE, "a", "alice"), (VACATED, "a", None)]
        assert [e for e in tail if e[1] == "b"] == [(OFFLINE, "b", "alice")]
        bob.close()
        await settle()
        assert seen[-2:] == [(OFFLINE, "b", "bob"), (VACATED, "b", None)]


async def test_a_raising_listener_is_logged_and_the_others_still_called(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Hub() as hub:
        before: Seen = []
        after: Seen = []
        hub.events.subscribe(lambda event, room, user: before.append((event, room, user)))

        def broken(event: HubEvent, room: str, user_id: str | None) -> None:
            raise RuntimeError("listener bug")

        hub.events.subscribe(broken)
        hub.events.subscribe(lambda event, room, user: after.append((event, room, user)))
        with caplog.at_level(logging.ERROR, logger="roomcast.hub"):
            alice = await connect(hub, "r", user_id="alice")
        assert before == after == [(OCCUPIED, "r", None), (ONLINE, "r", "alice")]
        failures = [r for r in caplog.records if r.getMessage() == "event listener failed"]
        assert len(failures) == 2
        assert failures[0].exc_info is not None
        assert str(failures[0].exc_info[1]) == "listener bug"
        # The connection is not disturbed.
        alice.say("still here", room="r")
        await settle()
        assert alice.texts() == ["still here"]


async def test_unsubscribe_stops_the_calls() -> None:
    async with Hub() as hub:
        kept: Seen = []
        gone: Seen = []
        hub.events.subscribe(lambda event, room, user: kept.append((event, room, user)))
        stop = hub.events.subscribe(lambda event, room, user: gone.append((event, room, user)))
        await connect(hub, "r", user_id="alice")
        stop()
        stop()  # idempotent
        await connect(hub, "r", user_id="bob")
        assert gone == [(OCCUPIED, "r", None), (ONLINE, "r", "alice")]
        assert kept == [*gone, (ONLINE, "r", "bob")]


def test_events_without_listeners_is_false() -> None:
    events = Events()
    assert not events
    stop = events.subscribe(lambda event, room, user: None)
    assert events
    stop()
    assert not events
    events.emit(HubEvent.ROOM_OCCUPIED, "r")  # nobody listens: nothing happens


def test_the_same_listener_twice_is_called_twice_until_each_stops() -> None:
    events = Events()
    calls: list[str] = []

    def listener(event: HubEvent, room: str, user_id: str | None) -> None:
        calls.append(room)

    first = events.subscribe(listener)
    events.subscribe(listener)
    events.emit(HubEvent.ROOM_OCCUPIED, "a")
    assert calls == ["a", "a"]
    first()
    events.emit(HubEvent.ROOM_OCCUPIED, "b")
    assert calls == ["a", "a", "b"]
