"""Batches of commands and scripts: one round trip, scripts reloaded where missing (real Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from roomcast.brokers.redis.connect import RedisTarget
from roomcast.brokers.redis.routing import Routing
from tests.redis_support import RedisServer
from tests.redis_tools import command_calls, unique_prefix

INCR_BY = """
-- KEYS: a counter. ARGV: how much. Returns the new value.
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


@pytest.fixture
async def routing(redis_server: RedisServer) -> AsyncIterator[Routing]:
    """The routing of one Redis server of the test's own (its client closed after)."""
    routing = Routing(RedisTarget.parse(redis_server.url).client())
    yield routing
    await routing.close()


def _client(routing: Routing) -> Redis:
    return routing.client_for("any")


async def test_a_batch_with_scripts_is_one_pipeline_without_asking_which_are_loaded(
    routing: Routing,
) -> None:
    client, script, key = _client(routing), routing.script(INCR_BY), unique_prefix()
    await client.script_load(INCR_BY)
    before = await command_calls(client, "script|exists")
    value = 0
    for _ in range(5):
        batch = routing.batch()
        batch.call(key, "SET", f"{key}:x", "1")
        batch.run(script, [key], [2])
        batch.run(script, [key], [3])
        assert (await batch.execute())[1:] == [value + 2, value + 5]
        value += 5
    assert int(await client.get(key)) == value == 25
    assert await command_calls(client, "script|exists") == before  # no round trip to ask


async def test_scripts_missing_from_a_restarted_redis_are_loaded_and_run_once(
    routing: Routing,
) -> None:
    client, script, key = _client(routing), routing.script(INCR_BY), unique_prefix()
    await client.script_flush()  # as after a restart or a failover: the cache is empty
    batch = routing.batch()
    batch.run(script, [key], [1])
    batch.call(key, "SET", f"{key}:plain", "v")
    batch.run(script, [key], [10])
    replies = await batch.execute()
    assert replies[0] == 1 and replies[2] == 11  # each ran once, in order
    assert replies[1] in (True, b"OK")
    assert int(await client.get(key)) == 11


async def test_a_failing_command_raises_after_the_others_ran(routing: Routing) -> None:
    client, key = _client(routing), unique_prefix()
    await client.set(key, "not a number")
    batch = routing.batch()
    batch.call(key, "INCR", key)
    batch.call(f"{key}:other", "SET", f"{key}:other", "1")
    with pytest.raises(ResponseError):
        await batch.execute()
    assert await client.get(f"{key}:other") == b"1"
    batch.call(key, "INCR", key)
    batch.call(f"{key}:other", "INCR", f"{key}:other")
    replies = await batch.execute(raise_on_error=False)
    assert isinstance(replies[0], ResponseError) and replies[1] == 2
