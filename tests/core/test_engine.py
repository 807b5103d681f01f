"""The hub's server behaviour (SPEC §3, §4, §8), without sockets.

The hub does no network I/O: front ends feed it frames and it queues encoded
messages on connections. :class:`~tests.recording.RecordingConnection` stands
in for the transport.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from roomcast.app import Hub
from roomcast.core.admission import Admission
from roomcast.core.connection import Connection
from roomcast.core.endpoint import HandlerConfig
from roomcast.errors import CloseCode, ErrorCode, ProtocolError
from roomcast.protocol import Message, MessageType, PresenceStatus
from tests.recording import RecordingConnection
from tests.support import MS

SETTLE = 5 * MS
"""Time for in-process work (joins, presence, flushes) to finish."""

WAIT = 2000 * MS
"""Upper bound for anything that should happen soon."""


async def settle() -> None:
    await asyncio.sleep(SETTLE)


async def eventually(predicate: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(1 * MS)


async def connect(
    hub: Hub,
    room: str | None = None,
    *,
    user_id: str | None = None,
    config: HandlerConfig | None = None,
    writable: bool = True,
) -> RecordingConnection:
    conn = RecordingConnection(hub, config or HandlerConfig(), user_id=user_id, writable=writable)
    hub.attach(conn, Admission(room=room))
    await settle()
    return conn


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    async with Hub() as hub:
        yield hub


def sample(hub: Hub, name: str) -> float:
    value = hub.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


# -- connect -----------------------------------------------------------------------------


async def test_welcome_comes_first(hub: Hub) -> None:
    alice = await connect(hub, "lobby", user_id="alice")
    first = alice.received[0]
    assert first["type"] == "system"
    epoch = first["data"].pop("epoch")
    assert isinstance(epoch, str) and epoch
    assert first["data"] == {
        "event": "welcome",
        "connection_id": alice.id,
        "user_id": "alice",
        "rooms": ["lobby"],
        "recovered": False,
        "offset": 0,
    }
    assert alice.rooms == {"lobby"}
    assert alice.received[1]["type"] == "presence"

    anon = await connect(hub)
    assert anon.received[0]["data"]["event"] == "welcome"
    assert anon.received[0]["data"]["user_id"] == anon.id
    assert anon.received[0]["data"]["rooms"] == []
    assert anon.id != alice.id


async def test_welcome_and_joined_carry_epoch(hub: Hub) -> None:
    alice = await connect(hub, "lobby", user_id="alice")
    alice.send_json(type="join", room="other")
    await settle()
    welcome = alice.received[0]["data"]
    joined = [m["data"] for m in alice.of_type("system") if m["data"]["event"] == "joined"]
    assert welcome["epoch"] == (await hub.broker.history("lobby")).epoch
    assert joined[0]["epoch"] == (await hub.broker.history("other")).epoch


# -- presence ----------------------------------------------------------------------------


async def test_presence_once_per_user(hub: Hub) -> None:
    bob = await connect(hub, "room", user_id="bob")
    assert bob.presence() == [("bob", "online")]
    alice1 = await connect(hub, "room", user_id="alice")
    alice2 = await connect(hub, "room", user_id="alice")
    assert bob.presence() == [("bob", "online"), ("alice", "online")]
    online = bob.of_type("presence")[1]
    assert online["room"] == "room"
    assert online["from"] == "alice"
    assert online["data"] == {"status": "online", "user_id": "alice"}
    assert alice2.presence() == []
    assert alice1.presence() == [("alice", "online")]

    members = await hub.presence("room")
    assert [(m.user_id, m.connections) for m in members] == [("alice", 2), ("bob", 1)]

    alice1.close()
    await settle()
    assert bob.presence() == [("bob", "online"), ("alice", "online")]
    alice2.close()
    await settle()
    assert bob.presence() == [("bob", "online"), ("alice", "online"), ("alice", "offline")]
    offline = bob.of_type("presence")[-1]
    assert offline["room"] == "room"
    assert offline["from"] == "alice"
    assert [m.user_id for m in await hub.presence("room")] == ["bob"]


async def test_offline_after_last_connection_leaves(hub: Hub) -> None:
    bob = await connect(hub, "room", user_id="bob")
    alice1 = await connect(hub, "room", user_id="alice")
    alice2 = await connect(hub, user_id="alice")
    alice2.send_json(type="join", room="room")
    await settle()
    assert bob.presence().count(("alice", "online")) == 1

    alice1.send_json(type="leave", room="room")
    await settle()
    assert ("alice", "offline") not in bob.presence()
    alice2.send_json(type="leave", room="room")
    await settle()
    assert bob.presence().count(("alice", "offline")) == 1
    alice2.close()
    alice1.close()
    await settle()
    assert bob.presence().count(("alice", "offline")) == 1


async def test_away_status_is_broadcast_on_change(hub: Hub) -> None:
    bob = await connect(hub, "room", user_id="bob")
    alice = await connect(hub, "room", user_id="alice")
    outsider = await connect(hub, "elsewhere", user_id="carol")
    alice.send_json(type="presence", data={"status": "away"})
    await settle()
    assert bob.presence()[-1] == ("alice", "away")
    assert alice.presence()[-1] == ("alice", "away")
    assert ("alice", "away") not in outsider.presence()
    assert [m.status for m in await hub.presence("room") if m.user_id == "alice"] == [
        PresenceStatus.AWAY
    ]

    alice.send_json(type="presence", data={"status": "away"})
    await settle()
    assert bob.presence().count(("alice", "away")) == 1

    # Within --presence-interval of the first change: announced when it ends.
    alice.send_json(type="presence", room="room", data={"status": "online"})
    await eventually(lambda: bob.presence()[-1] == ("alice", "online"))


async def test_presence_for_foreign_room_is_not_member(hub: Hub) -> None:
    alice = await connect(hub, "room", user_id="alice")
    alice.send_json(type="presence", room="other", data={"status": "away"}, ref="p1")
    await settle()
    assert [(e["code"], e.get("ref")) for e in alice.errors()] == [("not_member", "p1")]
    assert alice.presence() == [("alice", "online")]


# -- chat --------------------------------------------------------------------------------


async def test_chat_reaches_the_room_only() -> None:
    ids = itertools.count(1)
    async with Hub(id_factory=lambda: f"id-{next(ids)}", clock=lambda: 1768473000.123) as hub:
        alice = await connect(hub, "r1", user_id="alice")
        bob = await connect(hub, "r1", user_id="bob")
        carol = await connect(hub, "r2", user_id="carol")
        dave = await connect(hub, user_id="dave")
        alice.say("hello", room="r1", ref="mine")
        await settle()
        for member in (alice, bob):
            (chat,) = member.of_type("chat")
            assert chat["room"] == "r1"
            assert chat["from"] == "alice"
            assert chat["data"] == {"text": "hello"}
            assert chat["offset"] == 1
            assert chat["timestamp"] == "2026-01-15T10:30:00.123Z"
            assert chat["id"].startswith("id-")
            assert "ref" not in chat
        assert alice.of_type("chat") == bob.of_type("chat")
        assert carol.of_type("chat") == []
        assert dave.of_type("chat") == []


async def test_server_assigns_id_from_and_timestamp() -> None:
    ids = itertools.count(1)
    async with Hub(id_factory=lambda: f"srv-{next(ids)}", clock=lambda: 1768473000.123) as hub:
        alice = await connect(hub, "r", user_id="alice")
        anon = await connect(hub, "r")
        alice.say(
            "hi", room="r", id="forged", timestamp="1999-01-01T00:00:00.000Z", **{"from": "eve"}
        )
        anon.say("yo", **{"from": "alice"})
        await settle()
        first, second = alice.of_type("chat")
        assert first["from"] == "alice"
        assert first["id"].startswith("srv-")
        assert first["timestamp"] == "2026-01-15T10:30:00.123Z"
        assert second["from"] == anon.id
        assert second["id"].startswith("srv-")
        assert first["id"] != second["id"]


async def test_room_may_be_omitted_with_exactly_one_room(hub: Hub) -> None:
    alice = await connect(hub, "only", user_id="alice")
    bob = await connect(hub, "only", user_id="bob")
    alice.say("implicit")
    await settle()
    assert bob.texts() == ["implicit"]
    assert bob.of_type("chat")[0]["room"] == "only"

    alice.send_json(type="join", room="second")
    await settle()
    alice.say("ambiguous", ref="a1")
    nowhere = await connect(hub, user_id="nobody")
    nowhere.say("lonely", ref="n1")
    await settle()
    assert bob.texts() == ["implicit"]
    assert [(e["code"], e["ref"]) for e in alice.errors()] == [("invalid_message", "a1")]
    assert [(e["code"], e["ref"]) for e in nowhere.errors()] == [("invalid_message", "n1")]
    assert nowhere.texts() == []


async def test_not_member(hub: Hub) -> None:
    alice = await connect(hub, "mine", user_id="alice")
    bob = await connect(hub, "theirs", user_id="bob")
    alice.say("intrude", room="theirs", ref="x")
    await settle()
    assert bob.texts() == []
    assert alice.texts() == []
    (error,) = alice.errors()
    assert error["code"] == "not_member"
    assert error["ref"] == "x"
    assert error["error"]


async def test_protocol_errors_are_answered_and_connection_stays(hub: Hub) -> None:
    alice = await connect(hub, "r", user_id="alice")
    alice.receive("not json")
    alice.send_json(type="notification", ref="n")
    alice.send_json(type="join", room="bad room", ref="j")
    alice.say("still here")
    await settle()
    assert [(e["code"], e.get("ref")) for e in alice.errors()] == [
        ("invalid_json", None),
        ("forbidden_type", "n"),
        ("invalid_room", "j"),
    ]
    assert alice.texts() == ["still here"]
    assert alice.close_codes == []


async def test_join_and_leave(hub: Hub) -> None:
    alice = await connect(hub, user_id="alice")
    bob = await connect(hub, "r", user_id="bob")
    alice.send_json(type="join", room="r", ref="j1")
    await settle()
    joined = [m for m in alice.of_type("system") if m["data"]["event"] == "joined"]
    assert [m["data"].pop("epoch") for m in joined] != [""]
    assert [m["data"] for m in joined] == [
        {"event": "joined", "room": "r", "recovered": False, "offset": 0, "ref": "j1"}
    ]
    bob.say("one")
    await settle()
    assert alice.texts() == ["one"]

    alice.send_json(type="leave", room="r", ref="l1")
    await settle()
    left = [m for m in alice.of_type("system") if m["data"]["event"] == "left"]
    assert [m["data"] for m in left] == [{"event": "left", "room": "r", "ref": "l1"}]
    assert alice.rooms == set()
    bob.say("two")
    alice.say("three", room="r", ref="s")
    alice.send_json(type="leave", room="r", ref="l2")
    await settle()
    assert alice.texts() == ["one"]
    assert bob.texts() == ["one", "two"]
    assert [(e["code"], e["ref"]) for e in alice.errors()] == [
        ("not_member", "s"),
        ("not_member", "l2"),
    ]


async def test_join_with_last_id_replays(hub: Hub) -> None:
    bob = await connect(hub, "r", user_id="bob")
    for text in ("a", "b", "c"):
        bob.say(text)
    await settle()
    first_id = bob.of_type("chat")[0]["id"]
    alice = await connect(hub, user_id="alice")
    alice.send_json(type="join", room="r", last_id=first_id)
    await settle()
    joined = [m for m in alice.of_type("system") if m["data"]["event"] == "joined"]
    assert joined[0]["data"]["recovered"] is True
    assert alice.texts() == ["b", "c"]


async def test_connect_with_last_id_replays(hub: Hub) -> None:
    bob = await connect(hub, "r", user_id="bob")
    for text in ("a", "b", "c"):
        bob.say(text)
    await settle()
    first_id = bob.of_type("chat")[0]["id"]
    alice = RecordingConnection(hub, HandlerConfig(), user_id="alice")
    hub.attach(alice, Admission(room="r", last_id=first_id))
    await settle()
    assert alice.received[0]["data"]["recovered"] is True
    assert alice.texts() == ["b", "c"]


async def test_ping_gets_pong_only_to_sender(hub: Hub) -> None:
    alice = await connect(hub, "r", user_id="alice")
    bob = await connect(hub, "r", user_id="bob")
    alice.send_json(type="ping", data={"n": 7})
    await settle()
    (pong,) = alice.of_type("pong")
    assert pong["data"] == {"n": 7}
    assert pong["id"]
    assert bob.of_type("pong") == []
    assert bob.received == bob.received[:2]  # welcome + own presence, nothing else


# -- rate limit --------------------------------------------------------------------------


async def test_rate_limit() -> None:
    async with Hub(rate=5, burst=5) as hub:
        alice = await connect(hub, "r", user_id="alice")
        bob = await connect(hub, "r", user_id="bob")
        for i in range(6):
            alice.say(f"m{i}")
        await settle()
        assert bob.texts() == [f"m{i}" for i in range(5)]
        assert [e["code"] for e in alice.errors()] == ["rate_limited"]
        assert alice.close_codes == []
        assert sample(hub, "realtime_rate_limited_messages_total") == 1

        for i in range(6, 200):
            if alice.closed:
                break
            alice.say(f"m{i}")
        await settle()
        assert alice.close_codes == [CloseCode.POLICY_VIOLATION]
        assert 1 < len(alice.errors()) < 50
        assert bob.texts() == [f"m{i}" for i in range(5)]
        assert hub.connection_count == 1


async def test_rate_zero_disables_the_limit() -> None:
    async with Hub(rate=0, burst=1) as hub:
        alice = await connect(hub, "r", user_id="alice")
        for i in range(100):
            alice.say(f"m{i}")
        await settle()
        assert len(alice.texts()) == 100
        assert alice.errors() == []


# -- hooks -------------------------------------------------------------------------------


async def test_on_message_transforms() -> None:
    def shout(conn: Connection, message: Message) -> Message:
        message.data = {"text": message.data["text"].upper()}
        return message

    async with Hub() as hub:
        config = HandlerConfig(on_message=shout)
        alice = await connect(hub, "r", user_id="alice", config=config)
        bob = await connect(hub, "r", user_id="bob")
        alice.say("hello")
        await settle()
        assert bob.texts() == ["HELLO"]
        assert alice.texts() == ["HELLO"]


async def test_on_message_hook_can_answer_with_an_error() -> None:
    seen: list[str | None] = []

    def moderate(conn: Connection, message: Message) -> Message | None:
        seen.append(message.ref)
        if message.data["text"] == "rude":
            conn.send_error(ErrorCode.FORBIDDEN_ROOM, "be nice", ref=message.ref)
            return None
        return message

    async with Hub() as hub:
        alice = await connect(hub, "r", user_id="alice", config=HandlerConfig(on_message=moderate))
        bob = await connect(hub, "r", user_id="bob")
        alice.say("rude", ref="m1")
        alice.say("kind", ref="m2")
        await settle()
        assert seen == ["m1", "m2"]
        assert alice.errors() == [{"code": "forbidden_room", "error": "be nice", "ref": "m1"}]
        assert bob.errors() == []
        assert bob.texts() == ["kind"]
        assert "ref" not in bob.of_type("chat")[0]


async def test_on_message_drops() -> None:
    async def no_spam(conn: Connection, message: Message) -> Message | None:
        return None if "spam" in message.data["text"] else message

    async with Hub() as hub:
        config = HandlerConfig(on_message=no_spam)
        alice = await connect(hub, "r", user_id="alice", config=config)
        bob = await connect(hub, "r", user_id="bob")
        for text in ("hi", "buy spam", "bye"):
            alice.say(text)
        await settle()
        assert bob.texts() == ["hi", "bye"]


async def test_slow_async_hook_delays_only_its_connection() -> None:
    async def hook(conn: Connection, message: Message) -> Message:
        if conn.user_id == "slow":
            await asyncio.sleep(300 * MS)
        return message

    async with Hub() as hub:
        config = HandlerConfig(on_message=hook)
        observer = await connect(hub, "r", user_id="observer")
        slow = await connect(hub, "r", user_id="slow", config=config)
        fast = await connect(hub, "r", user_id="fast", config=config)
        loop = asyncio.get_running_loop()
        start = loop.time()
        slow.say("s1")
        slow.send_json(type="ping")
        slow.say("s2")
        fast.say("f1")
        await eventually(lambda: "f1" in observer.texts())
        assert loop.time() - start < 150 * MS
        assert observer.texts() == ["f1"]
        assert slow.of_type("pong") == []

        await eventually(lambda: len(observer.texts()) == 3)
        assert loop.time() - start >= 550 * MS
        assert observer.texts() == ["f1", "s1", "s2"]
        kinds = [(m["type"], m.get("data", {}).get("text")) for m in slow.received[-4:]]
        assert kinds == [("chat", "f1"), ("chat", "s1"), ("pong", None), ("chat", "s2")]


async def test_connect_and_disconnect_hooks_run_once() -> None:
    calls: list[tuple[str, str, set[str]]] = []

    def on_connect(conn: Connection) -> None:
        calls.append(("connect", conn.user_id, set(conn.rooms)))

    async def on_disconnect(conn: Connection) -> None:
        # It sees the rooms it was in, after the hub already let it go from them.
        assert [m.user_id for m in await conn.hub.presence("r")] == []
        assert conn not in conn.hub.registry.members("r")
        calls.append(("disconnect", conn.user_id, set(conn.rooms)))

    async def a_connect(conn: Connection) -> None:
        await asyncio.sleep(0)
        calls.append(("a-connect", conn.user_id, set(conn.rooms)))

    def s_disconnect(conn: Connection) -> None:
        calls.append(("s-disconnect", conn.user_id, set(conn.rooms)))

    async with Hub() as hub:
        one = await connect(
            hub,
            "r",
            user_id="one",
            config=HandlerConfig(on_connect=on_connect, on_disconnect=on_disconnect),
        )
        two = await connect(
            hub,
            user_id="two",
            config=HandlerConfig(on_connect=a_connect, on_disconnect=s_disconnect),
        )
        assert calls == [("connect", "one", {"r"}), ("a-connect", "two", set())]
        one.close()
        two.close()
        two.close()
        await settle()
        assert sorted(calls[2:]) == [("disconnect", "one", {"r"}), ("s-disconnect", "two", set())]
    assert len(calls) == 4


async def test_failing_hooks_do_not_break_the_connection() -> None:
    def explode(*args: Any) -> Any:
        raise RuntimeError("hook failure")

    async def picky(conn: Connection, message: Message) -> Message:
        if message.data["text"] == "boom":
            raise RuntimeError("hook failure")
        return message

    async with Hub() as hub:
        bad = HandlerConfig(on_connect=explode, on_disconnect=explode, on_message=picky)
        alice = await connect(hub, "r", user_id="alice", config=bad)
        bob = await connect(hub, "r", user_id="bob")
        alice.say("boom")
        alice.say("ok")
        alice.send_json(type="ping")
        await settle()
        assert bob.texts() == ["ok"]
        assert len(alice.of_type("pong")) == 1
        assert alice.close_codes == []

        carol = await connect(hub, "r", user_id="carol", config=HandlerConfig(on_message=explode))
        carol.say("dropped")
        carol.say("also dropped")
        carol.send_json(type="ping")
        await settle()
        assert bob.texts() == ["ok"]
        assert len(carol.of_type("pong")) == 1

        alice.close()
        await settle()
        assert ("alice", "offline") in bob.presence()
        assert hub.connection_count == 2


# -- application publish -----------------------------------------------------------------


async def test_hub_publish_to_room(hub: Hub) -> None:
    alice = await connect(hub, "news", user_id="alice")
    bob = await connect(hub, "other", user_id="bob")
    stored = await hub.publish(
        Message(type=MessageType.NOTIFICATION, room="news", data={"headline": "x"})
    )
    assert stored.offset == 1
    assert stored.id
    assert stored.timestamp.endswith("Z")
    await settle()
    (note,) = alice.of_type("notification")
    assert note["id"] == stored.id
    assert note["offset"] == 1
    assert note["data"] == {"headline": "x"}
    assert bob.of_type("notification") == []

    with pytest.raises(ProtocolError) as info:
        await hub.publish(Message(type=MessageType.CHAT, room="bad/room"))
    assert info.value.code is ErrorCode.INVALID_ROOM


async def test_hub_publish_globally(hub: Hub) -> None:
    alice = await connect(hub, "a", user_id="alice")
    bob = await connect(hub, "b", user_id="bob")
    roomless = await connect(hub, user_id="carol")
    stored = await hub.publish(Message(type=MessageType.NOTIFICATION, data={"all": True}))
    assert stored.offset is None
    await settle()
    for conn in (alice, bob, roomless):
        (note,) = conn.of_type("notification")
        assert note["id"] == stored.id
        assert "room" not in note
        assert "offset" not in note


async def test_close_sends_service_restart() -> None:
    hub = Hub()
    await hub.start()
    alice = await connect(hub, "r", user_id="alice")
    await hub.close()
    assert alice.close_codes == [CloseCode.SERVICE_RESTART]
    assert hub.connection_count == 0


async def test_close_ends_work_stuck_in_a_hook(caplog: pytest.LogCaptureFixture) -> None:
    cancelled = asyncio.Event()

    async def stuck(conn: Connection, message: Message) -> Message:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return message  # pragma: no cover

    hub = Hub()
    await hub.start()
    alice = await connect(hub, "r", user_id="alice", config=HandlerConfig(on_message=stuck))
    alice.say("never published")
    await settle()
    loop = asyncio.get_running_loop()
    start = loop.time()
    await hub.close(grace=50 * MS)
    assert loop.time() - start < 1000 * MS
    assert cancelled.is_set()
    leftover = [
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith("roomcast") and not t.done()
    ]
    assert leftover == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# -- slow consumers ----------------------------------------------------------------------


async def test_slow_consumer_is_closed_alone() -> None:
    async with Hub(send_queue=8) as hub:
        fast = await connect(hub, "r", user_id="fast")
        slow = await connect(hub, "r", user_id="slow", writable=False)
        assert slow.pending is not None
        queued = len(slow.pending)
        assert 0 < queued < 8
        for i in range(20):
            await hub.publish(Message(type=MessageType.CHAT, room="r", data={"text": f"m{i}"}))
            await settle()
            if queued + i + 1 < 8:
                assert slow.close_codes == [], i
                assert slow.pending is not None
                assert len(slow.pending) == queued + i + 1
            else:
                assert slow.close_codes == [CloseCode.SLOW_CONSUMER], i
        assert fast.texts() == [f"m{i}" for i in range(20)]
        assert fast.close_codes == []
        assert slow.received == []
        assert hub.connection_count == 1
        assert sample(hub, "realtime_slow_consumer_disconnects_total") == 1
        assert ("slow", "offline") in fast.presence()


async def test_burst_to_a_writable_connection_is_not_a_slow_consumer() -> None:
    async with Hub(send_queue=8) as hub:
        fast = await connect(hub, "r", user_id="fast")
        for i in range(50):
            hub.broadcast(Message(type=MessageType.CHAT, room="r", data={"text": f"m{i}"}))
        await settle()
        assert fast.texts() == [f"m{i}" for i in range(50)]
        assert fast.close_codes == []


# -- the hot path ------------------------------------------------------------------------


async def test_chat_frames_are_handled_without_a_task(hub: Hub) -> None:
    # hub.handle is the dispatcher's own method (no wrapper), and a chat frame
    # without hooks is done when it returns: no task per message per connection.
    assert hub.handle == hub.commands.handle
    a = await connect(hub, "r", user_id="a")
    b = await connect(hub, "r", user_id="b")
    tasks = len(asyncio.all_tasks())
    for i in range(30):  # within the burst
        assert hub.handle(a, f'{{"type":"chat","data":{{"text":"{i}"}}}}') is None
    assert len(asyncio.all_tasks()) == tasks
    await settle()
    assert b.texts() == [str(i) for i in range(30)]


# -- metrics -----------------------------------------------------------------------------


async def test_messages_sent_counts_recipients(hub: Hub) -> None:
    a = await connect(hub, "r", user_id="a")
    await connect(hub, "r", user_id="b")
    await connect(hub, "r", user_id="c")
    await connect(hub, user_id="d")
    before = sample(hub, "realtime_messages_sent_total")
    a.say("hi")
    await settle()
    assert sample(hub, "realtime_messages_sent_total") - before == 3
    await hub.publish(Message(type=MessageType.NOTIFICATION, data={}))
    await settle()
    assert sample(hub, "realtime_messages_sent_total") - before == 7
    received = sample(hub, "realtime_messages_received_total")
    a.send_json(type="ping")
    assert sample(hub, "realtime_messages_received_total") == received + 1


async def test_connection_and_room_gauges(hub: Hub) -> None:
    def gauges() -> tuple[float, float]:
        return (
            sample(hub, "realtime_connections_total"),
            sample(hub, "realtime_rooms_total"),
        )

    assert gauges() == (0, 0)
    a = await connect(hub, "r1", user_id="a")
    assert gauges() == (1, 1)
    b = await connect(hub, "r2", user_id="b")
    c = await connect(hub, "r2", user_id="c")
    assert gauges() == (3, 2)
    b.send_json(type="leave", room="r2")
    await settle()
    assert gauges() == (3, 2)
    c.close()
    await settle()
    assert gauges() == (2, 1)
    a.send_json(type="join", room="r3")
    await settle()
    assert gauges() == (2, 2)
    a.close()
    b.close()
    await settle()
    assert gauges() == (0, 0)
