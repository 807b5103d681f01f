"""No background loop dies silently: each one is killed here and must come back.

The :class:`~roomcast.supervisor.Supervisor` is tested on its own first. Then
every long-running loop of a hub and its brokers (keepalive, history sweeper,
Redis writer, subscriber, repair, health, presence, per-user slots) is made to
raise an unexpected exception once, by wrapping one method it calls; the test
checks the failure was counted (``realtime_task_failures_total{task}``), that the
hub was not ready while the loop was down, and that the loop works again.
"""

# Helpers take their time budget as an argument, in MS units, on purpose.

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from roomcast.app import Hub
from roomcast.brokers.memory import MemoryBroker
from roomcast.brokers.redis import RedisBroker
from roomcast.brokers.redis.users import RedisUserConnections
from roomcast.protocol import MessageType
from roomcast.supervisor import Supervisor
from tests.redis_tools import attach, store_unheard, unique_prefix, welcomed
from tests.support import MS, eventually, fresh_room

WAIT = 5000 * MS


class Injected(RuntimeError):
    """The unexpected exception the tests throw into a loop."""


# -- the supervisor itself ------------------------------------------------------------------


async def test_a_failing_loop_is_restarted_with_backoff_and_reported() -> None:
    reports: list[tuple[str, str]] = []
    runs: list[float] = []
    recovered: list[int] = []
    loop = asyncio.get_running_loop()
    supervisor = Supervisor(
        on_failure=lambda name, exc: reports.append((name, str(exc))),
        first_delay=50 * MS,
        max_delay=200 * MS,
    )
    down_seen: list[frozenset[str]] = []

    async def flaky() -> None:
        runs.append(loop.time())
        if len(runs) <= 3:
            down_seen.append(supervisor.down)
            raise Injected(f"run {len(runs)}")
        await asyncio.sleep(3600)

    supervisor.start("flaky", flaky, recover=lambda: recovered.append(len(runs)))
    await eventually(_true(lambda: len(runs) == 4), WAIT)
    await supervisor.close()
    assert reports == [("flaky", "run 1"), ("flaky", "run 2"), ("flaky", "run 3")]
    assert recovered == [1, 2, 3]
    assert down_seen == [frozenset()] * 3  # up while running
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert gaps[0] >= 45 * MS and gaps[1] >= 95 * MS and gaps[2] >= 195 * MS  # doubling
    assert supervisor.failures == 3
    assert supervisor.down == frozenset()


async def test_a_loop_is_down_while_it_waits_to_restart() -> None:
    supervisor = Supervisor(first_delay=300 * MS)
    calls = 0

    async def once() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Injected("boom")
        await asyncio.sleep(3600)

    supervisor.start("once", once)
    await eventually(_true(lambda: supervisor.down == {"once"}), WAIT)
    await eventually(_true(lambda: calls == 2 and not supervisor.down), WAIT)
    await supervisor.close()


async def test_a_loop_that_returns_is_done_and_close_is_idempotent() -> None:
    supervisor = Supervisor()
    done = asyncio.Event()

    async def finite() -> None:
        done.set()

    supervisor.start("finite", finite)
    await asyncio.wait_for(done.wait(), WAIT)
    await supervisor.close()
    await supervisor.close()
    assert supervisor.failures == 0


# -- every loop of a hub and its brokers ------------------------------------------------------


class WatchedHub(Hub):
    """A hub that records, at each loop failure, whether it still called itself ready."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failed: list[tuple[str, bool]] = []

    def handle_loop_failure(self, name: str, exc: BaseException) -> None:
        assert isinstance(exc, Injected), exc
        self.failed.append((name, self.ready))
        super().handle_loop_failure(name, exc)


def fail_once(obj: object, attr: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make ``obj.attr(...)`` raise :class:`Injected` on its next call, then work again."""
    original = getattr(obj, attr)
    calls: list[int] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise Injected(f"{attr} failed")
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, attr, wrapper)
    return calls


def failures(hub: Hub, task: str) -> float:
    value = hub.metrics.registry.get_sample_value("realtime_task_failures_total", {"task": task})
    return value or 0.0


async def recovered(hub: WatchedHub, task: str) -> None:
    await eventually(_true(lambda: failures(hub, task) == 1), WAIT)
    assert hub.failed == [(task, False)]  # not ready while it was down
    await eventually(_true(lambda: hub.ready), WAIT)


def _true(check: Callable[[], bool]) -> Callable[[], Any]:
    async def condition() -> bool:
        return check()

    return condition


async def test_the_keepalive_loop_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = WatchedHub(ping_interval=0.2, ping_timeout=0.2)
    async with hub:
        fail_once(hub.gate, "prune", monkeypatch)
        await recovered(hub, "keepalive")
        calls = fail_once(hub.gate, "prune", monkeypatch)  # swept again after the restart
        await eventually(_true(lambda: len(calls) >= 2), WAIT)


