"""Presence under load: ``--no-presence-events`` and ``--presence-interval``.

A room-less ``presence`` change applies to every room the connection joined, and
every first join tells every member: unchecked, a client toggling its status
makes each of its rooms receive one message per toggle, and N members joining
one room deliver N(N+1)/2 presence messages. These tests measure both, over
real servers (memory and Redis brokers) and with in-process hubs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from roomcast.app import Hub
from roomcast.brokers.redis import RedisBroker
from roomcast.errors import ConfigError
from roomcast.settings import Settings, load_settings
from tests.recording import RecordingConnection
from tests.redis_tools import attach, pod_flags, unique_prefix, welcomed
from tests.support import (
    MS,
    ServerProcess,
    api,
    dumps,
    eventually,
    fresh_room,
    recv,
    recv_until,
)

Connect = Callable[..., Awaitable[ClientConnection]]

INTERVAL = 200 * MS
"""--presence-interval of the tests that hold changes."""

QUIET = INTERVAL + 300 * MS
"""Silence long enough to know a held round would have gone out."""

ROOMS = 10
TOGGLES = 500
BATCH = 100
"""Frames sent before waiting for a pong: below the inbox bound (--send-queue),
so that none is dropped as overload and the final status is known."""

STATUSES = ("away", "online")


def toggled(i: int) -> str:
    """The status of the ``i``-th toggle (0-based): away, online, away, ..."""
    return STATUSES[i % 2]


FINAL = toggled(TOGGLES - 1)


# -- in-process hubs, on both brokers ----------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def make_hub(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Awaitable[Hub]]]:
    """Start hubs on the memory broker or on a Redis broker of a prefix of its own."""
    hubs: list[Hub] = []

    async def make(**options: Any) -> Hub:
        options.setdefault("rate", 0)
        if request.param == "redis":
            url = request.getfixturevalue("redis_url")
            options["broker"] = RedisBroker(url, prefix=unique_prefix(), presence_ttl=5)
        hub = Hub(**options)
        await hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.close()


def changes(conn: RecordingConnection, user_id: str) -> list[str]:
    """Statuses announced for ``user_id`` that ``conn`` received, after its online."""
    seen = [status for user, status in conn.presence() if user == user_id]
    return seen[1:] if seen[:1] == ["online"] else seen


async def barrier(conn: RecordingConnection) -> None:
    """Wait until the hub has handled every frame ``conn`` sent so far."""
    pongs = len(conn.of_type("pong"))
    conn.send_json(type="ping")

    async def answered() -> bool:
        return len(conn.of_type("pong")) > pongs

    await eventually(answered)


async def toggle(conn: RecordingConnection, times: int) -> None:
    """Toggle ``conn``'s status ``times`` times, room-less, as fast as the inbox allows."""
    for start in range(0, times, BATCH):
        for i in range(start, min(times, start + BATCH)):
            conn.send_json(type="presence", data={"status": toggled(i)})
        await barrier(conn)


