"""roomcast.client.session and its connector, without sockets or an event loop.

Each test feeds the session server frames and user requests, and checks the
frames it queues and the events it emits. Time is a fake clock.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest

from roomcast import Message, MessageType
from roomcast.client.connector import Connector, Handshake
from roomcast.client.policy import CloseAction
from roomcast.client.replies import JoinRefused, ReconnectNeeded, RefreshRefused, RequestDone
from roomcast.client.rooms import Gap, RoomLeft, RoomStatus
from roomcast.client.session import Event, Session, State, StateChange
from roomcast.errors import ClientClosed, InvalidArgument, NotConnected, ReplyError

TS = "2026-01-15T10:30:00.123Z"
P = "s."
"""The ref prefix of the sessions made here (a random one by default)."""


class Clock:
    """A clock that moves only when told."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def token(exp: float) -> str:
    payload = base64.urlsafe_b64encode(json.dumps({"sub": "u", "exp": exp}).encode())
    return f"e30.{payload.rstrip(b'=').decode()}.sig"


def make(rooms: tuple[str, ...] = ("lobby",), url: str = "ws://h/ws", **options: Any) -> Session:
    options.setdefault("min_delay", 1.0)
    options.setdefault("max_delay", 8.0)
    options.setdefault("random", lambda: 0.5)
    return Session(Connector(url, **options), rooms=rooms, ref_prefix=P)


def feed(session: Session, obj: dict[str, Any]) -> list[Event]:
    session.receive_text(json.dumps(obj))
    return session.events_received()


def sent(session: Session) -> list[dict[str, Any]]:
    return [json.loads(frame) for frame in session.data_to_send()]


def welcome(rooms: list[str], **data: Any) -> dict[str, Any]:
    body = {"event": "welcome", "connection_id": "c1", "user_id": "u1", "rooms": rooms}
    return {"type": "system", "data": body | data}


def joined(room: str, ref: str | None = None, **data: Any) -> dict[str, Any]:
    body = {"event": "joined", "room": room, "recovered": False} | data
    if ref is not None:
        body["ref"] = ref
    return {"type": "system", "room": room, "data": body}


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


def error(code: str, ref: str) -> dict[str, Any]:
    return {"type": "error", "data": {"code": code, "error": "no", "ref": ref}, "timestamp": TS}


def connected(session: Session, *, epoch: str = "e1", offset: int = 0) -> list[Event]:
    """Run one attempt up to the welcome; return the welcome's events."""
    session.connecting()
    session.handshake()
    session.events_received()
    rooms = session.rooms.names[:1]
    return feed(session, welcome(rooms, recovered=False, epoch=epoch, offset=offset))


# -- the connection's life ----------------------------------------------------------------


def test_from_idle_to_connected() -> None:
    session = make(("lobby", "other"))
    assert session.state is State.IDLE and not session.connected
    session.connecting()
    assert session.events_received() == [StateChange(state=State.CONNECTING, attempt=0)]
    assert session.handshake().url == "ws://h/ws/lobby"
    events = feed(session, welcome(["lobby"], recovered=False, epoch="e1", offset=3))
    assert events == [
        StateChange(state=State.CONNECTED, connection_id="c1", user_id="u1"),
        RoomStatus(
            room="lobby",
            recovered=False,
            resync=False,
            rejoin=False,
            epoch="e1",
            offset=3,
            last_id=None,
        ),
    ]
    assert session.state is State.CONNECTED and session.connected
    assert (session.connection_id, session.user_id) == ("c1", "u1")
    # The URL's room came with the welcome; the other one is joined now.
    [join] = sent(session)
    assert join["type"] == "join" and join["room"] == "other" and join["ref"].startswith(P + "j")
    assert "last_id" not in join


