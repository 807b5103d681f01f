"""Webhooks against a real backend process: events, batching, signatures, retries, bounds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from roomcast import Hub, HubEvent
from roomcast.errors import ConfigError
from roomcast.integrations import Webhooks, sign
from tests.integrations.conftest import SECRET, Backend
from tests.server.test_auth_server import welcome
from tests.support import (
    MS,
    ServerProcess,
    dumps,
    recv_until,
    running_server,
    until,
    ws_connect,
)


def hooks_at(backend: Backend, path: str) -> list[dict[str, Any]]:
    entries = backend.log_entries()["hooks"]
    assert isinstance(entries, list)
    return [h for h in entries if h["path"] == path]


def events_at(backend: Backend, path: str, room: str) -> list[tuple[str, str | None]]:
    return [
        (e["name"], e.get("user_id"))
        for h in hooks_at(backend, path)
        for e in h["body"]["events"]
        if e["room"] == room
    ]


def sample(hub: Hub, name: str, **labels: str) -> float:
    return hub.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_room_and_member_events_reach_the_backend_signed(backend: Backend) -> None:
    room = "hooked-room"
    with running_server(
        "--webhook-url", backend.url("hooks"), "--webhook-secret", SECRET
    ) as server:  # fmt: skip
        alice = await ws_connect(f"{server.ws}/{room}")
        await welcome(alice)
        bob = await ws_connect(f"{server.ws}/{room}")
        await welcome(bob)
        await bob.close()
        await alice.send(dumps({"type": "leave", "room": room, "ref": "l1"}))
        await recv_until(alice, lambda m: m["data"].get("event") == "left")
        await until(lambda: len(events_at(backend, "/hooks", room)) >= 6, timeout=3000 * MS)
        await alice.close()
    names = [name for name, _ in events_at(backend, "/hooks", room)]
    assert names == [
        "room_occupied",
        "member_online",
        "member_online",
        "member_offline",
        "member_offline",
        "room_vacated",
    ]
    users = [user for _, user in events_at(backend, "/hooks", room)]
    assert users[0] is None and users[-1] is None
    assert all(u is not None for u in users[1:-1])
    assert all(h["signed"] for h in hooks_at(backend, "/hooks"))


async def test_sigterm_sends_the_events_of_the_shutdown(backend: Backend) -> None:
    room = "shutdown-room"
    server = ServerProcess("--webhook-url", backend.url("hooks"), "--webhook-secret", SECRET)
    try:
        server.wait_ready()
        ws = await ws_connect(f"{server.ws}/{room}")
        await welcome(ws)
        await until(lambda: len(events_at(backend, "/hooks", room)) >= 2, timeout=3000 * MS)
        assert server.stop() == 0  # SIGTERM: the hub closes the connection, then webhooks flush
    finally:
        server.cleanup()
    names = [name for name, _ in events_at(backend, "/hooks", room)]
    assert names == ["room_occupied", "member_online", "member_offline", "room_vacated"]


async def test_a_failing_backend_gets_the_batch_after_retries(backend: Backend) -> None:
    async with Hub() as hub:
        webhooks = Webhooks(hub, backend.url("hooks-flaky"), SECRET, backoff=0.05)
        async with webhooks:
            hub.events.emit(HubEvent.ROOM_OCCUPIED, "flaky-room")
            await until(lambda: hooks_at(backend, "/hooks-flaky"), timeout=5000 * MS)
        assert backend.log_entries()["calls"]["hooks-flaky"] == 3  # type: ignore[index]
        assert events_at(backend, "/hooks-flaky", "flaky-room") == [("room_occupied", None)]
        assert sample(hub, "realtime_webhook_requests_total", result="500") == 2
        assert sample(hub, "realtime_webhook_events_total", outcome="sent") == 1


async def test_a_dead_backend_costs_a_bounded_queue(down_url: str) -> None:
    async with Hub() as hub:
        webhooks = Webhooks(
            hub, down_url, SECRET, max_queue=5, max_attempts=2, backoff=0.01, flush_timeout=0.2
        )
        async with webhooks:
            for n in range(50):
                hub.events.emit(HubEvent.MEMBER_ONLINE, "dead-room", f"user{n}")
            assert webhooks.queued <= 5
            assert sample(hub, "realtime_webhook_events_total", outcome="dropped") >= 45
            await until(
                lambda: sample(hub, "realtime_webhook_events_total", outcome="failed") > 0,
                timeout=3000 * MS,
            )
        assert sample(hub, "realtime_webhook_events_total", outcome="sent") == 0


async def test_close_flushes_what_is_queued_in_batches(backend: Backend) -> None:
    async with Hub() as hub:
        webhooks = Webhooks(hub, backend.url("hooks"), SECRET, batch_size=4, batch_wait=2.0)
        async with webhooks:
            for n in range(10):
                hub.events.emit(HubEvent.MEMBER_ONLINE, "flush-room", f"u{n}")
            started = time.monotonic()
        took = time.monotonic() - started
        # Closing sent everything at once: the 2 s batch wait did not hold the last two back.
        assert took < 1.5, f"close took {took:.1f} s"
        got = events_at(backend, "/hooks", "flush-room")
        assert got == [("member_online", f"u{n}") for n in range(10)]
        sizes = [
            len(h["body"]["events"])
            for h in hooks_at(backend, "/hooks")
            if h["body"]["events"][0]["room"] == "flush-room"
        ]
        assert sizes == [4, 4, 2]
        assert sample(hub, "realtime_webhook_events_total", outcome="sent") == 10


async def test_close_gives_up_at_its_deadline_and_counts_the_rest(backend: Backend) -> None:
    async with Hub() as hub:
        webhooks = Webhooks(
            hub, backend.url("hooks-stall"), SECRET, batch_size=2, batch_wait=0, flush_timeout=0.3
        )
        async with webhooks:
            for n in range(5):
                hub.events.emit(HubEvent.MEMBER_ONLINE, "stall-room", f"u{n}")
            await until(lambda: backend.log_entries()["calls"].get("hooks-stall"))  # type: ignore[attr-defined]
            started = time.monotonic()
        took = time.monotonic() - started
        assert took < 1.5, f"close took {took:.1f} s with a 0.3 s flush deadline"
        # The batch in flight and the three queued behind it: none delivered, all counted.
        assert sample(hub, "realtime_webhook_events_total", outcome="dropped") == 5
        assert sample(hub, "realtime_webhook_events_total", outcome="sent") == 0


def test_the_signature_is_an_hmac_of_timestamp_and_body() -> None:
    body = b'{"events":[]}'
    assert sign("k", "100", body) == sign("k", "100", body)
    assert sign("k", "100", body) != sign("k", "101", body)
    assert sign("k", "100", body) != sign("other", "100", body)
    assert sign("k", "100", body).startswith("sha256=") and len(sign("k", "1", body)) == 71


@pytest.mark.parametrize(
    "make",
    [
        lambda hub: Webhooks(hub, "ftp://x/hooks", SECRET),
        lambda hub: Webhooks(hub, "http://127.0.0.1:1/hooks", ""),
        lambda hub: Webhooks(hub, "http://127.0.0.1:1/hooks", SECRET, max_queue=0),
    ],
)
async def test_bad_webhook_settings_are_refused(make: Callable[[Hub], Webhooks]) -> None:
    async with Hub() as hub:
        with pytest.raises(ConfigError):
            make(hub)
    await asyncio.sleep(0)
