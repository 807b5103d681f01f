"""The in-memory broker: one process, no dependencies, the default.

Publishing a room message appends it to the room's bounded history and hands it
straight back to the hub, in the same call, so a single pod delivers each message
exactly once, in history order, with no extra task or copy.

History is bounded three ways: ``history_size`` messages and ``history_bytes``
bytes per room, and ``history_max_bytes`` bytes over all rooms. Past a bound the
oldest messages go first (over all rooms, for the pod's bound). Eviction never
renumbers anything: offsets keep counting and the epoch stays, so a client that
asks to recover from an evicted message gets ``recovered: false``, never a gap.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Generator
from operator import itemgetter
from typing import Any

from roomcast.brokers.base import (
    BrokerHandler,
    ControlBus,
    HistoryPage,
    PresenceChange,
    PresenceMember,
    PresenceStore,
    Retention,
    RoomStats,
    page_of,
)
from roomcast.brokers.memory_control import MemoryControl
from roomcast.errors import HubClosed, ProtocolError
from roomcast.protocol import RETAINED_TYPES, Encoded, Message, PresenceStatus
from roomcast.supervisor import Supervisor

__all__ = ["MemoryBroker", "MemoryPresence"]


class _Stream:
    """One room's history: an epoch, the last offset, the entries and their size.

    Entries are plain ``(id, frame)`` tuples of a string and bytes (the frame
    members were sent, see :class:`~roomcast.protocol.Encoded`), which Python's
    cyclic garbage collector stops tracking after its first look at them: a full
    history of every room then adds nothing to the full collections' work
    (holding the messages themselves made each such pause grow with the
    history, to a fifth of a second at 1,000 rooms).
    """

    __slots__ = ("acks", "bytes", "entries", "epoch", "offset", "size", "touched", "ttl")

    def __init__(self, now: float, size: int, ttl: float) -> None:
        self.epoch = secrets.token_hex(4)
        self.offset = 0
        self.entries: deque[tuple[str, bytes]] = deque()
        self.bytes = 0
        self.touched = now
        self.size = size
        self.ttl = ttl
        # "<sender>\0<ref>" -> (id, offset) of the last ``size`` client messages
        # that carried a ref: a retry of one still retained (offset >= first) is
        # answered, not published again.
        self.acks: dict[str, tuple[str, int]] = {}

    @property
    def first(self) -> int:
        """The offset of the oldest entry (``offset + 1`` when there is none)."""
        return self.offset - len(self.entries) + 1


class _Published:
    """A publication that is already done: awaiting it returns the message at once.

    Cheaper than a resolved :class:`asyncio.Future`, and the hub's own publishers
    never await it.
    """

    __slots__ = ("message",)

    def __init__(self, message: Message) -> None:
        self.message = message

    def __await__(self) -> Generator[Any, None, Message]:
        return self.message
        yield  # a generator that never suspends

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None:
        """Call ``fn(self)`` at once: it is done."""
        fn(self)

    def result(self) -> Message:
        """The message as stored."""
        return self.message

    def cancelled(self) -> bool:
        """Never: it is done."""
        return False


class MemoryBroker:
    """A broker for a single process.

    Args:
        history_size: messages kept per room (0 disables history).
        history_ttl: seconds after a room's last publication when its history is
            dropped (0 disables history).
        history_bytes: bytes of messages kept per room (the newest message is
            kept whatever its size); 0 for no bound in bytes.
        history_max_bytes: bytes of messages kept over all rooms; past it the
            oldest messages of any room go first. 0 for no bound.
        clock: monotonic seconds, injectable for tests.
    """

    def __init__(
        self,
        *,
        history_size: int = 100,
        history_ttl: float = 300.0,
        history_bytes: int = 1 << 20,
        history_max_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.presence: PresenceStore = MemoryPresence()
        self.control: ControlBus = MemoryControl()
        # SPEC §1: either option at 0 disables history.
        self._history_size = history_size if history_ttl > 0 else 0
        self._history_ttl = history_ttl
        self._room_bytes = history_bytes or math.inf
        self._max_bytes = history_max_bytes or math.inf
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        # Every retained entry as (room, epoch, offset), oldest first, over all
        # rooms: the order the pod's byte bound evicts in. Records of entries
        # already gone are skipped then, and compacted away when they pile up.
        self._order: deque[tuple[str, str, int]] = deque()
        self._entries = 0
        self.retained_bytes = 0
        """Bytes of messages retained over all rooms."""
        self._handler: BrokerHandler | None = None
        self._loops = Supervisor()
        self._retention: Retention | None = None

    @property
    def ready(self) -> bool:
        """True while started (there is nothing to be unreachable) and no loop is down."""
        return self._handler is not None and not self._loops.down

    async def start(self, handler: BrokerHandler) -> None:
        """Start delivering publications to ``handler``."""
        self._handler = handler
        self._loops.on_failure = handler.handle_loop_failure
        if (self._history_size and self._history_ttl) or self._retention is not None:
            self._loops.start("history-sweeper", self._sweep)

    def set_retention(self, retention: Retention | None) -> None:
        """Let ``retention(room)`` override ``history_size`` / ``history_ttl`` per room.

        It returns ``(size, ttl)``, either None for the broker's own, or None for
        both (namespaces, see :mod:`roomcast.core.namespaces`). Call before
        :meth:`start`; it applies to histories opened from then on.
        """
        self._retention = retention

    def _limits(self, room: str) -> tuple[int, float]:
        # (history size, ttl) for ``room``; size 0 when it keeps no history.
        size, ttl = self._history_size, self._history_ttl
        retention = self._retention
        if retention is not None:
            override = retention(room)
            if override is not None:
                if override[0] is not None:
                    size = override[0]
                if override[1] is not None:
                    ttl = override[1]
                size = size if ttl > 0 else 0
        return size, ttl

    async def close(self) -> None:
        """Stop delivering and drop every history."""
        self._handler = None
        await self._loops.close()
        self._streams.clear()
        self._order.clear()
        self._entries = self.retained_bytes = 0

    def publish(self, message: Message) -> _Published:
        """Append ``message`` to its room's history if retained, then hand it back.

        Both happen within the call; the returned awaitable is already done.

        Raises:
            ProtocolError: ``invalid_message`` if it cannot be encoded (nothing
                is stored or delivered).
        """
        handler = self._handler
        if handler is None:
            raise HubClosed("the broker is not started")
        room = message.room
        if (
            room is not None
            and message.type in RETAINED_TYPES
            and (self._history_size if self._retention is None else self._limits(room)[0])
        ):
            now = self._clock()
            stream = self._streams.get(room)
            if stream is None or now - stream.touched > stream.ttl:
                stream = self._open(room, now)
            ref = message.ref
            if ref is not None:
                key = f"{message.from_}\0{ref}"
                stored = stream.acks.get(key)
                # A retry while the first is retained: answered with the first one.
                if stored is not None and stored[1] >= stream.first:
                    message.id, message.offset = stored
                    return _Published(message)
            offset = message.offset = stream.offset + 1
            try:
                encoded = Encoded.of(message)
            except ProtocolError:
                message.offset = None  # nothing taken: the next message gets this offset
                raise
            stream.touched = now
            stream.offset = offset
            if ref is not None:
                acks = stream.acks
                acks.pop(key, None)  # re-inserted, so it is the newest to evict
                acks[key] = (message.id, offset)
                if len(acks) > stream.size:
                    del acks[next(iter(acks))]
            self._retain(room, stream, message.id, encoded.frame)
        else:
            encoded = Encoded.of(message)
        handler.handle_publication(encoded)
        return _Published(message)

    def _retain(self, room: str, stream: _Stream, message_id: str, frame: bytes) -> None:
        entries = stream.entries
        entries.append((message_id, frame))
        order = self._order
        epoch = stream.epoch
        order.append((room, epoch, stream.offset))
        added = len(frame)
        count = 1
        while len(entries) > stream.size:  # once full: one in, one out
            gone = stream.offset - len(entries) + 1
            added -= len(entries.popleft()[1])
            count -= 1
            # Rooms evict their oldest as they take new ones, so the record of
            # the entry gone is often the pod's oldest: drop it now rather
            # than at the next compaction.
            head = order[0]
            if head[2] == gone and head[0] == room and head[1] == epoch:
                order.popleft()
        stream.bytes += added
        self.retained_bytes += added
        self._entries += count
        if stream.bytes > self._room_bytes:
            evicted = 0
            while stream.bytes > self._room_bytes and len(entries) > 1:
                self._evict_oldest(stream)
                evicted += 1
            if evicted and self._handler is not None:
                self._handler.handle_history_evicted("room", evicted)
        if self.retained_bytes > self._max_bytes:
            self._evict_pod()
        if len(order) > 2 * self._entries + 1024:
            self._compact()

    def _evict_oldest(self, stream: _Stream) -> None:
        _, frame = stream.entries.popleft()
        stream.bytes -= len(frame)
        self.retained_bytes -= len(frame)
        self._entries -= 1

    def _evict_pod(self) -> None:
        # The oldest entries of any room go until the pod is within its bound.
        order, streams = self._order, self._streams
        evicted = 0
        while self.retained_bytes > self._max_bytes and order:
            room, epoch, offset = order.popleft()
            stream = streams.get(room)
            if stream is not None and stream.epoch == epoch and stream.first == offset:
                self._evict_oldest(stream)
                evicted += 1
        if evicted and self._handler is not None:
            self._handler.handle_history_evicted("pod", evicted)

    def _compact(self) -> None:
        # Drop the records of entries evicted by a room's own bounds or expired.
        streams = self._streams

        def live(record: tuple[str, str, int]) -> bool:
            stream = streams.get(record[0])
            return stream is not None and stream.epoch == record[1] and record[2] >= stream.first

        self._order = deque(filter(live, self._order))

    def _drop(self, room: str) -> None:
        stream = self._streams.pop(room)
        self.retained_bytes -= stream.bytes
        self._entries -= len(stream.entries)

    async def subscribe(self, room: str) -> None:
        """Nothing to do: every publication is handed back in-process."""

    async def unsubscribe(self, room: str) -> None:
        """Nothing to do: every publication is handed back in-process."""

    async def history(
        self, room: str, *, since: str | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Return retained messages of ``room``, oldest first (see :class:`Broker`)."""
        keeps = self._history_size if self._retention is None else self._limits(room)[0]
        stream = self._open(room, self._clock()) if keeps else None
        if stream is None:
            return HistoryPage(room=room, epoch="", offset=0, messages=[], recovered=False)
        selected, recovered = page_of(
            list(stream.entries), since=since, limit=limit, id_of=itemgetter(0)
        )
        return HistoryPage(
            room=room,
            epoch=stream.epoch,
            offset=stream.offset,
            messages=[Encoded.from_frame(frame) for _, frame in selected],
            recovered=recovered,
        )

    def _open(self, room: str, now: float) -> _Stream:
        # The room's live stream; an expired one is replaced by a new epoch.
        stream = self._streams.get(room)
        if stream is None or self._expired(stream, now):
            if stream is not None:
                self._drop(room)
            size, ttl = self._limits(room)
            stream = self._streams[room] = _Stream(now, size, ttl)
        return stream

    def _expired(self, stream: _Stream, now: float) -> bool:
        return now - stream.touched > stream.ttl

    async def _sweep(self) -> None:
        # Drop expired histories so idle rooms do not hold memory forever.
        interval = max(1.0, self._history_ttl / 2) if self._retention is None else 1.0
        while True:
            await asyncio.sleep(interval)
            now = self._clock()
            for room in [r for r, s in self._streams.items() if self._expired(s, now)]:
                self._drop(room)