def test_handshake_keeps_the_query_and_places_the_token() -> None:
    session = make(("a:b@c",), url="wss://h.example/ws/?v=2", token="T")
    assert session.handshake() == Handshake(
        "wss://h.example/ws/a:b@c?v=2", {"Authorization": "Bearer T"}
    )
    in_query = make(("r",), token="T", token_in_query=True, headers={"Origin": "https://app"})
    assert in_query.handshake() == Handshake("ws://h/ws/r?token=T", {"Origin": "https://app"})
    assert make(()).handshake() == Handshake("ws://h/ws", {})


def test_reconnecting_recovers_the_first_room_through_the_url() -> None:
    session = make(("lobby", "other"))
    connected(session)
    [join] = sent(session)
    feed(session, joined("other", join["ref"], epoch="e2", offset=0))
    assert [m.data for m in feed(session, chat("lobby", 1))] == [{"text": "hi"}]  # type: ignore[union-attr]
    feed(session, chat("other", 1))
    session.connection_closed(1012, "restart")
    session.events_received()
    session.connecting()
    assert session.handshake().url == "ws://h/ws/lobby?last_id=m1"
    session.events_received()
    events = feed(session, welcome(["lobby"], recovered=True, epoch="e1", offset=1))
    assert events[1] == RoomStatus(
        room="lobby", recovered=True, resync=False, rejoin=True, epoch="e1", offset=1, last_id="m1"
    )
    assert sent(session) == [{"type": "join", "room": "other", "ref": P + "j2", "last_id": "m1"}]


def test_messages_before_the_welcome_are_not_for_the_application() -> None:
    session = make(())
    session.connecting()
    session.events_received()
    presence = {"type": "presence", "room": "r", "from": "u", "data": {"status": "online"}}
    assert feed(session, presence | {"timestamp": TS}) == []
    connected(session)
    assert [type(e) for e in feed(session, presence | {"timestamp": TS})] == [Message]


def test_frames_that_are_not_json_objects_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    session = make(())
    connected(session)
    with caplog.at_level(logging.WARNING, logger="roomcast.client"):
        session.receive_text("{not json")
        session.receive_text(b"\xff\xfe")
    session.receive_text("[1, 2]")
    assert session.events_received() == [] and session.data_to_send() == []
    assert [r.getMessage() for r in caplog.records] == ["server sent a frame that is not JSON"] * 2


# -- replies, routed by ref ---------------------------------------------------------------


def test_a_pong_answers_its_ping_only() -> None:
    session = make(())
    connected(session)
    ref = session.ping()
    assert sent(session) == [{"type": "ping", "data": {"ref": ref}}]
    assert feed(session, {"type": "pong", "data": {"ref": P + "p999"}}) == []
    assert feed(session, {"type": "pong", "data": {"ref": ref}}) == [RequestDone(ref)]
    assert feed(session, {"type": "pong", "data": {"ref": ref}}) == []  # answered already


def test_errors_answer_leave_and_ping_requests() -> None:
    session = make(("a", "b"))
    connected(session)
    [join] = sent(session)
    feed(session, joined("b", join["ref"], epoch="e", offset=0))
    leave = session.leave("b")
    assert leave is not None and leave.startswith(P + "l")
    assert sent(session) == [{"type": "leave", "room": "b", "ref": leave}]
    # Not a member any more is as good as left; the error still reaches the application.
    events = feed(session, error("not_member", leave))
    assert events[0] == RequestDone(leave, None)
    assert isinstance(events[1], Message) and events[1].type is MessageType.ERROR
    ping = session.ping()
    [done, _message] = feed(session, error("rate_limited", ping))
    assert isinstance(done, RequestDone) and done.ref == ping
    assert isinstance(done.error, ReplyError) and (done.error.code, done.error.ref) == (
        "rate_limited",
        ping,
    )


def test_a_left_reply_answers_the_leave() -> None:
    session = make(("a", "b"))
    connected(session)
    [join] = sent(session)
    feed(session, joined("b", join["ref"]))
    leave = session.leave("b")
    assert leave is not None
    left = {"type": "system", "room": "b", "data": {"event": "left", "room": "b", "ref": leave}}
    assert feed(session, left) == [RoomLeft(room="b", server=False), RequestDone(leave)]
    assert session.rooms.names == ["a"]


