"""End-to-end tests of `roomcast serve` over real sockets (SPEC §1-§3, §8).

WebSocket behaviour is checked against both front ends (``--ws native`` and
``--ws asgi``), one shared server per front end; every test uses fresh rooms.
Tests that need their own flags, or exact metric counts, start their own server.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import ClientConnection

from tests.support import (
    MS,
    RawWebSocket,
    ServerProcess,
    api,
    assert_silent,
    closed_with,
    dumps,
    eventually,
    fresh_room,
    get_metrics,
    recv,
    recv_type,
    recv_until,
    running_server,
    split_frames,
)

Connect = Callable[..., Awaitable[ClientConnection]]
RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
MODES = ["native", "asgi"]


@pytest.fixture(scope="module", params=MODES)
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """One server per front end, shared by the module's tests (API open)."""
    with running_server("--ws", request.param, "--api-insecure") as proc:
        yield proc


async def welcome(ws: ClientConnection) -> dict[str, Any]:
    """The first message, which must be the welcome; return its data."""
    first = await recv(ws)
    assert first["type"] == "system", first
    assert first["data"]["event"] == "welcome", first
    return dict(first["data"])


async def member(
    connect: Connect, server: ServerProcess, room: str
) -> tuple[ClientConnection, str]:
    """Connect to ``/ws/{room}``, read the welcome and own online presence; return (ws, id)."""
    ws = await connect(f"{server.ws}/{room}")
    conn_id = (await welcome(ws))["connection_id"]
    await recv_until(ws, lambda m: m["type"] == "presence" and m["from"] == conn_id)
    return ws, conn_id


