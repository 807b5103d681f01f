"""Publications and server-side subscriptions in roomcast.client's session, without
sockets or an event loop.

The session is fed server frames; the tests check the frames it queues (the
publications and their refs above all) and the events it emits.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from roomcast import Message, MessageType
from roomcast.client import Published
from roomcast.client.connector import Connector
from roomcast.client.publishing import Publications
from roomcast.client.replies import (
    JoinRefused,
    PublishDone,
    ReconnectNeeded,
    RefreshRefused,
    Requests,
)
from roomcast.client.rooms import Gap, RoomLeft, RoomStatus
from roomcast.client.session import Event, Session, State
from roomcast.errors import ClientClosed, InvalidArgument, ReplyError

TS = "2026-01-15T10:30:00.123Z"
P = "s."


def make(rooms: tuple[str, ...] = ("lobby",), **options: Any) -> Session:
    options.setdefault("random", lambda: 0.5)
    return Session(Connector("ws://h/ws", **options), rooms=rooms, ref_prefix=P)


def feed(session: Session, obj: dict[str, Any]) -> list[Event]:
    session.receive_text(json.dumps(obj))
    return session.events_received()


def sent(session: Session) -> list[dict[str, Any]]:
    return [json.loads(frame) for frame in session.data_to_send()]


def system(event: str, room: str | None = None, **data: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"event": event, **data}
    if room is not None:
        body["room"] = room
    return {"type": "system", "room": room, "data": body, "timestamp": TS}


def welcome(rooms: list[str], **data: Any) -> dict[str, Any]:
    body = {"connection_id": "c1", "user_id": "u1", "rooms": rooms, "recovered": False}
    return system("welcome", epoch="e1", offset=0, **(body | data))


def connect(session: Session, **welcome_data: Any) -> list[Event]:
    """One attempt up to the welcome (into the first room); return the welcome's events."""
    session.connecting()
    session.handshake()
    session.events_received()
    return feed(session, welcome(session.rooms.names[:1], **welcome_data))


def reconnect(session: Session, **welcome_data: Any) -> list[Event]:
    session.connection_closed(1006)
    session.events_received()
    return connect(session, **welcome_data)


def chat(room: str, offset: int, text: str = "hi") -> dict[str, Any]:
    return {
        "id": f"m{offset}",
        "type": "chat",
        "room": room,
        "from": "u2",
        "data": {"text": text},
        "timestamp": TS,
        "offset": offset,
    }


def ack(ref: str, room: str, id_: str = "id1", offset: int | None = 1) -> dict[str, Any]:
    extra = {} if offset is None else {"offset": offset}
    return system("published", room, ref=ref, id=id_, **extra)


def error(code: str, ref: str) -> dict[str, Any]:
    return {"type": "error", "data": {"code": code, "error": "no", "ref": ref}, "timestamp": TS}


def chats(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "chat"]


# -- acks and refusals --------------------------------------------------------------------


def test_a_publication_goes_out_with_its_own_ref_and_ends_with_the_ack() -> None:
    session = make()
    connect(session)
    sent(session)
    ref = session.publish("lobby", {"text": "hi"})
    assert ref.startswith(P + "m")
    assert sent(session) == [{"type": "chat", "room": "lobby", "data": {"text": "hi"}, "ref": ref}]
    other = session.publish("lobby", {"text": "again"})
    assert other != ref
    sent(session)
    # Acks are routed by ref, in whatever order they come, and consumed.
    assert feed(session, ack(other, "lobby", "id2", 2)) == [
        PublishDone(other, Published(room="lobby", id="id2", offset=2))
    ]
    assert feed(session, ack(ref, "lobby", "id1", None)) == [
        PublishDone(ref, Published(room="lobby", id="id1", offset=None))
    ]
    assert feed(session, ack(ref, "lobby")) == []  # answered already: still consumed
    assert len(session.publications) == 0


@pytest.mark.parametrize(
    "code", ["forbidden_publish", "not_member", "rate_limited", "unavailable", "invalid_message"]
)
def test_an_error_with_the_ref_refuses_the_publication(code: str) -> None:
    session = make()
    connect(session)
    ref = session.publish("lobby", {"n": 1})
    sent(session)
    done, message = feed(session, error(code, ref))
    assert isinstance(done, PublishDone) and done.ref == ref and done.published is None
    assert isinstance(done.error, ReplyError) and (done.error.code, done.error.ref) == (code, ref)
    # The application sees the error message too, as with every server error.
    assert isinstance(message, Message) and message.type is MessageType.ERROR
    session.connection_closed(1006)
    connect(session)
    assert chats(sent(session)) == []  # refused: never sent again


def test_bad_arguments_are_refused_before_anything_is_queued() -> None:
    session = make()
    connect(session)
    sent(session)
    with pytest.raises(InvalidArgument):
        session.publish("no room", {})
    with pytest.raises(TypeError):
        session.publish("lobby", {"not": object()})
    assert session.data_to_send() == [] and len(session.publications) == 0


