"""The control channel over Redis: three pods, one command, a reply from each (SPEC §6).

Each pod is a hub on a :class:`~roomcast.brokers.redis.RedisBroker` served by
uvicorn in the test's event loop (``tests/control_support.py``), its clients on
real sockets. A command sent by one pod reaches the connections of every pod
and the counts add up; a subscriber of the control channel that does not
answer (a frozen pod) costs a request its timeout and no more, and is reported;
a stopped pod is not waited for; malformed messages on the channel are ignored;
the channel is resubscribed after the subscriber's connection is lost.
"""

# Helpers take their time budget as an argument, in MS units, on purpose.

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from roomcast.brokers.redis import RedisBroker
from roomcast.brokers.redis.connect import RedisTarget
from roomcast.brokers.redis.control import MAX_COMMAND_BYTES
from roomcast.protocol import Message, MessageType
from tests.control_support import Connect, Pod, alive, close_of, connect, serving
from tests.redis_support import RedisServer
from tests.redis_tools import unique_prefix
from tests.support import MS, assert_silent, eventually, free_port, fresh_room, recv_until, until


@contextlib.asynccontextmanager
async def pods(url: str, n: int = 3, *, prefix: str | None = None) -> AsyncIterator[list[Pod]]:
    """``n`` in-process pods on the Redis at ``url``, sharing one key prefix."""
    prefix = prefix or unique_prefix()
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for _ in range(n):
            broker = RedisBroker(url, prefix=prefix, presence_ttl=3.0)
            started.append(await stack.enter_async_context(serving(broker=broker)))
        yield started


def broker_of(pod: Pod) -> RedisBroker:
    broker = pod.hub.broker
    assert isinstance(broker, RedisBroker)
    return broker


def control_channel(pod: Pod) -> str:
    return f"{broker_of(pod).prefix}:control"


def is_event(event: str, room: str) -> Callable[[dict[str, Any]], bool]:
    def check(msg: dict[str, Any]) -> bool:
        return bool(msg["type"] == "system" and msg["data"].get("event") == event)

    return lambda m: check(m) and m["data"].get("room") == room


