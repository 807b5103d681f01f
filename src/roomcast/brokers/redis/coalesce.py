"""Small writes to Redis sent together: one batch per turn, however many callers.

A burst of connections joining or leaving (a load balancer restarting, a
client fleet reconnecting) makes as many presence writes, each a round trip.
Sent one by one, thousands of them wait for the pool's connections and time
out. :class:`Coalescer` sends the writes queued while no batch is in flight
at once, and those queued meanwhile in the next batch, each a pipeline per
Redis node (:class:`~roomcast.brokers.redis.routing.Batch`): a few round trips
for the whole burst, in the order the writes were made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from roomcast.brokers.redis.routing import Batch, Routing
from roomcast.errors import BrokerUnavailable

__all__ = ["Coalescer"]

_log = logging.getLogger("roomcast.brokers.redis")

Fill = Callable[[Batch], int]
"""Adds a caller's commands to a batch; returns how many it added."""


class Coalescer:
    """Sends the writes of many callers in shared batches (see the module doc).

    Args:
        routing: where the commands go.
        limit: most callers' writes in one batch (the rest go in the next).
    """

    def __init__(self, routing: Routing, *, limit: int = 500) -> None:
        self._routing = routing
        self._limit = limit
        self._queued: list[tuple[Fill, asyncio.Future[list[Any]]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def send(self, fill: Fill) -> list[Any]:
        """Queue ``fill``'s commands; their replies, in order, once their batch ran.

        A reply is the exception of a command that failed (and every reply is,
        when its node could not be reached).

        Raises:
            BrokerUnavailable: the batch could not be sent at all (no node
                known for a key, or the coalescer closed meanwhile).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queued.append((fill, future))
        if self._sender is None:
            # A task of its own, not the caller's: a caller cancelled meanwhile
            # cannot strand the others. One per burst, ended when it is sent.
            self._sender = loop.create_task(self._send_queued(), name="roomcast-redis-coalesce")
        return await future

    async def _send_queued(self) -> None:
        turn: list[tuple[Fill, asyncio.Future[list[Any]]]] = []
        try:
            while self._queued:
                turn, self._queued = self._queued[: self._limit], self._queued[self._limit :]
                batch = self._routing.batch()
                counts = [fill(batch) for fill, _ in turn]
                try:
                    replies = await batch.execute(raise_on_error=False)
                except (BrokerUnavailable, OSError) as exc:
                    _fail(turn, BrokerUnavailable(str(exc)))
                    continue
                start = 0
                for (_, future), count in zip(turn, counts, strict=True):
                    if not future.done():
                        future.set_result(replies[start : start + count])
                    start += count
                turn = []
        except asyncio.CancelledError:  # closing: nobody waits forever
            queued, self._queued = self._queued, []
            _fail(turn + queued, BrokerUnavailable("presence writes stopped"))
            raise
        except Exception:  # a bug: said, and nobody waits forever either
            _log.exception("coalesced Redis writes failed")
            queued, self._queued = self._queued, []
            _fail(turn + queued, BrokerUnavailable("presence writes failed"))
        finally:
            self._sender = None

    async def close(self) -> None:
        """Stop sending; writes still queued fail with BrokerUnavailable. Idempotent."""
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        queued, self._queued = self._queued, []
        _fail(queued, BrokerUnavailable("presence writes stopped"))


def _fail(items: list[tuple[Fill, asyncio.Future[list[Any]]]], exc: BaseException) -> None:
    for _, future in items:
        if not future.done():
            future.set_exception(exc)