async def until(predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds."""

    async def check() -> bool:
        return predicate()

    await eventually(check)


async def status_of(hub: Hub, room: str, user_id: str) -> str | None:
    return next((m.status.value for m in await hub.presence(room) if m.user_id == user_id), None)


async def in_rooms(
    hub: Hub, user_id: str, rooms: list[str]
) -> tuple[RecordingConnection, list[RecordingConnection]]:
    """Watchers ``w0``, ``w1``... one per room, then ``user_id`` joined to every room."""
    watchers = [attach(hub, room, user_id=f"w{i}") for i, room in enumerate(rooms)]
    await welcomed(*watchers)
    conn = attach(hub, None, user_id=user_id)
    await welcomed(conn)
    for room in rooms:
        conn.send_json(type="join", room=room)
    await barrier(conn)
    await until(lambda: all((user_id, "online") in w.presence() for w in watchers))
    return conn, watchers


async def test_status_flood_is_one_round_per_interval(
    make_hub: Callable[..., Awaitable[Hub]],
) -> None:
    hub = await make_hub(presence_interval=INTERVAL)
    rooms = [fresh_room() for _ in range(ROOMS)]
    toggler, watchers = await in_rooms(hub, "t", rooms)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await toggle(toggler, TOGGLES)
    duration = loop.time() - started

    assert [await status_of(hub, room, "t") for room in rooms] == [FINAL] * ROOMS
    await until(lambda: all(changes(w, "t")[-1:] == [FINAL] for w in watchers))
    await asyncio.sleep(QUIET)
    bound = duration / INTERVAL + 2
    for watcher in watchers:
        seen = changes(watcher, "t")
        assert 1 <= len(seen) <= bound, (len(seen), duration)
        assert seen[-1] == FINAL
    assert len(hub.statuses) == 0  # the last interval ended with nothing to say


async def test_first_change_at_once_then_the_latest_at_the_end(
    make_hub: Callable[..., Awaitable[Hub]],
) -> None:
    hub = await make_hub(presence_interval=INTERVAL)
    room = fresh_room()
    (alice, (bob,)) = await in_rooms(hub, "alice", [room])
    loop = asyncio.get_running_loop()
    started = loop.time()
    alice.send_json(type="presence", data={"status": "away"})

    await until(lambda: changes(bob, "alice") == ["away"])
    assert loop.time() - started < INTERVAL  # not held: the first change goes out at once

    alice.send_json(type="presence", data={"status": "online"})
    alice.send_json(type="presence", data={"status": "away"})
    alice.send_json(type="presence", data={"status": "online"})
    await barrier(alice)
    # The state follows at once; the announcement waits for the interval.
    assert await status_of(hub, room, "alice") == "online"
    assert changes(bob, "alice") == ["away"]
    await until(lambda: changes(bob, "alice") == ["away", "online"])
    assert loop.time() - started >= INTERVAL * 0.9
    await asyncio.sleep(QUIET)
    assert changes(bob, "alice") == ["away", "online"]


async def test_a_change_undone_within_the_interval_announces_nothing(
    make_hub: Callable[..., Awaitable[Hub]],
) -> None:
    hub = await make_hub(presence_interval=INTERVAL)
    room = fresh_room()
    alice, (bob,) = await in_rooms(hub, "alice", [room])
    alice.send_json(type="presence", data={"status": "away"})
    await until(lambda: changes(bob, "alice") == ["away"])
    alice.send_json(type="presence", data={"status": "online"})
    alice.send_json(type="presence", data={"status": "away"})
    await barrier(alice)
    await asyncio.sleep(QUIET)
    assert changes(bob, "alice") == ["away"]
    assert await status_of(hub, room, "alice") == "away"


async def test_an_unchanged_status_announces_nothing(
    make_hub: Callable[..., Awaitable[Hub]],
) -> None:
    hub = await make_hub(presence_interval=0)
    room = fresh_room()
    alice, (bob,) = await in_rooms(hub, "alice", [room])
    for _ in range(5):
        alice.send_json(type="presence", data={"status": "online"})
    await barrier(alice)
    await asyncio.sleep(100 * MS)
    assert changes(bob, "alice") == []
    assert len(hub.statuses) == 0


async def test_interval_zero_announces_every_change(
    make_hub: Callable[..., Awaitable[Hub]],
) -> None:
    hub = await make_hub(presence_interval=0)
    room = fresh_room()
    alice, (bob,) = await in_rooms(hub, "alice", [room])
    await toggle(alice, 6)
    await until(lambda: len(changes(bob, "alice")) == 6)
    assert changes(bob, "alice") == [toggled(i) for i in range(6)]
    assert len(hub.statuses) == 0


async def test_a_room_left_meanwhile_gets_nothing(
    make_hub: Callable[..., Awaitable[Hub]],
) -> None:
    hub = await make_hub(presence_interval=INTERVAL)
    kept, left = fresh_room(), fresh_room()
    alice, (bob, carol) = await in_rooms(hub, "alice", [kept, left])
    alice.send_json(type="presence", data={"status": "away"})
    await until(lambda: changes(carol, "alice") == ["away"])
    alice.send_json(type="presence", data={"status": "online"})
    alice.send_json(type="leave", room=left)
    await barrier(alice)
    await until(lambda: changes(bob, "alice") == ["away", "online"])
    await asyncio.sleep(QUIET)
    assert changes(carol, "alice") == ["away", "offline"]


async def test_the_timer_goes_with_the_connection(
    make_hub: Callable[..., Awaitable[Hub]],
) -> None:
    hub = await make_hub(presence_interval=INTERVAL)
    room = fresh_room()
    alice, (bob,) = await in_rooms(hub, "alice", [room])
    alice.send_json(type="presence", data={"status": "away"})
    alice.send_json(type="presence", data={"status": "online"})
    await barrier(alice)
    assert len(hub.statuses) == 1
    alice.close()
    assert len(hub.statuses) == 0
    await until(lambda: changes(bob, "alice") == ["away", "offline"])
    await asyncio.sleep(QUIET)
    assert changes(bob, "alice") == ["away", "offline"]


async def test_no_presence_events_keeps_the_state(
    make_hub: Callable[..., Awaitable[Hub]],
) -> None:
    hub = await make_hub(presence_events=False)
    room = fresh_room()
    bob = attach(hub, room, user_id="bob")
    alice = attach(hub, room, user_id="alice")
    await welcomed(bob, alice)
    await barrier(alice)

    async def members(expected: dict[str, str]) -> bool:
        return {m.user_id: m.status.value for m in await hub.presence(room)} == expected

    await eventually(lambda: members({"alice": "online", "bob": "online"}))
    await toggle(alice, 3)
    await eventually(lambda: members({"alice": "away", "bob": "online"}))
    assert len(hub.statuses) == 0  # nothing announced, so nothing held
    hub.handle_presence_expired(room, "carol")  # a vanished pod's user: not announced
    alice.close()
    await eventually(lambda: members({"bob": "online"}))
    assert [r["users"] for r in await hub.rooms() if r["room"] == room] == [1]
    await asyncio.sleep(100 * MS)
    assert bob.presence() == [] and alice.presence() == []


# -- real servers --------------------------------------------------------------------------------


async def welcome_of(ws: ClientConnection) -> str:
    first = await recv(ws)
    assert first["data"]["event"] == "welcome", first
    return str(first["data"]["connection_id"])


async def pong(ws: ClientConnection, seen: list[dict[str, Any]]) -> None:
    """Ping and read up to the pong, keeping the presence messages read on the way."""
    await ws.send(dumps({"type": "ping"}))
    while (msg := await recv(ws))["type"] != "pong":
        if msg["type"] == "presence":
            seen.append(msg)


async def presence_until_quiet(ws: ClientConnection, quiet: float) -> list[dict[str, Any]]:
    """Every presence message ``ws`` receives until it has been quiet for ``quiet`` seconds."""
    seen = []
    while True:
        try:
            msg = await recv(ws, quiet)
        except TimeoutError:
            return seen
        if msg["type"] == "presence":
            seen.append(msg)


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_status_flood_over_a_server(
    serve: Callable[..., ServerProcess], client: Connect, redis_url: str, broker: str
) -> None:
    interval = 0.1
    flags = ("--presence-interval", str(interval))
    if broker == "redis":
        server = serve(*pod_flags(redis_url, unique_prefix(), *flags))
    else:
        server = serve("--rate", "0", "--api-insecure", *flags)
    rooms = [fresh_room() for _ in range(ROOMS)]
    watchers = []
    for room in rooms:
        ws = await client(f"{server.ws}/{room}")
        await welcome_of(ws)
        watchers.append(ws)
    toggler = await client(server.ws)
    me = await welcome_of(toggler)
    for room in rooms:
        await toggler.send(dumps({"type": "join", "room": room}))
    for ws in watchers:
        await recv_until(ws, lambda m: m["type"] == "presence" and m["from"] == me)

    loop = asyncio.get_running_loop()
    started = loop.time()
    own: list[dict[str, Any]] = []
    for start in range(0, TOGGLES, BATCH):
        for i in range(start, min(TOGGLES, start + BATCH)):
            await toggler.send(dumps({"type": "presence", "data": {"status": toggled(i)}}))
        await pong(toggler, own)
    duration = loop.time() - started

    bound = duration / interval + 2
    quiet = interval + 500 * MS
    heard = await asyncio.gather(*(presence_until_quiet(ws, quiet) for ws in watchers))
    counts = []
    for received in heard:
        seen = [m for m in received if m["from"] == me]
        counts.append(len(seen))
        assert 1 <= len(seen) <= bound, (len(seen), duration)
        assert seen[-1]["data"]["status"] == FINAL
    for room in rooms:
        members = (await api(server.http, "GET", f"/api/rooms/{room}/presence")).json()["members"]
        assert {m["user_id"]: m["status"] for m in members}[me] == FINAL
    print(f"{broker}: {TOGGLES} toggles in {duration:.2f}s, per room {counts}")


@pytest.mark.parametrize("events", [True, False])
async def test_join_status_leave_of_many_over_a_server(
    serve: Callable[..., ServerProcess], client: Connect, events: bool
) -> None:
    n = 30
    flag = "--presence-events" if events else "--no-presence-events"
    server = serve("--rate", "0", "--api-insecure", flag)
    room = fresh_room()

    async def members() -> dict[str, str]:
        response = await api(server.http, "GET", f"/api/rooms/{room}/presence")
        return {m["user_id"]: m["status"] for m in response.json()["members"]}

    observer = await client(f"{server.ws}/{room}")
    observer_id = await welcome_of(observer)
    heard: list[dict[str, Any]] = []
    # Everyone reads what the joins tell them: the N(N+1)/2 deliveries.
    deliveries = 0
    conns: list[ClientConnection] = []
    ids = []
    for _ in range(n):
        ws = await client(f"{server.ws}/{room}")
        ids.append(await welcome_of(ws))
        conns.append(ws)
    expected = {observer_id: "online", **dict.fromkeys(ids, "online")}
    await eventually(lambda: _equal(members(), expected))
    for ws in [observer, *conns]:
        seen: list[dict[str, Any]] = []
        await pong(ws, seen)
        deliveries += len(seen)
        if ws is observer:
            heard += seen
    onlines = [m["from"] for m in heard if m["data"]["status"] == "online"]
    if events:
        assert onlines == [observer_id, *ids]
        assert deliveries == (n + 1) * (n + 2) // 2
    else:
        assert heard == [] and deliveries == 0

    for ws in conns:
        await ws.send(dumps({"type": "presence", "data": {"status": "away"}}))
    expected = {observer_id: "online", **dict.fromkeys(ids, "away")}
    await eventually(lambda: _equal(members(), expected))

    for ws in conns:
        await ws.send(dumps({"type": "leave", "room": room}))
    await eventually(lambda: _equal(members(), {observer_id: "online"}))

    after = await presence_until_quiet(observer, 500 * MS)
    statuses = [(m["from"], m["data"]["status"]) for m in after]
    if events:
        assert sorted(statuses) == sorted(
            [(i, "away") for i in ids] + [(i, "offline") for i in ids]
        )
    else:
        assert statuses == []
    print(f"events={events}: {n} joins delivered {deliveries} presence messages")


async def _equal(actual: Awaitable[dict[str, str]], expected: dict[str, str]) -> bool:
    return await actual == expected


# -- settings ----------------------------------------------------------------------------------


def test_presence_settings_defaults() -> None:
    settings = Settings()
    assert settings.presence_events is True
    assert settings.presence_interval == 1.0
    hub = Hub.from_settings(settings)
    assert hub.presence_events is True
    assert hub.statuses.interval == 1.0


def test_presence_settings_from_flag_env_and_file(tmp_path: Path) -> None:
    assert load_settings(["--no-presence-events"], {}).presence_events is False
    assert load_settings(["--presence-events"], {"ROOMCAST_PRESENCE_EVENTS": "off"}).presence_events
    assert load_settings([], {"ROOMCAST_PRESENCE_EVENTS": "off"}).presence_events is False
    assert load_settings(["--presence-interval", "0"], {}).presence_interval == 0.0
    assert load_settings([], {"ROOMCAST_PRESENCE_INTERVAL": "2.5"}).presence_interval == 2.5
    path = tmp_path / "roomcast.toml"
    path.write_text("presence_events = false\npresence_interval = 0.25\n", encoding="utf-8")
    settings = load_settings(["--config", str(path)], {})
    assert (settings.presence_events, settings.presence_interval) == (False, 0.25)
    hub = Hub.from_settings(settings)
    assert hub.presence_events is False
    assert hub.statuses.interval == 0.25


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--presence-interval", "-1"], {}, "--presence-interval: must be a number >= 0"),
        (["--presence-interval", "soon"], {}, "--presence-interval: "),
        (["--presence-interval", "inf"], {}, "--presence-interval: "),
        (["--presence-events=yes"], {}, "--presence-events/--no-presence-events: ignored"),
        (
            [],
            {"ROOMCAST_PRESENCE_EVENTS": "maybe"},
            "--presence-events (from ROOMCAST_PRESENCE_EVENTS): must be a boolean",
        ),
        (
            [],
            {"ROOMCAST_PRESENCE_INTERVAL": "-0.5"},
            "--presence-interval (from ROOMCAST_PRESENCE_INTERVAL): ",
        ),
    ],
)
def test_bad_presence_settings_are_named(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(argv, env)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('presence_events = "perhaps"', "--presence-events (from 'presence_events' in "),
        ("presence_interval = -1", "--presence-interval (from 'presence_interval' in "),
        ("presence_interval = true", "--presence-interval (from 'presence_interval' in "),
    ],
)
def test_bad_presence_file_values_are_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "roomcast.toml"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(["--config", str(path)], {})
    assert str(info.value).startswith(message)


def test_bad_presence_settings_built_directly() -> None:
    with pytest.raises(ConfigError, match=r"^--presence-interval: "):
        Settings(presence_interval=-1.0)
    with pytest.raises(ConfigError, match=r"^--presence-events: "):
        Settings(presence_events="no")  # type: ignore[arg-type]
