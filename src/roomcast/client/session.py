"""The client's session (sans-I/O): the connection state machine, requests and replies.

A :class:`Session` takes what the server sent (:meth:`Session.receive_text`) and
what the user asks (:meth:`Session.join`, :meth:`Session.send_chat`, ...) and
queues what follows: frames to send (:meth:`Session.data_to_send`) and events
(:meth:`Session.events_received`). It has no socket, task or clock: the asyncio
client (:mod:`roomcast.client.client`) moves the frames and runs the timers, and
tests feed it frames. Replies are routed by ``ref``, whose first letter says what
was asked: ``j`` join, ``g`` gap repair, ``l`` leave, ``p`` ping, ``a`` auth.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import logging
from collections.abc import Iterable
from typing import Any, Final, TypeAlias

from roomcast.client.connector import Connector, Handshake
from roomcast.client.policy import CloseAction
from roomcast.client.replies import (
    JoinRefused,
    ReconnectNeeded,
    RefreshRefused,
    Reply,
    RequestDone,
)
from roomcast.client.rooms import Gap, RoomStatus, RoomTracker, check_room
from roomcast.errors import (
    ClientClosed,
    ClientError,
    InvalidArgument,
    NotConnected,
    ReplyError,
    RoomcastError,
)
from roomcast.protocol import Message

__all__ = [
    "ABNORMAL_CLOSURE",
    "Event",
    "Session",
    "State",
    "StateChange",
    "decode_frame",
]

_log = logging.getLogger("roomcast.client")

ABNORMAL_CLOSURE: Final = 1006
"""The close code reported when a connection ended without a close frame."""

_CONTROL_EVENTS: Final = frozenset({"welcome", "joined", "left", "refreshed"})


class State(enum.StrEnum):
    """The client's connection state."""

    IDLE = "idle"
    """Not started yet."""
    CONNECTING = "connecting"
    """Getting a token, opening the WebSocket, waiting for the welcome."""
    CONNECTED = "connected"
    """Welcomed by the server: messages flow."""
    DISCONNECTED = "disconnected"
    """The connection ended; the next attempt is ``delay`` seconds away."""
    CLOSED = "closed"
    """Terminal: closed by ``Client.close()`` or by a close code that means "do not retry"."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StateChange:
    """A change of :class:`State`, passed to ``on_state``.

    Attributes:
        state: the new state.
        code: the close code that ended the connection (DISCONNECTED, CLOSED), or
            1006 when there was none (network, refused handshake, ping timeout).
        status: the HTTP status when the handshake was refused.
        reason: the close reason, or what went wrong.
        attempt: the reconnection attempt the ``delay`` is for (0 = first).
        delay: seconds until the next attempt (DISCONNECTED).
        ceiling: the upper bound ``delay`` was drawn under.
        action: what the client decided (DISCONNECTED, CLOSED).
        connection_id: the server's id of the connection (CONNECTED).
        user_id: the user id the server gave the connection (CONNECTED).
        deliberate: CLOSED by ``Client.close()``.
    """

    state: State
    code: int | None = None
    status: int | None = None
    reason: str = ""
    attempt: int | None = None
    delay: float | None = None
    ceiling: float | None = None
    action: CloseAction | None = None
    connection_id: str | None = None
    user_id: str | None = None
    deliberate: bool = False


Event: TypeAlias = Message | StateChange | RoomStatus | Gap | Reply
"""What :meth:`Session.events_received` returns: messages for the application (in
order), state changes, join outcomes, gaps, and the outcomes of requests."""


def decode_frame(data: str | bytes) -> dict[str, Any] | None:
    """The JSON object in a frame, or None (logged) if it holds anything else."""
    try:
        obj = json.loads(data)
    except ValueError:
        _log.warning("server sent a frame that is not JSON")
        return None
    return obj if isinstance(obj, dict) else None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


class Session:
    """What one roomcast client knows and decides, from its first attempt to the end.

    The calling contract, per connection attempt: :meth:`connecting`; if
    ``connector.token_needed()``, ``connector.set_token()`` with a fresh token; open
    the WebSocket with :meth:`handshake`; feed every frame to :meth:`receive_text`
    (the first ones until :attr:`connected`: the welcome); when it ends, or could
    not be opened, :meth:`connection_closed`, then wait the returned ``delay``
    unless the state is CLOSED. After every call, send :meth:`data_to_send` (in
    order, on the current connection) and handle :meth:`events_received`.

    Requests raise :class:`ClientClosed` once the session is closing or closed, and
    those that must go out now (:meth:`send_chat`, :meth:`ping`, :meth:`send_token`,
    a changed :meth:`set_presence`) :class:`NotConnected` while not connected:
    nothing is queued for a later connection.

    Args:
        connector: when and how to (re)connect (attempts, token, URL); kept as ``connector``.
        rooms: rooms to join and rejoin; a :class:`~roomcast.client.rooms.RoomTracker`
            of them is kept as ``rooms`` (InvalidArgument if a name is invalid).

    Attributes (read-only): ``connection_id`` and ``user_id``, the server's ids of the
    current (or last) connection; ``presence``, the status the user chose.
    """

    def __init__(self, connector: Connector, *, rooms: Iterable[str] = ()) -> None:
        self.connector = connector
        self.rooms = RoomTracker(rooms)
        self.connection_id: str | None = None
        self.user_id: str | None = None
        self.presence = "online"
        self._state = State.IDLE
        self._last_change = StateChange(state=State.IDLE)
        self._closing = False
        self._closed: ClientClosed | None = None
        self._reconnect_now = False
        self._welcomed = False
        self._connect_room: str | None = None
        self._refs = itertools.count(1)
        self._pending: dict[str, tuple[str, str | None]] = {}  # ref -> (kind, room)
        self._writes: list[str] = []
        self._events: list[Event] = []

    @property
    def state(self) -> State:
        """The connection state."""
        return self._state

    @property
    def connected(self) -> bool:
        """Welcomed on the current connection: requests may be sent."""
        return self._welcomed

    @property
    def closing(self) -> bool:
        """:meth:`begin_close` or :meth:`terminate` was called: nothing more is sent."""
        return self._closing or self._closed is not None

    @property
    def closed(self) -> ClientClosed | None:
        """Why the session ended for good, once it has (:meth:`terminate`)."""
        return self._closed

    def data_to_send(self) -> list[str]:
        """The frames to send on the current connection, in order (the queue is emptied).

        Frames queued for a connection that is then lost are dropped: nothing is resent.
        """
        writes, self._writes = self._writes, []
        return writes

    def events_received(self) -> list[Event]:
        """What happened since the last call, in order (the queue is emptied)."""
        events, self._events = self._events, []
        return events

    # -- the connection's life ----------------------------------------------------------

    def connecting(self) -> None:
        """A connection attempt starts (state CONNECTING): next, :meth:`handshake`."""
        self._reconnect_now = False
        self.connector.starting()
        self._change(State.CONNECTING, attempt=self.connector.attempt)

    def handshake(self) -> Handshake:
        """Where to connect: into the first room, with its ``last_id`` (its replay
        arrives with the welcome). Call it once per attempt."""
        first = self.rooms.connect_room()
        self._connect_room = None if first is None else first[0]
        return self.connector.handshake(*(first or (None, None)))

    def connection_lost(self) -> None:
        """The WebSocket is gone (or never opened): rooms count as not joined, requests
        still waiting are over (:class:`RequestDone`), queued frames are dropped. Safe
        to call again; then :meth:`connection_closed` says what comes next."""
        self.connector.lost()
        self._welcomed = False
        self._writes.clear()
        self.rooms.connection_lost()
        for ref, (kind, _room) in self._pending.items():
            lost = NotConnected("connection lost before the pong") if kind == "ping" else None
            self._events.append(RequestDone(ref, lost))
        self._pending.clear()

    def connection_closed(
        self, code: int, reason: str = "", *, status: int | None = None
    ) -> StateChange:
        """Decide what follows the end of a connection, or of a failed attempt.

        ``code`` is the close code (1006 for none), ``status`` the HTTP status of a
        refused handshake; :meth:`connection_lost` is included. Returns (and emits)
        DISCONNECTED, with the ``delay`` before :meth:`connecting`, or CLOSED.
        """
        self.connection_lost()
        if self._reconnect_now:  # asked for: at once, and not counted as a failure
            self._reconnect_now = False
            now = {"attempt": self.connector.attempt, "delay": 0.0}
            return self._change(
                State.DISCONNECTED, code=code, reason=reason, action=CloseAction.RECONNECT, **now
            )
        retry = self.connector.retry(code, reason, status=status)
        if retry is None:
            self.terminate(ClientClosed(code, reason, status=status))
            return self._last_change
        return self._change(
            State.DISCONNECTED,
            code=code,
            status=status,
            reason=reason,
            attempt=retry.attempt,
            delay=retry.delay,
            ceiling=retry.ceiling,
            action=retry.action,
        )

    def request_reconnect(self) -> None:
        """The user wants a new connection now: the next :meth:`connection_closed`
        answers with no delay, and the attempt is not counted as a failure. The
        caller closes the current WebSocket, if any."""
        self._check_open()
        self._reconnect_now = True

    def begin_close(self) -> None:
        """The user closes the client: from now on requests raise :class:`ClientClosed`
        and nothing more is queued. Then close the WebSocket and call :meth:`terminate`."""
        self._closing = True
        self._writes.clear()

    def terminate(self, closed: ClientClosed) -> bool:
        """Enter the terminal state CLOSED because of ``closed``; False if already there."""
        if self._closed is not None:
            return False
        self._closed = closed
        self.connection_lost()
        action = None if closed.deliberate else CloseAction.STOP
        self._change(
            State.CLOSED,
            code=closed.code,
            status=closed.status,
            reason=closed.reason,
            action=action,
            deliberate=closed.deliberate,
        )
        return True

    # -- the user's requests ------------------------------------------------------------

    def send_chat(self, room: str, data: Any, *, ref: str | None = None) -> None:
        """Queue a chat message to ``room`` (``TypeError`` if ``data`` is not JSON)."""
        message: dict[str, Any] = {"type": "chat", "room": room, "data": data}
        if ref is not None:
            message["ref"] = ref
        self._send_now(message)

    def join(self, room: str) -> RoomStatus | None:
        """Want ``room`` from now on; when connected, queue its ``join``.

        Returns the outcome if the room is joined already; else None, and the
        outcome comes later as a :class:`RoomStatus` event for the room (or a
        :class:`JoinRefused`), on this connection or after reconnecting.

        Raises:
            InvalidArgument: ``room`` is not a valid room name.
        """
        check_room(room)
        self._check_open()
        status = self.rooms.status(room)
        if status is not None:
            return status
        self.rooms.want(room)
        if self._welcomed and room in self.rooms.to_join():
            self._send(self.rooms.join(room, self._ref("j")))
        return None

    def leave(self, room: str) -> str | None:
        """Stop wanting ``room``; if the server counts the client in it, queue a ``leave``
        and return its ref (a :class:`RequestDone` follows); else None."""
        if not self.rooms.drop(room) or not self._welcomed:
            return None
        self._check_open()
        ref = self._ref("l")
        self._pending[ref] = ("leave", room)
        self._send({"type": "leave", "room": room, "ref": ref})
        return ref

    def set_presence(self, status: str) -> bool:
        """Choose the user's status, restored in every room after reconnecting; True if
        a ``presence`` message was queued (it changed, and the session is connected).

        Raises:
            InvalidArgument: ``status`` is neither ``online`` nor ``away``.
        """
        if status not in ("online", "away"):
            raise InvalidArgument("status", status, "use 'online' or 'away'")
        changed, self.presence = status != self.presence, status
        if not (changed and self._welcomed):
            return False
        self._send_now({"type": "presence", "data": {"status": status}})
        return True

    def ping(self) -> str:
        """Queue a ping; returns its ref, answered by a :class:`RequestDone` on the pong."""
        ref = self._ref("p")
        self._send_now({"type": "ping", "data": {"ref": ref}})
        self._pending[ref] = ("ping", None)
        return ref

    def send_token(self) -> None:
        """Queue the connector's token in an ``auth`` message: a refresh while connected
        (the reply is consumed; a refusal is a :class:`RefreshRefused` event)."""
        token = self.connector.token
        self._send_now({"type": "auth", "data": {"token": token}, "ref": self._ref("a")})

    def forget(self, ref: str) -> None:
        """Stop waiting for the reply to ``ref`` (the caller gave up, e.g. on a timeout)."""
        self._pending.pop(ref, None)

    # -- receiving ----------------------------------------------------------------------

    def receive_text(self, data: str | bytes) -> None:
        """Handle one frame from the server (JSON text; anything else is logged and ignored).

        After calling this, send :meth:`data_to_send` and handle :meth:`events_received`.
        """
        obj = decode_frame(data)
        if obj is not None:
            self.receive_message(obj)

    def receive_message(self, obj: dict[str, Any]) -> None:
        """Handle one decoded server message: like :meth:`receive_text`, without the JSON.

        Control messages (welcome, joined, left, refreshed, pong) are consumed;
        everything else becomes a :class:`roomcast.Message` event, unless the
        room tracker drops it (duplicate, gap) or it came before the welcome.
        """
        kind, data = obj.get("type"), obj.get("data")
        if kind == "system" and isinstance(data, dict) and data.get("event") in _CONTROL_EVENTS:
            event, room = data["event"], data.get("room")
            if event == "welcome" and not self._welcomed:
                self._on_welcome(data)
                return
            if event == "joined" and isinstance(room, str):
                self._on_joined(room, data)
                return
            if event == "left" and isinstance(room, str):
                self.rooms.left(room)
                self._done(data.get("ref"), None)
                return
            if event == "refreshed":
                return
        if kind == "pong":
            self._done(data.get("ref") if isinstance(data, dict) else None, None)
            return
        if kind == "error" and isinstance(data, dict):
            self._on_error(data)  # and the application sees the error too
        room, offset = obj.get("room"), obj.get("offset")
        if isinstance(room, str) and isinstance(offset, int) and not self._track(obj, room, offset):
            return
        try:
            message = Message.from_dict(obj)
        except RoomcastError:
            _log.debug("ignoring a message of unknown shape: %.200r", obj)
            return
        if self._welcomed:  # before the welcome, nothing is for the application
            self._events.append(message)

    def _on_welcome(self, data: dict[str, Any]) -> None:
        self._welcomed = True
        self._reconnect_now = False
        self.connector.welcomed()
        self.connection_id = _str_or_none(data.get("connection_id"))
        self.user_id = _str_or_none(data.get("user_id"))
        self._change(State.CONNECTED, connection_id=self.connection_id, user_id=self.user_id)
        room, rooms = self._connect_room, data.get("rooms")
        if room is not None and isinstance(rooms, list) and room in rooms:
            if room in self.rooms:
                self._on_joined(room, data)
            else:  # left while connecting
                self._send({"type": "leave", "room": room})
        for room in self.rooms.to_join():
            self._send(self.rooms.join(room, self._ref("j")))

    def _on_joined(self, room: str, data: dict[str, Any]) -> None:
        offset = data.get("offset")
        status = self.rooms.joined(
            room,
            recovered=data.get("recovered") is True,
            epoch=_str_or_none(data.get("epoch")),
            offset=offset if isinstance(offset, int) else None,
        )
        if status is None:  # not wanted (any more)
            leaving = any(k == "leave" and r == room for k, r in self._pending.values())
            if not leaving and self._welcomed:
                self._send({"type": "leave", "room": room})
            return
        if self.presence != "online" and self._welcomed:
            # A join announces the user online: restore the chosen status in this room.
            self._send({"type": "presence", "room": room, "data": {"status": self.presence}})
        self._events.append(status)

    def _on_error(self, data: dict[str, Any]) -> None:
        ref = data.get("ref")
        if not isinstance(ref, str):
            return
        error = ReplyError(str(data.get("code")), str(data.get("error", "")), ref)
        pending = self._pending.get(ref)
        if ref.startswith("g"):
            # The gap repair was refused (rate limited?): reconnecting recovers instead.
            if not self.closing:
                self._events.append(ReconnectNeeded(f"gap repair refused: {error}"))
        elif ref.startswith("a"):
            self._events.append(RefreshRefused(error))
        elif pending is not None:
            left_anyway = pending[0] == "leave" and error.code == "not_member"
            self._done(ref, None if left_anyway else error)
        elif (room := self.rooms.refused(ref)) is not None:
            self._events.append(JoinRefused(room, error))

    def _track(self, obj: dict[str, Any], room: str, offset: int) -> bool:
        verdict = self.rooms.track(room, offset, obj.get("id"), can_repair=self._welcomed)
        if verdict.gap is not None:
            self._events.append(verdict.gap)
            if verdict.gap.repairing:
                self._send(self.rooms.repair(room, self._ref("g")))
        return verdict.deliver

    # -- internals ----------------------------------------------------------------------

    def _change(self, state: State, **details: Any) -> StateChange:
        self._state = state
        self._last_change = StateChange(state=state, **details)
        self._events.append(self._last_change)
        return self._last_change

    def _ref(self, prefix: str) -> str:
        return f"{prefix}{next(self._refs)}"

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed
        if self._closing:
            raise ClientClosed(1000, "client closed", deliberate=True)

    def _send_now(self, message: dict[str, Any]) -> None:
        self._check_open()
        if not self._welcomed:
            raise NotConnected("not connected")
        self._send(message)

    def _done(self, ref: object, error: ClientError | None) -> None:
        if isinstance(ref, str) and self._pending.pop(ref, None) is not None:
            self._events.append(RequestDone(ref, error))

    def _send(self, message: dict[str, Any]) -> None:
        if not self.closing:  # closing: nothing more goes out
            self._writes.append(json.dumps(message, separators=(",", ":")))
