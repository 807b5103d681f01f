"""The control API over HTTP, on `roomcast serve` (native front end), in memory and on Redis.

``POST /api/disconnect``, ``POST /api/subscribe``, ``POST /api/unsubscribe``,
``GET /api/users/{user_id}/connections`` and ``GET /api/rooms/{room}`` take the
API key like every ``/api/*`` route (401 without it, 403 when the server has
none), answer bad input with 400 ``{"error": {"code", "message"}}`` and act on
connections of every pod.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from tests.control_support import Connect, alive, close_of
from tests.redis_tools import pod_flags, unique_prefix
from tests.support import (
    MS,
    ServerProcess,
    api,
    assert_silent,
    fresh_room,
    get_metrics,
    recv,
    recv_until,
    running_server,
)

SECRET = "control-test-secret-" + "0123456789abcdef" * 2
KEY = "control-test-api-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
Serve = Callable[..., ServerProcess]


def token(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--api-key", KEY, "--jwt-secret", SECRET, "--rate", "0") as pod:
        yield pod


async def connect(
    client: Connect, pod: ServerProcess, user: str, room: str | None = None
) -> tuple[ClientConnection, dict[str, Any]]:
    url = f"{pod.ws}/{room}" if room else pod.ws
    ws = await client(f"{url}?token={token(user)}")
    welcome = await recv(ws)
    assert welcome["data"]["event"] == "welcome"
    return ws, welcome["data"]


async def call(
    pod: ServerProcess,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await api(
        pod.http, method, path, json=body, headers=AUTH if headers is None else headers
    )


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    code: str = body["error"]["code"]
    return code


ENDPOINTS = [
    ("POST", "/api/disconnect", {"user_id": "nobody"}),
    ("POST", "/api/subscribe", {"user_id": "nobody", "room": "lobby"}),
    ("POST", "/api/unsubscribe", {"user_id": "nobody", "room": "lobby"}),
    ("GET", "/api/users/nobody/connections", None),
    ("GET", "/api/rooms/lobby", None),
]


# -- the API key ------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_every_control_endpoint_takes_the_api_key(
    server: ServerProcess, method: str, path: str, body: Any
) -> None:
    missing = await call(server, method, path, body, headers={})
    assert (missing.status_code, error_of(missing)) == (401, "unauthorized")
    wrong = await call(server, method, path, body, headers={"X-API-Key": KEY + "x"})
    assert (wrong.status_code, error_of(wrong)) == (401, "unauthorized")
    assert (await call(server, method, path, body)).status_code == 200
    assert (await call(server, method, path, body, headers={"X-API-Key": KEY})).status_code == 200


async def test_without_an_api_key_the_control_api_is_refused(serve: Serve) -> None:
    pod = serve("--rate", "0")
    for method, path, body in ENDPOINTS:
        response = await call(pod, method, path, body, headers=AUTH)
        assert (response.status_code, error_of(response)) == (403, "api_disabled")


# -- POST /api/disconnect -----------------------------------------------------------------------


async def test_disconnect_a_user_with_a_code_and_reason(
    server: ServerProcess, client: Connect
) -> None:
    first, _ = await connect(client, server, "alice", fresh_room())
    second, _ = await connect(client, server, "alice")
    bob, _ = await connect(client, server, "bob")
    body = {"user_id": "alice", "code": 4500, "reason": "banned"}
    response = await call(server, "POST", "/api/disconnect", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"disconnected": 2}
    assert await close_of(first) == (4500, "banned")
    assert await close_of(second) == (4500, "banned")
    assert await alive(bob)


async def test_disconnect_a_connection_with_the_default_code(
    server: ServerProcess, client: Connect
) -> None:
    target, welcome = await connect(client, server, "carol")
    other, _ = await connect(client, server, "carol")
    body = {"connection_id": welcome["connection_id"]}
    response = await call(server, "POST", "/api/disconnect", body)
    assert response.json() == {"disconnected": 1}
    assert await close_of(target) == (4100, "disconnected by the server")
    assert await alive(other)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"user_id": "dave", "code": 3999}, 400, "invalid_message"),
        ({"user_id": "dave", "code": 5000}, 400, "invalid_message"),
        ({"user_id": "dave", "code": 1000}, 400, "invalid_message"),
        ({"user_id": "dave", "code": "4100"}, 400, "invalid_message"),
        ({"user_id": "dave", "code": None}, 400, "invalid_message"),
        ({"user_id": "dave", "reason": "x" * 124}, 400, "invalid_message"),
        ({"user_id": "dave", "reason": 5}, 400, "invalid_message"),
        ({"user_id": "dave", "connection_id": "c1-x"}, 400, "invalid_message"),
        ({}, 400, "invalid_message"),
        ({"user_id": 42}, 400, "invalid_message"),
        (["dave"], 400, "invalid_message"),
        (b"{not json", 400, "invalid_json"),
        (b"user_id=dave", 415, "unsupported_media_type"),
    ],
)
async def test_disconnect_refuses_bad_bodies(
    server: ServerProcess, client: Connect, body: Any, status: int, code: str
) -> None:
    ws, _ = await connect(client, server, "dave")
    async with httpx.AsyncClient(base_url=server.http, timeout=3000 * MS) as http:
        if isinstance(body, bytes):
            kind = "application/json" if status == 400 else "application/x-www-form-urlencoded"
            headers = {**AUTH, "Content-Type": kind}
            response = await http.post("/api/disconnect", content=body, headers=headers)
        else:
            response = await http.post("/api/disconnect", json=body, headers=AUTH)
    assert response.status_code == status, response.text
    assert error_of(response) == code
    assert await alive(ws)


# -- POST /api/subscribe, /api/unsubscribe --------------------------------------------------------


async def test_subscribe_then_unsubscribe_a_user(server: ServerProcess, client: Connect) -> None:
    room = fresh_room()
    ws, _ = await connect(client, server, "erin")
    response = await call(server, "POST", "/api/subscribe", {"user_id": "erin", "room": room})
    assert response.json() == {"subscribed": 1}
    joined = await recv_until(ws, lambda m: m["data"].get("event") == "joined")
    assert (joined["data"]["room"], joined["data"]["server"]) == (room, True)
    note = {"room": room, "type": "notification", "data": {"n": 1}}
    assert (await call(server, "POST", "/api/publish", note)).status_code == 200
    assert (await recv_until(ws, lambda m: m["type"] == "notification"))["data"] == {"n": 1}

    body = {"user_id": "erin", "room": room, "reason": "kicked"}
    response = await call(server, "POST", "/api/unsubscribe", body)
    assert response.json() == {"unsubscribed": 1}
    left = await recv_until(ws, lambda m: m["data"].get("event") == "left")
    assert left["data"] == {"event": "left", "room": room, "server": True, "reason": "kicked"}
    assert (await call(server, "POST", "/api/publish", note)).status_code == 200
    await assert_silent(ws, 300 * MS, "notification")
    again = await call(server, "POST", "/api/unsubscribe", body)
    assert again.json()["unsubscribed"] == 0


@pytest.mark.parametrize("path", ["/api/subscribe", "/api/unsubscribe"])
@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"user_id": "erin", "room": "no spaces"}, "invalid_room"),
        ({"user_id": "erin"}, "invalid_room"),
        ({"user_id": "erin", "room": 7}, "invalid_room"),
        ({"room": "lobby"}, "invalid_message"),
        ({"user_id": "", "room": "lobby"}, "invalid_message"),
        ({"user_id": ["erin"], "room": "lobby"}, "invalid_message"),
    ],
)
async def test_subscribe_and_unsubscribe_refuse_bad_bodies(
    server: ServerProcess, path: str, body: dict[str, Any], code: str
) -> None:
    response = await call(server, "POST", path, body)
    assert (response.status_code, error_of(response)) == (400, code)


@pytest.mark.parametrize("reason", ["x" * 124, 12, ["kicked"]])
async def test_unsubscribe_refuses_a_bad_reason(server: ServerProcess, reason: Any) -> None:
    body = {"user_id": "erin", "room": "lobby", "reason": reason}
    response = await call(server, "POST", "/api/unsubscribe", body)
    assert (response.status_code, error_of(response)) == (400, "invalid_message")


# -- GET /api/users/{user_id}/connections, /api/rooms/{room} -------------------------------------


async def test_get_a_users_connections(server: ServerProcess, client: Connect) -> None:
    room = fresh_room()
    _, first = await connect(client, server, "frank", room)
    _, second = await connect(client, server, "frank")
    response = await call(server, "GET", "/api/users/frank/connections")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"user_id", "connections"}
    assert body["user_id"] == "frank"
    listed = body["connections"]
    assert [c["connection_id"] for c in listed] == [first["connection_id"], second["connection_id"]]
    assert [c["rooms"] for c in listed] == [[room], []]
    assert all(c["remote"].startswith("127.0.0.1:") for c in listed)
    nobody = await call(server, "GET", "/api/users/nobody/connections")
    assert nobody.json() == {"user_id": "nobody", "connections": []}


async def test_get_a_room(server: ServerProcess, client: Connect) -> None:
    room = fresh_room()
    _, welcome = await connect(client, server, "gina", room)
    await connect(client, server, "gina", room)
    note = {"room": room, "type": "notification", "data": {}}
    assert (await call(server, "POST", "/api/publish", note)).status_code == 200
    response = await call(server, "GET", f"/api/rooms/{room}")
    assert response.json() == {
        "room": room,
        "epoch": welcome["epoch"],
        "offset": 1,
        "members": [{"user_id": "gina", "status": "online", "connections": 2}],
        "connections": 2,
        "users": 1,
    }
    bad = await call(server, "GET", "/api/rooms/" + quote("no spaces", safe=""))
    assert (bad.status_code, error_of(bad)) == (400, "invalid_room")


# -- across pods ---------------------------------------------------------------------------------


async def test_the_http_control_api_acts_on_every_pod(
    serve: Serve, redis_url: str, client: Connect
) -> None:
    prefix = unique_prefix()
    flags = pod_flags(redis_url, prefix, "--jwt-secret", SECRET)
    a, b = (serve(*flags, ready=False) for _ in range(2))
    a.wait_ready()
    b.wait_ready()
    on_a, welcome_a = await connect(client, a, "hana")
    on_b, welcome_b = await connect(client, b, "hana")
    insecure: dict[str, str] = {}
    listed = await call(b, "GET", "/api/users/hana/connections", headers=insecure)
    assert {c["node"] for c in listed.json()["connections"]} == {
        on["connection_id"].rpartition("-")[2] for on in (welcome_a, welcome_b)
    }
    room = fresh_room()
    subscribed = await call(
        a, "POST", "/api/subscribe", {"user_id": "hana", "room": room}, insecure
    )
    assert subscribed.json() == {"subscribed": 2}
    for ws in (on_a, on_b):
        await recv_until(ws, lambda m: m["data"].get("event") == "joined")
    info = await call(b, "GET", f"/api/rooms/{room}", headers=insecure)
    assert (info.json()["connections"], info.json()["users"]) == (2, 1)
    body = {"user_id": "hana", "code": 4999, "reason": "bye"}
    response = await call(a, "POST", "/api/disconnect", body, insecure)
    assert response.json() == {"disconnected": 2}
    assert await close_of(on_a) == (4999, "bye")
    assert await close_of(on_b) == (4999, "bye")

    # A subscriber of the control channel that never answers (a frozen pod):
    # the answer comes after the timeout (2 s) and says one pod did not answer.
    again, _ = await connect(client, b, "hana")
    redis = Redis.from_url(redis_url)
    frozen = redis.pubsub()
    try:
        await frozen.subscribe(f"{prefix}:control")
        started = time.monotonic()
        response = await call(a, "POST", "/api/disconnect", {"user_id": "hana"}, insecure)
        took = time.monotonic() - started
    finally:
        await frozen.aclose()
        await redis.aclose()
    assert response.json() == {"disconnected": 1, "unanswered": 1}
    assert 1900 * MS < took < 3000 * MS
    assert await close_of(again) == (4100, "disconnected by the server")
    metrics = await get_metrics(a.http)
    assert metrics['realtime_control_unanswered_total{command="disconnect"}'] == 1