# -- resending after a lost connection ----------------------------------------------------


def test_a_publication_lost_with_the_connection_is_resent_with_the_same_ref() -> None:
    session = make(("lobby", "side"))
    connect(session)
    [join] = sent(session)
    feed(session, system("joined", "side", ref=join["ref"], recovered=False, epoch="e", offset=0))
    first = session.publish("lobby", {"n": 1})
    second = session.publish("side", {"n": 2})
    original = sent(session)
    assert [f["ref"] for f in original] == [first, second]

    events = reconnect(session)
    assert not any(isinstance(e, PublishDone) for e in events)  # a lost connection ends none
    frames = sent(session)
    # The URL's room is joined with the welcome: its publication goes at once; the
    # other waits for its room to be rejoined (sent before would be not_member).
    assert sorted(f["type"] for f in frames) == ["chat", "join"]
    assert chats(frames) == [original[0]]
    [rejoin] = [f for f in frames if f["type"] == "join"]
    assert rejoin["room"] == "side"
    assert feed(session, chat("side", 1)) == []  # not joined yet: dropped
    status = system("joined", "side", ref=rejoin["ref"], recovered=True, epoch="e", offset=0)
    assert [type(e) for e in feed(session, status)] == [RoomStatus]
    assert sent(session) == [original[1]]  # the same frame, the same ref

    # The server answers a repeated ref with the first message's id and offset.
    assert feed(session, ack(second, "side", "first-id", 1)) == [
        PublishDone(second, Published(room="side", id="first-id", offset=1))
    ]
    reconnect(session)
    assert chats(sent(session)) == [original[0]]  # only the unanswered one, again


def test_a_publication_made_while_disconnected_waits_for_the_connection() -> None:
    session = make(("lobby",))
    ref = session.publish("lobby", "early")
    assert session.data_to_send() == []
    connect(session)
    assert sent(session) == [{"type": "chat", "room": "lobby", "data": "early", "ref": ref}]


def test_a_publication_given_up_is_never_sent_again() -> None:
    session = make()
    connect(session)
    ref = session.publish("lobby", 1)
    sent(session)
    session.forget(ref)
    reconnect(session)
    assert chats(sent(session)) == []
    assert feed(session, ack(ref, "lobby")) == []  # a late ack is still consumed


def test_publications_for_rooms_not_joined_go_at_once_and_the_server_answers() -> None:
    session = make(("lobby", "side"))
    connect(session)
    [join] = sent(session)
    elsewhere = session.publish("elsewhere", 1)  # not one of the client's rooms
    waiting = session.publish("side", 2)  # being joined
    assert [f["ref"] for f in sent(session)] == [elsewhere]
    # Leaving the room it waits for sends it: the server's answer ends it.
    leave = session.leave("side")
    assert [(f["type"], f["ref"]) for f in sent(session)] == [("chat", waiting), ("leave", leave)]
    [done, _] = feed(session, error("not_member", waiting))
    assert isinstance(done, PublishDone) and done.error is not None
    assert join["room"] == "side"


def test_closing_ends_every_publication() -> None:
    session = make()
    connect(session)
    ref = session.publish("lobby", 1)
    session.begin_close()
    with pytest.raises(ClientClosed):
        session.publish("lobby", 2)
    closed = ClientClosed(1000, "client closed", deliberate=True)
    session.terminate(closed)
    events = session.events_received()
    assert events[0] == PublishDone(ref, error=closed)
    assert session.state is State.CLOSED and len(session.publications) == 0


# -- refs ---------------------------------------------------------------------------------


def test_refs_are_unique_and_differ_between_sessions() -> None:
    a, b = Requests(), Requests()
    assert a.prefix != b.prefix and len(a.prefix) >= 12
    refs = {a.new("m") for _ in range(1000)}
    assert len(refs) == 1000 and all(len(r) <= 64 for r in refs)
    assert a.kind(a.new("j")) == "j" and b.kind(a.new("j")) is None
    assert a.kind("j1") is None and a.kind(a.prefix) is None and a.kind(None) is None


def test_the_applications_own_refs_are_never_taken_for_the_sessions() -> None:
    # Before, a ref starting with "a" was taken for a token refresh, "g" for a gap
    # repair, and "j..." could drop a room.
    session = make(("lobby", "b"))
    connect(session)
    [join] = sent(session)
    for ref in ("a1", "g1", join["ref"].removeprefix(P), "m1", "l1", "p1"):
        events = feed(session, error("forbidden_room", ref))
        assert [type(e) for e in events] == [Message], ref
    assert session.rooms.names == ["lobby", "b"]
    assert not any(isinstance(e, JoinRefused | ReconnectNeeded | RefreshRefused) for e in events)
    # The ack of the application's own chat with a ref is the application's.
    session.send_chat("lobby", {"x": 1}, ref="mine")
    [message] = feed(session, ack("mine", "lobby", "idx", 4))
    assert isinstance(message, Message) and message.type is MessageType.SYSTEM
    assert message.data == {
        "event": "published",
        "room": "lobby",
        "ref": "mine",
        "id": "idx",
        "offset": 4,
    }