async def test_the_history_sweeper_comes_back() -> None:
    clock_fails = asyncio.Event()
    now = [0.0]

    def clock() -> float:
        if clock_fails.is_set():
            clock_fails.clear()
            raise Injected("clock failed")
        return now[0]

    broker = MemoryBroker(history_size=10, history_ttl=2.0, clock=clock)
    hub = WatchedHub(broker=broker)
    async with hub:
        room = fresh_room("sweep")
        await hub.publish(hub.messages.make(MessageType.CHAT, room=room, data=1))
        clock_fails.set()  # the sweeper is the next to read the clock
        await recovered(hub, "history-sweeper")
        now[0] = 10.0  # the history expired: the restarted sweeper drops it
        await eventually(_true(lambda: room not in broker._streams), WAIT)


@pytest.fixture
async def redis_pod(redis_url: str) -> AsyncIterator[WatchedHub]:
    hub = WatchedHub(
        broker=RedisBroker(
            redis_url, prefix=unique_prefix(), presence_ttl=1.0, health_interval=0.2
        ),
        rate=0,
    )
    async with hub:
        await eventually(_true(lambda: hub.ready), WAIT)
        yield hub


def broker_of(hub: Hub) -> RedisBroker:
    broker = hub.broker
    assert isinstance(broker, RedisBroker)
    return broker


async def test_the_redis_writer_comes_back_and_loses_nothing(
    redis_pod: WatchedHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, room = redis_pod, fresh_room("writer")
    member = attach(hub, room)
    await welcomed(member)
    fail_once(broker_of(hub)._writer, "_send_batch", monkeypatch)
    stored = await asyncio.wait_for(
        hub.publish(hub.messages.make(MessageType.CHAT, room=room, data=1)), WAIT
    )
    await recovered(hub, "redis-writer")
    assert stored.offset == 1  # the batch in hand when it failed was sent after the restart
    await hub.publish(hub.messages.make(MessageType.CHAT, room=room, data=2))
    await eventually(_true(lambda: member.offsets() == [1, 2]), WAIT)


async def test_the_redis_subscriber_comes_back_and_fills_the_gap(
    redis_pod: WatchedHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, room = redis_pod, fresh_room("subscriber")
    member = attach(hub, room)
    await welcomed(member)
    await hub.publish(hub.messages.make(MessageType.CHAT, room=room, data=1))
    await eventually(_true(lambda: member.offsets() == [1]), WAIT)
    fail_once(broker_of(hub)._subscriber, "_on_own_channel", monkeypatch)  # the next health probe
    await recovered(hub, "redis-subscriber")
    for n in (2, 3):
        await hub.publish(hub.messages.make(MessageType.CHAT, room=room, data=n))
    await eventually(_true(lambda: member.offsets() == [1, 2, 3]), WAIT)


async def test_the_redis_repair_loop_comes_back_and_repairs(
    redis_pod: WatchedHub, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, room = redis_pod, fresh_room("repair")
    broker = broker_of(hub)
    member = attach(hub, room)
    await welcomed(member)
    await hub.publish(hub.messages.make(MessageType.CHAT, room=room, data=1))
    await eventually(_true(lambda: member.offsets() == [1]), WAIT)
    # Offset 2 stored but never heard: offset 3 shows the gap.
    hidden = hub.messages.make(MessageType.CHAT, room=room, data=2)
    await store_unheard(redis_url, broker.prefix, hidden)
    fail_once(broker._repairs, "_apply_repairs", monkeypatch)
    await hub.publish(hub.messages.make(MessageType.CHAT, room=room, data=3))
    await recovered(hub, "redis-repair")
    await eventually(_true(lambda: member.offsets() == [1, 2, 3]), WAIT)


async def test_the_redis_health_loop_comes_back(
    redis_pod: WatchedHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = broker_of(redis_pod)
    fail_once(broker._client, "publish", monkeypatch)  # the health loop's probe
    await recovered(redis_pod, "redis-health")
    hearing = broker._subscriber.hearing
    seen = hearing.last_probe_seen
    await eventually(_true(lambda: hearing.last_probe_seen > seen), WAIT)  # probes again


async def test_the_redis_presence_loop_comes_back(
    redis_pod: WatchedHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    presence = broker_of(redis_pod)._presence
    fail_once(presence, "heartbeat", monkeypatch)
    await recovered(redis_pod, "redis-presence")
    calls = fail_once(presence, "heartbeat", monkeypatch)
    await eventually(_true(lambda: len(calls) >= 2), WAIT)  # beating again


async def test_the_per_user_slot_loop_comes_back(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = RedisUserConnections.from_url(redis_url, prefix=unique_prefix(), ttl=0.6)
    await users.start()
    try:
        calls = fail_once(users, "refresh", monkeypatch)
        await eventually(_true(lambda: users._loops.failures == 1), WAIT)
        await eventually(_true(lambda: len(calls) >= 2), WAIT)  # refreshing again
    finally:
        await users.close()
