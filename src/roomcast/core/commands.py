"""Inbound dispatch: one client frame in, SPEC §3's answer out, within the rate limits.

:meth:`Commands.handle` is the hot path of every client frame: rate limits (in
messages and in bytes, per connection; a connection that keeps pushing past
them is closed with 1008), :func:`~roomcast.protocol.parse`, then one branch
per message type — ``chat`` (the room's namespace, the endpoint's
``on_publish`` then ``on_message`` hooks, then the broker; a ``ref`` gets the
``published`` ack from a callback on the broker's future), ``ping``,
``join`` / ``leave`` (:mod:`roomcast.core.subscriptions`, after ``on_join``),
``presence`` (a status change, its announcements coalesced by
:class:`~roomcast.core.presence.StatusCoalescer`) and ``auth``
(:mod:`roomcast.core.refresh`). A frame the client got wrong is answered with an
``error`` message; the connection stays.

Calling contract: front ends call :meth:`Commands.handle` (bound as
:attr:`Engine.handle <roomcast.core.engine.Engine.handle>`) through
:meth:`Connection.receive <roomcast.core.connection.Connection.receive>`, one
frame at a time per connection. It returns None when the frame is done, or an
awaitable the connection must run before its next frame; nothing here starts a
task. :meth:`Commands.reject_overload` drops a frame that found the
connection's inbox full.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from roomcast.core.hooks import ask_on_join, failure, refusal
from roomcast.core.subscriptions import forbidden
from roomcast.errors import CloseCode, ErrorCode, ProtocolError
from roomcast.protocol import ClientMessage, Message, MessageType, PresenceStatus, parse

if TYPE_CHECKING:
    from roomcast.brokers.base import PublishResult
    from roomcast.core.connection import Connection, Verdict
    from roomcast.core.engine import Engine
    from roomcast.core.presence import Announce
    from roomcast.core.refresh import TokenRefresh
    from roomcast.core.subscriptions import Membership

__all__ = ["Commands"]

_log = logging.getLogger("roomcast.hub")

_CHAT = MessageType.CHAT


class Commands:
    """Handles client frames: rate limits, parsing, and each message type.

    Args:
        hub: the engine: its broker, metrics, message factory, status
            coalescer, ``presence_events`` and rate limits are read once; its
            ``loop``, ``started`` and ``send_error`` at each use.
        membership: runs ``join`` and ``leave``.
        refresh: runs ``auth`` (token refresh).
        announce_status: announces a connection's status in a room (the
            status coalescer's callback too).
    """

    __slots__ = (
        "_announce_status",
        "_broker",
        "_hub",
        "_make",
        "_membership",
        "_messages",
        "_metrics",
        "_namespaces",
        "_rate",
        "_rate_bytes",
        "_received",
        "_refresh",
        "_statuses",
    )

    def __init__(
        self,
        hub: Engine,
        *,
        membership: Membership,
        refresh: TokenRefresh,
        announce_status: Announce,
    ) -> None:
        self._hub = hub
        self._broker = hub.broker
        self._metrics = hub.metrics
        self._messages = hub.messages
        self._make = hub.messages.make
        self._received = hub.metrics.messages_received
        self._statuses = hub.statuses
        self._namespaces = hub.namespaces if hub.namespaces else None
        self._rate = hub.rate
        self._rate_bytes = hub.rate_bytes
        self._membership = membership
        self._refresh = refresh
        self._announce_status = announce_status

    def handle(self, conn: Connection, raw: str | bytes) -> Awaitable[None] | None:
        """Handle one client frame.

        Returns None when done, or an awaitable the connection must run before its
        next frame (see :meth:`Connection.receive
        <roomcast.core.connection.Connection.receive>`).
        """
        self._received.value += 1  # HotCounter.inc, inlined
        if conn.abuse is not None:
            over = self._over_rate(conn, raw)
            if over is not None:
                self._rate_limited(conn, raw, over)
                return None
        try:
            msg = parse(raw, joined=conn.rooms)
            kind = msg.type
            if kind is _CHAT:
                return self._chat(conn, msg)
            if kind is MessageType.PING:
                pong = self._messages.make(MessageType.PONG, data=msg.data)
                conn.send(pong)
                return None
            if kind is MessageType.JOIN:
                room = _named_room(msg)
                membership = self._membership
                membership.check(conn, room, msg.ref)
                if conn.config.on_join is None or room in conn.rooms:
                    return membership.join(conn, room, last_id=msg.last_id, ref=msg.ref)
                return self._join_if_allowed(conn, room, msg)
            if kind is MessageType.LEAVE:
                return self._membership.leave(conn, _named_room(msg), ref=msg.ref)
            if kind is MessageType.PRESENCE:
                rooms = [self._target(conn, msg)] if msg.room is not None else sorted(conn.rooms)
                return self._set_status(conn, PresenceStatus(msg.data["status"]), rooms)
            return self._refresh.auth(conn, msg)
        except ProtocolError as exc:
            self._hub.send_error(conn, exc)
            return None

    async def _join_if_allowed(self, conn: Connection, room: str, msg: ClientMessage) -> None:
        # A client's join that the endpoint's on_join hook decides first.
        refused = await ask_on_join(conn, room, msg.ref)
        if conn.closed:
            return
        if refused is not None:
            self._hub.send_error(conn, refused)
            return
        await self._membership.join(conn, room, last_id=msg.last_id, ref=msg.ref)

    def reject_overload(self, conn: Connection, raw: str | bytes) -> None:
        """A connection's inbox is full (its hooks are too slow): drop the frame."""
        self._metrics.rate_limited.inc()
        self._hub.send_error(
            conn,
            ProtocolError(
                ErrorCode.RATE_LIMITED, "too many messages waiting; dropped", ref=_ref_of(raw)
            ),
        )

    # -- rate limits --------------------------------------------------------------------

    def _over_rate(self, conn: Connection, raw: str | bytes) -> str | None:
        # Which limit this frame is over (None: within both), in messages and bytes.
        now = self._hub.loop.time()
        rate = self._rate
        if rate and not conn.bucket.take(now):
            return f"{rate:g} messages/s"
        byte_bucket = conn.byte_bucket
        if byte_bucket is not None:
            size = len(raw) if isinstance(raw, bytes) or raw.isascii() else len(raw.encode())
            if not byte_bucket.take(now, size):
                if rate:
                    conn.bucket.give_back()
                return f"{self._rate_bytes} bytes/s"
        return None

    def _rate_limited(self, conn: Connection, raw: str | bytes, limit: str) -> None:
        metrics = self._metrics
        metrics.rate_limited.inc()
        abuse = conn.abuse
        if abuse is not None and not abuse.take(self._hub.loop.time()):
            _log.warning(
                "closing connection over the rate limit (1008)",
                extra={"conn_id": conn.id, "remote": conn.remote},
            )
            metrics.policy_closes.labels(reason="rate").inc()
            conn.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
            return
        self._hub.send_error(
            conn,
            ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"rate limit of {limit} exceeded; message dropped",
                ref=_ref_of(raw),
            ),
        )

    # -- chat ---------------------------------------------------------------------------

    def _target(self, conn: Connection, msg: ClientMessage) -> str:
        room = msg.room
        if room is None:
            if len(conn.rooms) != 1:
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE,
                    f"'room' is required when joined to {len(conn.rooms)} rooms",
                    ref=msg.ref,
                )
            (room,) = conn.rooms
        elif room not in conn.rooms:
            identity = conn.identity
            if identity is not None and not identity.allows(room):
                raise forbidden(room, msg.ref)
            raise ProtocolError(
                ErrorCode.NOT_MEMBER, f"not a member of room {room!r}; join it first", ref=msg.ref
            )
        return room

    def _chat(self, conn: Connection, msg: ClientMessage) -> Awaitable[None] | None:
        # The room's namespace, then on_publish (authorizes), then on_message
        # (transforms or drops), then the broker; a ref gets the ack.
        room = msg.room
        if room is None or room not in conn.rooms:
            room = self._target(conn, msg)
        namespaces = self._namespaces
        if namespaces is not None and not namespaces(room).client_publish:
            raise ProtocolError(
                ErrorCode.FORBIDDEN_PUBLISH,
                f"room {room!r} takes messages from the server only",
                ref=msg.ref,
            )
        ref = msg.ref
        message = self._make(_CHAT, room=room, data=msg.data, sender=conn.user_id, ref=ref)
        config = conn.config
        check = config.on_publish
        if check is None:
            if config.on_message is None:  # no hook: straight to the broker
                self._publish_from(conn, message, ref)
                return None
            return self._filter(conn, message)
        try:
            verdict = check(conn, message)
        except Exception as exc:
            self._hub.send_error(conn, failure(exc, **_publish_refusal(message)))
            return None
        if inspect.isawaitable(verdict):
            return self._authorize(conn, message, verdict)
        refused = refusal(verdict, **_publish_refusal(message))
        if refused is not None:
            self._hub.send_error(conn, refused)
            return None
        return self._filter(conn, message)

    async def _authorize(
        self, conn: Connection, message: Message, pending: Awaitable[Verdict]
    ) -> None:
        try:
            verdict = await pending
        except Exception as exc:
            refused: ProtocolError | None = failure(exc, **_publish_refusal(message))
        else:
            refused = refusal(verdict, **_publish_refusal(message))
        if conn.closed:
            return
        if refused is not None:
            self._hub.send_error(conn, refused)
            return
        rest = self._filter(conn, message)
        if rest is not None:
            await rest

    def _filter(self, conn: Connection, message: Message) -> Awaitable[None] | None:
        hook = conn.config.on_message
        if hook is None:
            self._publish_from(conn, message, message.ref)
            return None
        conn.answered = None  # set again if the hook sends its own error
        try:
            result = hook(conn, message)
        except Exception:
            _log.exception("on_message hook failed; message dropped", extra={"conn_id": conn.id})
            self._dropped(conn, message)
            return None
        if inspect.isawaitable(result):
            return self._filter_async(conn, message, result)
        if result is None:
            self._dropped(conn, message)
            return None
        self._publish_from(conn, result, message.ref)
        return None

    async def _filter_async(
        self, conn: Connection, message: Message, pending: Awaitable[Message | None]
    ) -> None:
        try:
            result = await pending
        except Exception:
            _log.exception("on_message hook failed; message dropped", extra={"conn_id": conn.id})
            result = None
        if conn.closed:
            return
        if result is None:
            self._dropped(conn, message)
            return
        self._publish_from(conn, result, message.ref)

    def _dropped(self, conn: Connection, message: Message) -> None:
        # A message the server dropped: a client waiting for its ack is told,
        # unless the hook told it already.
        if message.ref is not None and conn.answered != message.ref:
            self._hub.send_error(
                conn,
                ProtocolError(
                    ErrorCode.FORBIDDEN_PUBLISH, "message dropped by the server", ref=message.ref
                ),
            )

    def _publish_from(self, conn: Connection, message: Message, ref: str | None) -> None:
        # A message that cannot be encoded (a hook's result, say) gets its sender
        # an invalid_message error; nothing is stored or delivered. One with a
        # ref gets the ack once the broker has stored it (a callback, no task);
        # a hook's new message keeps the client's ref, for the ack and retries
        # (retries are told apart by sender and ref: without a sender, by none).
        if ref is not None and message.ref is None and message.from_ is not None:
            message.ref = ref
        try:
            pending = self._broker.publish(message)
        except ProtocolError as exc:
            self._hub.send_error(conn, exc)
            return
        if ref is not None:
            pending.add_done_callback(functools.partial(self._acknowledge, conn, ref))

    def _acknowledge(self, conn: Connection, ref: str, pending: PublishResult) -> None:
        # The broker's answer for a message that carried ``ref``.
        if conn.closed:
            return
        hub = self._hub
        stored = None if pending.cancelled() else pending.result()
        if stored is None or stored.degraded == "unknown":
            hub.send_error(
                conn,
                ProtocolError(
                    ErrorCode.UNAVAILABLE,
                    "the message could not be stored; retry with the same ref",
                    ref=ref,
                ),
            )
            return
        data: dict[str, Any] = {"ref": ref, "room": stored.room, "id": stored.id}
        if stored.offset is not None:
            data["offset"] = stored.offset
        if stored.degraded is not None:  # delivered on this pod only
            data["stored"] = False
        conn.send(self._messages.system("published", data, room=stored.room))

    # -- presence status ----------------------------------------------------------------

    async def _set_status(self, conn: Connection, status: PresenceStatus, rooms: list[str]) -> None:
        # The state changes at once; announcements go out at most once per
        # --presence-interval per connection (see roomcast.core.presence).
        conn.status = status
        statuses = self._statuses
        namespaces = self._hub.namespaces
        sent = False
        for room in rooms:
            options = namespaces(room)
            if not options.presence:
                continue
            changed = await self._broker.presence.set_status(
                room, user_id=conn.user_id, status=status
            )
            if not options.presence_events:
                continue
            if statuses.holding(conn):
                statuses.hold(conn, room, status, changed=changed)
            elif changed:
                self._announce_status(conn, room, status)
                sent = True
        hub = self._hub
        if sent and hub.started and not conn.closed:
            statuses.sent(conn, hub.loop)


def _publish_refusal(message: Message) -> dict[str, Any]:
    # How an on_publish refusal of ``message`` reads (see roomcast.core.hooks).
    return {
        "code": ErrorCode.FORBIDDEN_PUBLISH,
        "default": f"publishing to room {message.room!r} was refused",
        "ref": message.ref,
    }


def _ref_of(raw: str | bytes) -> str | None:
    # The ref of a message that is dropped unhandled, for the error about it.
    try:
        return parse(raw).ref
    except ProtocolError as exc:
        return exc.ref


def _named_room(msg: ClientMessage) -> str:
    # parse() guarantees join/leave name a valid room.
    if msg.room is None:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{msg.type.value} needs a 'room'")
    return msg.room