class _Presence:
    __slots__ = ("connections", "info", "status")

    def __init__(self, info: Any) -> None:
        self.connections: set[str] = set()
        self.status = PresenceStatus.ONLINE
        self.info = info


class MemoryPresence:
    """Presence for a single process: user -> connection ids, per room."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, _Presence]] = {}

    async def add(
        self, room: str, *, user_id: str, conn_id: str, info: Any = None
    ) -> PresenceChange:
        """Record a connection; true if the user just came online in ``room``."""
        users = self._rooms.setdefault(room, {})
        entry = users.get(user_id)
        change = PresenceChange.NONE
        if entry is None:
            change = PresenceChange.ROOM if not users else PresenceChange.USER
            entry = users[user_id] = _Presence(info)
        elif info is not None:
            entry.info = info
        entry.connections.add(conn_id)
        return change

    async def remove(self, room: str, *, user_id: str, conn_id: str) -> PresenceChange:
        """Forget a connection; true if it was the user's last one in ``room``."""
        users = self._rooms.get(room)
        entry = users.get(user_id) if users is not None else None
        if users is None or entry is None or conn_id not in entry.connections:
            return PresenceChange.NONE
        entry.connections.discard(conn_id)
        if entry.connections:
            return PresenceChange.NONE
        del users[user_id]
        if not users:
            del self._rooms[room]
            return PresenceChange.ROOM
        return PresenceChange.USER

    async def set_status(self, room: str, *, user_id: str, status: PresenceStatus) -> bool:
        """Set the user's status in ``room``; True if it changed."""
        entry = self._rooms.get(room, {}).get(user_id)
        if entry is None or entry.status is status:
            return False
        entry.status = status
        return True

    async def members(self, room: str) -> list[PresenceMember]:
        """Users present in ``room``, sorted by user id."""
        users = self._rooms.get(room, {})
        return [
            PresenceMember(
                user_id=user_id,
                status=entry.status,
                connections=len(entry.connections),
                info=entry.info,
            )
            for user_id, entry in sorted(users.items())
        ]

    async def rooms(self) -> list[RoomStats]:
        """Rooms with at least one connection, sorted by name."""
        return [
            RoomStats(
                room=room,
                connections=sum(len(e.connections) for e in users.values()),
                users=len(users),
            )
            for room, users in sorted(self._rooms.items())
        ]
