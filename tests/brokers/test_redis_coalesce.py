"""Presence writes of a burst of connections go in shared batches (real Redis)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from roomcast.brokers.base import PresenceChange
from roomcast.brokers.redis.coalesce import Coalescer
from roomcast.brokers.redis.connect import RedisTarget
from roomcast.brokers.redis.presence import RedisPresence
from roomcast.brokers.redis.routing import Batch, Routing
from roomcast.errors import BrokerUnavailable
from tests.redis_tools import unique_prefix
from tests.support import MS


class _CountingRouting(Routing):
    """The real routing, counting the batches it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches = 0

    def batch(self) -> Batch:
        self.batches += 1
        return super().batch()


async def test_a_burst_of_joins_and_leaves_is_a_few_batches_with_every_answer_right(
    redis_url: str,
) -> None:
    # One pooled connection, which one write at a time would keep busy 2,000 times.
    routing = _CountingRouting(RedisTarget.parse(redis_url).client(pool_size=1))
    presence = RedisPresence(routing, prefix=unique_prefix(), ttl=30.0)
    rooms, users = 100, 10
    try:
        added = await asyncio.gather(
            *(
                presence.add(f"r{r}", user_id=f"u{u}", conn_id=f"c{r}-{u}")
                for r in range(rooms)
                for u in range(users)
            )
        )
        assert routing.batches <= 4  # 1,000 writes: the first alone, then ≤ 500 a batch
        assert Counter(added) == {PresenceChange.ROOM: rooms, PresenceChange.USER: rooms * 9}
        first = [added[r * users] for r in range(rooms)]
        assert first == [PresenceChange.ROOM] * rooms  # in the order they were made
        routing.batches = 0
        removed = await asyncio.gather(
            *(
                presence.remove(f"r{r}", user_id=f"u{u}", conn_id=f"c{r}-{u}")
                for r in range(rooms)
                for u in range(users)
            )
        )
        assert routing.batches <= 4
        last = [removed[r * users + users - 1] for r in range(rooms)]
        assert last == [PresenceChange.ROOM] * rooms  # the last one out vacates the room
        assert Counter(removed) == {PresenceChange.ROOM: rooms, PresenceChange.USER: rooms * 9}
        assert await presence.rooms() == []
    finally:
        await presence.close()
        await routing.close()


async def test_a_cancelled_caller_does_not_hold_up_the_others(redis_url: str) -> None:
    routing = Routing(RedisTarget.parse(redis_url).client())
    presence = RedisPresence(routing, prefix=unique_prefix(), ttl=30.0)
    try:
        doomed = asyncio.create_task(presence.add("r", user_id="a", conn_id="a1"))
        others = [
            asyncio.create_task(presence.add("r", user_id=f"u{i}", conn_id=f"c{i}"))
            for i in range(5)
        ]
        await asyncio.sleep(0)
        doomed.cancel()
        done = await asyncio.wait_for(asyncio.gather(*others), 2000 * MS)
        assert len(done) == 5
        assert {m.user_id for m in await presence.members("r")} >= {f"u{i}" for i in range(5)}
    finally:
        await presence.close()
        await routing.close()


async def test_writes_still_queued_at_close_fail_instead_of_waiting(redis_url: str) -> None:
    routing = Routing(RedisTarget.parse(redis_url).client())
    writes = Coalescer(routing)
    key = unique_prefix()

    def fill(batch: Batch) -> int:
        batch.call(key, "INCR", key)
        return 1

    try:
        pending = [asyncio.create_task(writes.send(fill)) for _ in range(3)]
        await asyncio.sleep(0)
        await writes.close()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*pending, return_exceptions=True), 1000 * MS
        )
        assert all(isinstance(o, BrokerUnavailable) for o in outcomes)
        assert await writes.send(fill) == [1]  # none of those ran; usable again afterwards
    finally:
        await routing.close()


async def test_a_write_that_cannot_be_queued_fails_its_batch_and_not_the_next(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    routing = Routing(RedisTarget.parse(redis_url).client())
    writes = Coalescer(routing)
    key = unique_prefix()

    def broken(batch: Batch) -> int:
        raise ValueError("a bug")

    def fill(batch: Batch) -> int:
        batch.call(key, "INCR", key)
        return 1

    try:
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(writes.send(broken), 1000 * MS)
        assert "coalesced Redis writes failed" in caplog.text
        assert await writes.send(fill) == [1]
    finally:
        await routing.close()
