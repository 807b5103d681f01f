"""History pages of the Redis broker, ordered against the live feed.

:class:`History` serves :meth:`~roomcast.brokers.base.Broker.history`: one
script (:data:`~roomcast.brokers.redis.scripts.READ_PAGE`) reads a room's
page, and for a room this pod subscribes to also publishes a *barrier* on the
pod's own channel, in the same atomic step. Redis delivers one connection's
output in order, so once the barrier comes back through the subscriber, every
publication the page covers has been handed to the handler, and every later
one comes after the page's ``offset``: a joining connection's replay and the
live stream meet without a gap or a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

from redis.exceptions import RedisError

from roomcast.brokers.base import HistoryPage
from roomcast.brokers.redis.keys import Keys
from roomcast.brokers.redis.repair import Repairer
from roomcast.brokers.redis.routing import Routing
from roomcast.brokers.redis.scripts import READ_PAGE
from roomcast.brokers.redis.subscriber import SUBSCRIBE_WAIT, Subscriber
from roomcast.errors import BrokerUnavailable
from roomcast.protocol import Encoded

__all__ = ["History"]

_log = logging.getLogger("roomcast.brokers.redis")


class History:
    """Reads history pages for clients (see :meth:`read`).

    Args:
        routing: the connections history is read on.
        keys: the broker's keys and channels.
        history_size: messages kept per room (0: history is disabled).
        ttl_seconds: seconds a room's history lives after its last publication,
            0 when history is disabled.
        subscriber: the pod's subscriber, which brings the barriers back.
        repairs: waited on when the barrier shows the feed is behind.
    """

    def __init__(
        self,
        routing: Routing,
        *,
        keys: Keys,
        history_size: int,
        ttl_seconds: int,
        subscriber: Subscriber,
        repairs: Repairer,
    ) -> None:
        self._keys = keys
        self._history_size = history_size
        self._ttl_seconds = ttl_seconds
        self._subscriber = subscriber
        self._repairs = repairs
        self._read_page = routing.script(READ_PAGE)
        self._cluster = routing.cluster
        self.limits: Callable[[str], tuple[int, int]] | None = None
        """``limits(room)``: the room's history size and TTL (s) when namespaces set them."""

    async def read(
        self, room: str, *, since: str | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Return retained messages of ``room``, oldest first (see the Broker protocol).

        For a room this pod subscribes to, the read publishes a barrier on the
        pod's own channel in the same transaction, and returns once the
        subscriber has received it (or after ``SUBSCRIBE_WAIT`` seconds): every
        publication the page covers has then been handed to the handler, and
        any later one comes after the page's ``offset``. Redis delivers one
        connection's output in order, and the transaction puts the barrier after
        every publication the read saw and before every later one.

        Raises:
            BrokerUnavailable: Redis did not answer the read.
        """
        page, current = await self._read(room, since, limit)
        if not current:  # the room was reset meanwhile: its history is in another epoch now
            page, _ = await self._read(room, since, limit)
        return page

    async def _read(
        self, room: str, since: str | None, limit: int | None
    ) -> tuple[HistoryPage, bool]:
        # One read (see :meth:`read`), and whether it is still current.
        size, ttl = self._history_size, self._ttl_seconds
        if self.limits is not None:
            size, ttl = self.limits(room)
        current = True
        subscriber = self._subscriber
        barrier: bytes | None = None
        waiter: asyncio.Future[bool] | None = None
        if room in subscriber.rooms and subscriber.ok:
            # On a cluster the barrier goes on the room's own (shard) channel: the
            # room's publications and it then come on one connection, in order.
            mark = b"!barrier:" if self._cluster else b"barrier:"
            barrier = mark + secrets.token_hex(8).encode()
            waiter = subscriber.barriers[barrier] = asyncio.get_running_loop().create_future()
        keys = self._keys
        channel = keys.room_channel(room) if self._cluster else keys.health_channel
        try:
            try:
                # One script: one snapshot, and the barrier right after it.
                reply = await self._read_page(
                    keys.publish_keys(room),
                    [
                        since or "",
                        -1 if limit is None else limit,
                        secrets.token_hex(4) if size else "",
                        ttl if size else 0,
                        channel if barrier is not None else "",
                        barrier or b"",
                        "SPUBLISH" if self._cluster else "PUBLISH",
                    ],
                )
            except (RedisError, OSError, BrokerUnavailable) as exc:
                raise BrokerUnavailable(f"history of {room!r} unavailable: {exc}") from exc
            epoch_raw, offset, found, entries = reply
            epoch = epoch_raw.decode() if epoch_raw else ""
            offset = int(offset)
            if waiter is not None:
                try:
                    ordered = await asyncio.wait_for(waiter, SUBSCRIBE_WAIT)
                except TimeoutError:
                    ordered = False
                if ordered and size:
                    current = await self._caught_up(room, epoch, offset)
                elif not ordered:
                    _log.warning("history barrier of %s did not come back; replying anyway", room)
        finally:
            if barrier is not None:
                subscriber.barriers.pop(barrier, None)
        # Entries are [entry id, [b"i", id, b"p", payload]], oldest first.
        messages = [Encoded.stored(fields[3]) for _, fields in entries]
        page = HistoryPage(
            room=room,
            epoch=epoch,
            offset=offset,
            messages=messages,
            recovered=since is not None and found == 1,
        )
        return page, current

    async def _caught_up(self, room: str, epoch: str, offset: int) -> bool:
        # After a barrier: make sure every publication of ``room`` up to ``offset``
        # has been handed over (a repair in progress finished), within a bound.
        # False if the room was reset to another epoch meanwhile.
        if room not in self._subscriber.rooms:
            return True
        return await self._repairs.caught_up(room, epoch, offset, within=SUBSCRIBE_WAIT)
