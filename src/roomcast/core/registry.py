"""The local registry: which connections this pod holds, and who is in which room.

Pure bookkeeping plus the fan-out loop. No I/O: queuing a frame on a connection
only appends to its pending list (see :mod:`roomcast.core.connection`).
"""

from __future__ import annotations

from collections.abc import Iterable

from roomcast.core.connection import Connection
from roomcast.core.flusher import Flusher
from roomcast.protocol import Encoded

__all__ = ["Registry"]


class Registry:
    """Connections of this pod and their rooms."""

    __slots__ = ("connections", "rooms")

    def __init__(self) -> None:
        self.connections: dict[str, Connection] = {}
        self.rooms: dict[str, set[Connection]] = {}

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, conn: Connection) -> None:
        """Register a new connection."""
        self.connections[conn.id] = conn

    def remove(self, conn: Connection) -> list[tuple[str, bool]]:
        """Forget ``conn`` and its memberships (``conn.rooms`` is left untouched).

        Returns:
            ``(room, last)`` for each room it was in; ``last`` is True when no
            local member is left there.
        """
        self.connections.pop(conn.id, None)
        left = []
        for room in conn.rooms:  # conn.rooms stays as it was, for on_disconnect
            members = self.rooms.get(room)
            if members is not None:
                members.discard(conn)
                if not members:
                    del self.rooms[room]
            left.append((room, room not in self.rooms))
        return left

    def join(self, conn: Connection, room: str) -> bool:
        """Add ``conn`` to ``room``; return True if it is the room's first local member."""
        members = self.rooms.get(room)
        first = members is None
        if members is None:
            members = self.rooms[room] = set()
        members.add(conn)
        conn.rooms.add(room)
        return first

    def leave(self, conn: Connection, room: str) -> bool:
        """Remove ``conn`` from ``room``; return True if no local member is left."""
        conn.rooms.discard(room)
        members = self.rooms.get(room)
        if members is None:
            return False
        members.discard(conn)
        if members:
            return False
        del self.rooms[room]
        return True

    def members(self, room: str) -> set[Connection]:
        """Local members of ``room`` (do not mutate)."""
        return self.rooms.get(room) or set()

    @staticmethod
    def fanout(
        conns: Iterable[Connection], encoded: Encoded, flusher: Flusher, small: int = 0
    ) -> int:
        """Queue ``encoded`` on every connection in ``conns``; return how many took it.

        This is :meth:`Connection.push` inlined: the same bytes object is appended
        to each pending list, and nothing is written until the flusher runs. A
        frame of at most ``small`` bytes (the hub's
        :attr:`~roomcast.core.engine.Engine.small_frame`) is not added to the byte count:
        the message bound covers those, and the hottest loop stays as short.
        """
        dirty = flusher.dirty
        marked = len(dirty)
        n = 0
        size = len(encoded.frame)
        if size <= small:
            for conn in conns:
                pending = conn.pending
                if pending is None:
                    continue
                pending.append(encoded)
                count = len(pending)
                if count == 1:
                    dirty.append(conn)
                elif count >= conn.limit:
                    conn.overflow()
                n += 1
        else:
            for conn in conns:
                pending = conn.pending
                if pending is None:
                    continue
                pending.append(encoded)
                queued = conn.queued = conn.queued + size
                count = len(pending)
                if count == 1:
                    dirty.append(conn)
                elif count >= conn.limit or queued >= conn.byte_limit:
                    conn.overflow()
                n += 1
        if len(dirty) != marked:
            flusher.schedule()
        return n
