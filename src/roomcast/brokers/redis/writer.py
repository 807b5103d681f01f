"""The Redis broker's writer: publications to Redis, in order, in pipelines, exactly once.

:class:`Writer` owns the queue of publications and the one task that sends them
(the ``redis-writer`` loop): up to ``_BATCH`` publications or ``_BATCH_BYTES``
of payload per pipeline, one round trip for many messages, in the order they
were queued. A retained message goes through the publish script
(:data:`~roomcast.brokers.redis.scripts.PUBLISH`), others are plain
``PUBLISH``\\es.

What happens to a publication that does not get its reply (SPEC §6):

- nothing reached Redis (no connection): the handler delivers it locally at
  once (``handle_publish_error``);
- the request went out and no reply came: it is *in doubt*. A retained one is
  retried with the same id (the script is idempotent) until Redis answers or
  for ``IN_DOUBT_RETRY`` seconds, then given up (``handle_publish_unknown``);
  any other one is given up at once (at most once). Neither is ever delivered
  locally: Redis may have published it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import select
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from roomcast.brokers.base import BrokerHandler
from roomcast.brokers.redis.keys import Keys
from roomcast.brokers.redis.routing import Routing, cluster_error
from roomcast.brokers.redis.scripts import PUBLISH
from roomcast.errors import BrokerUnavailable
from roomcast.protocol import Message, encode

__all__ = ["IN_DOUBT_RETRY", "Publication", "Writer"]

_log = logging.getLogger("roomcast.brokers.redis")

_BATCH = 512
"""Most publications sent in one pipeline."""

_BATCH_BYTES = 1 << 20
"""Most payload bytes sent in one pipeline (a pipeline holds at least one publication)."""

IN_DOUBT_RETRY = 30.0
"""Seconds a retained publication whose outcome is unknown is retried before it is given up."""

_RETRY_PAUSE = 0.2
"""Seconds between retries of publications in doubt."""


class Publication:
    """A message on its way to Redis, and the future its publisher may await."""

    __slots__ = ("doubted", "future", "message", "payload")

    def __init__(self, message: Message, future: asyncio.Future[Message], payload: bytes) -> None:
        self.message = message
        self.future = future
        self.payload = payload
        self.doubted: float | None = None
        """When its outcome first became unknown (monotonic seconds), else None."""

    def settle(self) -> None:
        """Resolve the publisher's future with the message (its offset set if it got one)."""
        if not self.future.done():
            self.future.set_result(self.message)


