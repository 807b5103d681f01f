"""The Redis broker: many pods, one order per room, shared history and presence.

How a room message travels:

1. The origin pod stamps it and queues it on the broker's single writer task,
   which sends queued publications to Redis in pipelines (one round trip for
   many messages, in order).
2. For a retained message, one Lua script (:data:`~roomcast.brokers.redis_scripts.PUBLISH`)
   assigns the room's next ``offset``, appends the message to the room's history
   stream (bounded by ``history_size``, expiring ``history_ttl`` seconds after the
   last publication, with an ``epoch`` that changes when the history is lost), and
   publishes it on ``{prefix}:room:{room}`` — atomically, so the history's order
   is the delivery order. Other messages are plain ``PUBLISH``\\es
   (``{prefix}:global`` for messages to everyone).
3. Every pod subscribed to the channel, the origin included, delivers the message
   when it comes back. A pod subscribes to a room's channel while it has local
   members, on one subscriber connection.

Failures degrade gracefully: a publish that fails is delivered by the origin pod
to its own members at once (and counted); the subscriber reconnects with jittered
backoff and resubscribes; a subscriber that stays connected but stops receiving
is caught by a health check (a message to the pod's own health channel that must
come back) and replaced; :attr:`RedisBroker.ready` is False meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import time
from collections import deque
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from roomcast.brokers.base import BrokerHandler, HistoryPage, PresenceStore, page_of
from roomcast.brokers.redis_presence import RedisPresence
from roomcast.brokers.redis_scripts import PUBLISH
from roomcast.errors import BrokerUnavailable, ProtocolError
from roomcast.protocol import Encoded, Message, encode

__all__ = ["RedisBroker"]

_log = logging.getLogger("roomcast.brokers.redis")

_BATCH = 512
"""Most publications sent in one pipeline."""

SUBSCRIBE_WAIT = 2.0
"""Seconds :meth:`RedisBroker.subscribe` waits for Redis to confirm a subscription."""


class RedisBroker:
    """A broker shared by many pods through Redis.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL.
        prefix: prefix of every key and channel.
        history_size: messages kept per room (0 disables history).
        history_ttl: seconds after a room's last publication when its history
            expires (0 disables history).
        presence_ttl: seconds after which the connections of a pod that stopped
            refreshing them are forgotten (and their users go offline).
        health_interval: seconds between subscriber health probes; a probe that
            has not come back after three intervals replaces the subscriber.
        node_id: this pod's id (random by default), used for its health channel.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "realtime",
        history_size: int = 100,
        history_ttl: float = 300.0,
        presence_ttl: float = 30.0,
        health_interval: float = 1.0,
        node_id: str | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        # SPEC §1: either option at 0 disables history.
        self.history_size = history_size if history_ttl > 0 else 0
        self.history_ttl = history_ttl
        self.health_interval = health_interval
        self.node_id = node_id or secrets.token_hex(4)
        self._client: Redis = Redis.from_url(
            url,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=10,
        )
        self._presence = RedisPresence(self._client, prefix=prefix, ttl=presence_ttl)
        # Typed as the Broker protocol says, so that ``Hub(broker=RedisBroker(...))``
        # type-checks (a protocol attribute is invariant: RedisPresence would not do).
        self.presence: PresenceStore = self._presence
        self._publish_script = self._client.register_script(PUBLISH)
        self._handler: BrokerHandler | None = None
        self._queue: deque[tuple[Message, asyncio.Future[Message]]] = deque()
        self._sending = 0  # publications of the batch in flight
        self._wake = asyncio.Event()
        self._rooms: set[str] = set()
        self._pubsub: PubSub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriber_ok = False
        self._commands_ok = False
        self._last_probe_seen = 0.0
        self._reconnect = asyncio.Event()
        self._confirmations: dict[bytes, list[asyncio.Future[None]]] = {}

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
        """This pod's own health-probe channel."""
        return f"{self.prefix}:health:{self.node_id}"

    @property
    def _ttl_seconds(self) -> int:
        # Redis expires in whole seconds; never round a positive TTL down to 0.
        return max(1, math.ceil(self.history_ttl))

    def _history_keys(self, room: str) -> list[str]:
        return [f"{self.prefix}:meta:{{{room}}}", f"{self.prefix}:history:{{{room}}}"]

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True while commands succeed and the subscriber is connected and healthy."""
        return self._handler is not None and self._commands_ok and self._subscriber_ok

    async def start(self, handler: BrokerHandler) -> None:
        """Connect, then run the writer, subscriber, health and presence tasks."""
        self._handler = handler
        try:
            await self._client.ping()
            self._commands_ok = True
        except RedisError as exc:
            _log.warning("Redis unreachable at start; will keep trying", extra={"error": str(exc)})
        self._last_probe_seen = time.monotonic()
        for coro, name in (
            (self._write_loop(), "writer"),
            (self._subscribe_loop(), "subscriber"),
            (self._health_loop(), "health"),
            (self._presence_loop(), "presence"),
        ):
            self._tasks.append(asyncio.create_task(coro, name=f"roomcast-redis-{name}"))

    async def close(self) -> None:
        """Stop every task and close the connections. Idempotent."""
        if self._handler is None:
            return
        await self._drain_queue(within=2.0)
        self._handler = None
        for task in self._tasks:
            task.cancel()
        # A cancellation can be lost: redis-py wraps socket writes in
        # asyncio.wait_for, which on Python 3.11 returns the result instead of
        # raising when the cancel lands just as the write completes. The loop then
        # goes on and awaiting it would hang forever, so cancel again until done.
        pending = set(self._tasks)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.1)
            for task in pending:
                task.cancel()
        for task in self._tasks:
            if not task.cancelled():
                task.exception()  # retrieve it: nothing to do with it while closing
        self._tasks.clear()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None
        with contextlib.suppress(Exception):
            await self._client.aclose()

    async def _drain_queue(self, *, within: float) -> None:
        deadline = time.monotonic() + within
        while (self._queue or self._sending) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, message: Message) -> asyncio.Future[Message]:
        """Queue ``message`` for the writer; see :meth:`roomcast.brokers.base.Broker.publish`."""
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._queue.append((message, future))
        self._wake.set()
        return future

    async def _write_loop(self) -> None:
        queue = self._queue
        while True:
            await self._wake.wait()
            self._wake.clear()
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), _BATCH))]
                self._sending = len(batch)
                try:
                    await self._send(batch)
                finally:
                    self._sending = 0

    async def _send(self, batch: list[tuple[Message, asyncio.Future[Message]]]) -> None:
        size, ttl = self.history_size, self._ttl_seconds
        if not self._commands_ok:
            # Known to be unreachable: deliver locally at once instead of waiting
            # for a connect timeout; the health loop notices when Redis is back.
            results: list[Any] = [BrokerUnavailable("Redis is unreachable")] * len(batch)
            self._settle(batch, results)
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for message, _ in batch:
                    payload = encode(message)
                    room = message.room
                    if room is None:
                        pipe.publish(self.global_channel, payload)
                    elif message.retained and size:
                        await self._publish_script(
                            keys=self._history_keys(room),
                            args=[
                                self.room_channel(room),
                                payload,
                                message.id,
                                size,
                                ttl,
                                secrets.token_hex(4),
                            ],
                            client=pipe,
                        )
                    else:
                        pipe.publish(self.room_channel(room), payload)
                results = await pipe.execute(raise_on_error=False)
            self._commands_ok = True
        except (RedisError, OSError) as exc:
            self._commands_ok = False
            results = [exc] * len(batch)
        self._settle(batch, results)

    def _settle(
        self, batch: list[tuple[Message, asyncio.Future[Message]]], results: list[Any]
    ) -> None:
        # Settle each publication: failures are delivered locally by the handler.
        handler = self._handler
        for (message, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                if handler is not None:
                    handler.handle_publish_error(message, result)
            elif isinstance(result, list):  # [offset, epoch] from the script
                message.offset = int(result[0])
            if not future.done():
                future.set_result(message)

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
                self._subscriber_ok = False
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            attempt += 1
            delay = min(5.0, 0.1 * 2 ** min(attempt, 6))
            await asyncio.sleep(random.uniform(delay / 2, delay))  # full jitter, floored

    async def _read(self, pubsub: PubSub) -> None:
        health = self.health_channel.encode()
        global_channel = self.global_channel.encode()
        room_prefix = f"{self.prefix}:room:".encode()
        while not self._reconnect.is_set():
            item = await pubsub.get_message(timeout=0.5)
            if item is None:
                continue
            if item.get("type") != "message":
                if item.get("type") == "subscribe":
                    for waiter in self._confirmations.pop(item["channel"], ()):
                        if not waiter.done():
                            waiter.set_result(None)
                continue
            channel: bytes = item["channel"]
            data: bytes = item["data"]
            if channel == health:
                self._last_probe_seen = time.monotonic()
                continue
            handler = self._handler
            if handler is None:
                continue
            if channel != global_channel and not channel.startswith(room_prefix):
                continue
            try:
                message = Message.from_dict(orjson.loads(data))
            except (orjson.JSONDecodeError, ProtocolError):
                _log.warning("ignoring a malformed publication", extra={"channel": channel})
                continue
            handler.handle_publication(Encoded(data, message))

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
        """Return retained messages of ``room``, oldest first (see the Broker protocol)."""
        meta, stream = self._history_keys(room)
        try:
            async with self._client.pipeline(transaction=True) as pipe:  # one snapshot
                if self.history_size:
                    pipe.hsetnx(meta, "epoch", secrets.token_hex(4))
                    if self.history_ttl:
                        pipe.expire(meta, self._ttl_seconds, nx=True)
                pipe.hmget(meta, "epoch", "offset")
                if since is not None or limit != 0:
                    pipe.xrange(stream)
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"history of {room!r} unavailable: {exc}") from exc
        if since is not None or limit != 0:
            epoch_raw, offset_raw = results[-2]
            entries = results[-1]
        else:
            epoch_raw, offset_raw = results[-1]
            entries = []
        if offset_raw is None:
            # Nothing published in this epoch yet: stream entries can only be left
            # from an earlier history whose meta was lost alone (e.g. evicted).
            entries = []
        retained = [fields for _, fields in entries]
        selected, recovered = page_of(retained, since=since, limit=limit, id_of=_entry_id)
        messages = [Encoded.stored(fields[b"p"]) for fields in selected]
        return HistoryPage(
            room=room,
            epoch=epoch_raw.decode() if epoch_raw else "",
            offset=int(offset_raw or 0),
            messages=messages,
            recovered=recovered,
        )


def _entry_id(fields: dict[bytes, bytes]) -> str:
    return fields[b"i"].decode()
