"""The broker's command pools are bounded and wait when busy (against a real Redis).

redis-py's default pool raises ``MaxConnectionsError`` the moment its 100
connections are in use: a pod admitting thousands of connections at once (each
writing its presence) failed commands that only had to wait their turn.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from roomcast.app import Hub
from roomcast.brokers.redis import RedisBroker
from roomcast.brokers.redis.connect import POOL_SIZE, RedisTarget
from roomcast.errors import ConfigError
from tests.redis_tools import unique_prefix
from tests.support import MS


async def test_a_busy_pool_makes_commands_wait_their_turn(redis_url: str) -> None:
    client = RedisTarget.parse(redis_url).client(pool_size=5, pool_timeout=5.0)
    key = unique_prefix()
    try:
        started = time.monotonic()
        # Each BLPOP holds its connection for 0.1 s: 40 of them, 5 at a time, need 0.8 s.
        results = await asyncio.gather(
            *(client.blpop([f"{key}:{i}"], timeout=0.1) for i in range(40))
        )
        elapsed = time.monotonic() - started
    finally:
        await client.aclose()
    assert results == [None] * 40
    assert elapsed >= 700 * MS  # never more than 5 at once


async def test_a_command_waits_no_longer_than_the_pool_timeout(redis_url: str) -> None:
    client = RedisTarget.parse(redis_url).client(pool_size=2, pool_timeout=0.2)
    key = unique_prefix()
    try:
        results = await asyncio.gather(
            *(client.blpop([f"{key}:{i}"], timeout=1) for i in range(4)),
            return_exceptions=True,
        )
    finally:
        await client.aclose()
    assert results.count(None) == 2
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 2
    assert all(isinstance(r, RedisConnectionError) for r in failed)


async def test_the_broker_takes_more_concurrent_commands_than_its_pool_holds(
    redis_url: str,
) -> None:
    broker = RedisBroker(redis_url, prefix=unique_prefix())
    hub = Hub(broker=broker)
    await hub.start()
    try:
        answers = await asyncio.gather(
            *(broker.presence.members(f"room-{i}") for i in range(3 * POOL_SIZE))
        )
    finally:
        await hub.close()
    assert answers == [[]] * (3 * POOL_SIZE)


@pytest.mark.parametrize("size", [0, -1])
def test_a_pool_size_below_one_is_refused(redis_url: str, size: int) -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        RedisTarget.parse(redis_url).client(pool_size=size)
