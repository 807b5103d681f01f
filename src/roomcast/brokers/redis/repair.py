"""Gap repair: the history reads that fill what the subscriber's feed missed.

The :class:`~roomcast.brokers.redis.feed.Feed` decides which rooms have a gap
and after which offset; :class:`Repairer` runs the ``redis-repair`` loop that
reads those rooms' history after their positions (one pipeline per round, at
most ``_REPAIR_PAGE`` entries per room and round trip), hands each reply to the
feed and delivers what the feed returns, in order. A read that fails is due
again after a pause. History reads wait on :meth:`Repairer.caught_up` so that
a page is not returned while the room it covers is still being repaired.

When the feed finds a room rewound by a failover (:attr:`~.feed.Repair.rewound`),
the repairer moves the room's history to a new epoch
(:data:`~roomcast.brokers.redis.scripts.REWIND`, compare and set: the first pod
to see it does it) and reads it again; the feed then resets the room, and the
handler tells its members (:meth:`~roomcast.brokers.base.BrokerHandler.handle_history_reset`)
before anything more is delivered.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from roomcast.brokers.base import BrokerHandler
from roomcast.brokers.redis.feed import Feed
from roomcast.brokers.redis.keys import Keys
from roomcast.brokers.redis.routing import Routing
from roomcast.brokers.redis.scripts import READ_AFTER, REWIND
from roomcast.errors import BrokerUnavailable, ProtocolError
from roomcast.protocol import Encoded

__all__ = ["Repairer"]

_log = logging.getLogger("roomcast.brokers.redis")

_REPAIR_PAGE = 500
"""Most history entries read per room and round trip while filling a gap."""

_RETRY_PAUSE = 0.2
"""Seconds before the failed history reads of a repair are tried again."""


class Repairer:
    """Fills the feed's gaps from the history; run :meth:`run` as one supervised task.

    Call order, from one event loop: :meth:`request` whenever the feed
    :attr:`~roomcast.brokers.redis.feed.Feed.wanted` a repair; :meth:`run` as
    the ``redis-repair`` loop, with :meth:`recover` after a run that raised;
    :meth:`settle_waiters` when a room stops repairing for another reason
    (it was left), and with ``everything=True`` on close.

    Args:
        routing: the connections history is read on.
        keys: the broker's keys and channels.
        feed: the subscriber's feed, whose gaps are filled.
        handler: returns the broker's handler, or None while it is stopped.
    """

    def __init__(
        self,
        routing: Routing,
        *,
        keys: Keys,
        feed: Feed,
        handler: Callable[[], BrokerHandler | None],
    ) -> None:
        self._routing = routing
        self._keys = keys
        self._feed = feed
        self._handler_of = handler
        self._read_after = routing.script(READ_AFTER)
        self._rewind = routing.script(REWIND)
        self._repair = asyncio.Event()
        self._repair_waiters: dict[str, list[asyncio.Future[None]]] = {}

    @property
    def _handler(self) -> BrokerHandler | None:
        return self._handler_of()

    def request(self) -> None:
        """Wake the loop: the feed has rooms due for a history read."""
        self._repair.set()

    def recover(self) -> None:
        """Make the reads a failed run had in flight due again, and wake the next run."""
        self._feed.reread()  # reads in flight are due again
        self._repair.set()

    async def run(self) -> None:
        """The ``redis-repair`` loop: read and apply what the feed says is due. Never returns."""
        feed = self._feed
        while True:
            await self._repair.wait()
            self._repair.clear()
            while due := feed.due():
                try:
                    batch = self._routing.batch()
                    for room, after in due:
                        batch.run(
                            self._read_after, self._keys.history_keys(room), [after, _REPAIR_PAGE]
                        )
                    replies = await batch.execute(raise_on_error=False)
                except (RedisError, OSError, BrokerUnavailable) as exc:
                    _log.debug("history read for a repair failed", extra={"error": str(exc)})
                    replies = [exc] * len(due)
                # No await from here to the deliveries: the feed decides in order.
                ok, rewound = self._apply_repairs(due, replies)
                if rewound:
                    await self._move(rewound)
                if not ok:
                    await asyncio.sleep(_RETRY_PAUSE)  # some failed: they are due again

    async def _move(self, rewound: list[tuple[str, str]]) -> None:
        # Move each rewound room's history to a new epoch (unless another pod did),
        # then have the feed read it again.
        try:
            batch = self._routing.batch()
            for room, epoch in rewound:
                keys = self._keys.history_keys(room)[:1]
                batch.run(self._rewind, keys, [epoch, secrets.token_hex(4)])
            await batch.execute()
        except (RedisError, OSError, BrokerUnavailable) as exc:
            _log.debug("moving a rewound history failed", extra={"error": str(exc)})
            for room, _ in rewound:
                self._feed.failed(room)
            await asyncio.sleep(_RETRY_PAUSE)
            return
        for room, epoch in rewound:
            _log.warning(
                "a failover rewound a room's history; moved it to a new epoch",
                extra={"room": room, "epoch": epoch},
            )
            self._feed.moved(room)

    def _apply_repairs(
        self, due: list[tuple[str, int]], replies: list[Any]
    ) -> tuple[bool, list[tuple[str, str]]]:
        # Returns whether every read succeeded (and someone takes deliveries), and
        # the rooms found rewound, with the epoch they were rewound in.
        feed = self._feed
        handler = self._handler
        ok = True
        rewound = []
        for (room, after), reply in zip(due, replies, strict=True):
            if isinstance(reply, BaseException) or handler is None:
                feed.failed(room)
                ok = False
                continue
            epoch_raw, newest, entries = reply
            messages = []
            for _, fields in entries:  # [entry id, [b"i", id, b"p", payload]]
                try:
                    messages.append(Encoded.stored(fields[3]))
                except ProtocolError:
                    _log.warning("ignoring a malformed history entry", extra={"room": room})
            epoch = epoch_raw.decode() if epoch_raw else None
            position = feed.positions.get(room)
            seen = position.epoch if position is not None else ""
            out, repair = feed.repaired(
                room,
                epoch,
                messages,
                complete=len(entries) < _REPAIR_PAGE,
                after=after,
                newest=int(newest),
            )
            if repair.rewound:
                rewound.append((room, seen))
            for reset in feed.resets:
                handler.handle_history_reset(reset.room, reset.epoch, reset.offset)
            feed.resets.clear()
            for encoded in out:
                handler.handle_publication(encoded)
            if repair.repaired or repair.lost:
                handler.handle_repair(room, repaired=repair.repaired, lost=repair.lost)
        if feed.duplicates and handler is not None:
            handler.handle_duplicates(feed.duplicates)
        feed.duplicates = 0
        self.settle_waiters()
        return ok, rewound

    def settle_waiters(self, *, everything: bool = False) -> None:
        """Release the :meth:`caught_up` waiters of rooms no longer repairing (or all of them)."""
        for room in list(self._repair_waiters):
            if everything or not self._feed.repairing(room):
                for waiter in self._repair_waiters.pop(room):
                    if not waiter.done():
                        waiter.set_result(None)

    async def caught_up(self, room: str, epoch: str, offset: int, *, within: float) -> bool:
        """Return once every publication of ``room`` up to ``offset`` has been handed over.

        Called after a history read's barrier came back, for a room this pod
        subscribes to: if the room is being repaired, or the feed turns out to
        be behind ``(epoch, offset)``, or the read shows the history changed
        (:meth:`~roomcast.brokers.redis.feed.Feed.baseline`), waits for that
        repair to finish, for ``within`` seconds at most. Returns False if the
        room's position is now in another epoch than ``epoch``: the read is
        stale (the room was reset), read it again.
        """
        if not self._feed.baseline(room, epoch, offset):
            return True
        self._repair.set()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._repair_waiters.setdefault(room, []).append(waiter)
        try:
            await asyncio.wait_for(waiter, within)
        except TimeoutError:
            _log.warning("history of %s is still being repaired; replying anyway", room)
        position = self._feed.positions.get(room)
        return position is None or not epoch or position.epoch == epoch
