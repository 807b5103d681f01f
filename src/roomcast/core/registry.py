"""The local registry: which connections this pod holds, and who is in which room.

Pure bookkeeping plus the fan-out loop. No I/O: queuing a frame on a connection
only appends to its pending list (see :mod:`roomcast.core.connection`).

A room's members are the keys of a dict (values None), not a set: a dict keeps
its keys in one dense array, which the fan-out walks, where a set's table is
mostly empty slots (a room of 5 has 32), each a cache line to load at every
message.
"""

from __future__ import annotations

from collections.abc import Collection, KeysView

from roomcast.core.connection import Connection
from roomcast.core.flusher import Flusher
from roomcast.protocol import Encoded

__all__ = ["Registry"]


class Registry:
    """Connections of this pod and their rooms."""

    __slots__ = ("connections", "expected", "rooms")

    def __init__(self) -> None:
        self.connections: dict[str, Connection] = {}
        self.rooms: dict[str, dict[Connection, None]] = {}
        """Room name -> its local members (the keys; do not mutate)."""
        self.expected: set[Connection] = set()
        """Connections attached but not registered yet (their welcome waits on a join)."""

    def __len__(self) -> int:
        return len(self.connections)

    @property
    def occupied(self) -> int:
        """Connections counted against the pod's capacity: registered or expected.

        Each counts once, whatever it is doing: a connection leaves
        :attr:`expected` as it is registered.
        """
        return len(self.connections) + len(self.expected)

    def expect(self, conn: Connection) -> None:
        """Count ``conn`` before it is registered; :meth:`add` or :meth:`forget` ends it."""
        self.expected.add(conn)

    def forget(self, conn: Connection) -> None:
        """Stop expecting ``conn`` (it was registered, or will not be). Idempotent."""
        self.expected.discard(conn)

    def add(self, conn: Connection) -> None:
        """Register a new connection."""
        self.connections[conn.id] = conn
        self.expected.discard(conn)

    def remove(self, conn: Connection) -> list[tuple[str, bool]]:
        """Forget ``conn`` and its memberships (``conn.rooms`` is left untouched).

        Returns:
            ``(room, last)`` for each room it was in; ``last`` is True when no
            local member is left there.
        """
        self.connections.pop(conn.id, None)
        self.expected.discard(conn)
        left = []
        for room in conn.rooms:  # conn.rooms stays as it was, for on_disconnect
            members = self.rooms.get(room)
            if members is not None:
                members.pop(conn, None)
                if not members:
                    del self.rooms[room]
            left.append((room, room not in self.rooms))
        return left

    def join(self, conn: Connection, room: str) -> bool:
        """Add ``conn`` to ``room``; return True if it is the room's first local member."""
        members = self.rooms.get(room)
        first = members is None
        if members is None:
            members = self.rooms[room] = {}
        members[conn] = None
        conn.rooms.add(room)
        return first

    def leave(self, conn: Connection, room: str) -> bool:
        """Remove ``conn`` from ``room``; return True if no local member is left."""
        conn.rooms.discard(room)
        members = self.rooms.get(room)
        if members is None:
            return False
        members.pop(conn, None)
        if members:
            return False
        del self.rooms[room]
        return True

    def members(self, room: str) -> KeysView[Connection]:
        """Local members of ``room``, a live view (copy it to keep it)."""
        members = self.rooms.get(room)
        return members.keys() if members is not None else {}.keys()

    @staticmethod
    def fanout(
        conns: Collection[Connection], encoded: Encoded, flusher: Flusher, small: int = 0
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
        n = len(conns)
        size = len(encoded.frame)
        if size <= small:
            for conn in conns:
                pending = conn.pending
                if pending is None:  # closing
                    n -= 1
                    continue
                pending.append(encoded)
                count = len(pending)
                if count == 1:
                    dirty.append(conn)
                elif count >= conn.limit:
                    conn.overflow()
        else:
            for conn in conns:
                pending = conn.pending
                if pending is None:
                    n -= 1
                    continue
                pending.append(encoded)
                queued = conn.queued = conn.queued + size
                count = len(pending)
                if count == 1:
                    dirty.append(conn)
                elif count >= conn.limit or queued >= conn.byte_limit:
                    conn.overflow()
        if len(dirty) != marked:
            flusher.schedule()
        return n
