"""Recovery: the replay a connection catching up on a room gets, and what is held meanwhile.

A connection that connects to a room, or joins one, with ``last_id`` is owed
what the room published after that message. :class:`Recovery` owns that
catch-up, in this order:

1. :meth:`Recovery.catch_up` registers a list that will hold the room's live
   messages for the connection, then makes sure the pod is subscribed to the
   room, then reads the room's history after ``last_id``
   (:meth:`Recovery.missed`, every page), then unregisters the list.
2. Meanwhile the engine's fan-out hands every publication to
   :meth:`Recovery.hold`, which appends it to the lists of the connections
   catching up on its room (and, for a message to everyone, to those of
   connections still being attached, between :meth:`Recovery.attach` and
   :meth:`Recovery.attached`: their welcome is not sent yet).
3. :func:`merge` (pure) turns the replay and the held messages into what the
   connection receives: the replay in history order, followed by the held
   messages not already covered — so nothing is missed (subscribed before
   reading) and nothing is doubled (offsets at or below the replay's end are
   dropped).

The caller (:class:`~roomcast.core.subscriptions.Membership`) queues the merged
messages and adds the connection to the room without awaiting in between, so no
live message can slip between the two. Nothing here does I/O except reading
history through the broker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from roomcast.brokers.base import Broker, HistoryPage
from roomcast.errors import BrokerError
from roomcast.protocol import Encoded

if TYPE_CHECKING:
    from roomcast.core.connection import Connection
    from roomcast.core.subscriptions import Subscriptions

__all__ = ["Recovery", "merge"]

_log = logging.getLogger("roomcast.hub")


class Recovery:
    """Connections catching up on rooms, the messages held for them, and their replay.

    Args:
        broker: reads the rooms' history.
        subscriptions: the pod's room subscriptions; a catch-up subscribes first.
        page_size: messages asked of the broker per history read.

    Attributes:
        attaching: connections being attached (welcome not sent yet) -> the
            messages held for them. Mutated in place, never replaced: the engine
            checks it on every publication.
        recovering: room -> connections catching up on it -> the messages held
            for them. Mutated in place, never replaced, like ``attaching``.
    """

    __slots__ = ("_broker", "_page_size", "_subscriptions", "attaching", "recovering")

    def __init__(self, broker: Broker, subscriptions: Subscriptions, *, page_size: int) -> None:
        self._broker = broker
        self._subscriptions = subscriptions
        self._page_size = page_size
        self.attaching: dict[Connection, list[Encoded]] = {}
        self.recovering: dict[str, dict[Connection, list[Encoded]]] = {}

    def attach(self, conn: Connection) -> list[Encoded]:
        """Start holding every publication for ``conn``; return the list they go to.

        Call when an attach will join a room before the welcome; call
        :meth:`attached` once the welcome is sent (or the attempt ended).
        """
        held: list[Encoded] = []
        self.attaching[conn] = held
        return held

    def attached(self, conn: Connection) -> None:
        """Stop holding publications for ``conn`` (see :meth:`attach`). Idempotent."""
        self.attaching.pop(conn, None)

    def catching_up(self, room: str) -> bool:
        """Whether some connection is catching up on ``room`` right now."""
        return room in self.recovering

    def hold(self, room: str | None, encoded: Encoded) -> None:
        """Keep a publication for the connections catching up on ``room``.

        ``room`` None (a message to everyone) goes to the connections being
        attached. Called by the fan-out for every publication while
        :attr:`attaching` or :attr:`recovering` is not empty.
        """
        if room is None:
            for held in self.attaching.values():
                held.append(encoded)
            return
        recovering = self.recovering.get(room)
        if recovering:
            for held in recovering.values():
                held.append(encoded)

    async def catch_up(
        self, conn: Connection, room: str, last_id: str | None, held: list[Encoded]
    ) -> tuple[list[Encoded], HistoryPage]:
        """Subscribe to ``room`` and read what ``conn`` missed, holding live messages in ``held``.

        Returns the replay (the room's messages after ``last_id``, oldest first)
        and the room's position; give both and ``held`` to :func:`merge`. When
        the history cannot be read (:class:`~roomcast.errors.BrokerError`) the
        replay is empty and the position unknown (offset 0, no epoch), and the
        connection joins without one.
        """
        recovering = self.recovering.setdefault(room, {})
        recovering[conn] = held
        try:
            await self._subscriptions.subscribe(room)
            return await self.missed(room, last_id)
        except BrokerError as exc:
            _log.warning("history unavailable; joining without replay", extra={"error": str(exc)})
            return [], HistoryPage(room=room, epoch="", offset=0)
        finally:
            del recovering[conn]
            if not recovering:
                del self.recovering[room]

    async def missed(self, room: str, last_id: str | None) -> tuple[list[Encoded], HistoryPage]:
        """The messages of ``room`` after ``last_id`` (every page), and the room's position.

        Without ``last_id`` nothing is replayed. When ``last_id`` is no longer
        retained (or is evicted while paging) nothing is replayed either, and
        the page says ``recovered=False``: the client must resync.

        Raises:
            BrokerError: the history cannot be read.
        """
        broker = self._broker
        if last_id is None:
            return [], await broker.history(room, limit=0)
        page_size = self._page_size
        first = page = await broker.history(room, since=last_id, limit=page_size)
        if not page.recovered:
            return [], page
        replay = list(page.messages)
        while len(page.messages) == page_size:
            tail = page.messages[-1].message
            if tail is None:
                break
            page = await broker.history(room, since=tail.id, limit=page_size)
            if not page.recovered:  # evicted while paging: the client must resync
                return [], HistoryPage(room=room, epoch=page.epoch, offset=page.offset)
            replay += page.messages
        newest = replay[-1].message if replay else None
        offset = first.offset
        if newest is not None and newest.offset is not None:
            offset = max(offset, newest.offset)
        return replay, HistoryPage(room=room, epoch=first.epoch, offset=offset, recovered=True)


def merge(
    room: str, position: int, replay: Sequence[Encoded], held: Iterable[Encoded]
) -> list[Encoded]:
    """Return what a connection catching up on ``room`` receives, in order.

    Args:
        room: the room being joined.
        position: the room's offset the connection is told it is at once the
            replay is done (the newest offset the history read saw).
        replay: retained messages after the client's ``last_id``, oldest first.
        held: every publication delivered to the pod while the history was read,
            in arrival order (the room's messages and, while attaching, global
            ones).

    Held messages of ``room`` with an offset at or below the last offset already
    delivered are dropped, and so are messages of any other room; messages without
    an offset (presence, messages to everyone, messages delivered locally while
    the broker was down) pass through.
    """
    out = list(replay)
    last = position
    for encoded in replay:
        message = encoded.message
        if message is not None and message.offset is not None:
            last = max(last, message.offset)
    for encoded in held:
        message = encoded.message
        if message is not None and message.room is not None:
            if message.room != room:
                continue
            if message.offset is not None:
                if message.offset <= last:
                    continue
                last = message.offset
        out.append(encoded)
    return out
