"""Who is where: connections on the pod, their joins and leaves, the pod's room subscriptions.

Two classes, one per layer:

- :class:`Subscriptions` keeps one broker subscription per room: the first
  :meth:`~Subscriptions.subscribe` of a room starts it and concurrent joiners
  share it; :meth:`~Subscriptions.release` ends it. It does not decide *when*
  a room is no longer needed.
- :class:`Membership` writes the :class:`~roomcast.core.registry.Registry`:
  it adds a connection (its welcome) and removes it, and runs SPEC §3's
  ``join`` and ``leave`` — the checks, the catch-up (through
  :class:`~roomcast.core.recovery.Recovery`), the ``joined`` / ``left``
  replies, presence and its announcements. It releases a room's subscription
  once no local connection is in the room or catching up on it: the room's
  members in the registry plus its connections in :attr:`Recovery.recovering
  <roomcast.core.recovery.Recovery.recovering>` are the subscription's
  reference count.

Calling contract: joins of one connection run one after another (the
connection's inbox orders them), so ``conn.rooms`` is current when
:meth:`Membership.check` runs; call :meth:`Membership.check` before
:meth:`Membership.join` for a client's ``join``, and
:meth:`Membership.after_leave` for each room :meth:`Membership.remove` returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from roomcast.core.recovery import merge
from roomcast.errors import BrokerError, ErrorCode, ProtocolError
from roomcast.protocol import Encoded, Message, PresenceStatus

if TYPE_CHECKING:
    from roomcast.core.connection import Connection
    from roomcast.core.engine import Engine
    from roomcast.core.recovery import Recovery

__all__ = ["Membership", "Subscriptions", "forbidden"]

_log = logging.getLogger("roomcast.hub")


class Subscriptions:
    """The pod's broker subscription to each room, one per room.

    Args:
        hub: the engine whose loop runs the subscriptions and which owns the
            unsubscribe tasks (its ``loop``, ``started`` and ``spawn``).
    """

    __slots__ = ("_broker", "_hub", "_tasks")

    def __init__(self, hub: Engine) -> None:
        self._hub = hub
        self._broker = hub.broker
        # Room -> the task that subscribed this pod to it.
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __contains__(self, room: object) -> bool:
        """Whether the pod is subscribed, or subscribing, to ``room``."""
        return room in self._tasks

    def __len__(self) -> int:
        """Rooms the pod is subscribed, or subscribing, to."""
        return len(self._tasks)

    async def subscribe(self, room: str) -> None:
        """Return once the pod is subscribed to ``room``; concurrent callers share one subscription.

        The subscription runs in its own task: a caller cancelled meanwhile does
        not cancel it for the others.

        Raises:
            BrokerError: the broker's subscribe failed; every waiting caller
                gets it, and so do later ones until the room is released.
        """
        pending = self._tasks.get(room)
        if pending is None:
            pending = self._tasks[room] = self._hub.loop.create_task(
                _awaited(self._broker.subscribe(room)), name=f"roomcast-subscribe-{room}"
            )
        await asyncio.shield(pending)

    def release(self, room: str) -> None:
        """Unsubscribe the pod from ``room`` (in a task the engine owns); no-op if not subscribed.

        Call only once no local connection is in ``room`` or joining it. Once
        the engine is closed the subscription is only forgotten (the broker is
        closed too).
        """
        hub = self._hub
        if self._tasks.pop(room, None) is not None and hub.started:
            hub.spawn(self._broker.unsubscribe(room), name=f"roomcast-unsubscribe-{room}")


async def _awaited(step: Awaitable[None]) -> None:
    await step


class Membership:
    """Which connections are on the pod and in which rooms: SPEC §3's ``join`` and ``leave``.

    Every change to the :class:`~roomcast.core.registry.Registry` goes through
    here (:meth:`add`, :meth:`join`, :meth:`leave`, :meth:`remove`), with the
    connection and room gauges, and so do the presence updates and
    announcements of joins and leaves.

    Args:
        hub: the engine: its broker, registry, metrics, message factory, status
            coalescer, ``max_rooms_per_connection`` and ``presence_events`` are
            read once; its ``started`` and ``send_error`` at each use.
        recovery: catches a joiner up on what it missed.
        subscriptions: the pod's room subscriptions, released here.
    """

    __slots__ = (
        "_broker",
        "_events",
        "_hub",
        "_max_rooms",
        "_messages",
        "_metrics",
        "_namespaces",
        "_recovery",
        "_registry",
        "_statuses",
        "_subscriptions",
    )

    def __init__(
        self,
        hub: Engine,
        *,
        recovery: Recovery,
        subscriptions: Subscriptions,
    ) -> None:
        self._hub = hub
        self._broker = hub.broker
        self._registry = hub.registry
        self._metrics = hub.metrics
        self._messages = hub.messages
        self._statuses = hub.statuses
        self._recovery = recovery
        self._subscriptions = subscriptions
        self._max_rooms = hub.max_rooms_per_connection
        self._namespaces = hub.namespaces
        self._events = hub.events

    def add(self, conn: Connection, *, recovered: bool, **room_state: Any) -> None:
        """Register ``conn`` on the pod and send its welcome, its first frame.

        ``room_state`` is empty for a connection without a room, else the
        ``room`` it joins and that room's ``epoch`` and ``offset``.
        """
        registry = self._registry
        registry.add(conn)
        self._metrics.connections.set(len(registry))
        data: dict[str, Any] = {
            "connection_id": conn.id,
            "user_id": conn.user_id,
            "rooms": [room_state["room"]] if "room" in room_state else [],
            "recovered": recovered,
        }
        if "epoch" in room_state:
            data["epoch"] = room_state["epoch"]
            data["offset"] = room_state["offset"]
        conn.send(self._messages.system("welcome", data))

    def reset(self, room: str, epoch: str, offset: int) -> None:
        """Tell the members of ``room`` that its history changed under them.

        Each gets an unsolicited ``joined`` (no ``ref``) with ``recovered: false``,
        the history's ``epoch`` now and the ``offset`` of the last message they
        have that it still holds: the clients resync, and take what follows.
        """
        conns = self._registry.rooms.get(room)
        self._metrics.history_resets.inc()
        _log.warning(
            "a room's history changed under its members; told them to resync",
            extra={"room": room, "epoch": epoch, "offset": offset, "members": len(conns or ())},
        )
        if not conns:
            return
        notice = {"room": room, "recovered": False, "epoch": epoch, "offset": offset}
        for conn in list(conns):
            conn.send(self._messages.system("joined", notice, room=room))

    def remove(self, conn: Connection) -> list[tuple[str, bool]] | None:
        """Forget ``conn`` and its rooms in the registry; None if it was not registered.

        Returns ``(room, last)`` for each room it was in (``last``: no local
        member is left there); finish each with :meth:`after_leave`.
        ``conn.rooms`` is left as it was, for the ``on_disconnect`` hook.
        """
        registry = self._registry
        if registry.connections.get(conn.id) is not conn:
            return None
        left = registry.remove(conn)
        metrics = self._metrics
        metrics.connections.set(len(registry))
        metrics.rooms.set(len(registry.rooms))
        return left

    def check(self, conn: Connection, room: str, ref: str | None) -> None:
        """Raise the error a client's ``join`` of ``room`` gets, if any.

        Raises:
            ProtocolError: ``forbidden_room`` when the token does not allow the
                room or the connection is in ``max_rooms_per_connection`` rooms
                already. Joining a room the connection is in is always allowed.
        """
        # Joins of one connection run one after another, so conn.rooms is current.
        if room in conn.rooms:
            return
        identity = conn.identity
        if identity is not None and not identity.allows(room):
            raise forbidden(room, ref)
        if len(conn.rooms) >= self._max_rooms:
            raise ProtocolError(
                ErrorCode.FORBIDDEN_ROOM,
                f"room limit reached: a connection may be in at most"
                f" {self._max_rooms} rooms; leave one first",
                ref=ref,
            )

    async def join(
        self,
        conn: Connection,
        room: str,
        *,
        last_id: str | None = None,
        ref: str | None = None,
        buffer: list[Encoded] | None = None,
        server: bool = False,
    ) -> None:
        """Join ``room``: subscribe, read the room's position and replay, then go live.

        ``buffer`` is given while the connection is being attached (it holds the
        publications since :meth:`Recovery.attach
        <roomcast.core.recovery.Recovery.attach>`); the connection is then
        registered and welcomed here (:meth:`add`). Otherwise a ``joined``
        reply is sent, with ``"server": true`` when ``server`` (the server
        subscribed the connection: token ``channels``, control API). A member
        joining again with ``last_id`` gets the replay once more, staying
        present in the room. The room's namespace decides whether ``last_id``
        is replayed (``recovery``) and whether presence is kept and announced.
        """
        welcome = buffer is not None
        if conn.closed:
            return
        options = self._namespaces(room)
        if not options.recovery:
            last_id = None
        extra: dict[str, Any] = {"server": True} if server else {}
        registry = self._registry
        resync = room in conn.rooms
        if resync:
            if last_id is None:  # already live in the room: nothing to replay
                try:
                    epoch = (await self._broker.history(room, limit=0)).epoch
                except BrokerError:
                    epoch = ""
                self._reply_joined(conn, room, ref, recovered=False, epoch=epoch, **extra)
                return
            # A member asking for a replay (it saw an offset gap): catch up again,
            # as a joiner would, while staying present in the room.
            registry.leave(conn, room)
        # Hold the room's live messages for this connection while it catches up.
        held = buffer if buffer is not None else []
        replay, page = await self._recovery.catch_up(conn, room, last_id, held)
        if conn.closed:
            self._release(room)
            if resync:  # it left the registry's rooms above, so detach did not see it
                await self.after_leave(conn, room, room not in registry.rooms)
            return
        # From here to registry.join nothing awaits: no message can slip between.
        if welcome:
            self.add(
                conn, recovered=page.recovered, room=room, epoch=page.epoch, offset=page.offset
            )
        else:
            self._reply_joined(
                conn,
                room,
                ref,
                recovered=page.recovered,
                epoch=page.epoch,
                offset=page.offset,
                **extra,
            )
        for encoded in merge(room, page.offset, replay, held):
            conn.push(encoded)
        registry.join(conn, room)
        if server:
            conn.server_rooms.add(room)
        self._metrics.rooms.set(len(registry.rooms))
        if resync or not options.presence:
            return
        change = await self._broker.presence.add(
            room, user_id=conn.user_id, conn_id=conn.id, info=conn.info
        )
        if change and options.presence_events:
            online = PresenceStatus.ONLINE
            self.announce(self._messages.presence(room, conn.user_id, online, info=conn.info))
        if change and self._events:
            self._events.joined(room, conn.user_id, change)

    def _reply_joined(
        self, conn: Connection, room: str, ref: str | None, *, recovered: bool, **extra: Any
    ) -> None:
        data: dict[str, Any] = {"room": room, "recovered": recovered, **extra}
        if ref is not None:
            data["ref"] = ref
        conn.send(self._messages.system("joined", data, room=room))

    async def leave(
        self,
        conn: Connection,
        room: str,
        *,
        ref: str | None,
        server: bool = False,
        reason: str | None = None,
    ) -> None:
        """Leave ``room`` as a client's ``leave`` asks: the ``left`` reply, then presence.

        A connection not in ``room`` gets a ``not_member`` error instead. With
        ``server`` (the control API unsubscribed it) the reply carries
        ``"server": true`` and ``reason``, and a connection not in the room is
        left alone.
        """
        if room not in conn.rooms:
            if server:
                return
            self._hub.send_error(
                conn, ProtocolError(ErrorCode.NOT_MEMBER, f"not a member of room {room!r}", ref=ref)
            )
            return
        registry = self._registry
        last_local = registry.leave(conn, room)
        self._metrics.rooms.set(len(registry.rooms))
        data: dict[str, Any] = {"room": room}
        if ref is not None:
            data["ref"] = ref
        if server:
            data["server"] = True
            if reason is not None:
                data["reason"] = reason
        conn.send(self._messages.system("left", data, room=room))
        await self.after_leave(conn, room, last_local)

    async def after_leave(self, conn: Connection, room: str, last_local: bool) -> None:
        """Finish ``conn``'s leaving ``room`` (already out of the registry's room).

        Updates presence (announcing ``offline`` on the user's last connection
        there) and, when ``last_local`` (no local member left), releases the
        room's subscription unless another connection is catching up on it.
        """
        self._statuses.left(conn, room)
        conn.server_rooms.discard(room)
        options = self._namespaces(room)
        if options.presence:
            change = await self._broker.presence.remove(room, user_id=conn.user_id, conn_id=conn.id)
            if change and self._hub.started:
                if options.presence_events:
                    offline = PresenceStatus.OFFLINE
                    self.announce(self._messages.presence(room, conn.user_id, offline))
                if self._events:
                    self._events.left(room, conn.user_id, change)
        if last_local:
            self._release(room)

    def announce(self, message: Message) -> None:
        """Publish a presence message; one whose payload cannot be encoded is logged, not sent.

        (An authenticator's ``info`` that is not JSON, say.)
        """
        try:
            self._broker.publish(message)
        except ProtocolError as exc:
            _log.error("cannot announce %s: %s", message.type.value, exc.detail)

    async def rooms(self) -> list[dict[str, Any]]:
        """Rooms with their local and cluster-wide connection counts and user counts.

        See :meth:`Engine.rooms <roomcast.core.engine.Engine.rooms>`.
        """
        stats = {s.room: s for s in await self._broker.presence.rooms()}
        rooms = self._registry.rooms
        out = []
        for name in sorted(set(stats) | set(rooms)):
            stat = stats.get(name)
            out.append(
                {
                    "room": name,
                    "connections": len(rooms.get(name, ())),
                    "cluster_connections": stat.connections if stat else 0,
                    "users": stat.users if stat else 0,
                }
            )
        return out

    def _release(self, room: str) -> None:
        # Unsubscribe from a room nobody here is in or joining any more.
        if room in self._registry.rooms or self._recovery.catching_up(room):
            return
        self._subscriptions.release(room)


def forbidden(room: str, ref: str | None) -> ProtocolError:
    """The ``forbidden_room`` error for a room the connection's token does not allow."""
    return ProtocolError(
        ErrorCode.FORBIDDEN_ROOM, f"room {room!r} is not allowed by your token", ref=ref
    )