async def chats(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    """The next ``n`` chat messages (other types are skipped)."""
    return [await recv_type(ws, "chat") for _ in range(n)]


async def pong_after(ws: ClientConnection) -> None:
    """Assert the connection is still open and served: a ping gets its pong."""
    await ws.send(dumps({"type": "ping", "data": {"probe": 1}}))
    pong = await recv_type(ws, "pong")
    assert pong["data"] == {"probe": 1}


# -- welcome ------------------------------------------------------------------------------


async def test_welcome_is_first_on_room_endpoint(server: ServerProcess, client: Connect) -> None:
    room = fresh_room()
    ws = await client(f"{server.ws}/{room}")
    data = await welcome(ws)
    assert isinstance(data["connection_id"], str) and data["connection_id"]
    assert data["user_id"] == data["connection_id"]  # anonymous: user id = connection id
    assert data["rooms"] == [room]
    assert data["recovered"] is False


async def test_welcome_is_first_on_roomless_endpoint(
    server: ServerProcess, client: Connect
) -> None:
    first = await client(server.ws)
    second = await client(server.ws)
    a, b = await welcome(first), await welcome(second)
    assert a["rooms"] == [] and b["rooms"] == []
    assert a["connection_id"] != b["connection_id"]
    assert a["user_id"] == a["connection_id"]


# -- broadcast scope ------------------------------------------------------------------------


async def test_chat_reaches_every_member_and_nobody_else(
    server: ServerProcess, client: Connect
) -> None:
    room, other = fresh_room(), fresh_room()
    a, a_id = await member(client, server, room)
    b, _ = await member(client, server, room)
    outsider, _ = await member(client, server, other)
    roomless = await client(server.ws)
    await welcome(roomless)

    await a.send(dumps({"type": "chat", "data": {"text": "hello"}}))
    got_a, got_b = await recv_type(a, "chat"), await recv_type(b, "chat")
    assert got_a == got_b
    assert got_a["room"] == room
    assert got_a["from"] == a_id
    assert got_a["data"] == {"text": "hello"}
    await assert_silent(outsider, 300 * MS)
    await assert_silent(roomless, 20 * MS)


async def test_publish_to_room_reaches_that_room_only(
    server: ServerProcess, client: Connect
) -> None:
    room, other = fresh_room(), fresh_room()
    a, _ = await member(client, server, room)
    b, _ = await member(client, server, room)
    outsider, _ = await member(client, server, other)
    roomless = await client(server.ws)
    await welcome(roomless)

    response = await api(
        server.http,
        "POST",
        "/api/publish",
        json={"room": room, "type": "notification", "data": {"n": 1}},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert uuid.UUID(body["id"]).version == 7
    assert RFC3339_Z.match(body["timestamp"])
    assert isinstance(body["offset"], int) and body["offset"] >= 1
    for ws in (a, b):
        got = await recv_type(ws, "notification")
        assert got["id"] == body["id"]
        assert got["room"] == room
        assert got["data"] == {"n": 1}
        assert got["timestamp"] == body["timestamp"]
        assert got["offset"] == body["offset"]
    await assert_silent(outsider, 300 * MS)
    await assert_silent(roomless, 20 * MS)


async def test_publish_without_room_reaches_every_connection(
    server: ServerProcess, client: Connect
) -> None:
    room, other = fresh_room(), fresh_room()
    a, _ = await member(client, server, room)
    b, _ = await member(client, server, other)
    roomless = await client(server.ws)
    await welcome(roomless)

    response = await api(
        server.http, "POST", "/api/publish", json={"type": "notification", "data": {"all": True}}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert uuid.UUID(body["id"]).version == 7
    assert RFC3339_Z.match(body["timestamp"])
    assert body.get("offset") is None  # global messages are not retained
    for ws in (a, b, roomless):
        got = await recv_type(ws, "notification")
        assert got["id"] == body["id"]
        assert got["data"] == {"all": True}
        assert "room" not in got


# -- server-assigned fields -------------------------------------------------------------------


async def test_server_assigns_id_timestamp_and_from(server: ServerProcess, client: Connect) -> None:
    room = fresh_room()
    a, a_id = await member(client, server, room)
    forged = {
        "type": "chat",
        "id": "00000000-0000-0000-0000-000000000000",
        "from": "mallory",
        "timestamp": "1999-01-01T00:00:00Z",
        "data": {"text": "trust me"},
    }
    before = time.time()
    await a.send(dumps(forged))
    await a.send(dumps({"type": "chat", "data": {"text": "second"}}))
    first, second = await chats(a, 2)
    after = time.time()

    assert first["from"] == a_id
    assert first["id"] != forged["id"]
    parsed = uuid.UUID(first["id"])
    assert parsed.version == 7
    assert first["timestamp"] != forged["timestamp"]
    assert RFC3339_Z.match(first["timestamp"]), first["timestamp"]
    stamp = datetime.fromisoformat(first["timestamp"]).timestamp()
    assert before - 1 <= stamp <= after + 1  # UTC, not local time
    # Time-ordered ids: the later message sorts after the earlier one.
    assert uuid.UUID(second["id"]).version == 7
    assert second["id"] > first["id"]
    assert second["offset"] == first["offset"] + 1


# -- application ping ---------------------------------------------------------------------------


async def test_ping_is_answered_to_the_sender_only(server: ServerProcess, client: Connect) -> None:
    room = fresh_room()
    a, _ = await member(client, server, room)
    b, _ = await member(client, server, room)
    await a.send(dumps({"type": "ping", "data": {"seq": 7}}))
    pong = await recv_type(a, "pong")
    assert pong["data"] == {"seq": 7}
    await assert_silent(b, 300 * MS)


# -- join / leave -----------------------------------------------------------------------------


async def test_join_leave_multiplexing_on_one_connection(
    server: ServerProcess, client: Connect
) -> None:
    r1, r2 = fresh_room("one"), fresh_room("two")
    x, x_id = await member(client, server, r1)
    y, _ = await member(client, server, r2)
    mux = await client(server.ws)
    mux_id = (await welcome(mux))["connection_id"]

    await mux.send(dumps({"type": "join", "room": r1, "ref": "j1"}))
    joined = await recv_type(mux, "system")
    assert joined["data"]["event"] == "joined"
    assert joined["data"]["room"] == r1
    assert joined["data"]["ref"] == "j1"
    await mux.send(dumps({"type": "join", "room": r2, "ref": "j2"}))
    joined = await recv_until(mux, lambda m: m["type"] == "system")
    assert (joined["data"]["event"], joined["data"]["room"], joined["data"]["ref"]) == (
        "joined",
        r2,
        "j2",
    )
    # The room's members see the new member come online.
    online = await recv_type(x, "presence")
    assert online["data"] == {"status": "online", "user_id": mux_id}

    # Messages from both rooms arrive, each labelled with its room.
    await x.send(dumps({"type": "chat", "data": {"from": "x"}}))
    await y.send(dumps({"type": "chat", "data": {"from": "y"}}))
    got = await chats(mux, 2)
    assert sorted((m["room"], m["data"]["from"]) for m in got) == [(r1, "x"), (r2, "y")]
    await recv_type(x, "chat")  # their own
    await recv_type(y, "chat")

    # With two rooms, a chat must say which.
    await mux.send(dumps({"type": "chat", "data": {}, "ref": "c0"}))
    error = await recv_type(mux, "error")
    assert error["data"]["code"] == "invalid_message"
    assert error["data"]["ref"] == "c0"
    await mux.send(dumps({"type": "chat", "room": r1, "data": {"from": "mux"}}))
    got_x = await recv_type(x, "chat")
    assert (got_x["from"], got_x["room"], got_x["data"]) == (mux_id, r1, {"from": "mux"})
    await assert_silent(y, 200 * MS, type_="chat")

    # Leaving: a "left" reply, then nothing more from that room.
    await mux.send(dumps({"type": "leave", "room": r1, "ref": "l1"}))
    left = await recv_until(mux, lambda m: m["type"] == "system")
    assert (left["data"]["event"], left["data"]["room"], left["data"]["ref"]) == ("left", r1, "l1")
    offline = await recv_until(x, lambda m: m["type"] == "presence")
    assert offline["data"] == {"status": "offline", "user_id": mux_id}
    await x.send(dumps({"type": "chat", "data": {"after": "leave"}}))
    await y.send(dumps({"type": "chat", "data": {"still": "here"}}))
    got = await recv_type(mux, "chat")
    assert (got["room"], got["data"]) == (r2, {"still": "here"})
    await assert_silent(mux, 300 * MS, type_="chat")
    assert (await recv_type(x, "chat"))["from"] == x_id

    # Talking to, or leaving, a room one is not in: not_member.
    await mux.send(dumps({"type": "chat", "room": r1, "data": {}, "ref": "c1"}))
    error = await recv_type(mux, "error")
    assert (error["data"]["code"], error["data"]["ref"]) == ("not_member", "c1")
    await mux.send(dumps({"type": "leave", "room": r1, "ref": "l2"}))
    error = await recv_type(mux, "error")
    assert (error["data"]["code"], error["data"]["ref"]) == ("not_member", "l2")
    await pong_after(mux)


# -- presence -----------------------------------------------------------------------------------


async def presence_of(server: ServerProcess, room: str) -> dict[str, dict[str, Any]]:
    response = await api(server.http, "GET", f"/api/rooms/{room}/presence")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["room"] == room
    return {m["user_id"]: m for m in body["members"]}


async def test_presence_online_away_offline(server: ServerProcess, client: Connect) -> None:
    room = fresh_room()
    a, a_id = await member(client, server, room)
    b = await client(f"{server.ws}/{room}")
    b_id = (await welcome(b))["connection_id"]

    online = await recv_type(a, "presence")
    assert online["room"] == room
    assert online["from"] == b_id
    assert online["data"] == {"status": "online", "user_id": b_id}

    members = await presence_of(server, room)
    assert set(members) == {a_id, b_id}
    assert members[a_id]["status"] == "online" and members[a_id]["connections"] == 1
    assert members[b_id]["status"] == "online" and members[b_id]["connections"] == 1

    await b.send(dumps({"type": "presence", "data": {"status": "away"}}))
    for ws in (a, b):
        away = await recv_until(
            ws, lambda m: m["type"] == "presence" and m["data"]["status"] == "away"
        )
        assert (away["room"], away["from"], away["data"]["user_id"]) == (room, b_id, b_id)
    members = await presence_of(server, room)
    assert members[b_id]["status"] == "away"
    assert members[a_id]["status"] == "online"

    # A roomless connection joining and leaving shows up online, then offline.
    c = await client(server.ws)
    c_id = (await welcome(c))["connection_id"]
    await c.send(dumps({"type": "join", "room": room}))
    online = await recv_type(a, "presence")
    assert online["data"] == {"status": "online", "user_id": c_id}
    assert (await presence_of(server, room))[c_id]["connections"] == 1
    await c.send(dumps({"type": "leave", "room": room}))
    offline = await recv_type(a, "presence")
    assert offline["data"] == {"status": "offline", "user_id": c_id}
    assert c_id not in await presence_of(server, room)

    # Disconnecting goes offline too.
    await b.close()
    offline = await recv_type(a, "presence")
    assert (offline["from"], offline["data"]) == (b_id, {"status": "offline", "user_id": b_id})
    assert set(await presence_of(server, room)) == {a_id}


# -- error replies ------------------------------------------------------------------------------

ERROR_CASES = {
    # case: (code, frame, ref echoed)
    "invalid_json": ("invalid_json", "{not json", None),
    "not_an_object": ("invalid_message", "[1, 2]", None),
    "bad_presence": (
        "invalid_message",
        dumps({"type": "presence", "data": {"status": "asleep"}, "ref": "m1"}),
        "m1",
    ),
    "unknown_type": ("invalid_message", dumps({"type": "bogus", "ref": "m2"}), "m2"),
    "forbidden_type": (
        "forbidden_type",
        dumps({"type": "notification", "data": {}, "ref": "f1"}),
        "f1",
    ),
    "not_member": (
        "not_member",
        dumps({"type": "chat", "room": "elsewhere", "data": {}, "ref": "n1"}),
        "n1",
    ),
    "invalid_room": (
        "invalid_room",
        dumps({"type": "join", "room": "bad room!", "ref": "r1"}),
        "r1",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
async def test_error_reply_echoes_ref_and_keeps_the_connection(
    server: ServerProcess, client: Connect, case: str
) -> None:
    code, frame, ref = ERROR_CASES[case]
    room = fresh_room()
    ws, _ = await member(client, server, room)
    other, _ = await member(client, server, room)
    await ws.send(frame)
    error = await recv_type(ws, "error")
    assert error["data"]["code"] == code, error
    assert isinstance(error["data"]["error"], str) and error["data"]["error"]
    if ref is not None:
        assert error["data"]["ref"] == ref
    else:
        assert "ref" not in error["data"]
    assert uuid.UUID(error["id"]).version == 7
    # Nothing was broadcast, and the connection still works.
    await assert_silent(other, 200 * MS)
    await pong_after(ws)


@pytest.mark.parametrize("mode", MODES)
async def test_forbidden_room_error_echoes_ref(
    serve: Callable[..., ServerProcess], client: Connect, mode: str
) -> None:
    pytest.importorskip("roomcast.core.auth", reason="forbidden_room needs JWT auth (SPEC §5)")
    secret = "test-secret-" + "k" * 32
    claims = {"sub": "alice", "rooms": ["team-*"], "exp": int(time.time()) + 60}
    token = jwt.encode(claims, secret, algorithm="HS256")
    server = serve("--ws", mode, "--jwt-secret", secret)
    ws = await client(f"{server.ws}/team-a?token={token}")
    assert (await welcome(ws))["user_id"] == "alice"
    await ws.send(dumps({"type": "join", "room": "ops", "ref": "x1"}))
    error = await recv_type(ws, "error")
    assert (error["data"]["code"], error["data"]["ref"]) == ("forbidden_room", "x1")
    await pong_after(ws)


# -- protocol-level keepalive --------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_protocol_ping_keeps_live_clients_and_drops_dead_ones(
    serve: Callable[..., ServerProcess],
    client: Connect,
    raw_client: Callable[..., Awaitable[RawWebSocket]],
    mode: str,
) -> None:
    interval = timeout = 0.3
    keepalive = ("--ping-interval", str(interval), "--ping-timeout", str(timeout))
    server = serve("--ws", mode, "--api-insecure", *keepalive)
    room = fresh_room()
    live = await client(f"{server.ws}/{room}")  # the websockets client answers pings itself
    await welcome(live)
    start = time.monotonic()
    dead = await raw_client(server.port, f"/ws/{room}")  # never answers anything
    assert dead.status == 101

    async def counted() -> int:
        response = await api(server.http, "GET", "/api/rooms")
        rooms = {r["room"]: r for r in response.json()["rooms"]}
        return int(rooms[room]["connections"]) if room in rooms else 0

    assert await counted() == 2
    data = await dead.read_until_eof(interval + timeout + 2000 * MS)
    elapsed = time.monotonic() - start
    assert elapsed >= interval, "closed before a ping could even time out"
    assert elapsed <= interval + timeout + 1000 * MS
    opcodes = [opcode for opcode, _ in split_frames(data)]
    assert 0x9 in opcodes, "the server never pinged"

    async def dropped() -> bool:
        return await counted() == 1

    await eventually(dropped)

    await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - start)))
    await pong_after(live)
    assert await counted() == 1


# -- HTTP API keys ---------------------------------------------------------------------------------


async def test_api_key_is_required_on_api_routes_only(serve: Callable[..., ServerProcess]) -> None:
    server = serve("--api-key", "s3cret")
    http = server.http

    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": "wrong"},
        {"Authorization": "Basic s3cret"},
    ):
        response = await api(http, "GET", "/api/rooms", headers=headers)
        assert response.status_code == 401, (headers, response.text)
        error = response.json()["error"]
        assert error["code"] and error["message"]
    response = await api(http, "POST", "/api/publish", json={"type": "notification"})
    assert response.status_code == 401

    for headers in ({"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}):
        response = await api(http, "GET", "/api/rooms", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"rooms": []}
        response = await api(
            http, "POST", "/api/publish", json={"type": "notification"}, headers=headers
        )
        assert response.status_code == 200, response.text
        assert set(response.json()) >= {"id", "timestamp"}

    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await api(http, "GET", path)).status_code == 200, path


async def test_api_without_key_or_insecure_is_refused_with_a_reason(
    serve: Callable[..., ServerProcess],
) -> None:
    server = serve()
    response = await api(server.http, "GET", "/api/rooms")
    assert response.status_code == 403
    message = response.json()["error"]["message"]
    assert "--api-key" in message and "--api-insecure" in message
    response = await api(server.http, "GET", "/api/rooms", headers={"X-API-Key": "anything"})
    assert response.status_code == 403
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await api(server.http, "GET", path)).status_code == 200, path


