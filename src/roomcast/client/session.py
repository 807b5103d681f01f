"""The client's session (sans-I/O): requests and replies, over the connection state
machine of :mod:`roomcast.client.lifecycle`.

A :class:`Session` takes what the server sent (:meth:`Session.receive_text`) and
what the user asks (:meth:`Session.join`, :meth:`Session.send_chat`, ...) and
queues what follows: frames to send (:meth:`Session.data_to_send`) and events
(:meth:`Session.events_received`). It has no socket, task or clock: the asyncio
client (:mod:`roomcast.client.client`) moves the frames and runs the timers, and
tests feed it frames. Replies are routed by ``ref``: every ref the session makes
starts with its ``ref_prefix`` (random per session), then a letter saying what was
asked: ``j`` join, ``g`` gap repair, ``l`` leave, ``p`` ping, ``a`` auth, ``m`` a
publication (:mod:`roomcast.client.publishing`). A reply whose ref lacks the
prefix answers one of the application's own refs (``send(ref=...)``): it only
reaches the application, as a message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any, Final

from roomcast.client.connector import Connector
from roomcast.client.lifecycle import ABNORMAL_CLOSURE, Event, Lifecycle, State, StateChange
from roomcast.client.replies import JoinRefused, PublishDone, ReconnectNeeded, RefreshRefused
from roomcast.client.rooms import RoomLeft, RoomStatus, check_room
from roomcast.errors import InvalidArgument, ReplyError, RoomcastError
from roomcast.protocol import Message, is_valid_room

__all__ = [
    "ABNORMAL_CLOSURE",
    "Event",
    "Session",
    "State",
    "StateChange",
    "decode_frame",
]

_log = logging.getLogger("roomcast.client")

_CONTROL_EVENTS: Final = frozenset({"welcome", "joined", "left", "refreshed", "published"})


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


class Session(Lifecycle):
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
    nothing is queued for a later connection. Publications (:meth:`publish`) are
    the exception: they wait for a connection, and are sent again after a lost
    one, until answered (:class:`PublishDone`) or :meth:`forget`-ten.

    Args:
        connector: when and how to (re)connect (attempts, token, URL); kept as ``connector``.
        rooms: rooms to join and rejoin; a :class:`~roomcast.client.rooms.RoomTracker`
            of them is kept as ``rooms`` (InvalidArgument if a name is invalid).
        ref_prefix: the start of every ref the session makes (default: 12 random
            characters and a dot), which tells its replies from those to the
            application's refs, and its publications from those of the user's other
            clients (the server takes a repeated ref from the same user as a retry).

    Attributes (read-only): ``connection_id`` and ``user_id``, the server's ids of the
    current (or last) connection; ``presence``, the status the user chose.
    """

    def __init__(
        self, connector: Connector, *, rooms: Iterable[str] = (), ref_prefix: str | None = None
    ) -> None:
        super().__init__(connector, rooms=rooms, ref_prefix=ref_prefix)
        self.presence = "online"

    # -- the user's requests ------------------------------------------------------------

    def send_chat(self, room: str, data: Any, *, ref: str | None = None) -> None:
        """Queue a chat message to ``room`` (``TypeError`` if ``data`` is not JSON)."""
        message: dict[str, Any] = {"type": "chat", "room": room, "data": data}
        if ref is not None:
            message["ref"] = ref
        self._send_now(message)

    def publish(self, room: str, data: Any) -> str:
        """Publish a chat message to ``room`` under a fresh ref, and return the ref.

        It is sent now if connected and ``room`` is joined (or not one of the
        client's rooms: the server answers); else once connected and the room is
        (re)joined; and again, with the same ref, after every lost connection,
        until a :class:`PublishDone` for the ref ends it (or :meth:`forget`).

        Raises:
            InvalidArgument: ``room`` is not a valid room name.
            TypeError: ``data`` cannot be encoded as JSON.
        """
        check_room(room)
        self._check_open()
        ref = self._requests.new("m")
        self.publications.add(ref, room, data)
        self._send_due()
        return ref

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
            self._send(self.rooms.join(room, self._requests.new("j")))
        return None

    def leave(self, room: str) -> str | None:
        """Stop wanting ``room``; if the server counts the client in it, queue a ``leave``
        and return its ref (a :class:`RequestDone` follows); else None."""
        if not self.rooms.drop(room) or not self._welcomed:
            return None
        self._check_open()
        self._send_due()  # its publications waiting for the join: the server answers
        ref = self._requests.new("l")
        self._requests.wait(ref, room)
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
        ref = self._requests.new("p")
        self._send_now({"type": "ping", "data": {"ref": ref}})
        self._requests.wait(ref)
        return ref

    def send_token(self) -> None:
        """Queue the connector's token in an ``auth`` message: a refresh while connected
        (the reply is consumed; a refusal is a :class:`RefreshRefused` event)."""
        token = self.connector.token
        self._send_now({"type": "auth", "data": {"token": token}, "ref": self._requests.new("a")})

    def forget(self, ref: str) -> None:
        """Stop waiting for the reply to ``ref`` (the caller gave up, e.g. on a timeout);
        a publication is not sent again."""
        self._requests.forget(ref)
        self.publications.forget(ref)

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

        Control messages (welcome, joined, left, refreshed, pong, the acks of
        publications) are consumed; everything else becomes a :class:`roomcast.Message`
        event, unless the room tracker drops it (duplicate, gap) or it came before
        the welcome. A ``joined`` or ``left`` with ``"server": true`` and no ref is
        the server's own doing: the room is added (and rejoined after reconnecting)
        or dropped (and not rejoined).
        """
        kind, data = obj.get("type"), obj.get("data")
        if kind == "system" and isinstance(data, dict) and data.get("event") in _CONTROL_EVENTS:
            event, room, ref = data["event"], data.get("room"), data.get("ref")
            by_server = data.get("server") is True and ref is None
            if event == "welcome" and not self._welcomed:
                self._on_welcome(data)
                return
            if event == "joined" and isinstance(room, str):
                self._on_server_joined(room, data) if by_server else self._on_joined(room, data)
                return
            if event == "left" and isinstance(room, str):
                self._on_left(room, data, by_server=by_server)
                return
            if event == "refreshed":
                return
            if event == "published" and isinstance(ref, str) and self._requests.kind(ref) == "m":
                published = self.publications.acked(ref, data)
                if published is not None:
                    self._events.append(PublishDone(ref, published))
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
            self._send(self.rooms.join(room, self._requests.new("j")))
        self._send_due()

    def _on_joined(self, room: str, data: dict[str, Any], *, server: bool = False) -> None:
        offset = data.get("offset")
        status = self.rooms.joined(
            room,
            recovered=data.get("recovered") is True,
            epoch=_str_or_none(data.get("epoch")),
            offset=offset if isinstance(offset, int) else None,
            server=server,
        )
        if status is None:  # not wanted (any more)
            if not self._requests.leaving(room) and self._welcomed:
                self._send({"type": "leave", "room": room})
            return
        if self.presence != "online" and self._welcomed:
            # A join announces the user online: restore the chosen status in this room.
            self._send({"type": "presence", "room": room, "data": {"status": self.presence}})
        self._events.append(status)
        self._send_due()

    def _on_server_joined(self, room: str, data: dict[str, Any]) -> None:
        # The server joined this connection to ``room`` on its own. If the client is
        # in it, or joining it, its own join decides (a replay may follow); if a
        # leave of it is on its way, the server processes that after.
        if not is_valid_room(room) or self.rooms.status(room) or self.rooms.joining(room):
            return
        if self._requests.leaving(room):
            return
        self.rooms.want(room)
        self._on_joined(room, data, server=True)

    def _on_left(self, room: str, data: dict[str, Any], *, by_server: bool) -> None:
        ref, reason = data.get("ref"), data.get("reason")
        if by_server:  # the server's doing: not rejoined
            self.rooms.drop(room)
            reason = reason if isinstance(reason, str) else ""
            self._events.append(RoomLeft(room=room, server=True, reason=reason))
            self._send_due()
            return
        self.rooms.left(room)
        if self._requests.kind(ref) == "l" and self._requests.waiting(ref):
            self._events.append(RoomLeft(room=room, server=False))
        self._done(ref, None)

    def _on_error(self, data: dict[str, Any]) -> None:
        ref = data.get("ref")
        kind = self._requests.kind(ref)
        if kind is None or not isinstance(ref, str):
            return  # none, or the application's own: only a message
        error = ReplyError(str(data.get("code")), str(data.get("error", "")), ref)
        if kind == "g":
            # The gap repair was refused (rate limited?): reconnecting recovers instead.
            if not self.closing:
                self._events.append(ReconnectNeeded(f"gap repair refused: {error}"))
        elif kind == "a":
            self._events.append(RefreshRefused(error))
        elif kind == "m":
            if self.publications.refused(ref):
                self._events.append(PublishDone(ref, error=error))
        elif self._requests.waiting(ref):
            left_anyway = kind == "l" and error.code == "not_member"
            self._done(ref, None if left_anyway else error)
        elif kind == "j" and (room := self.rooms.refused(ref)) is not None:
            self._events.append(JoinRefused(room, error))
            self._send_due()

    def _track(self, obj: dict[str, Any], room: str, offset: int) -> bool:
        verdict = self.rooms.track(room, offset, obj.get("id"), can_repair=self._welcomed)
        if verdict.gap is not None:
            self._events.append(verdict.gap)
            if verdict.gap.repairing:
                self._send(self.rooms.repair(room, self._requests.new("g")))
        return verdict.deliver