def test_a_refused_join_drops_the_room() -> None:
    session = make(())
    connected(session)
    assert session.join("vip") is None
    [join] = sent(session)
    assert join == {"type": "join", "room": "vip", "ref": join["ref"]}
    events = feed(session, error("forbidden_room", join["ref"]))
    assert isinstance(events[0], JoinRefused) and events[0].room == "vip"
    assert (events[0].error.code, events[0].error.ref) == ("forbidden_room", join["ref"])
    assert isinstance(events[1], Message)
    assert session.rooms.names == []
    # An error about the client's own ref (a chat) is only a message.
    assert [type(e) for e in feed(session, error("not_member", "m-7"))] == [Message]


def test_refused_token_refresh_and_gap_repair() -> None:
    session = make(("r",), token=token(2000), can_refresh_token=True)
    connected(session)
    session.send_token()
    [auth] = sent(session)
    assert auth["type"] == "auth" and auth["data"] == {"token": token(2000)}
    [refused, _] = feed(session, error("forbidden_room", auth["ref"]))
    assert isinstance(refused, RefreshRefused) and refused.error.ref == auth["ref"]
    [reconnect, _] = feed(session, error("rate_limited", P + "g42"))
    assert isinstance(reconnect, ReconnectNeeded)
    session.begin_close()
    assert [type(e) for e in feed(session, error("rate_limited", P + "g43"))] == [Message]


def test_joined_for_a_room_no_longer_wanted_is_left() -> None:
    session = make(("lobby", "b"))
    session.connecting()
    session.handshake()
    session.leave("lobby")  # while connecting: nothing to send yet
    assert session.data_to_send() == []
    session.events_received()
    events = feed(session, welcome(["lobby"], epoch="e", offset=0))
    assert [type(e) for e in events] == [StateChange]
    frames = sent(session)
    assert frames[0] == {"type": "leave", "room": "lobby"}
    assert frames[1]["type"] == "join" and frames[1]["room"] == "b"
    assert feed(session, joined("stray")) == []
    assert sent(session) == [{"type": "leave", "room": "stray"}]


# -- gaps ---------------------------------------------------------------------------------


def test_a_gap_asks_for_recovery_with_the_last_id() -> None:
    session = make(("r",))
    connected(session)
    assert [m.offset for m in feed(session, chat("r", 1))] == [1]  # type: ignore[union-attr]
    assert feed(session, chat("r", 3)) == [Gap(room="r", expected=2, got=3, repairing=True)]
    [repair] = sent(session)
    assert repair["type"] == "join" and repair["ref"].startswith(P + "g")
    assert (repair["room"], repair["last_id"]) == ("r", "m1")
    assert session.rooms.is_repairing("r")
    assert feed(session, chat("r", 4)) == []  # the replay brings it
    [status] = feed(session, joined("r", repair["ref"], recovered=True, epoch="e1", offset=4))
    assert status == RoomStatus(
        room="r", recovered=True, resync=False, rejoin=True, epoch="e1", offset=4, last_id="m1"
    )
    replayed = [feed(session, chat("r", n)) for n in (2, 3, 4)]
    assert [[m.offset for m in e] for e in replayed] == [[2], [3], [4]]  # type: ignore[union-attr]
    assert feed(session, chat("r", 4)) == []  # and no duplicate


# -- what follows the end of a connection -------------------------------------------------


