"""The Redis broker's subscriber: one pub/sub connection per pod, and what arrives on it.

:class:`Subscriber` runs the ``redis-subscriber`` loop. It subscribes to the
global channel, the pod's own channel and the channel of every room with local
members; after a lost connection it reconnects with jittered backoff and
resubscribes, and the :class:`~roomcast.brokers.redis.feed.Feed` repairs what
was published meanwhile once each room's new subscription is confirmed.

What arrives is routed:

- a room publication goes through the feed (delivered in order and once; a gap
  wakes the :class:`~roomcast.brokers.redis.repair.Repairer`);
- a message to everyone goes to the handler as it is;
- on the pod's own channel, a health probe proves delivery end to end
  (:attr:`Subscriber.hearing`, :mod:`.hearing`) and a *barrier* published by a history
  read tells that read that everything before it has been handed over;
- on the control channel (always subscribed), a control command goes to the
  broker's :class:`~roomcast.brokers.redis.control.RedisControl`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import orjson
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from roomcast.brokers.base import BrokerHandler
from roomcast.brokers.redis.connect import RedisTarget
from roomcast.brokers.redis.feed import Feed
from roomcast.brokers.redis.hearing import Hearing
from roomcast.brokers.redis.keys import Keys
from roomcast.brokers.redis.repair import Repairer
from roomcast.brokers.redis.routing import Routing
from roomcast.errors import ProtocolError
from roomcast.protocol import Encoded, Message

__all__ = ["SUBSCRIBE_WAIT", "Subscriber"]

_log = logging.getLogger("roomcast.brokers.redis")

SUBSCRIBE_WAIT = 2.0
"""Seconds :meth:`Subscriber.subscribe` waits for Redis to confirm a subscription."""


class Subscriber:
    """The pod's subscriber connection; run :meth:`run` as one supervised task.

    Call order, from one event loop: :meth:`subscribe` and :meth:`unsubscribe`
    at any time (the rooms are resubscribed after every reconnect); :meth:`run`
    as the ``redis-subscriber`` loop, with :meth:`recover` after a run that
    raised; on close, stop the loop, then :meth:`fail_barriers` and :meth:`close`.

    Args:
        target: where Redis is (each connection is made anew from it).
        keys: the broker's keys and channels.
        feed: the per-room feed that live room publications go through.
        repairs: woken when the feed wants a history read.
        handler: returns the broker's handler, or None while it is stopped.
        control: called with each message on the control channel.
    """

    def __init__(
        self,
        target: RedisTarget,
        *,
        keys: Keys,
        feed: Feed,
        repairs: Repairer,
        handler: Callable[[], BrokerHandler | None],
        control: Callable[[bytes], None] | None = None,
    ) -> None:
        self._target = target
        self._control = control
        self._keys = keys
        self._feed = feed
        self._repairs = repairs
        self._handler_of = handler
        self.rooms: set[str] = set()
        """Rooms subscribed to (or to be, once connected)."""
        self.ok = False
        """Whether the connection is up and subscribed (False while reconnecting)."""
        self.hearing = Hearing()
        """What the connection heard: probes back, anything read (deaf or behind)."""
        self.barriers: dict[bytes, asyncio.Future[bool]] = {}
        """Barriers in flight on the pod's own channel: each future is set True when
        the barrier comes back, False if the connection it was published for goes."""
        self._pubsub: PubSub | None = None
        self._reconnect = asyncio.Event()
        self._confirmations: dict[bytes, list[asyncio.Future[None]]] = {}
        self._health = keys.health_channel.encode()
        self._control_channel = keys.control_channel.encode()
        self._global = keys.global_channel.encode()
        self._room_prefix = keys.room_channel_prefix

    @property
    def _handler(self) -> BrokerHandler | None:
        return self._handler_of()

    # -- lifecycle ------------------------------------------------------------------------------

    def replace(self) -> None:
        """Drop the current connection (it is deaf) and make a new one."""
        self._reconnect.set()

    def recover(self) -> None:
        """Forget the connection of a failed run: the next run starts a new one."""
        # The next run starts a new connection; what it missed is repaired.
        self.ok = False
        self._pubsub = None

    def fail_barriers(self) -> None:
        """Settle every barrier in flight as not come back (its connection went, or on close)."""
        for waiter in self.barriers.values():
            if not waiter.done():
                waiter.set_result(False)

    async def close(self) -> None:
        """Close the connection (after the loop stopped)."""
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            self._pubsub = None

    # -- subscribing ----------------------------------------------------------------------------

    async def subscribe(self, room: str) -> None:
        """Subscribe to ``room``'s channel (resubscribed after every reconnect).

        Returns once Redis confirmed the subscription, so every publication after
        this call is received; or after ``SUBSCRIBE_WAIT`` seconds while Redis is
        unreachable (the subscription is then made when the subscriber reconnects).
        """
        self.rooms.add(room)
        channel = self._keys.room_channel(room).encode()
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(channel, []).append(confirmed)
        try:
            await self._send_subscribe(channel)
            await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_WAIT)
        except TimeoutError:
            _log.warning("subscription to %s not confirmed yet", room)
        finally:
            waiting = self._confirmations.get(channel)
            if waiting is not None and confirmed in waiting:
                waiting.remove(confirmed)
                if not waiting:
                    del self._confirmations[channel]

    async def unsubscribe(self, room: str) -> None:
        """Unsubscribe from ``room``'s channel; the feed forgets the room."""
        self.rooms.discard(room)
        self._feed.forget(room)
        self._repairs.settle_waiters()
        await self._send_unsubscribe(self._keys.room_channel(room).encode())

    async def _send_subscribe(self, channel: bytes) -> None:
        # Subscribe on the live connection (else the next one subscribes it).
        pubsub = self._pubsub
        if pubsub is not None and self.ok:
            try:
                await pubsub.subscribe(channel)
            except (RedisError, OSError):
                self._reconnect.set()

    async def _send_unsubscribe(self, channel: bytes) -> None:
        pubsub = self._pubsub
        if pubsub is not None and self.ok:
            try:
                await pubsub.unsubscribe(channel)
            except (RedisError, OSError):
                self._reconnect.set()

    async def run(self) -> None:
        """The ``redis-subscriber`` loop: connect, subscribe, read; reconnect. Never returns."""
        keys = self._keys
        attempt = 0
        while True:
            pubsub = self._target.client(
                socket_connect_timeout=2.0,
                retry=Retry(NoBackoff(), 0),
            ).pubsub()
            try:
                # What was published while no subscriber listened is filled in from
                # each room's history once its new subscription is confirmed.
                self._feed.resync()
                rooms = set(self.rooms)
                channels = [keys.global_channel, keys.health_channel, keys.control_channel]
                channels += [keys.room_channel(room) for room in rooms]
                await pubsub.subscribe(*channels)
                # Rooms joined or left while that was in flight:
                while rooms != self.rooms:
                    added, removed = self.rooms - rooms, rooms - self.rooms
                    rooms = set(self.rooms)
                    if added:
                        await pubsub.subscribe(*(keys.room_channel(r) for r in added))
                    if removed:
                        await pubsub.unsubscribe(*(keys.room_channel(r) for r in removed))
                self._pubsub = pubsub
                self.ok = True
                self.hearing.connected()
                if attempt:
                    _log.warning("Redis subscriber reconnected", extra={"rooms": len(self.rooms)})
                    if self._handler is not None:
                        self._handler.handle_reconnect()
                attempt = 0
                self._reconnect.clear()
                await self._read(pubsub)
            except (RedisError, OSError) as exc:
                if self.ok or attempt == 0:
                    _log.warning("Redis subscriber lost", extra={"error": str(exc)})
            finally:
                if self.ok and self._handler is not None:
                    self._handler.handle_subscriber_lost()
                self.ok = False
                self._pubsub = None
                self.fail_barriers()  # they went with the connection
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            attempt += 1
            delay = min(5.0, 0.1 * 2 ** min(attempt, 6))
            await asyncio.sleep(random.uniform(delay / 2, delay))  # full jitter, floored

    async def _read(self, pubsub: PubSub) -> None:
        deliver = self._deliver
        hearing = self.hearing
        while not self._reconnect.is_set():
            item = await pubsub.get_message(timeout=0.5)
            if item is None:
                continue
            hearing.reads += 1
            if item.get("type") != "message":
                if item.get("type") == "subscribe":
                    self._confirm(item["channel"])
                continue
            deliver(item["channel"], item["data"])

    def _confirm(self, channel: bytes) -> None:
        # Redis confirmed a subscription: wake its waiters; a room's may be repaired now.
        for waiter in self._confirmations.pop(channel, ()):
            if not waiter.done():
                waiter.set_result(None)
        if channel.startswith(self._room_prefix):
            feed = self._feed
            feed.confirmed(self._keys.room_of(channel))
            if feed.wanted:
                self._repairs.request()

    def _deliver(self, channel: bytes, data: bytes) -> None:
        # One message from Redis, routed by its channel (see the module doc).
        if channel == self._health:
            self._on_own_channel(data)
            return
        if channel == self._control_channel:
            if self._control is not None:
                self._control(data)
            return
        handler = self._handler
        if handler is None:
            return
        epoch: str | None = None
        payload: bytes | memoryview = data
        if data[:1] != b"{":  # "<epoch> <payload>" from the publish script
            if data[:1] == b"!":  # a history read's barrier, on a cluster's room channel
                self._on_own_channel(data)
                return
            space = data.find(b" ")
            epoch = data[:space].decode()
            payload = memoryview(data)[space + 1 :]  # framed without a copy first
        try:
            message = Message.from_dict(orjson.loads(payload))
        except (orjson.JSONDecodeError, ProtocolError, UnicodeDecodeError):
            _log.warning("ignoring a malformed publication", extra={"channel": channel})
            return
        encoded = Encoded(payload, message)
        if channel == self._global:
            handler.handle_publication(encoded)
            return
        room = message.room
        if room is None or not channel.startswith(self._room_prefix):
            return
        feed = self._feed
        if feed.receive(room, epoch, encoded):
            handler.handle_publication(encoded)
        elif feed.wanted:
            self._repairs.request()
        if feed.duplicates:
            handler.handle_duplicates(feed.duplicates)
            feed.duplicates = 0

    async def probe(self, routing: Routing, interval: float, *, late: float = 0.0) -> None:
        """Publish a health probe on the pod's own channel; replace a deaf connection.

        A connection that is up, has not seen a probe come back for three
        intervals and reads nothing is deaf (Redis stopped sending to it): it is
        replaced. One that still reads is behind, and kept (:mod:`.hearing`).
        ``late``: seconds this check runs after its time.

        Raises:
            RedisError, OSError: the probe could not be published.
        """
        channel = self._keys.health_channel
        await routing.client_for(channel).publish(channel, b"probe")
        silent = self.hearing.deaf(interval, late=late) if self.ok else None
        if silent is not None:
            _log.warning(
                "Redis subscriber is deaf (health probes not coming back); replacing it",
                extra={"silent_s": round(silent, 1)},
            )
            self.replace()

    def _on_own_channel(self, data: bytes) -> None:
        if data.startswith((b"barrier:", b"!barrier:")):
            waiter = self.barriers.get(data)
            if waiter is not None and not waiter.done():
                waiter.set_result(True)
            return
        self.hearing.probe_seen()
