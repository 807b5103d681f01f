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
- another epoch: the room's history restarted; delivered, the position restarts.

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

from collections.abc import Sequence
from dataclasses import dataclass

from roomcast.protocol import Encoded

__all__ = ["Feed", "Position", "Repair"]


class Position:
    """The epoch and offset of the last retained message a pod delivered in a room."""

    __slots__ = ("epoch", "offset")

    def __init__(self, epoch: str, offset: int) -> None:
        self.epoch = epoch
        self.offset = offset

    def __repr__(self) -> str:
        return f"Position({self.epoch!r}, {self.offset})"


@dataclass(frozen=True, slots=True)
class Repair:
    """What one history read filled in: messages delivered from history, and lost.

    Attributes:
        room: the room repaired.
        repaired: missed messages found in the history and delivered.
        lost: missed messages no longer in the history (evicted or expired);
            members see the offset jump and recover (``recovered: false``).
        done: whether the room is live again (else another read is due).
    """

    room: str
    repaired: int
    lost: int
    done: bool


class _Held:
    """A repairing room: publications held while its history is read."""

    __slots__ = ("bytes", "items", "overflowed", "reading", "ready")

    def __init__(self, *, ready: bool) -> None:
        self.items: list[tuple[str | None, Encoded]] = []
        self.bytes = 0
        self.overflowed = False  # items were dropped: read the history again after
        self.ready = ready  # the room's subscription is confirmed: it may be read
        self.reading = False


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
        offset = message.offset if message is not None else None
        if offset is None or epoch is None:
            return True
        position = self.positions.get(room)
        if position is None or position.epoch != epoch:
            self.positions[room] = Position(epoch, offset)
            return True
        if offset == position.offset + 1:
            position.offset = offset
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
        without a position (or in another epoch) starts from it. Returns True if
        the position is behind it in the same epoch: publications were lost
        without a gap being seen yet, and the room is now repairing.
        """
        if room in self._repairing:
            return True
        position = self.positions.get(room)
        if position is None or position.epoch != epoch:
            if epoch:
                self.positions[room] = Position(epoch, offset)
            return False
        if position.offset >= offset:
            return False
        self._repairing[room] = _Held(ready=True)
        self.wanted = True
        return True

    def resync(self) -> None:
        """The subscriber reconnected: repair every room with a position once confirmed."""
        for room in self.positions:
            held = self._repairing.get(room)
            if held is None:
                self._repairing[room] = _Held(ready=False)
            else:
                held.ready = False

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
        """Rooms to read now, each with the offset to read after; marks them as being read."""
        self.wanted = False
        out = []
        for room, held in self._repairing.items():
            if held.ready and not held.reading:
                held.reading = True
                out.append((room, self.positions[room].offset))
        return out

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
        self, room: str, epoch: str | None, messages: Sequence[Encoded], *, complete: bool
    ) -> tuple[list[Encoded], Repair]:
        """Apply a history read of ``room``: return what to deliver, in order.

        Args:
            epoch: the history's epoch (None or "" if it has none: lost).
            messages: retained messages after the offset :meth:`due` gave, oldest first.
            complete: whether ``messages`` reach the history's newest one (else
                another read follows from where they end).
        """
        held = self._repairing.get(room)
        position = self.positions.get(room)
        if held is None or position is None:  # forgotten meanwhile
            return [], Repair(room, 0, 0, done=True)
        held.reading = False
        out: list[Encoded] = []
        repaired = lost = 0
        stale: str | None = None
        if epoch and epoch != position.epoch:
            # The history restarted: its messages are all new to the members, and
            # held ones of the old epoch are older than all of them.
            stale = position.epoch
            position.epoch, position.offset = epoch, 0
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
            position.offset = offset
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
