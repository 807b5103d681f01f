"""Status announcements held back per connection (``--presence-interval``).

A client may change its presence status as fast as it can send frames, and a
status change without a room applies to every room it has joined: unchecked,
one connection toggling ``away`` / ``online`` makes every member of up to
``--max-rooms-per-connection`` rooms receive one ``presence`` message per
toggle. :class:`StatusCoalescer` bounds that to one *round* per connection per
interval:

- A change while nothing is held is announced at once (by the hub); the hub
  then calls :meth:`StatusCoalescer.sent`, which holds the connection's next
  changes for ``interval`` seconds with one ``loop.call_later`` timer.
- A change while held (:meth:`StatusCoalescer.holding`) updates the presence
  store as usual, but the hub gives it to :meth:`StatusCoalescer.hold` instead
  of announcing it.
- When the interval ends, the latest status of each room is announced where it
  differs from what was last announced there. If anything went out, the next
  interval starts; otherwise the connection is free again.

A room the connection leaves meanwhile (:meth:`StatusCoalescer.left`) gets
nothing; a connection that goes (:meth:`StatusCoalescer.forget`) has its timer
cancelled. Only the current state is held: at most one entry per joined room
and one timer per connection, whatever the client sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from roomcast.protocol import PresenceStatus

if TYPE_CHECKING:
    from roomcast.core.connection import Connection

__all__ = ["Announce", "StatusCoalescer"]

Announce = Callable[["Connection", str, PresenceStatus], bool]
"""Called with ``(connection, room, status)`` to announce a status that was held;
returns whether it went out (False once the hub is closed, say)."""


class _Held:
    """One connection's interval: its timer and, per room, what to reconcile at its end."""

    __slots__ = ("rooms", "timer")

    def __init__(self, timer: asyncio.TimerHandle) -> None:
        self.timer = timer
        # room -> (status last announced there, latest status set there)
        self.rooms: dict[str, tuple[PresenceStatus, PresenceStatus]] = {}


class StatusCoalescer:
    """Announces each connection's status changes at most once per ``interval``.

    Args:
        interval: seconds between two rounds of one connection's announcements;
            0 disables holding (every change is announced at once).
        announce: announces a held status at the end of an interval.
    """

    __slots__ = ("_announce", "_held", "interval")

    def __init__(self, interval: float, announce: Announce) -> None:
        self.interval = interval
        self._announce = announce
        self._held: dict[Connection, _Held] = {}

    def __len__(self) -> int:
        """Connections whose announcements are held right now."""
        return len(self._held)

    def holding(self, conn: Connection) -> bool:
        """Whether a change of ``conn`` must be given to :meth:`hold`, not announced."""
        return conn in self._held

    def sent(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        """``conn``'s changes were just announced: hold its next ones for ``interval``.

        Does nothing when holding is disabled or an interval is already running.
        """
        if self.interval <= 0 or conn in self._held or conn.closed:
            return
        self._held[conn] = _Held(loop.call_later(self.interval, self._due, conn, loop))

    def hold(self, conn: Connection, room: str, status: PresenceStatus, *, changed: bool) -> None:
        """Record that ``conn`` set ``status`` in ``room`` while held.

        Args:
            changed: what the presence store answered: True if the status
                stored for the user in ``room`` was another one.
        """
        held = self._held.get(conn)
        if held is None:
            return
        entry = held.rooms.get(room)
        if entry is not None:
            held.rooms[room] = (entry[0], status)
        elif changed:
            # The store held the other status a client can set, which is what
            # the room was last told.
            held.rooms[room] = (_other(status), status)

    def left(self, conn: Connection, room: str) -> None:
        """``conn`` left ``room``: nothing held for the room is announced."""
        held = self._held.get(conn)
        if held is not None:
            held.rooms.pop(room, None)

    def forget(self, conn: Connection) -> None:
        """``conn`` is gone: cancel its timer and drop what it held."""
        held = self._held.pop(conn, None)
        if held is not None:
            held.timer.cancel()

    def _due(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        held = self._held.pop(conn, None)
        if held is None or conn.closed:
            return
        sent = False
        for room, (announced, latest) in held.rooms.items():
            if latest is not announced and self._announce(conn, room, latest):
                sent = True
        if sent:
            self.sent(conn, loop)


def _other(status: PresenceStatus) -> PresenceStatus:
    return PresenceStatus.AWAY if status is PresenceStatus.ONLINE else PresenceStatus.ONLINE