def is_note(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == "notification" and m["data"].get("text") == text


async def notify(pod: Pod, room: str, text: str) -> None:
    await pod.hub.publish(Message(type=MessageType.NOTIFICATION, room=room, data={"text": text}))


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


# -- one command, every pod -------------------------------------------------------------------


async def test_a_disconnect_from_one_pod_closes_the_users_connections_on_every_pod(
    redis_url: str, client: Connect
) -> None:
    async with pods(redis_url) as (a, b, c):
        on_b, _ = await connect(client, b, "alice")
        on_c1, _ = await connect(client, c, "alice", fresh_room())
        on_c2, _ = await connect(client, c, "alice")
        bob, _ = await connect(client, a, "bob")

        outcome = await a.hub.control.disconnect(user_id="alice", code=4501, reason="banned")

        assert (outcome.value, outcome.pods, outcome.unanswered) == (3, 3, 0)
        for ws in (on_b, on_c1, on_c2):
            assert await close_of(ws) == (4501, "banned")
        assert await alive(bob)
        # One connection by its id, wherever it is.
        again, welcome = await connect(client, c, "alice")
        assert await b.hub.disconnect(connection_id=welcome["connection_id"]) == 1
        assert await close_of(again) == (4100, "disconnected by the server")
        for pod in (a, b, c):
            metric = "realtime_control_commands_total"
            value = pod.hub.metrics.registry.get_sample_value(metric, {"command": "disconnect"})
            assert value == 2


async def test_subscribe_unsubscribe_and_counts_add_up_across_pods(
    redis_url: str, client: Connect
) -> None:
    room = fresh_room()
    async with pods(redis_url) as (a, b, c):
        on_b, _ = await connect(client, b, "alice")
        on_c, _ = await connect(client, c, "alice")
        already, _ = await connect(client, c, "alice", room)
        dave, _ = await connect(client, a, "dave", room)

        assert await a.hub.subscribe("alice", room) == 2  # not the one already in the room

        for ws in (on_b, on_c):
            joined = await recv_until(ws, is_event("joined", room))
            assert joined["data"]["server"] is True
        await assert_silent(already, 200 * MS, where=is_event("joined", room))
        await notify(a, room, "hello")
        for ws in (on_b, on_c, already, dave):
            await recv_until(ws, is_note("hello"))

        listed = await b.hub.connections("alice")
        assert sorted(conn["node"] for conn in listed) == sorted(
            [b.hub.node_id, c.hub.node_id, c.hub.node_id]
        )
        assert all(conn["rooms"] == [room] for conn in listed)
        info = await c.hub.room_info(room)
        assert (info["connections"], info["users"]) == (4, 2)
        assert [m["user_id"] for m in info["members"]] == ["alice", "dave"]
        assert info["members"][0]["connections"] == 3
        assert info["offset"] == 1

        assert await b.hub.unsubscribe("alice", room, reason="done") == 3
        for ws in (on_b, on_c, already):
            left = await recv_until(ws, is_event("left", room))
            assert (left["data"]["server"], left["data"]["reason"]) == (True, "done")
        await notify(a, room, "bye")
        await recv_until(dave, is_note("bye"))
        for ws in (on_b, on_c, already):
            await assert_silent(ws, 200 * MS, where=is_note("bye"))
        assert (await a.hub.room_info(room))["connections"] == 1


# -- pods that do not answer -------------------------------------------------------------------


async def test_a_pod_that_does_not_answer_costs_the_timeout_and_is_reported(
    redis_url: str, client: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    async with pods(redis_url) as (a, b, c):
        on_b, _ = await connect(client, b, "alice")
        on_c, _ = await connect(client, c, "alice")
        # A subscriber of the control channel that never answers: a frozen pod.
        frozen = Redis.from_url(redis_url).pubsub()
        await frozen.subscribe(control_channel(a))
        try:
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="roomcast.control"):
                outcome = await a.hub.control.disconnect(user_id="alice", timeout=500 * MS)
            took = time.monotonic() - started
        finally:
            await frozen.aclose()

        assert (outcome.value, outcome.pods, outcome.unanswered) == (2, 3, 1)
        assert 450 * MS <= took < 1500 * MS
        assert await close_of(on_b) == (4100, "disconnected by the server")
        assert await close_of(on_c) == (4100, "disconnected by the server")
        metric = "realtime_control_unanswered_total"
        registry = a.hub.metrics.registry
        assert registry.get_sample_value(metric, {"command": "disconnect"}) == 1
        assert "1 of 4 pods did not answer" in caplog.text
        # Every pod answering again: nothing reported.
        outcome = await a.hub.control.connections("alice", timeout=2000 * MS)
        assert (outcome.pods, outcome.unanswered) == (3, 0)
        assert registry.get_sample_value(metric, {"command": "connections"}) is None


async def test_a_stopped_pod_is_not_waited_for(redis_url: str, client: Connect) -> None:
    prefix = unique_prefix()
    async with pods(redis_url, 2, prefix=prefix) as (a, b):
        on_b, _ = await connect(client, b, "alice")
        async with pods(redis_url, 1, prefix=prefix) as (c,):
            await connect(client, c, "alice")
            assert (await a.hub.control.connections("alice")).pods == 3
        # c is gone: its subscriber with it.
        started = time.monotonic()
        outcome = await a.hub.control.disconnect(user_id="alice", timeout=5000 * MS)
        assert time.monotonic() - started < 1000 * MS
        assert (outcome.value, outcome.pods, outcome.unanswered) == (1, 2, 0)
        assert await close_of(on_b) == (4100, "disconnected by the server")


# -- what arrives on the channel ------------------------------------------------------------------


async def test_malformed_control_messages_are_ignored(
    redis_url: str, redis: Redis, client: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    async with pods(redis_url) as (a, b, c):
        ws, _ = await connect(client, b, "alice")
        channel = control_channel(a)
        prefix = channel.removesuffix(":control")
        rid = "0123456789abcdef"
        command = {"op": "disconnect", "user_id": "alice", "code": 4100, "reason": ""}
        malformed: list[bytes] = [
            b"not json",
            b"[1, 2]",
            b'"a string"',
            orjson.dumps({"id": "not-hex", "timeout": 1, "command": command}),
            orjson.dumps({"id": rid, "timeout": 0, "command": command}),
            orjson.dumps({"id": rid, "timeout": 1000, "command": command}),
            orjson.dumps({"id": rid, "timeout": True, "command": command}),
            orjson.dumps({"id": rid, "timeout": 1, "command": [command]}),
            orjson.dumps({"id": rid, "timeout": 1}),
            orjson.dumps(
                {"id": rid, "timeout": 1, "command": {**command, "pad": "x" * MAX_COMMAND_BYTES}}
            ),
        ]
        with caplog.at_level(logging.WARNING, logger="roomcast.brokers.redis"):
            for data in malformed:
                assert await redis.publish(channel, data) == 3
            await until(
                lambda: caplog.text.count("malformed control message") >= 3 * len(malformed)
            )
        await asyncio.sleep(200 * MS)
        # Nothing answered them: no reply list, and alice is still connected.
        assert await redis.exists(f"{prefix}:control:reply:{rid}") == 0
        assert await alive(ws)

        # Well-formed envelopes whose command is not: each pod answers with an
        # error, and does nothing.
        bad_commands = [
            {"op": "reboot"},
            {**command, "code": 1000},
            {**command, "user_id": ""},
            {"op": "subscribe", "user_id": "alice", "room": "no spaces"},
        ]
        for i, bad in enumerate(bad_commands):
            request_id = f"{i:016x}"
            envelope = {"id": request_id, "node": "test", "timeout": 1.0, "command": bad}
            assert await redis.publish(channel, orjson.dumps(envelope)) == 3
            key = f"{prefix}:control:reply:{request_id}"

            async def three_replies(key: str = key) -> bool:
                return int(await redis.llen(key)) == 3

            await eventually(three_replies, 2000 * MS)
            assert 0 < await redis.ttl(key) <= 2  # gone soon if nobody collects it
            replies = [orjson.loads(raw) for raw in await redis.lrange(key, 0, -1)]
            assert sorted(r["node"] for r in replies) == sorted(
                broker_of(p).node_id for p in (a, b, c)
            )
            assert all(set(r["reply"]) == {"error"} for r in replies), replies
        assert await alive(ws)

        # And the pods answer well-formed commands as before.
        outcome = await a.hub.control.connections("alice")
        assert (outcome.pods, outcome.unanswered, len(outcome.value)) == (3, 0, 1)


async def test_the_control_channel_is_resubscribed_after_a_reconnect(
    redis_server: RedisServer, client: Connect
) -> None:
    admin = Redis.from_url(redis_server.url)
    try:
        async with pods(redis_server.url) as (a, b, c):
            await connect(client, b, "alice")
            await connect(client, c, "alice")
            killed = await admin.client_kill_filter(_type="pubsub")
            assert killed == 3

            await until(lambda: not a.hub.broker.ready)
            deadline = time.monotonic() + 10
            while not (a.hub.ready and b.hub.ready and c.hub.ready):
                assert time.monotonic() < deadline, "the subscribers did not come back"
                await asyncio.sleep(10 * MS)
            outcome = await a.hub.control.connections("alice")
            assert (outcome.pods, outcome.unanswered, len(outcome.value)) == (3, 0, 2)
    finally:
        await admin.aclose()


async def test_a_pod_answering_its_own_command_ignores_the_copy_its_subscriber_hears(
    redis_url: str, client: Connect
) -> None:
    # The race of a subscriber that comes back between "is it listening?" and the
    # publish, forced: the pod is told its subscriber is down while it is up, so
    # it answers itself and its subscriber hears the command too.
    async with pods(redis_url, 2) as (a, b):
        on_a, _ = await connect(client, a, "alice")
        on_b, _ = await connect(client, b, "alice")
        control = a.hub.broker._control
        answered: list[dict[str, Any]] = []
        inner = control._handler
        assert inner is not None

        async def counting(command: dict[str, Any]) -> dict[str, Any]:
            answered.append(command)
            return await inner(command)

        control._handler = counting
        control._listening = lambda: False
        outcome = await a.hub.control.disconnect(user_id="alice")
        assert (outcome.value, outcome.pods, outcome.unanswered) == (2, 2, 0)
        assert len(answered) == 1  # answered once, not again for the copy it heard
        assert await close_of(on_a) == (4100, "disconnected by the server")
        assert await close_of(on_b) == (4100, "disconnected by the server")


async def test_a_pod_whose_subscriber_is_down_answers_its_own_command(
    redis_server: RedisServer, client: Connect
) -> None:
    admin = Redis.from_url(redis_server.url)
    try:
        prefix = unique_prefix()
        async with pods(redis_server.url, 1, prefix=prefix) as (a,):
            # The only pub/sub connection so far is a's subscriber.
            (subscriber,) = await admin.client_list(_type="pubsub")
            async with pods(redis_server.url, 1, prefix=prefix) as (b,):
                on_a, _ = await connect(client, a, "alice")
                on_b, _ = await connect(client, b, "alice")
                # Its subscriber stays down (it reconnects to a closed port), so the
                # command is answered by a alone, not raced by a reconnect.
                a.hub.broker._subscriber._target = RedisTarget.parse(
                    f"redis://127.0.0.1:{free_port()}/0"
                )
                await admin.client_kill_filter(_id=subscriber["id"])
                await until(lambda: not a.hub.broker.ready)
                outcome = await a.hub.control.disconnect(user_id="alice")
                assert (outcome.value, outcome.pods, outcome.unanswered) == (2, 2, 0)
                assert await close_of(on_a) == (4100, "disconnected by the server")
                assert await close_of(on_b) == (4100, "disconnected by the server")
    finally:
        await admin.aclose()