class Writer:
    """Sends queued publications to Redis; run :meth:`run` as one supervised task.

    Call order: :meth:`publish` from the event loop at any time; :meth:`run`
    as the ``redis-writer`` loop, with :meth:`recover` after a run that raised;
    on close, :meth:`drain`, stop the loop, then :meth:`abandon`.

    Args:
        routing: the connections publications are sent on (one server's, or
            each cluster master's: a batch is then split by the node of each
            room, and each part sent on its own). They must not retry commands
            themselves: the writer knows which publications may have been
            applied, and retries only those, with the same id.
        keys: the broker's keys and channels.
        history_size: messages kept per room (0: nothing goes through the script).
        ttl_seconds: seconds the history of a room lives after its last publication.
        history_bytes: bytes of messages kept per room (0: no bound in bytes).
        handler: returns the broker's handler, or None while it is stopped.
    """

    def __init__(
        self,
        routing: Routing,
        *,
        keys: Keys,
        history_size: int,
        ttl_seconds: int,
        history_bytes: int,
        handler: Callable[[], BrokerHandler | None],
    ) -> None:
        self._routing = routing
        self._publish = "SPUBLISH" if routing.cluster else "PUBLISH"
        self._keys = keys
        self._history_size = history_size
        self._ttl_seconds = ttl_seconds
        self._history_bytes = history_bytes
        self._handler_of = handler
        self.limits: Callable[[str], tuple[int, int]] | None = None
        """``limits(room)``: the room's history size and TTL (s) when namespaces set them."""
        self._publish_sha = hashlib.sha1(PUBLISH.encode()).hexdigest()
        self._queue: deque[Publication] = deque()
        self._in_doubt: list[Publication] = []
        self._retry_at = 0.0
        self._wake = asyncio.Event()
        self._inflight: list[Publication] = []  # the batch being sent
        self.commands_ok = False
        """Whether Redis answered the last command (the writer's or a health probe's).

        While False, publications are not sent but delivered locally at once.
        """

    @property
    def _handler(self) -> BrokerHandler | None:
        return self._handler_of()

    # -- lifecycle ------------------------------------------------------------------------------

    async def load_script(self) -> None:
        """Load the publish script into Redis, every master of a cluster (it is run by its hash)."""
        for client in self._routing.masters():
            await client.script_load(PUBLISH)

    def recover(self) -> None:
        """Put what a failed run had in hand in doubt, before the next run starts."""
        # What the failed run had in hand may or may not have reached Redis.
        batch, self._inflight = self._inflight, []
        self._doubted(
            batch,
            [self._scripted(p.message) for p in batch],
            RuntimeError("the writer failed"),
        )
        self._wake.set()

    def _scripted(self, message: Message) -> bool:
        # Whether ``message`` goes through the publish script (retained in a room
        # that keeps history): only those can be retried safely, by id.
        room = message.room
        if room is None or not message.retained:
            return False
        limits = self.limits
        return bool(self._history_size if limits is None else limits(room)[0])

    def retry_in_doubt(self) -> None:
        """Wake the writer if publications wait in doubt (Redis answers again)."""
        if self._in_doubt:
            self._wake.set()

    async def drain(self, *, within: float) -> None:
        """Wait until nothing is queued, being sent or in doubt, for ``within`` seconds at most."""
        deadline = time.monotonic() + within
        while (  # noqa: ASYNC110
            self._queue or self._inflight or self._in_doubt
        ) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def abandon(self) -> None:
        """Settle every publication left (after the loop stopped): nobody waits forever."""
        for publication in (*self._queue, *self._in_doubt, *self._inflight):
            if not publication.future.done():
                publication.message.degraded = "unknown"  # not known to be stored
            publication.settle()
        self._queue.clear()
        self._in_doubt.clear()
        self._inflight.clear()

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, message: Message) -> asyncio.Future[Message]:
        """Queue ``message``; the future resolves once it is settled (see the module).

        Raises:
            ProtocolError: ``invalid_message`` if it cannot be encoded (nothing
                is queued).
        """
        payload = encode(message)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._queue.append(Publication(message, future, payload))
        self._wake.set()
        return future

    async def run(self) -> None:
        """The ``redis-writer`` loop: send what is queued, retry what is in doubt. Never returns."""
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

    def _take_batch(self, queue: deque[Publication]) -> list[Publication]:
        # Up to _BATCH publications or _BATCH_BYTES of payload (at least one).
        batch: list[Publication] = []
        size = 0
        while queue and len(batch) < _BATCH and size < _BATCH_BYTES:
            publication = queue.popleft()
            size += len(publication.payload)
            batch.append(publication)
        return batch

    def _take_in_doubt(self) -> list[Publication]:
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

    async def _send(self, batch: list[Publication]) -> None:
        if not batch:
            return
        self._inflight = batch
        await self._send_batch(batch)
        self._inflight = []
        if self._in_doubt:
            self._retry_at = time.monotonic() + _RETRY_PAUSE
            self._wake.set()

    async def _send_batch(self, batch: list[Publication]) -> None:
        routing = self._routing
        if not routing.cluster:
            if not self.commands_ok:
                # Known to be unreachable: deliver locally at once instead of waiting
                # for a connect timeout; the health loop notices when Redis is back.
                self._not_sent(batch, BrokerUnavailable("Redis is unreachable"))
                return
            await self._send_to(routing.client_for(""), batch)
            return
        # A cluster: each node's part on its own connection, all at once. A room's
        # publications go to one node, in order; one node down stalls only its part.
        keys = self._keys
        parts: dict[int, tuple[Redis, list[Publication]]] = {}
        try:
            for publication in batch:
                room = publication.message.room
                client = routing.client_for(
                    keys.global_channel if room is None else keys.room_channel(room)
                )
                parts.setdefault(id(client), (client, []))[1].append(publication)
        except BrokerUnavailable as exc:  # no slot map yet
            self._not_sent(batch, exc)
            return
        await asyncio.gather(*(self._send_to(client, part) for client, part in parts.values()))

    async def _send_to(self, client: Redis, batch: list[Publication]) -> None:
        pool = client.connection_pool
        try:
            # Connecting first tells "nothing was sent" apart from "no reply".
            connection = await pool.get_connection()  # type: ignore[no-untyped-call,unused-ignore]
        except (RedisError, OSError) as exc:
            self.commands_ok = False
            self._routing.note(exc)
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
            self.commands_ok = False
            self._routing.note(exc)
            self._not_sent(batch, exc)
            return
        keys = self._keys
        size, ttl = self._history_size, self._ttl_seconds
        limits = self.limits
        scripted = []
        publish = self._publish
        try:
            pipe = client.pipeline(transaction=False)
            pipe.connection = connection  # execute() uses it; reset() returns it to the pool
            async with pipe:
                for publication in batch:
                    message, payload = publication.message, publication.payload
                    room = message.room
                    if room is None:
                        pipe.execute_command(publish, keys.global_channel, payload)
                        scripted.append(False)
                    elif (
                        message.retained
                        and (kept := (size, ttl) if limits is None else limits(room))[0]
                    ):
                        ref = message.ref
                        pipe.evalsha(
                            self._publish_sha,
                            3,
                            *keys.publish_keys(room),
                            keys.room_channel(room),
                            payload,
                            message.id,
                            kept[0],
                            kept[1],
                            secrets.token_hex(4),
                            self._history_bytes,
                            "" if ref is None else f"{message.from_}\0{ref}",
                            publish,
                        )
                        scripted.append(True)
                    else:
                        pipe.execute_command(publish, keys.room_channel(room), payload)
                        scripted.append(False)
                results = await pipe.execute(raise_on_error=False)
            self.commands_ok = True
        except (RedisError, OSError) as exc:
            self.commands_ok = False
            self._routing.note(exc)
            self._doubted(batch, scripted, exc)
            return
        await self._settle(client, batch, results)

    def _not_sent(self, batch: list[Publication], exc: BaseException) -> None:
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

    def _doubted(self, batch: list[Publication], scripted: list[bool], exc: BaseException) -> None:
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

    async def _settle(self, client: Redis, batch: list[Publication], results: list[Any]) -> None:
        # Settle each publication: failures are delivered locally by the handler.
        handler = self._handler
        reload = False
        now = time.monotonic()
        for publication, result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):  # not run: load the script, send again
                reload = True
                self._in_doubt.append(publication)
                continue
            if cluster_error(result):  # not run (the slot moved, a failover): send again
                self._routing.note(result)
                publication.doubted = publication.doubted or now  # retried for a while
                self._in_doubt.append(publication)
                continue
            if isinstance(result, BaseException):
                if handler is not None:
                    if publication.doubted is None:
                        handler.handle_publish_error(publication.message, result)
                    else:
                        handler.handle_publish_unknown(publication.message, result)
            elif isinstance(result, list):  # [offset, epoch, already stored, evicted, id?]
                publication.message.offset = int(result[0])
                if len(result) > 4:  # a client's retry: the first one's id
                    publication.message.id = result[4].decode()
                if len(result) > 3 and result[3] and handler is not None:
                    handler.handle_history_evicted("room", int(result[3]))
            publication.settle()
        if reload:
            with contextlib.suppress(RedisError, OSError):
                await client.script_load(PUBLISH)
            self._retry_at = 0.0


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