@pytest.mark.parametrize(
    ("code", "action", "ceiling"),
    [
        (1006, CloseAction.RECONNECT, 1.0),
        (1012, CloseAction.RECONNECT, 1.0),
        (1008, CloseAction.SLOW, 8.0),
        (4008, CloseAction.RECONNECT, 1.0),
        (4100, CloseAction.RECONNECT, 1.0),
        (4499, CloseAction.RECONNECT, 1.0),
    ],
)
def test_close_codes_that_reconnect(code: int, action: CloseAction, ceiling: float) -> None:
    session = make(random=lambda: 0.25)
    connected(session)
    change = session.connection_closed(code, "why")
    assert change == StateChange(
        state=State.DISCONNECTED,
        code=code,
        reason="why",
        attempt=0,
        delay=0.25 * ceiling,
        ceiling=ceiling,
        action=action,
    )
    assert session.events_received()[-1] == change
    assert session.state is State.DISCONNECTED and session.closed is None


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (1000, None),
        (1002, None),
        (4001, None),
        (4500, None),
        (4503, None),
        (4999, None),
        (1006, 403),
    ],
)
def test_close_codes_that_stop(code: int, status: int | None) -> None:
    session = make()
    connected(session)
    change = session.connection_closed(code, "bye", status=status)
    assert change == StateChange(
        state=State.CLOSED, code=code, status=status, reason="bye", action=CloseAction.STOP
    )
    closed = session.closed
    assert isinstance(closed, ClientClosed) and (closed.code, closed.status) == (code, status)
    with pytest.raises(ClientClosed) as info:
        session.join("later")
    assert info.value is closed
    with pytest.raises(ClientClosed):
        session.request_reconnect()
    assert session.terminate(ClientClosed(1000, deliberate=True)) is False  # once


def test_an_expired_token_is_refreshed_when_tokens_can_be_fetched() -> None:
    clock = Clock(1000.0)
    session = make(token=token(5000), can_refresh_token=True, clock=clock)
    connected(session)
    assert not session.connector.token_needed()
    change = session.connection_closed(4001, "token expired")
    assert change.action is CloseAction.REFRESH and change.state is State.DISCONNECTED
    assert session.connector.token_needed()  # even though this one is still valid
    session.connector.set_token(token(6000))
    assert not session.connector.token_needed()
    assert session.handshake().headers == {"Authorization": f"Bearer {token(6000)}"}


def test_backoff_grows_until_a_connection_is_stable() -> None:
    monotonic = Clock(0.0)
    session = make(random=lambda: 1.0, stable_after=5.0, monotonic=monotonic)
    ceilings = []
    for _ in range(5):  # handshakes that fail
        session.connecting()
        ceilings.append(session.connection_closed(1006).ceiling)
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 8.0]
    connected(session)
    monotonic.now += 4.9  # not stable yet: the count goes on
    assert session.connection_closed(1006).attempt == 5
    connected(session)
    monotonic.now += 5.0
    change = session.connection_closed(1006)
    assert (change.attempt, change.ceiling) == (0, 1.0)
    session.connecting()
    assert session.events_received()[-1] == StateChange(state=State.CONNECTING, attempt=1)


def test_a_requested_reconnection_is_immediate_and_not_counted() -> None:
    session = make()
    session.connecting()
    session.connection_closed(1006)
    connected(session)
    session.request_reconnect()
    change = session.connection_closed(4000, "reconnecting")
    assert change == StateChange(
        state=State.DISCONNECTED,
        code=4000,
        reason="reconnecting",
        attempt=1,
        delay=0.0,
        action=CloseAction.RECONNECT,
    )
    assert session.connection_closed(1006).attempt == 1  # the next failure counts again


def test_losing_the_connection_ends_what_waits_and_drops_the_queue() -> None:
    session = make(("r",))
    connected(session)
    ping = session.ping()
    session.send_chat("r", {"text": "queued"})
    [join] = [*sent(session)][:1]
    assert join["type"] == "ping"
    session.join("other")
    leave = session.leave("r")
    assert leave is not None
    session.send_chat("r", {"text": "unsent"})
    session.connection_lost()
    events = session.events_received()
    assert events[0] == RequestDone(ping, events[0].error)  # type: ignore[union-attr]
    assert isinstance(events[0].error, NotConnected)  # type: ignore[union-attr]
    assert events[1] == RequestDone(leave, None)
    assert session.data_to_send() == []  # nothing is resent on the next connection
    assert not session.connected
    assert session.rooms.state("other") is not None
    assert session.rooms.to_join() == ["other"]
    with pytest.raises(NotConnected):
        session.send_chat("r", {"text": "lost"})
    with pytest.raises(NotConnected):
        session.ping()
    assert session.data_to_send() == []


