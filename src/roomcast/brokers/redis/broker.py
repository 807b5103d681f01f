"""The Redis broker: many pods, one order per room, shared history and presence.

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
  ``IN_DOUBT_RETRY`` seconds), other ones are not retried (at most once).
- Redis orders one connection's output, not two connections against each other.
  A history read of a room this pod subscribes to publishes a *barrier* on the
  pod's own channel in the same transaction and returns only once the subscriber
  has handed over everything before it (:meth:`RedisBroker.history`), so a
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
import hashlib
import logging
import math
import random
import secrets
import select
import time
from collections import deque
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import NoScriptError, RedisError

from roomcast.brokers.base import BrokerHandler, HistoryPage, PresenceStore
from roomcast.brokers.redis.feed import Feed
from roomcast.brokers.redis.presence import RedisPresence
from roomcast.brokers.redis.scripts import PUBLISH, READ_AFTER, READ_PAGE
from roomcast.errors import BrokerUnavailable, ProtocolError
from roomcast.protocol import Encoded, Message, encode
from roomcast.supervisor import Supervisor

__all__ = ["RedisBroker"]

_log = logging.getLogger("roomcast.brokers.redis")

_BATCH = 512
"""Most publications sent in one pipeline."""

_BATCH_BYTES = 1 << 20
"""Most payload bytes sent in one pipeline (a pipeline holds at least one publication)."""

_REPAIR_PAGE = 500
"""Most history entries read per room and round trip while filling a gap."""

IN_DOUBT_RETRY = 30.0
"""Seconds a retained publication whose outcome is unknown is retried before it is given up."""

_RETRY_PAUSE = 0.2
"""Seconds between retries of publications in doubt, and of failed history reads."""

SUBSCRIBE_WAIT = 2.0
"""Seconds :meth:`RedisBroker.subscribe` waits for Redis to confirm a subscription."""


class _Publication:
    """A message on its way to Redis, and the future its publisher may await."""

    __slots__ = ("doubted", "future", "message", "payload")

    def __init__(self, message: Message, future: asyncio.Future[Message], payload: bytes) -> None:
        self.message = message
        self.future = future
        self.payload = payload
        self.doubted: float | None = None
        """When its outcome first became unknown (monotonic seconds), else None."""

    def settle(self) -> None:
        if not self.future.done():
            self.future.set_result(self.message)


class RedisBroker:
    """A broker shared by many pods through Redis.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL.
        prefix: prefix of every key and channel.
        history_size: messages kept per room (0 disables history).
        history_ttl: seconds after a room's last publication when its history
            expires (0 disables history).
        history_bytes: bytes of messages kept per room (the newest message is
            kept whatever its size); 0 for no bound in bytes. Redis's own
            ``maxmemory`` bounds all rooms together (docs/topics/scaling.md).
        presence_ttl: seconds after which the connections of a pod that stopped
            refreshing them are forgotten (and their users go offline).
        health_interval: seconds between subscriber health probes; a probe that
            has not come back after three intervals replaces the subscriber.
        command_timeout: seconds to wait for a command's reply; a publication
            whose reply does not come in time is in doubt (retried, never
            delivered locally).
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
        self.prefix = prefix
        # SPEC §1: either option at 0 disables history.
        self.history_size = history_size if history_ttl > 0 else 0
        self.history_ttl = history_ttl
        self.history_bytes = history_bytes
        self.health_interval = health_interval
        self.node_id = node_id or secrets.token_hex(4)
        # Reads, presence and probes are idempotent: one quick retry on a dropped
        # connection (a pooled connection Redis closed, say), nothing more, so an
        # outage is noticed within a connect timeout or two.
        self._client: Redis = Redis.from_url(
            url,
            socket_connect_timeout=2.0,
            socket_timeout=command_timeout,
            retry=Retry(EqualJitterBackoff(cap=0.2, base=0.02), 1),
            health_check_interval=10,
        )
        # Publications are retried by the writer itself, which knows which ones
        # may have been applied (it retries those with the same id): no retry here.
        self._writer: Redis = Redis.from_url(
            url,
            socket_connect_timeout=2.0,
            socket_timeout=command_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=10,
        )
        self._presence = RedisPresence(self._client, prefix=prefix, ttl=presence_ttl)
        # Typed as the Broker protocol says, so that ``Hub(broker=RedisBroker(...))``
        # type-checks (a protocol attribute is invariant: RedisPresence would not do).
        self.presence: PresenceStore = self._presence
        self._publish_sha = hashlib.sha1(PUBLISH.encode()).hexdigest()
        self._read_after = self._client.register_script(READ_AFTER)
        self._read_page = self._client.register_script(READ_PAGE)
        self._handler: BrokerHandler | None = None
        self._queue: deque[_Publication] = deque()
        self._in_doubt: list[_Publication] = []
        self._retry_at = 0.0
        self._wake = asyncio.Event()
        self._rooms: set[str] = set()
        self._pubsub: PubSub | None = None
        self._loops = Supervisor()
        self._inflight: list[_Publication] = []  # the batch being sent
        self._subscriber_ok = False
        self._commands_ok = False
        self._last_probe_seen = 0.0
        self._reconnect = asyncio.Event()
        self._confirmations: dict[bytes, list[asyncio.Future[None]]] = {}
        # Ordering: barriers in flight, the per-room feed, repairs and their waiters.
        self._barriers: dict[bytes, asyncio.Future[bool]] = {}
        self._feed = Feed()
        self._repair = asyncio.Event()
        self._repair_waiters: dict[str, list[asyncio.Future[None]]] = {}

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisBroker:
        """Build a broker for ``url`` (see the class for the keyword options)."""
        return cls(url, **kwargs)

    # -- keys and channels ---------------------------------------------------------------

    def room_channel(self, room: str) -> str:
        """The pub/sub channel of ``room``."""
        return f"{self.prefix}:room:{room}"

    @property
    def global_channel(self) -> str:
        """The pub/sub channel of messages to everyone."""
        return f"{self.prefix}:global"

    @property
    def health_channel(self) -> str:
        """This pod's own channel: health probes and ordering barriers."""
        return f"{self.prefix}:health:{self.node_id}"

    @property
    def _ttl_seconds(self) -> int:
        # Redis expires in whole seconds; never round a positive TTL down to 0.
        return max(1, math.ceil(self.history_ttl))

    def _history_keys(self, room: str) -> list[str]:
        tag = f"{{{room}}}"
        return [f"{self.prefix}:meta:{tag}", f"{self.prefix}:history:{tag}"]

    def _publish_keys(self, room: str) -> list[str]:
        return [*self._history_keys(room), f"{self.prefix}:ids:{{{room}}}"]

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True while commands succeed and the subscriber is connected and healthy."""
        return (
            self._handler is not None
            and self._commands_ok
            and self._subscriber_ok
            and not self._loops.down
        )

    async def start(self, handler: BrokerHandler) -> None:
        """Connect, then run the writer, subscriber, repair, health and presence tasks."""
        self._handler = handler
        self._loops.on_failure = handler.handle_loop_failure
        try:
            await self._client.ping()
            await self._writer.script_load(PUBLISH)
            self._commands_ok = True
        except (RedisError, OSError) as exc:
            _log.warning("Redis unreachable at start; will keep trying", extra={"error": str(exc)})
        self._last_probe_seen = time.monotonic()
        loops = self._loops
        loops.start("redis-writer", self._write_loop, recover=self._writer_failed)
        loops.start("redis-subscriber", self._subscribe_loop, recover=self._subscriber_failed)
        loops.start("redis-repair", self._repair_loop, recover=self._repair_failed)
        loops.start("redis-health", self._health_loop)
        loops.start("redis-presence", self._presence_loop)

    def _writer_failed(self) -> None:
        # What the failed run had in hand may or may not have reached Redis.
        batch, self._inflight = self._inflight, []
        self._doubted(
            batch,
            [p.message.retained and bool(self.history_size) for p in batch],
            RuntimeError("the writer failed"),
        )
        self._wake.set()

    def _subscriber_failed(self) -> None:
        # The next run starts a new connection; what it missed is repaired.
        self._subscriber_ok = False
        self._pubsub = None

    def _repair_failed(self) -> None:
        self._feed.reread()  # reads in flight are due again
        self._repair.set()

    async def close(self) -> None:
        """Stop every task and close the connections. Idempotent."""
        if self._handler is None:
            return
        await self._drain_queue(within=2.0)
        self._handler = None
        await self._loops.close()
        # Nobody waits forever on what is left.
        for publication in (*self._queue, *self._in_doubt, *self._inflight):
            publication.settle()
        self._queue.clear()
        self._in_doubt.clear()
        self._inflight.clear()
        for waiter in self._barriers.values():
            if not waiter.done():
                waiter.set_result(False)
        self._settle_repair_waiters(everything=True)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            self._pubsub = None
        for client in (self._client, self._writer):
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _drain_queue(self, *, within: float) -> None:
        deadline = time.monotonic() + within
        while (  # noqa: ASYNC110
            self._queue or self._inflight or self._in_doubt
        ) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, message: Message) -> asyncio.Future[Message]:
        """Queue ``message`` for the writer; see :meth:`roomcast.brokers.base.Broker.publish`.

        Raises:
            ProtocolError: ``invalid_message`` if it cannot be encoded (nothing
                is queued).
        """
        payload = encode(message)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._queue.append(_Publication(message, future, payload))
        self._wake.set()
        return future

    async def _write_loop(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                if self._in_doubt:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, self._retry_at - time.monotonic())):
                            await self._wake.wait()
                else:
                    await self._wake.wait()
            self._wake.clear()
            if self._in_doubt and time.monotonic() >= self._retry_at:
                await self._send(self._take_in_doubt())
            if queue:
                await self._send(self._take_batch(queue))

    def _take_batch(self, queue: deque[_Publication]) -> list[_Publication]:
        # Up to _BATCH publications or _BATCH_BYTES of payload (at least one).
        batch: list[_Publication] = []
        size = 0
        while queue and len(batch) < _BATCH and size < _BATCH_BYTES:
            publication = queue.popleft()
            size += len(publication.payload)
            batch.append(publication)
        return batch

    def _take_in_doubt(self) -> list[_Publication]:
        # Publications in doubt for too long are given up (and counted), never
        # delivered locally: Redis may have published them.
        now = time.monotonic()
        batch, self._in_doubt = self._in_doubt, []
        handler = self._handler
        kept = []
        for publication in batch:
            doubted = publication.doubted
            if doubted is not None and now - doubted > IN_DOUBT_RETRY:
                if handler is not None:
                    handler.handle_publish_unknown(
                        publication.message, BrokerUnavailable("Redis did not answer in time")
                    )
                publication.settle()
            else:
                kept.append(publication)
        return kept

    async def _send(self, batch: list[_Publication]) -> None:
        if not batch:
            return
        self._inflight = batch
        await self._send_batch(batch)
        self._inflight = []
        if self._in_doubt:
            self._retry_at = time.monotonic() + _RETRY_PAUSE
            self._wake.set()

    async def _send_batch(self, batch: list[_Publication]) -> None:
        if not self._commands_ok:
            # Known to be unreachable: deliver locally at once instead of waiting
            # for a connect timeout; the health loop notices when Redis is back.
            self._not_sent(batch, BrokerUnavailable("Redis is unreachable"))
            return
        pool = self._writer.connection_pool
        try:
            # Connecting first tells "nothing was sent" apart from "no reply".
            connection = await pool.get_connection()  # type: ignore[no-untyped-call,unused-ignore]
        except (RedisError, OSError) as exc:
            self._commands_ok = False
            self._not_sent(batch, exc)
            return
        try:
            if _closed_by_peer(connection):
                # The server closed this pooled connection while it was idle,
                # before anything was written to it: replace it; if that fails,
                # nothing was sent.
                await connection.disconnect()
                await connection.connect()
        except (RedisError, OSError) as exc:
            await pool.release(connection)
            self._commands_ok = False
            self._not_sent(batch, exc)
            return
        size, ttl = self.history_size, self._ttl_seconds
        scripted = []
        try:
            pipe = self._writer.pipeline(transaction=False)
            pipe.connection = connection  # execute() uses it; reset() returns it to the pool
            async with pipe:
                for publication in batch:
                    message, payload = publication.message, publication.payload
                    room = message.room
                    if room is None:
                        pipe.publish(self.global_channel, payload)
                        scripted.append(False)
                    elif message.retained and size:
                        pipe.evalsha(
                            self._publish_sha,
                            3,
                            *self._publish_keys(room),
                            self.room_channel(room),
                            payload,
                            message.id,
                            size,
                            ttl,
                            secrets.token_hex(4),
                            self.history_bytes,
                        )
                        scripted.append(True)
                    else:
                        pipe.publish(self.room_channel(room), payload)
                        scripted.append(False)
                results = await pipe.execute(raise_on_error=False)
            self._commands_ok = True
        except (RedisError, OSError) as exc:
            self._commands_ok = False
            self._doubted(batch, scripted, exc)
            return
        await self._settle(batch, results)

    def _not_sent(self, batch: list[_Publication], exc: BaseException) -> None:
        # Nothing of the batch reached Redis: deliver new ones locally (SPEC §6);
        # ones already in doubt stay in doubt (an earlier attempt may have landed).
        handler = self._handler
        for publication in batch:
            if publication.doubted is not None:
                self._in_doubt.append(publication)
                continue
            if handler is not None:
                handler.handle_publish_error(publication.message, exc)
            publication.settle()

    def _doubted(self, batch: list[_Publication], scripted: list[bool], exc: BaseException) -> None:
        # The request went out and no reply came: Redis may have applied any of it.
        handler = self._handler
        now = time.monotonic()
        for publication, retry in zip(batch, scripted, strict=False):
            if retry:  # idempotent: retried with the same id
                if publication.doubted is None:
                    publication.doubted = now
                self._in_doubt.append(publication)
            else:  # a plain PUBLISH cannot be retried safely: at most once
                if handler is not None:
                    handler.handle_publish_unknown(publication.message, exc)
                publication.settle()
        for publication in batch[len(scripted) :]:  # not even queued: same as not sent
            self._not_sent([publication], exc)
        _log.warning(
            "Redis did not answer a publish; retrying what is retained with the same ids",
            extra={"error": str(exc), "publications": len(batch)},
        )

    async def _settle(self, batch: list[_Publication], results: list[Any]) -> None:
        # Settle each publication: failures are delivered locally by the handler.
        handler = self._handler
        reload = False
        for publication, result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):  # not run: load the script, send again
                reload = True
                self._in_doubt.append(publication)
                continue
            if isinstance(result, BaseException):
                if handler is not None:
                    if publication.doubted is None:
                        handler.handle_publish_error(publication.message, result)
                    else:
                        handler.handle_publish_unknown(publication.message, result)
            elif isinstance(result, list):  # [offset, epoch, already stored, evicted]
                publication.message.offset = int(result[0])
                if len(result) > 3 and result[3] and handler is not None:
                    handler.handle_history_evicted("room", int(result[3]))
            publication.settle()
        if reload:
            with contextlib.suppress(RedisError, OSError):
                await self._writer.script_load(PUBLISH)
            self._retry_at = 0.0

    # -- subscribing ----------------------------------------------------------------------------

    async def subscribe(self, room: str) -> None:
        """Subscribe to ``room``'s channel (resubscribed after every reconnect).

        Returns once Redis confirmed the subscription, so every publication after
        this call is received; or after ``SUBSCRIBE_WAIT`` seconds while Redis is
        unreachable (the subscription is then made when the subscriber reconnects).
        """
        self._rooms.add(room)
        channel = self.room_channel(room).encode()
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(channel, []).append(confirmed)
        pubsub = self._pubsub
        if pubsub is not None and self._subscriber_ok:
            try:
                await pubsub.subscribe(channel)
            except (RedisError, OSError):
                self._reconnect.set()
        try:
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
        """Unsubscribe from ``room``'s channel."""
        self._rooms.discard(room)
        self._feed.forget(room)
        self._settle_repair_waiters()
        pubsub = self._pubsub
        if pubsub is not None and self._subscriber_ok:
            try:
                await pubsub.unsubscribe(self.room_channel(room))
            except (RedisError, OSError):
                self._reconnect.set()

    async def _subscribe_loop(self) -> None:
        attempt = 0
        while True:
            pubsub = Redis.from_url(
                self.url,
                socket_connect_timeout=2.0,
                retry=Retry(NoBackoff(), 0),
            ).pubsub()
            try:
                # What was published while no subscriber listened is filled in from
                # each room's history once its new subscription is confirmed.
                self._feed.resync()
                rooms = set(self._rooms)
                channels = [self.global_channel, self.health_channel]
                channels += [self.room_channel(room) for room in rooms]
                await pubsub.subscribe(*channels)
                # Rooms joined or left while that was in flight:
                while rooms != self._rooms:
                    added, removed = self._rooms - rooms, rooms - self._rooms
                    rooms = set(self._rooms)
                    if added:
                        await pubsub.subscribe(*(self.room_channel(r) for r in added))
                    if removed:
                        await pubsub.unsubscribe(*(self.room_channel(r) for r in removed))
                self._pubsub = pubsub
                self._subscriber_ok = True
                self._last_probe_seen = time.monotonic()
                if attempt:
                    _log.warning("Redis subscriber reconnected", extra={"rooms": len(self._rooms)})
                    if self._handler is not None:
                        self._handler.handle_reconnect()
                attempt = 0
                self._reconnect.clear()
                await self._read(pubsub)
            except (RedisError, OSError) as exc:
                if self._subscriber_ok or attempt == 0:
                    _log.warning("Redis subscriber lost", extra={"error": str(exc)})
            finally:
                if self._subscriber_ok and self._handler is not None:
                    self._handler.handle_subscriber_lost()
                self._subscriber_ok = False
                self._pubsub = None
                for waiter in self._barriers.values():  # they went with the connection
                    if not waiter.done():
                        waiter.set_result(False)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            attempt += 1
            delay = min(5.0, 0.1 * 2 ** min(attempt, 6))
            await asyncio.sleep(random.uniform(delay / 2, delay))  # full jitter, floored

    async def _read(self, pubsub: PubSub) -> None:
        health = self.health_channel.encode()
        global_channel = self.global_channel.encode()
        room_prefix = f"{self.prefix}:room:".encode()
        feed = self._feed
        while not self._reconnect.is_set():
            item = await pubsub.get_message(timeout=0.5)
            if item is None:
                continue
            if item.get("type") != "message":
                if item.get("type") == "subscribe":
                    channel = item["channel"]
                    for waiter in self._confirmations.pop(channel, ()):
                        if not waiter.done():
                            waiter.set_result(None)
                    if channel.startswith(room_prefix):
                        feed.confirmed(channel[len(room_prefix) :].decode())
                        if feed.wanted:
                            self._repair.set()
                continue
            channel = item["channel"]
            data: bytes = item["data"]
            if channel == health:
                self._on_own_channel(data)
                continue
            handler = self._handler
            if handler is None:
                continue
            epoch: str | None = None
            payload: bytes | memoryview = data
            if data[:1] != b"{":  # "<epoch> <payload>" from the publish script
                space = data.find(b" ")
                epoch = data[:space].decode()
                payload = memoryview(data)[space + 1 :]  # framed without a copy first
            try:
                message = Message.from_dict(orjson.loads(payload))
            except (orjson.JSONDecodeError, ProtocolError, UnicodeDecodeError):
                _log.warning("ignoring a malformed publication", extra={"channel": channel})
                continue
            encoded = Encoded(payload, message)
            if channel == global_channel:
                handler.handle_publication(encoded)
                continue
            room = message.room
            if room is None or not channel.startswith(room_prefix):
                continue
            if feed.receive(room, epoch, encoded):
                handler.handle_publication(encoded)
            elif feed.wanted:
                self._repair.set()
            if feed.duplicates:
                handler.handle_duplicates(feed.duplicates)
                feed.duplicates = 0

    def _on_own_channel(self, data: bytes) -> None:
        if data.startswith(b"barrier:"):
            waiter = self._barriers.get(data)
            if waiter is not None and not waiter.done():
                waiter.set_result(True)
            return
        self._last_probe_seen = time.monotonic()

    # -- filling gaps -----------------------------------------------------------------------------

    async def _repair_loop(self) -> None:
        feed = self._feed
        while True:
            await self._repair.wait()
            self._repair.clear()
            while due := feed.due():
                try:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for room, after in due:
                            await self._read_after(
                                keys=self._history_keys(room),
                                args=[after, _REPAIR_PAGE],
                                client=pipe,
                            )
                        replies = await pipe.execute(raise_on_error=False)
                except (RedisError, OSError) as exc:
                    _log.debug("history read for a repair failed", extra={"error": str(exc)})
                    replies = [exc] * len(due)
                # No await from here to the deliveries: the feed decides in order.
                if not self._apply_repairs(due, replies):
                    await asyncio.sleep(_RETRY_PAUSE)  # some failed: they are due again

    def _apply_repairs(self, due: list[tuple[str, int]], replies: list[Any]) -> bool:
        # Returns False if a read failed (or nobody takes deliveries right now).
        feed = self._feed
        handler = self._handler
        ok = True
        for (room, _), reply in zip(due, replies, strict=True):
            if isinstance(reply, BaseException) or handler is None:
                feed.failed(room)
                ok = False
                continue
            epoch_raw, _, entries = reply
            messages = []
            for _, fields in entries:  # [entry id, [b"i", id, b"p", payload]]
                try:
                    messages.append(Encoded.stored(fields[3]))
                except ProtocolError:
                    _log.warning("ignoring a malformed history entry", extra={"room": room})
            epoch = epoch_raw.decode() if epoch_raw else None
            out, repair = feed.repaired(room, epoch, messages, complete=len(entries) < _REPAIR_PAGE)
            for encoded in out:
                handler.handle_publication(encoded)
            if repair.repaired or repair.lost:
                handler.handle_repair(room, repaired=repair.repaired, lost=repair.lost)
        if feed.duplicates and handler is not None:
            handler.handle_duplicates(feed.duplicates)
        feed.duplicates = 0
        self._settle_repair_waiters()
        return ok

    def _settle_repair_waiters(self, *, everything: bool = False) -> None:
        for room in list(self._repair_waiters):
            if everything or not self._feed.repairing(room):
                for waiter in self._repair_waiters.pop(room):
                    if not waiter.done():
                        waiter.set_result(None)

    async def _caught_up(self, room: str, epoch: str, offset: int) -> None:
        # After a barrier: make sure every publication of ``room`` up to ``offset``
        # has been handed over (a repair in progress finished), within a bound.
        if room not in self._rooms or not self._feed.baseline(room, epoch, offset):
            return
        self._repair.set()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._repair_waiters.setdefault(room, []).append(waiter)
        try:
            await asyncio.wait_for(waiter, SUBSCRIBE_WAIT)
        except TimeoutError:
            _log.warning("history of %s is still being repaired; replying anyway", room)

    # -- health and presence ----------------------------------------------------------------------

    async def _health_loop(self) -> None:
        # Prove end-to-end delivery: a probe published on our own channel must come
        # back through the subscriber; if it stops coming back, replace it.
        while True:
            await asyncio.sleep(self.health_interval)
            try:
                await self._client.publish(self.health_channel, b"probe")
                self._commands_ok = True
            except (RedisError, OSError):
                self._commands_ok = False
                continue
            if self._in_doubt:
                self._wake.set()
            silent = time.monotonic() - self._last_probe_seen
            if self._subscriber_ok and silent > 3 * self.health_interval:
                _log.warning(
                    "Redis subscriber is deaf (health probes not coming back); replacing it",
                    extra={"silent_s": round(silent, 1)},
                )
                self._reconnect.set()

    async def _presence_loop(self) -> None:
        period = max(0.2, self._presence.ttl / 3)
        while True:
            await asyncio.sleep(period)
            try:
                gone = await self._presence.heartbeat()
            except (RedisError, OSError) as exc:
                _log.debug("presence heartbeat failed", extra={"error": str(exc)})
                continue
            handler = self._handler
            if handler is not None:
                for room, user_id in gone:
                    handler.handle_presence_expired(room, user_id)

    # -- history --------------------------------------------------------------------------------

    async def history(
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
        """
        barrier: bytes | None = None
        waiter: asyncio.Future[bool] | None = None
        if room in self._rooms and self._subscriber_ok:
            barrier = b"barrier:" + secrets.token_hex(8).encode()
            waiter = self._barriers[barrier] = asyncio.get_running_loop().create_future()
        try:
            try:
                # One script: one snapshot, and the barrier right after it.
                reply = await self._read_page(
                    keys=self._publish_keys(room),
                    args=[
                        since or "",
                        -1 if limit is None else limit,
                        secrets.token_hex(4) if self.history_size else "",
                        self._ttl_seconds if self.history_ttl else 0,
                        self.health_channel if barrier is not None else "",
                        barrier or b"",
                    ],
                )
            except (RedisError, OSError) as exc:
                raise BrokerUnavailable(f"history of {room!r} unavailable: {exc}") from exc
            epoch_raw, offset, found, entries = reply
            epoch = epoch_raw.decode() if epoch_raw else ""
            offset = int(offset)
            if waiter is not None:
                try:
                    ordered = await asyncio.wait_for(waiter, SUBSCRIBE_WAIT)
                except TimeoutError:
                    ordered = False
                if ordered and self.history_size:
                    await self._caught_up(room, epoch, offset)
                elif not ordered:
                    _log.warning("history barrier of %s did not come back; replying anyway", room)
        finally:
            if barrier is not None:
                self._barriers.pop(barrier, None)
        # Entries are [entry id, [b"i", id, b"p", payload]], oldest first.
        messages = [Encoded.stored(fields[3]) for _, fields in entries]
        return HistoryPage(
            room=room,
            epoch=epoch,
            offset=offset,
            messages=messages,
            recovered=since is not None and found == 1,
        )


def _closed_by_peer(connection: Any) -> bool:
    """Whether ``connection``'s socket has something to read while idle: an end of file.

    Looks at the socket itself, not at what the event loop has read from it
    yet: an idle pooled connection whose server went away shows its end of
    file (or a reset) here before anything is written to it. False when it
    cannot tell.
    """
    writer = getattr(connection, "_writer", None)
    sock = writer.get_extra_info("socket") if writer is not None else None
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False
