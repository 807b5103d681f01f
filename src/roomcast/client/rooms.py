"""The client's room tracker (sans-I/O): which rooms it wants, where it is in each,
and what to ask for on reconnecting so that nothing retained is lost or repeated.

Per room it keeps the server's ``epoch``, the last ``offset`` seen and the ``id``
of the last retained message (``last_id``). :class:`RoomTracker` builds the
``join`` messages (and names the room that goes in the URL), judges each
retained message against the offsets (deliver, drop a duplicate, or report a
:class:`Gap`), and turns the server's ``joined`` replies into
:class:`RoomStatus` outcomes. The server may also put the client in a room, or
take it out, on its own (a server-side subscription: a ``joined`` or ``left``
without ``ref``, with ``"server": true``); such a room is wanted, or dropped,
like one the user asked for. It sends nothing itself: the session does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from roomcast.errors import InvalidArgument
from roomcast.protocol import is_valid_room

__all__ = ["Gap", "RoomLeft", "RoomState", "RoomStatus", "RoomTracker", "Tracked", "check_room"]

_ROOM_RULE = "use 1-128 of A-Z a-z 0-9 _ - . : @"


def check_room(room: str) -> None:
    """Refuse an invalid room name.

    Raises:
        InvalidArgument: ``room`` breaks the naming rules (SPEC §3).
    """
    if not is_valid_room(room):
        raise InvalidArgument("room", room, _ROOM_RULE)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RoomStatus:
    """The outcome of joining a room, passed to ``on_join`` and returned by ``Client.join``.

    Attributes:
        room: the room.
        recovered: the server replayed everything after ``last_id`` (the messages
            follow as ordinary messages).
        resync: the client may have missed messages that will not come: reload the
            room's state some other way. True on a rejoin that was not recovered,
            unless the room is exactly where the client left it (same epoch and offset).
        rejoin: the client had been in the room before (after a reconnection or a gap).
        epoch: the name of the room's history.
        offset: the room's position after the replay.
        last_id: the ``last_id`` the client sent (None on a first join).
        server: the server put the client in the room on its own (a server-side
            subscription: the token's ``channels``, or the control API); it is a
            room of the client's from now on, rejoined after reconnecting.
    """

    room: str
    recovered: bool
    resync: bool
    rejoin: bool
    epoch: str | None
    offset: int | None
    last_id: str | None
    server: bool = False


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RoomLeft:
    """The client is no longer in ``room``, passed to ``on_leave``.

    Attributes:
        room: the room.
        server: the server took the client out on its own (control API); the room
            is dropped and not rejoined after reconnecting. False: the server
            confirmed the client's own ``leave()``.
        reason: the server's reason, if it gave one.
    """

    room: str
    server: bool
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Gap:
    """Messages ``expected`` to ``got - 1`` of ``room`` were missed while connected.

    ``repairing``: the client is rejoining with ``last_id`` to get them (else it has
    no message id to recover from, and the application should resync).
    """

    room: str
    expected: int
    got: int
    repairing: bool


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RoomState:
    """What the client knows of one of its rooms (``Client.room_state``)."""

    room: str
    joined: bool
    epoch: str | None
    offset: int | None
    last_id: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Tracked:
    """The verdict of :meth:`RoomTracker.track` on one retained message.

    Attributes:
        deliver: pass the message to the application (False: a duplicate, a message
            of a room not joined or being repaired, or the one that revealed a gap
            being repaired).
        gap: the gap the message revealed, to report; when ``gap.repairing``, call
            :meth:`RoomTracker.repair` and send its message.
    """

    deliver: bool
    gap: Gap | None = None


@dataclasses.dataclass(slots=True)
class _Room:
    name: str
    joined: bool = False
    ever_joined: bool = False
    repairing: bool = False
    epoch: str | None = None
    offset: int | None = None
    last_id: str | None = None
    sent_last_id: str | None = None
    join_ref: str | None = None
    status: RoomStatus | None = None


class RoomTracker:
    """The rooms a client wants, in order, and its position in each.

    The calling contract, per connection: :meth:`connect_room` names the room for
    the URL (its replay arrives with the welcome); after the welcome,
    :meth:`joined` for that room, then :meth:`join` for every room of
    :meth:`to_join`; :meth:`track` for every message with an ``offset``;
    :meth:`joined` and :meth:`refused` for the server's replies; and
    :meth:`connection_lost` when the connection ends.

    Args:
        rooms: the rooms wanted from the start.

    Raises:
        InvalidArgument: a room name is invalid.
    """

    def __init__(self, rooms: Iterable[str] = ()) -> None:
        self._rooms: dict[str, _Room] = {}
        for room in rooms:
            self.want(room)

    # -- what is wanted -----------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The rooms wanted, in the order they were added."""
        return list(self._rooms)

    def __contains__(self, room: object) -> bool:
        return room in self._rooms

    def state(self, room: str) -> RoomState | None:
        """What is known of ``room``, or None if it is not wanted."""
        r = self._rooms.get(room)
        if r is None:
            return None
        return RoomState(
            room=room, joined=r.joined, epoch=r.epoch, offset=r.offset, last_id=r.last_id
        )

    def status(self, room: str) -> RoomStatus | None:
        """The outcome of the join, if ``room`` is joined on this connection; else None."""
        r = self._rooms.get(room)
        return r.status if r is not None and r.joined else None

    def want(self, room: str) -> None:
        """Add ``room`` (no-op if it is wanted already); it is joined until :meth:`drop`.

        Raises:
            InvalidArgument: ``room`` is not a valid room name.
        """
        check_room(room)
        if room not in self._rooms:
            self._rooms[room] = _Room(room)

    def drop(self, room: str) -> bool:
        """Stop wanting ``room``; True if the server may count the client in it (send ``leave``)."""
        r = self._rooms.pop(room, None)
        return r is not None and (r.joined or r.join_ref is not None or r.repairing)

    def joining(self, room: str) -> bool:
        """Whether a join of ``room`` (or a gap repair) is in flight on this connection."""
        r = self._rooms.get(room)
        return r is not None and r.join_ref is not None

    def is_repairing(self, room: str) -> bool:
        """Whether ``room`` is being repaired in place (see :meth:`repair`)."""
        r = self._rooms.get(room)
        return r is not None and r.repairing

    # -- what to send -------------------------------------------------------------------

    def connect_room(self) -> tuple[str, str | None] | None:
        """The room to put in the connection URL, with the ``last_id`` to recover it from.

        The first room wanted, or None when there is none. Call it once per
        connection attempt: it records the ``last_id`` as sent.
        """
        first = next(iter(self._rooms.values()), None)
        if first is None:
            return None
        first.sent_last_id = first.last_id
        return first.name, first.last_id

    def to_join(self) -> list[str]:
        """The rooms wanted but neither joined nor being joined: call :meth:`join` for each."""
        return [r.name for r in self._rooms.values() if not r.joined and r.join_ref is None]

    def join(self, room: str, ref: str) -> dict[str, Any]:
        """The ``join`` message for ``room``, with ``last_id`` when there is one to recover from.

        Records ``ref`` as the join in flight (see :meth:`refused`).
        """
        r = self._rooms[room]
        r.join_ref = ref
        r.sent_last_id = r.last_id
        message: dict[str, Any] = {"type": "join", "room": room, "ref": ref}
        if r.last_id:
            message["last_id"] = r.last_id
        return message

    def repair(self, room: str, ref: str) -> dict[str, Any]:
        """Start repairing a gap in place: the ``join`` to send, with the last id seen.

        The server replays from there, in order, while the client stays a member
        (no presence change). Until :meth:`joined`, the room's messages are dropped:
        the replay brings them again.
        """
        r = self._rooms[room]
        r.repairing = True
        r.joined = False
        r.join_ref = ref
        r.sent_last_id = r.last_id
        return {"type": "join", "room": room, "ref": ref, "last_id": r.last_id}

    # -- what the server said -----------------------------------------------------------

    def joined(
        self,
        room: str,
        *,
        recovered: bool,
        epoch: str | None,
        offset: int | None,
        server: bool = False,
    ) -> RoomStatus | None:
        """Record the server's ``joined`` (or the welcome for the URL's room); ``server``
        when the server joined the client on its own (:meth:`want` the room first).

        Returns the outcome, or None if ``room`` is not wanted (any more): then the
        client should leave it.
        """
        r = self._rooms.get(room)
        if r is None:
            return None
        rejoin = r.ever_joined
        unchanged = r.epoch is not None and epoch == r.epoch and offset == r.offset
        if r.epoch is not None and epoch != r.epoch:
            r.last_id = None  # ids of a lost history
        r.epoch = epoch
        if not recovered:
            r.offset = offset  # after a replay, the replayed messages advance it
        r.joined = r.ever_joined = True
        r.repairing = False
        r.join_ref = None
        r.status = RoomStatus(
            room=room,
            recovered=recovered,
            resync=rejoin and not recovered and not unchanged,
            rejoin=rejoin,
            epoch=epoch,
            offset=offset,
            last_id=r.sent_last_id,
            server=server,
        )
        return r.status

    def left(self, room: str) -> None:
        """Record the server's ``left`` for ``room``."""
        r = self._rooms.get(room)
        if r is not None:
            r.joined = False

    def refused(self, ref: str) -> str | None:
        """The server refused the join ``ref``: drop its room (not retried) and return it."""
        for r in self._rooms.values():
            if r.join_ref == ref:
                del self._rooms[r.name]
                return r.name
        return None

    def track(self, room: str, offset: int, message_id: object, *, can_repair: bool) -> Tracked:
        """Judge a retained message of ``room`` (one with an ``offset``) and advance.

        ``offset`` = last + 1: delivered. ``offset`` <= last: a duplicate, dropped.
        ``offset`` > last + 1: a :class:`Gap`; it is repaired (and the message
        dropped) when ``can_repair`` (connected) and a ``last_id`` is known, else
        delivered. Messages of a room not joined, or being repaired, are dropped.
        """
        r = self._rooms.get(room)
        if r is None or not r.joined or r.repairing:
            return Tracked(False)  # left, or being repaired: the replay follows
        gap = None
        if r.offset is not None:
            if offset <= r.offset:
                return Tracked(False)  # already seen
            if offset > r.offset + 1:
                repairing = r.last_id is not None and can_repair
                gap = Gap(room=room, expected=r.offset + 1, got=offset, repairing=repairing)
                if repairing:
                    return Tracked(False, gap)
        r.offset = offset
        if isinstance(message_id, str) and message_id:
            r.last_id = message_id
        return Tracked(True, gap)

    def connection_lost(self) -> None:
        """The connection ended: no room is joined, nothing is in flight."""
        for r in self._rooms.values():
            r.joined = False
            r.repairing = False
            r.join_ref = None