def test_the_table_on_its_own() -> None:
    table = Publications()
    table.add("r1", "a", 1)
    table.add("r2", "b", 2)
    assert table.due(lambda room: room == "b") == ['{"type":"chat","room":"b","data":2,"ref":"r2"}']
    assert table.due(lambda room: True) == ['{"type":"chat","room":"a","data":1,"ref":"r1"}']
    assert table.due(lambda room: True) == []  # sent on this connection
    table.lost()
    assert len(table.due(lambda room: True)) == 2
    assert table.acked("r1", {"room": "a", "id": "x", "offset": True}) == Published("a", "x")
    assert table.acked("r1", {}) is None
    assert table.refused("r2") is True and table.refused("r2") is False
    assert list(table) == []


# -- server-side subscriptions ------------------------------------------------------------


def server_joined(room: str, epoch: str = "e9", offset: int = 5) -> dict[str, Any]:
    return system("joined", room, recovered=False, epoch=epoch, offset=offset, server=True)


def test_a_room_the_server_joins_the_client_to_is_one_of_its_rooms() -> None:
    session = make(("lobby",))
    connect(session)
    sent(session)
    [status] = feed(session, server_joined("news"))
    assert status == RoomStatus(
        room="news",
        recovered=False,
        resync=False,
        rejoin=False,
        epoch="e9",
        offset=5,
        last_id=None,
        server=True,
    )
    assert session.rooms.names == ["lobby", "news"]
    # Its offsets are tracked like any room's.
    assert [type(e) for e in feed(session, chat("news", 6))] == [Message]
    assert feed(session, chat("news", 6)) == []  # a duplicate
    assert feed(session, chat("news", 8)) == [Gap(room="news", expected=7, got=8, repairing=True)]
    [repair] = sent(session)
    assert (repair["type"], repair["room"], repair["last_id"]) == ("join", "news", "m6")
    # And it is rejoined, from where the client was, after reconnecting.
    reconnect(session)
    [rejoin] = sent(session)
    assert (rejoin["type"], rejoin["room"], rejoin["last_id"]) == ("join", "news", "m6")


def test_the_clients_own_join_decides_for_a_room_it_is_joining() -> None:
    session = make(("lobby", "news"))
    session.set_presence("away")
    connect(session)
    frames = sent(session)
    join = next(f for f in frames if f["type"] == "join")
    # At reconnection with token channels, the server's own joined may come first.
    assert feed(session, server_joined("news")) == []
    assert feed(session, server_joined("lobby")) == []  # joined already (the URL)
    assert sent(session) == []
    replay = system("joined", "news", ref=join["ref"], recovered=False, epoch="e9", offset=5)
    [status] = feed(session, replay)
    assert isinstance(status, RoomStatus) and not status.server
    assert sent(session) == [{"type": "presence", "room": "news", "data": {"status": "away"}}]


def test_a_room_the_server_joins_while_leaving_it_is_not_taken_back() -> None:
    session = make(("lobby", "b"))
    connect(session)
    [join] = sent(session)
    feed(session, system("joined", "b", ref=join["ref"], recovered=False, epoch="e", offset=0))
    session.leave("b")
    sent(session)
    assert feed(session, server_joined("b")) == []
    assert session.rooms.names == ["lobby"]
    assert feed(session, server_joined("bad room")) == []


def test_a_room_the_server_takes_the_client_out_of_is_not_rejoined() -> None:
    session = make(("lobby", "b"))
    connect(session)
    [join] = sent(session)
    feed(session, system("joined", "b", ref=join["ref"], recovered=False, epoch="e", offset=0))
    waiting = session.publish("b", 1)
    assert chats(sent(session))[0]["ref"] == waiting
    left = system("left", "b", server=True, reason="moderated")
    assert feed(session, left) == [RoomLeft(room="b", server=True, reason="moderated")]
    assert session.rooms.names == ["lobby"] and session.rooms.state("b") is None
    assert feed(session, chat("b", 1)) == []  # not a room of the client's any more
    reconnect(session)
    frames = sent(session)
    assert [f["type"] for f in frames] == ["chat"]  # no join of b: only the publication again
    # A left that answers a leave of the client's own is not the server's doing.
    session.join("c")
    [join_c] = sent(session)
    feed(session, system("joined", "c", ref=join_c["ref"], recovered=False, epoch="e", offset=0))
    leave = session.leave("c")
    assert feed(session, system("left", "c", ref=leave, server=True))[0] == RoomLeft(
        room="c", server=False
    )