# -- metrics -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_metrics_follow_traffic(
    serve: Callable[..., ServerProcess], client: Connect, mode: str
) -> None:
    server = serve("--ws", mode, "--api-insecure")
    room = fresh_room()
    base = await get_metrics(server.http)
    assert base["realtime_connections_total"] == 0
    assert base["realtime_rooms_total"] == 0

    a, _ = await member(client, server, room)
    b, _ = await member(client, server, room)
    c, _ = await member(client, server, room)
    await recv_type(a, "presence")  # c online (a already saw b)
    await recv_type(a, "presence")
    await recv_type(b, "presence")
    roomless = await client(server.ws)
    await welcome(roomless)
    metrics = await get_metrics(server.http)
    assert metrics["realtime_connections_total"] == 4
    assert metrics["realtime_rooms_total"] == 1

    # Two chats from a to a room of three: 2 received, 2 x 3 sent.
    before = metrics
    await a.send(dumps({"type": "chat", "data": {"n": 1}}))
    await a.send(dumps({"type": "chat", "data": {"n": 2}}))
    for ws in (a, b, c):
        await chats(ws, 2)
    after = await get_metrics(server.http)
    received = "realtime_messages_received_total"
    sent = "realtime_messages_sent_total"
    assert after[received] - before[received] == 2
    assert after[sent] - before[sent] == 6

    # One global publish: four recipients, nothing received from a client.
    response = await api(server.http, "POST", "/api/publish", json={"type": "notification"})
    assert response.status_code == 200
    for ws in (a, b, c, roomless):
        await recv_type(ws, "notification")
    later = await get_metrics(server.http)
    assert later[sent] - after[sent] == 4
    assert later[received] == after[received]

    # A second room appears and disappears with its only member.
    other = fresh_room()
    await roomless.send(dumps({"type": "join", "room": other}))
    await recv_type(roomless, "system")
    assert (await get_metrics(server.http))["realtime_rooms_total"] == 2
    await roomless.send(dumps({"type": "leave", "room": other}))
    await recv_until(roomless, lambda m: m.get("data", {}).get("event") == "left")
    assert (await get_metrics(server.http))["realtime_rooms_total"] == 1

    # Disconnects bring the gauges down.
    await roomless.close()
    await c.close()

    async def settled() -> bool:
        m = await get_metrics(server.http)
        return m["realtime_connections_total"] == 2 and m["realtime_rooms_total"] == 1

    await eventually(settled)
    await a.close()
    await b.close()

    async def empty() -> bool:
        m = await get_metrics(server.http)
        return m["realtime_connections_total"] == 0 and m["realtime_rooms_total"] == 0

    await eventually(empty)