def test_closing_refuses_requests_and_queues_nothing() -> None:
    session = make(("r",))
    connected(session)
    session.send_chat("r", {"n": 1})
    session.begin_close()
    assert session.closing and session.data_to_send() == []
    for request in (lambda: session.send_chat("r", 2), session.ping, session.request_reconnect):
        with pytest.raises(ClientClosed) as info:
            request()
        assert info.value.deliberate
    feed(session, chat("r", 1))
    feed(session, chat("r", 3))  # a gap: no repair while closing
    assert session.data_to_send() == []
    closed = ClientClosed(1000, "client closed", deliberate=True)
    assert session.terminate(closed) is True
    assert session.events_received()[-1] == StateChange(
        state=State.CLOSED, code=1000, reason="client closed", deliberate=True
    )


# -- presence -----------------------------------------------------------------------------


def test_presence_is_restored_in_every_room_joined() -> None:
    session = make(("a", "b"))
    with pytest.raises(InvalidArgument) as info:
        session.set_presence("busy")
    assert isinstance(info.value, ValueError) and info.value.argument == "status"
    assert session.set_presence("away") is False  # remembered, nothing to send yet
    assert session.presence == "away"
    connected(session)
    frames = sent(session)
    assert frames[0] == {"type": "presence", "room": "a", "data": {"status": "away"}}
    assert frames[1]["type"] == "join" and frames[1]["room"] == "b"
    feed(session, joined("b", frames[1]["ref"]))
    assert sent(session) == [{"type": "presence", "room": "b", "data": {"status": "away"}}]
    assert session.set_presence("away") is False  # unchanged
    assert session.set_presence("online") is True
    assert sent(session) == [{"type": "presence", "data": {"status": "online"}}]


# -- the token, on a fake clock -----------------------------------------------------------


def test_token_refresh_timing() -> None:
    clock = Clock(1000.0)
    connector = Connector(
        "ws://h/ws", token=token(1100), can_refresh_token=True, clock=clock, token_refresh_margin=30
    )
    assert connector.refresh_delay() == pytest.approx(70.0)  # 30 s before exp
    assert not connector.token_needed()
    clock.now = 1060.0
    assert connector.refresh_delay() == pytest.approx(20.0)  # at most half of the 40 s left
    clock.now = 1071.0
    assert connector.token_needed()  # within the margin: connect with a fresh one
    clock.now = 1098.0
    assert connector.refresh_retry_delay() == pytest.approx(1.0)
    clock.now = 1100.0
    assert connector.refresh_retry_delay() is None  # expired: the server closes with 4001
    connector.set_token(token(2000))
    assert connector.refresh_delay() == pytest.approx(870.0)
    assert not connector.token_needed()


def test_without_get_token_a_token_is_never_fetched() -> None:
    clock = Clock(5000.0)
    connector = Connector("ws://h/ws", token=token(1000), clock=clock)  # expired
    assert not connector.token_needed()
    assert connector.refresh_delay() is None
    assert Connector("ws://h/ws", can_refresh_token=True).token_needed()  # none yet
    assert Connector("ws://h/ws", token="opaque", can_refresh_token=True).refresh_delay() is None


@pytest.mark.parametrize("url", ["http://h/ws", "ws://", "h/ws", ""])
def test_urls_that_are_not_websocket_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Connector(url)
    assert info.value.argument == "url" and "ws://" in str(info.value)
