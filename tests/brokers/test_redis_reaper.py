"""Presence reaping: one pod at a time, handed over when it closes or vanishes (real Redis).

Every pod refreshes its own entries, but only the pod holding the reaper key
reaps every room, so the cluster pays one reap per room per period, not one per
room per pod (at 6 pods and 10,000 rooms that was most of the presence load).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from roomcast.brokers.redis.connect import RedisTarget
from roomcast.brokers.redis.presence import RedisPresence
from tests.redis_support import RedisServer
from tests.redis_tools import command_calls, unique_prefix
from tests.support import MS


@contextlib.asynccontextmanager
async def pods(url: str, count: int, *, ttl: float) -> AsyncIterator[list[RedisPresence]]:
    """``count`` pods' presence on one prefix, each with its own client; heartbeats by hand."""
    prefix = unique_prefix()
    clients = [RedisTarget.parse(url).client() for _ in range(count)]
    try:
        yield [
            RedisPresence(client, prefix=prefix, ttl=ttl, node_id=f"pod{i}")
            for i, client in enumerate(clients)
        ]
    finally:
        for client in clients:
            await client.aclose()


async def test_one_pod_reaps_per_period_however_many_pods_there_are(
    redis_server: RedisServer,
) -> None:
    async with pods(redis_server.url, 3, ttl=30.0) as (a, b, c):
        for i in range(20):
            await a.add(f"room-{i}", user_id=f"u{i}", conn_id=f"a{i}")
        redis = RedisTarget.parse(redis_server.url).client()
        try:
            before = await command_calls(redis, "smembers")  # reapers read the rooms' names
            for _ in range(4):
                for pod in (b, a, c):  # b is first: it takes the turn and keeps it
                    assert await pod.heartbeat() == []
            reaps = await command_calls(redis, "smembers") - before
            assert reaps == 4  # one reaper per round, not 3
            assert await redis.get(f"{a._prefix}:presence:reaper") == b"pod1"
        finally:
            await redis.aclose()


async def test_a_closing_reaper_hands_its_turn_over_at_once(redis_url: str) -> None:
    async with pods(redis_url, 3, ttl=1.0) as (gone, a, b):
        room = unique_prefix()
        assert await gone.heartbeat() == []  # it holds the turn now
        await gone.add(room, user_id="dan", conn_id="g1")
        await gone.close()  # as the broker does on close; its entry stays, as after a kill
        await asyncio.sleep(1100 * MS)  # the entry expires (ttl 1 s)
        reports = await a.heartbeat() + await b.heartbeat()
        assert reports == [(room, "dan", True)]  # a took the turn and reaped, b did not


async def test_a_reaper_that_vanished_is_replaced_after_two_periods(redis_url: str) -> None:
    async with pods(redis_url, 3, ttl=1.0) as (gone, a, b):
        room = unique_prefix()
        await gone.add(room, user_id="dan", conn_id="g1")
        assert await gone.heartbeat() == []  # it holds the turn, then stops: killed
        started = time.monotonic()
        reports: list[tuple[str, str, bool]] = []
        while not reports and time.monotonic() - started < 3.0:
            await asyncio.sleep(a.period)
            reports = await a.heartbeat() + await b.heartbeat()
        elapsed = time.monotonic() - started
        assert reports == [(room, "dan", True)]  # reported once
        # The entry's ttl (1 s), at most two periods for the turn to lapse, one to notice.
        assert elapsed <= 1.0 + 3 * a.period + 0.5
        for _ in range(3):  # and never again
            await asyncio.sleep(a.period)
            assert await a.heartbeat() + await b.heartbeat() == []


async def test_the_turn_outlives_a_late_heartbeat(redis_url: str) -> None:
    async with pods(redis_url, 2, ttl=3.0) as (holder, other):  # period 1 s, turn held 2 s
        key = f"{holder._prefix}:presence:reaper"
        assert await holder.heartbeat() == []
        await asyncio.sleep(1200 * MS)  # the holder's next heartbeat is late, not missing
        assert await other.heartbeat() == []
        redis = RedisTarget.parse(redis_url).client()
        try:
            assert await redis.get(key) == b"pod0"
            await holder.heartbeat()  # renewed
            assert 1500 < await redis.pttl(key) <= 2000
        finally:
            await redis.aclose()