# -- shutdown -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_sigterm_closes_every_client_with_1012(
    serve: Callable[..., ServerProcess], client: Connect, mode: str
) -> None:
    shutdown_timeout = 3.0
    server = serve("--ws", mode, "--shutdown-timeout", str(shutdown_timeout))
    room = fresh_room()
    clients = [await client(f"{server.ws}/{room}") for _ in range(3)]
    clients.append(await client(server.ws))
    for ws in clients:
        await welcome(ws)

    start = time.monotonic()
    server.signal(signal.SIGTERM)
    codes = await asyncio.gather(*(closed_with(ws, shutdown_timeout + 2) for ws in clients))
    assert codes == [1012] * len(clients)
    await asyncio.to_thread(server.proc.wait, shutdown_timeout + 2)
    assert time.monotonic() - start < shutdown_timeout + 2


@pytest.mark.parametrize(
    "sig",
    [
        pytest.param(signal.SIGTERM, id="SIGTERM"),
        pytest.param(signal.SIGINT, id="SIGINT"),
    ],
)
async def test_signal_exits_0(
    serve: Callable[..., ServerProcess], client: Connect, sig: signal.Signals
) -> None:
    server = serve("--shutdown-timeout", "2")
    ws = await client(f"{server.ws}/{fresh_room()}")
    await welcome(ws)
    server.signal(sig)
    assert await closed_with(ws, 4.0) == 1012
    returncode = await asyncio.to_thread(server.proc.wait, 4.0)
    assert returncode == 0, server.output()


# -- settings --------------------------------------------------------------------------------------


def test_bad_setting_exits_2_with_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--port", "nope"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("roomcast: error:")
    assert "port" in lines[0]
