"""A pod's feed of room publications from Redis: in order, once each, gaps filled (pure).

Redis pub/sub is at most once: a subscriber that reconnects, that Redis drops
for its output buffer (``client-output-buffer-limit pubsub``) or that a health
probe replaces misses what was published meanwhile, and nothing says so. But
every retained message is also in its room's history under its ``offset``, and
offsets grow by exactly one per message. So the pod keeps, per room it
subscribes to, the ``(epoch, offset)`` of the last retained message it
delivered, and :class:`Feed` decides what each arriving publication is:

- the next offset: delivered, the position advances;
- at or below the position (same epoch): a copy already delivered: dropped
  (the last line of defence against double delivery, at one comparison per
  publication per pod, nothing per member);
- above the next offset: a gap. The room is *repairing*: its publications are
  held, the broker reads the history after the position
  (:meth:`Feed.due`), hands the result to :meth:`Feed.repaired`, which returns
  the missed messages followed by the held ones, in order and without copies;
- another epoch: the room's history restarted (it was lost, or a failover
  rewound it, below). The room is repaired from the new history, after a
  *reset* (:attr:`Feed.resets`) that the members are told of first.

A failover can rewind a room. Redis replicates asynchronously, so a promoted
replica may lack the master's last writes: its counter, in the *same* epoch,
restarts below what pods delivered, and the next publications reuse offsets
that members already saw with other messages; taken for copies, they would be
dropped without a trace. So a position remembers the ids (hashed) of its last
:data:`WINDOW` offsets, and the repair after every reconnect reads that window
too: if the history no longer holds the pod's last message at its offset
(:attr:`Repair.rewound`), the broker moves the room to a new epoch
(:data:`~roomcast.brokers.redis.scripts.REWIND`), and the feed resets the room
to the last offset whose message is still the one it delivered. The members are
told (``joined`` with ``recovered: false``, the new epoch and that offset) and
get everything after it. The same happens when any read or live publication
shows the room in an epoch the position does not know.

After the subscriber reconnects, :meth:`Feed.resync` puts every room with a
position into repair; its history read waits until Redis confirmed the room's
subscription on the new connection (:meth:`Feed.confirmed`), so anything
published before the confirmation is in the read and anything after arrives
live (and a message in both is delivered once).

Call order, from one event loop: :meth:`Feed.receive` for each publication;
when :attr:`Feed.wanted` is set, read :meth:`Feed.due` rooms' history and call
:meth:`Feed.repaired` for each (or :meth:`Feed.failed`), with no ``await``
between the read's reply and the call.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from roomcast.protocol import Encoded

__all__ = ["WINDOW", "Feed", "Position", "Repair", "Reset"]

WINDOW = 16
"""Offsets per room whose message ids a position keeps, to check the history against."""

_MASK = WINDOW - 1


class Position:
    """The epoch and offset of the last retained message a pod delivered in a room.

    It also keeps the hash of the ids delivered at the last :data:`WINDOW`
    offsets (from ``since`` on: below it, or after a jump, they are unknown).
    """

    __slots__ = ("epoch", "ids", "offset", "retired", "since")

    def __init__(self, epoch: str, offset: int) -> None:
        self.epoch = epoch
        self.offset = offset
        self.ids = array("q", bytes(8 * WINDOW))
        self.since = offset + 1
        """The first offset whose id is kept (``offset + 1``: none yet)."""
        self.retired: str | None = None
        """The epoch this position left for a rewound history's new one: publications
        still arriving in it are in the new history, so they are copies."""

    def advance(self, offset: int, message_id: object) -> None:
        """Deliver ``offset``: keep its id; a jump forgets the ids before it."""
        if offset != self.offset + 1:
            self.since = offset
        self.offset = offset
        self.ids[offset & _MASK] = hash(message_id)

    def holds(self, offset: int, message_id: object) -> bool | None:
        """Whether the message delivered at ``offset`` had ``message_id`` (None: not kept)."""
        if offset < self.since or offset > self.offset or self.offset - offset >= WINDOW:
            return None
        return self.ids[offset & _MASK] == hash(message_id)

    @property
    def window_start(self) -> int:
        """The oldest offset whose id is kept (``offset + 1`` when none is)."""
        return max(self.since, self.offset - WINDOW + 1)

    def __repr__(self) -> str:
        return f"Position({self.epoch!r}, {self.offset})"


@dataclass(frozen=True, slots=True)
class Reset:
    """A room whose history changed under its members: tell them before what follows.

    Attributes:
        room: the room.
        epoch: the history's epoch now.
        offset: the last offset whose message the members have; what is
            delivered next comes after it.
    """

    room: str
    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class Repair:
    """What one history read filled in: messages delivered from history, and lost.

    Attributes:
        room: the room repaired.
        repaired: missed messages found in the history and delivered.
        lost: missed messages no longer in the history (evicted or expired);
            members see the offset jump and recover (``recovered: false``).
        done: whether the room is live again (else another read is due).
        rewound: the history, in the same epoch, no longer holds the message the
            pod delivered last: move the room to a new epoch (compare and set),
            then call :meth:`Feed.moved`.
    """

    room: str
    repaired: int
    lost: int
    done: bool
    rewound: bool = False


class _Held:
    """A repairing room: publications held while its history is read."""

    __slots__ = ("bytes", "check", "items", "overflowed", "reading", "ready")

    def __init__(self, *, ready: bool, check: bool = False) -> None:
        self.items: list[tuple[str | None, Encoded]] = []
        self.bytes = 0
        self.overflowed = False  # items were dropped: read the history again after
        self.ready = ready  # the room's subscription is confirmed: it may be read
        self.reading = False
        # The next read covers the position's window too, to check that the
        # history still holds what was delivered (after a reconnect, a new epoch).
        self.check = check


class Feed:
    """Per-room positions and repairs of one pod's subscriber (see the module doc).

    Args:
        max_held_bytes: payload bytes held over all repairing rooms; a room whose
            next publication would pass it drops what it holds and reads the
            history again later (retained messages are all in it; messages
            without an offset, such as presence, are lost then).
    """

    def __init__(self, *, max_held_bytes: int = 32 << 20) -> None:
        self.max_held_bytes = max_held_bytes
        self.held_bytes = 0
        """Payload bytes held now, over all repairing rooms."""
        self.positions: dict[str, Position] = {}
        self._repairing: dict[str, _Held] = {}
        self.wanted = False
        """A repairing room may be read now (cleared by :meth:`due`)."""
        self.duplicates = 0
        """Publications dropped because their offset was already delivered."""
        self.resets: list[Reset] = []
        """Rooms reset since last taken: tell their members before delivering more."""

    # -- live publications ---------------------------------------------------------

    def receive(self, room: str, epoch: str | None, encoded: Encoded) -> bool:
        """Decide an arriving publication of ``room``: True to deliver it now.

        ``epoch`` is the history epoch Redis published it with (None for a
        message without an offset). False means it was dropped as a copy or held
        for a repair (which will return it from :meth:`repaired`).
        """
        held = self._repairing.get(room)
        if held is not None:
            self._hold(held, epoch, encoded)
            return False
        message = encoded.message
        if message is None:
            return True
        offset = message.offset
        if offset is None or epoch is None:
            return True
        position = self.positions.get(room)
        if position is None:
            position = self.positions[room] = Position(epoch, offset - 1)
        elif position.epoch != epoch:
            if epoch == position.retired:  # the new history holds it
                self.duplicates += 1
                return False
            held = self._repairing[room] = _Held(ready=True, check=True)
            self._hold(held, epoch, encoded)
            self.wanted = True
            return False
        if offset == position.offset + 1:
            position.offset = offset
            position.ids[offset & _MASK] = hash(message.id)
            return True
        if offset <= position.offset:
            self.duplicates += 1
            return False
        held = self._repairing[room] = _Held(ready=True)
        self._hold(held, epoch, encoded)
        self.wanted = True
        return False

    def _hold(self, held: _Held, epoch: str | None, encoded: Encoded) -> None:
        size = len(encoded)
        if self.held_bytes + size > self.max_held_bytes:
            self._release(held)
            held.overflowed = True
            return
        held.items.append((epoch, encoded))
        held.bytes += size
        self.held_bytes += size

    def _release(self, held: _Held) -> None:
        self.held_bytes -= held.bytes
        held.items = []
        held.bytes = 0

    # -- positions and subscriptions -------------------------------------------------

    def repairing(self, room: str) -> bool:
        """Whether ``room``'s publications are held for a repair."""
        return room in self._repairing

    def baseline(self, room: str, epoch: str, offset: int) -> bool:
        """Record a history read's ``(epoch, offset)`` for ``room``, read after its barrier.

        Everything published before the read has been received by then. A room
        without a position starts from it. Returns True if the room is now
        repairing: the position is behind it (publications were lost without a
        gap being seen yet), or the read shows another epoch or a counter behind
        the position (the history changed under the members: a reset follows).
        """
        if room in self._repairing:
            return True
        position = self.positions.get(room)
        if position is None:
            if epoch:
                self.positions[room] = Position(epoch, offset)
            return False
        if not epoch or epoch == position.retired:
            return False
        if epoch != position.epoch or offset < position.offset:
            self._repairing[room] = _Held(ready=True, check=True)
        elif position.offset < offset:
            self._repairing[room] = _Held(ready=True)
        else:
            return False
        self.wanted = True
        return True

    def resync(self, rooms: Iterable[str] | None = None) -> None:
        """The subscriber reconnected: repair every room with a position (of ``rooms``,
        if given: those a new connection subscribes) once confirmed."""
        for room in self.positions if rooms is None else rooms:
            if room not in self.positions:
                continue
            held = self._repairing.get(room)
            if held is None:
                self._repairing[room] = _Held(ready=False, check=True)
            else:
                held.ready = False
                held.check = True

    def confirmed(self, room: str) -> None:
        """Redis confirmed ``room``'s subscription on the current connection."""
        held = self._repairing.get(room)
        if held is not None and not held.ready:
            held.ready = True
            self.wanted = True

    def forget(self, room: str) -> None:
        """The pod unsubscribed from ``room``: drop its position and anything held."""
        self.positions.pop(room, None)
        held = self._repairing.pop(room, None)
        if held is not None:
            self._release(held)

    # -- repairs ----------------------------------------------------------------------------

    def due(self) -> list[tuple[str, int]]:
        """Rooms to read now, each with the offset to read after; marks them as being read.

        A room to check is read from its position's window (:data:`WINDOW`
        offsets back), else from its position.
        """
        self.wanted = False
        out = []
        for room, held in self._repairing.items():
            if held.ready and not held.reading:
                held.reading = True
                position = self.positions[room]
                after = position.window_start - 1 if held.check else position.offset
                out.append((room, after))
        return out

    def moved(self, room: str) -> None:
        """The broker moved rewound ``room`` to a new epoch: read it again (and reset)."""
        held = self._repairing.get(room)
        if held is not None:
            held.reading = False
            held.check = True
            self.wanted = True

    def reread(self) -> None:
        """Reads in flight were lost (the reader failed): every ready room is due again."""
        for held in self._repairing.values():
            held.reading = False
            if held.ready:
                self.wanted = True

    def failed(self, room: str) -> None:
        """The history read of ``room`` failed: it stays repairing, to be read again."""
        held = self._repairing.get(room)
        if held is not None:
            held.reading = False
            self.wanted = True

    def repaired(
        self,
        room: str,
        epoch: str | None,
        messages: Sequence[Encoded],
        *,
        complete: bool,
        after: int | None = None,
        newest: int | None = None,
    ) -> tuple[list[Encoded], Repair]:
        """Apply a history read of ``room``: return what to deliver, in order.

        Take :attr:`resets` right after, and tell the members of each before
        delivering. A :attr:`Repair.rewound` result delivers nothing: move the
        room to a new epoch, then call :meth:`moved`.

        Args:
            epoch: the history's epoch (None or "" if it has none: lost).
            messages: retained messages after the offset :meth:`due` gave, oldest first.
            complete: whether ``messages`` reach the history's newest one (else
                another read follows from where they end).
            after: the offset :meth:`due` gave (the read's start), if not the position.
            newest: the history's newest offset, if known.
        """
        held = self._repairing.get(room)
        position = self.positions.get(room)
        if held is None or position is None:  # forgotten meanwhile
            return [], Repair(room, 0, 0, done=True)
        held.reading = False
        out: list[Encoded] = []
        repaired = lost = 0
        stale: str | None = None
        if held.check and epoch:
            held.check = False
            start = position.offset if after is None else after
            if epoch == position.epoch:
                if self._rewound(position, messages, newest):
                    held.check = True  # and again once moved, in the new epoch
                    held.reading = True  # not due until :meth:`moved` (or :meth:`failed`)
                    return [], Repair(room, 0, 0, done=False, rewound=True)
            else:
                stale = position.epoch
                last = self._reset(room, position, epoch, messages)
                if last < start:  # the read began above what to deliver: read again
                    self._drop_stale(held, stale)
                    self.wanted = True
                    return [], Repair(room, 0, 0, done=False)
        elif epoch and epoch != position.epoch:
            # Another epoch without a check (a repair already under way when it
            # changed): check the window first, then reset.
            held.check = True
            self.wanted = True
            return [], Repair(room, 0, 0, done=False)
        # Offsets held live are not "missed": the history only delivers them sooner.
        held_offsets = {
            item.message.offset
            for item_epoch, item in held.items
            if item_epoch == position.epoch and item.message is not None
        }
        for encoded in messages:
            message = encoded.message
            offset = message.offset if message is not None else None
            if offset is None or offset <= position.offset:
                continue
            lost += offset - position.offset - 1
            position.advance(offset, message.id)  # type: ignore[union-attr]
            out.append(encoded)
            if offset not in held_offsets:
                repaired += 1
        if not complete or held.overflowed or not held.ready:
            held.overflowed = False
            if held.ready:
                self.wanted = True
            return out, Repair(room, repaired, lost, done=False)
        # Live again: the held publications follow, each decided as if it had just come.
        del self._repairing[room]
        items = held.items
        self._release(held)
        for index, (item_epoch, encoded) in enumerate(items):
            if stale is not None and item_epoch == stale:
                continue
            message = encoded.message
            offset = message.offset if message is not None else None
            now = self.positions.get(room)
            if (
                now is not None
                and item_epoch == now.epoch
                and offset is not None
                and offset <= now.offset
            ):
                continue  # delivered from the history just now
            if self.receive(room, item_epoch, encoded):
                out.append(encoded)
            elif room in self._repairing:  # a new gap among them: hold the rest too
                again = self._repairing[room]
                for later in items[index + 1 :]:
                    self._hold(again, *later)
                return out, Repair(room, repaired, lost, done=False)
        return out, Repair(room, repaired, lost, done=True)

    @staticmethod
    def _rewound(position: Position, messages: Sequence[Encoded], newest: int | None) -> bool:
        # Whether the history (same epoch) no longer holds the message delivered at
        # the position: its counter is behind it, or another message has its offset.
        if newest is not None and newest < position.offset:
            return True
        for encoded in messages:
            message = encoded.message
            if message is not None and message.offset == position.offset:
                return position.holds(position.offset, message.id) is False
        return False  # not read (evicted): nothing to compare

    def _reset(self, room: str, position: Position, epoch: str, messages: Sequence[Encoded]) -> int:
        # The history of ``room`` is in another epoch: the members keep what is
        # still in it (the longest run of offsets whose ids match), the rest comes
        # from it. Returns the offset the room is reset to.
        last = 0
        for encoded in messages:
            message = encoded.message
            if message is None or message.offset is None or message.offset > position.offset:
                break
            if position.holds(message.offset, message.id):
                last = message.offset
            else:
                break
        position.retired = position.epoch
        position.epoch = epoch
        if last < position.since:
            position.since = last + 1
        position.offset = last
        self.resets.append(Reset(room, epoch, last))
        return last

    def _drop_stale(self, held: _Held, stale: str) -> None:
        # Held publications of an epoch the room left: the new history holds them.
        kept = [item for item in held.items if item[0] != stale]
        if len(kept) != len(held.items):
            self._release(held)
            for item in kept:
                self._hold(held, *item)
