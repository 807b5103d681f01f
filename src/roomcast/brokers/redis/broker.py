"""The Redis broker: many pods, one order per room, shared history and presence.

:class:`RedisBroker` is the Broker protocol's face and owns the rest: the Redis
connections, the supervised loops, the health check and the presence heartbeat.
Each job is a part it builds and wires: :class:`~.writer.Writer` (publications
out), :class:`~.subscriber.Subscriber` (the pub/sub connection and what arrives
on it), :class:`~.feed.Feed` and :class:`~.repair.Repairer` (order, and gaps
filled from the history), :class:`~.history.History` (pages for clients),
:class:`~.presence.RedisPresence`, :class:`~.control.RedisControl` (the control
channel, commands to every pod); :class:`~.keys.Keys` names it all.

How a room message travels:

1. The origin pod stamps it and queues it on the broker's single writer task,
   which sends queued publications to Redis in pipelines (one round trip for
   many messages, in order).
2. For a retained message, one Lua script (:data:`~roomcast.brokers.redis.scripts.PUBLISH`)
   assigns the room's next ``offset``, appends the message to the room's history
   stream (bounded by ``history_size``, expiring ``history_ttl`` seconds after the
   last publication, with an ``epoch`` that changes when the history is lost), and
   publishes it on ``{prefix}:room:{room}`` — atomically, so the history's order
   is the delivery order. Other messages are plain ``PUBLISH``\\es
   (``{prefix}:global`` for messages to everyone).
3. Every pod subscribed to the channel, the origin included, delivers the message
   when it comes back. A pod subscribes to a room's channel while it has local
   members, on one subscriber connection.

Ordering and exactness (see ``docs/topics/recovery.md``):

- The publish script is idempotent: it records each message id with its offset,
  so a publication retried after its reply was lost (a timeout, a dropped
  connection) is stored and published once, and the retry learns its offset.
- A publication that fails before it reaches Redis (no connection) is delivered
  by the origin pod to its own members at once (and counted). One whose outcome
  is unknown (the request went out, no reply came) is never delivered locally:
  a retained one is retried with the same id until Redis answers (for
  :data:`~.writer.IN_DOUBT_RETRY` seconds), other ones are not retried (at most once).
- Redis orders one connection's output, not two connections against each other.
  A history read of a room this pod subscribes to publishes a *barrier* on the
  pod's own channel in the same transaction and returns only once the subscriber
  has handed over everything before it (:mod:`.history`), so a
  joining connection's replay and the live stream meet without a duplicate.
- The subscriber's feed is checked per room (:class:`~roomcast.brokers.redis.feed.Feed`):
  a copy of an offset already delivered is dropped, and a gap (messages missed
  while the subscriber reconnected, was dropped by Redis for its output buffer,
  or was replaced as deaf) is filled from the history before anything newer.

Failures degrade gracefully: the subscriber reconnects with jittered backoff and
resubscribes; a subscriber that stays connected but stops receiving is caught by
a health check (a message to the pod's own channel that must come back) and
replaced; :attr:`RedisBroker.ready` is False meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import secrets
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import RedisError

from roomcast.brokers.base import BrokerHandler, ControlBus, HistoryPage, PresenceStore, Retention
from roomcast.brokers.redis.connect import RedisTarget
from roomcast.brokers.redis.control import RedisControl
from roomcast.brokers.redis.feed import Feed
from roomcast.brokers.redis.history import History
from roomcast.brokers.redis.keys import Keys
from roomcast.brokers.redis.presence import RedisPresence
from roomcast.brokers.redis.repair import Repairer
from roomcast.brokers.redis.shards import ShardedSubscriber
from roomcast.brokers.redis.subscriber import Subscriber
from roomcast.brokers.redis.writer import Writer
from roomcast.errors import BrokerUnavailable
from roomcast.protocol import Message
from roomcast.supervisor import Supervisor

__all__ = ["RedisBroker"]

_log = logging.getLogger("roomcast.brokers.redis")


class RedisBroker:
    """A broker shared by many pods through Redis.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL, or
            ``redis+sentinel://host:26379,host2:26379/<master name>/<db>`` for
            the master a Sentinel group names (:mod:`.connect`).
        prefix: prefix of every key and channel.
        history_size: messages kept per room (0 disables history).
        history_ttl: seconds after a room's last publication when its history
            expires (0 disables history).
        history_bytes: bytes of messages kept per room (the newest message is
            kept whatever its size); 0 for no bound in bytes. Redis's own
            ``maxmemory`` bounds all rooms together (docs/topics/scaling.md).
        presence_ttl: seconds after which the connections of a pod that stopped
            refreshing them are forgotten (and their users go offline).
        health_interval: seconds between subscriber health probes; when none has
            come back for three intervals and the subscriber reads nothing at
            all, it is deaf and replaced (one still reading is only behind:
            :mod:`.hearing`).
        command_timeout: seconds to wait for a command's reply; a publication
            whose reply does not come in time is in doubt (retried, never
            delivered locally). Also how long a command waits for a free
            connection when all of its pool's are busy (:data:`.connect.POOL_SIZE`).
        node_id: this pod's id (random by default), used for its own channel.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "realtime",
        history_size: int = 100,
        history_ttl: float = 300.0,
        history_bytes: int = 1 << 20,
        presence_ttl: float = 30.0,
        health_interval: float = 1.0,
        command_timeout: float = 5.0,
        node_id: str | None = None,
    ) -> None:
        self.url = url
        self._target = target = RedisTarget.parse(url)
        self.prefix = prefix
        # SPEC §1: either option at 0 disables history.
        self.history_size = history_size if history_ttl > 0 else 0
        self.history_ttl = history_ttl
        self.history_bytes = history_bytes
        self.health_interval = health_interval
        self.node_id = node_id or secrets.token_hex(4)
        self._keys = Keys(prefix, self.node_id, cluster=target.cluster)
        # On a cluster every part routes by key over one slot map (:mod:`.routing`).
        self._slots = target.slot_map() if target.cluster else None
        # Reads, presence and probes are idempotent: one quick retry on a dropped
        # connection (a pooled connection Redis closed, say), nothing more, so an
        # outage is noticed within a connect timeout or two.
        self._routing = target.routing(
            self._slots,
            socket_connect_timeout=2.0,
            socket_timeout=command_timeout,
            pool_timeout=command_timeout,
            retry=Retry(EqualJitterBackoff(cap=0.2, base=0.02), 1),
            health_check_interval=10,
        )
        # Publications are retried by the writer itself, which knows which ones
        # may have been applied (it retries those with the same id): no retry here.
        self._writer_routing = target.routing(
            self._slots,
            socket_connect_timeout=2.0,
            socket_timeout=command_timeout,
            pool_timeout=command_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=10,
        )
        self._presence = RedisPresence(
            self._routing, prefix=prefix, ttl=presence_ttl, node_id=self.node_id
        )
        # Typed as the Broker protocol says, so that ``Hub(broker=RedisBroker(...))``
        # type-checks (a protocol attribute is invariant: RedisPresence would not do).
        self.presence: PresenceStore = self._presence
        self._handler: BrokerHandler | None = None
        self._loops = Supervisor()
        # The parts, each told of the handler through the broker (it changes at
        # start and close). Ordering: the per-room feed, fed live by the
        # subscriber and from the history by the repairer.
        handler = self._current_handler
        self._writer = Writer(
            self._writer_routing,
            keys=self._keys,
            history_size=self.history_size,
            ttl_seconds=self._ttl_seconds,
            history_bytes=history_bytes,
            handler=handler,
        )
        self._feed = Feed()
        self._repairs = Repairer(self._routing, keys=self._keys, feed=self._feed, handler=handler)
        self._control = RedisControl(
            self._routing, keys=self._keys, listening=self._listening, block=command_timeout / 2
        )
        self.control: ControlBus = self._control
        parts: dict[str, Any] = {
            "keys": self._keys,
            "feed": self._feed,
            "repairs": self._repairs,
            "handler": handler,
            "control": self._control.receive,
        }
        self._subscriber = (
            Subscriber(target, **parts)
            if self._slots is None
            else ShardedSubscriber(target, self._slots, **parts)
        )
        self._history = History(
            self._routing,
            keys=self._keys,
            history_size=self.history_size,
            ttl_seconds=self._ttl_seconds if history_ttl else 0,
            subscriber=self._subscriber,
            repairs=self._repairs,
        )

    @property
    def _client(self) -> Redis:
        # The command client of one server (or Sentinel's master).
        return self._routing.client_for("")

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisBroker:
        """Build a broker for ``url`` (see the class for the keyword options)."""
        return cls(url, **kwargs)

    def _current_handler(self) -> BrokerHandler | None:
        return self._handler

    def _listening(self) -> bool:
        return self._subscriber.ok

    # -- keys and channels ---------------------------------------------------------------

    def room_channel(self, room: str) -> str:
        """The pub/sub channel of ``room``."""
        return self._keys.room_channel(room)

    @property
    def global_channel(self) -> str:
        """The pub/sub channel of messages to everyone."""
        return self._keys.global_channel

    @property
    def health_channel(self) -> str:
        """This pod's own channel: health probes and ordering barriers."""
        return self._keys.health_channel

    @property
    def _ttl_seconds(self) -> int:
        # Redis expires in whole seconds; never round a positive TTL down to 0.
        return max(1, math.ceil(self.history_ttl))

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True while commands succeed and the subscriber is connected and healthy."""
        return (
            self._handler is not None
            and self._writer.commands_ok
            and self._subscriber.ok
            and not self._loops.down
        )

    async def start(self, handler: BrokerHandler) -> None:
        """Connect, then run the writer, subscriber, repair, health and presence tasks."""
        self._handler = handler
        self._loops.on_failure = handler.handle_loop_failure
        try:
            if self._slots is not None:
                await self._slots.refresh()
            for client in self._routing.masters():
                await client.ping()
            await self._writer.load_script()
            self._writer.commands_ok = True
        except (RedisError, OSError, BrokerUnavailable) as exc:
            _log.warning("Redis unreachable at start; will keep trying", extra={"error": str(exc)})
        self._subscriber.hearing.connected()
        loops = self._loops
        loops.start("redis-writer", self._writer.run, recover=self._writer.recover)
        loops.start("redis-subscriber", self._subscriber.run, recover=self._subscriber.recover)
        loops.start("redis-repair", self._repairs.run, recover=self._repairs.recover)
        loops.start("redis-health", self._health_loop)
        loops.start("redis-presence", self._presence_loop)

    async def close(self) -> None:
        """Stop every task and close the connections. Idempotent."""
        if self._handler is None:
            return
        await self._writer.drain(within=2.0)
        self._handler = None
        await self._control.close()
        await self._loops.close()
        # Another pod reaps presence from its next heartbeat on, not after the turn lapses.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._presence.close(), 1.0)
        # Nobody waits forever on what is left.
        self._writer.abandon()
        self._subscriber.fail_barriers()
        self._repairs.settle_waiters(everything=True)
        await self._subscriber.close()
        for routing in (self._routing, self._writer_routing):
            await routing.close()
        await self._target.close()

    # -- the Broker protocol ------------------------------------------------------------------

    def publish(self, message: Message) -> asyncio.Future[Message]:
        """Queue ``message`` for the writer; see :meth:`roomcast.brokers.base.Broker.publish`.

        Raises:
            ProtocolError: ``invalid_message`` if it cannot be encoded (nothing
                is queued).
        """
        return self._writer.publish(message)

    def set_retention(self, retention: Retention | None) -> None:
        """Let ``retention(room)`` override ``history_size`` / ``history_ttl`` per room.

        See :meth:`Broker.set_retention <roomcast.brokers.base.Broker.set_retention>`;
        call before :meth:`start`.
        """
        limits = None if retention is None else functools.partial(self._limits, retention)
        self._writer.limits = self._history.limits = limits

    def _limits(self, retention: Retention, room: str) -> tuple[int, int]:
        # (history size, ttl in whole seconds) of ``room``; size 0 keeps no history.
        override = retention(room)
        size, ttl = self.history_size, self.history_ttl
        if override is not None:
            size = override[0] if override[0] is not None else size
            ttl = override[1] if override[1] is not None else ttl
        if ttl <= 0:
            return 0, 0
        return size, max(1, math.ceil(ttl))

    async def subscribe(self, room: str) -> None:
        """Subscribe to ``room``'s channel (resubscribed after every reconnect).

        Returns once Redis confirmed the subscription, so every publication after
        this call is received; or after ``SUBSCRIBE_WAIT`` seconds while Redis is
        unreachable (the subscription is then made when the subscriber reconnects).
        """
        await self._subscriber.subscribe(room)

    async def unsubscribe(self, room: str) -> None:
        """Unsubscribe from ``room``'s channel."""
        await self._subscriber.unsubscribe(room)

    async def history(
        self, room: str, *, since: str | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Return retained messages of ``room``, oldest first (see the Broker protocol).

        For a room this pod subscribes to, the page is ordered against the live
        stream by a barrier (:meth:`.history.History.read`): every publication
        it covers has been handed to the handler when it returns, and any later
        one comes after its ``offset``.

        Raises:
            BrokerUnavailable: Redis did not answer the read.
        """
        return await self._history.read(room, since=since, limit=limit)

    # -- health and presence ----------------------------------------------------------------------

    async def _health_loop(self) -> None:
        # Prove end-to-end delivery: probes published on our own channel(s) must come
        # back through the subscriber; a connection they stop coming back on is
        # replaced. On a cluster, a slot map marked stale is read again here.
        # A check that runs late (the loop itself held up) says so: it is not
        # evidence of a deaf connection (:mod:`.hearing`).
        slots = self._slots
        loop = asyncio.get_running_loop()
        interval = self.health_interval
        while True:
            slept = loop.time()
            await asyncio.sleep(interval)
            late = loop.time() - slept - interval
            if slots is not None and slots.stale:
                with contextlib.suppress(BrokerUnavailable):
                    await slots.refresh()
            try:
                await self._subscriber.probe(self._routing, interval, late=late)
                self._writer.commands_ok = True
            except (RedisError, OSError, BrokerUnavailable):
                self._writer.commands_ok = False
                continue
            self._writer.retry_in_doubt()

    async def _presence_loop(self) -> None:
        period = self._presence.period
        while True:
            await asyncio.sleep(period)
            try:
                gone = await self._presence.heartbeat()
            except (RedisError, OSError, BrokerUnavailable) as exc:
                _log.debug("presence heartbeat failed", extra={"error": str(exc)})
                continue
            handler = self._handler
            if handler is not None:
                for room, user_id, vacated in gone:
                    handler.handle_presence_expired(room, user_id, vacated=vacated)
