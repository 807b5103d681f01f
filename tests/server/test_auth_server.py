"""Authentication, room permissions and abuse limits of `roomcast serve` (SPEC §4, §5).

Over real sockets, against both front ends (``--ws native`` and ``--ws asgi``):
every refusal before the upgrade with its exact status, tokens in the query and
in the header, ``from`` taken from ``sub``, room permissions on connect, join and
publish (``*`` stopping at separators, ``**`` not), token refresh and expiry
(4001, on time), a foreign ``aud`` without ``--jwt-audience``, origins,
connections per user (per pod and across pods through Redis), connection
floods, and that no secret ever reaches the server's output, however the query
spells it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from roomcast import AuthError, ConnectRequest, HandlerConfig, Hub, Identity
from roomcast.frontends.native import protocol_class
from tests.redis_tools import pod_flags, unique_prefix
from tests.support import (
    MS,
    RawWebSocket,
    ServerProcess,
    api,
    closed_with,
    dumps,
    eventually,
    free_port,
    fresh_room,
    mask_frame,
    recv,
    recv_type,
    recv_until,
    running_server,
    upgrade_request,
    ws_connect,
)

Connect = Callable[..., Awaitable[ClientConnection]]
MODES = ["native", "asgi"]

SECRET = "live-test-secret-" + "a1b2c3d4e5f6a7b8" * 2
AUDIENCE = "roomcast-tests"
ISSUER = "https://auth.example.com"
API_KEY = "api-key-" + "9f8e7d6c5b4a" * 2
ORIGINS = "https://app.example.com,https://*.example.org"
MAX_ROOMS = 3


def token(sub: str = "alice", *, ttl: float = 60, secret: str = SECRET, **claims: Any) -> str:
    """An HS256 token for the test servers (right audience and issuer unless overridden)."""
    payload: dict[str, Any] = {"sub": sub, "aud": AUDIENCE, "iss": ISSUER}
    payload["exp"] = int(time.time() + ttl)
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, "HS256")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A token PyJWT would refuse to build: unsigned, or HMAC-signed with ``key``."""
    signing_input = f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(claims))}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return f"{signing_input}.{b64url(signature)}"


async def status_of(url: str, **kwargs: Any) -> tuple[int, bytes]:
    """Try to connect; the HTTP status and body of a refusal, or (101, b"") when accepted."""
    try:
        ws = await ws_connect(url, **kwargs)
    except InvalidStatus as exc:
        return exc.response.status_code, bytes(exc.response.body or b"")
    await ws.close()
    return 101, b""


async def welcome(ws: ClientConnection) -> dict[str, Any]:
    first = await recv(ws)
    assert first["type"] == "system" and first["data"]["event"] == "welcome", first
    return dict(first["data"])


async def pong_after(ws: ClientConnection) -> None:
    """The connection is open and served."""
    await ws.send(dumps({"type": "ping", "data": {"probe": 1}}))
    assert (await recv_type(ws, "pong"))["data"] == {"probe": 1}


@pytest.fixture(scope="module", params=MODES)
def authed(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A server that requires tokens, with audience, issuer, origins and a room limit."""
    with running_server(
        "--ws", request.param,
        "--jwt-secret", SECRET,
        "--jwt-audience", AUDIENCE,
        "--jwt-issuer", ISSUER,
        "--auth-required",
        "--allowed-origins", ORIGINS,
        "--max-rooms-per-connection", str(MAX_ROOMS),
        "--api-key", API_KEY,
        "--rate", "0",
    ) as proc:  # fmt: skip
        yield proc


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_public_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, path: Path) -> bytes:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.write_bytes(pem)
    return pem


# -- refusals before the upgrade ------------------------------------------------------------------


def unsigned(**claims: Any) -> str:
    return handmade({"alg": "none"}, {"aud": AUDIENCE, "iss": ISSUER, **claims}, None)


# Built when the test runs (a token built at collection time could expire before).
REFUSALS: list[Any] = [
    pytest.param(lambda: "", 401, id="missing-token"),
    pytest.param(lambda: "?token=", 401, id="empty-token"),
    pytest.param(lambda: "?token=not-a-jwt", 401, id="garbage"),
    pytest.param(lambda: f"?token={token(secret='x' * 40)}", 401, id="bad-signature"),
    pytest.param(lambda: f"?token={token(ttl=-30)}", 401, id="expired"),
    pytest.param(lambda: f"?token={token(nbf=int(time.time()) + 3600)}", 401, id="not-yet-valid"),
    pytest.param(lambda: f"?token={token(aud='someone-else')}", 401, id="wrong-audience"),
    pytest.param(lambda: f"?token={token(aud=None)}", 401, id="missing-audience"),
    pytest.param(lambda: f"?token={token(iss='https://evil.example.com')}", 401, id="wrong-issuer"),
    pytest.param(lambda: f"?token={unsigned(sub='admin')}", 401, id="alg-none"),
    pytest.param(lambda: f"?token={token(rooms=['team-*'])}", 403, id="forbidden-room"),
]


@pytest.mark.parametrize(("query", "status"), REFUSALS)
async def test_refusals_before_the_upgrade(
    authed: ServerProcess, query: Callable[[], str], status: int
) -> None:
    built = query()
    got, body = await status_of(f"{authed.ws}/general{built}")
    assert got == status, body
    signature = built.rpartition(".")[2]
    assert len(signature) < 8 or signature.encode() not in body  # never echoed


async def test_bad_origin_is_403_and_good_ones_connect(authed: ServerProcess) -> None:
    url = f"{authed.ws}/general?token={token()}"
    for origin in ("https://evil.example.com", "https://app.example.com.evil.net", "null"):
        assert (await status_of(url, origin=origin))[0] == 403, origin
    for origin in ("https://app.example.com", "https://chat.example.org", None):
        assert (await status_of(url, origin=origin))[0] == 101, origin


async def test_token_in_query_or_in_header(authed: ServerProcess, client: Connect) -> None:
    room = fresh_room()
    by_query = await client(f"{authed.ws}/{room}?token={token('alice')}")
    assert (await welcome(by_query))["user_id"] == "alice"
    by_header = await client(
        f"{authed.ws}/{room}", additional_headers={"Authorization": f"Bearer {token('bob')}"}
    )
    assert (await welcome(by_header))["user_id"] == "bob"


async def test_from_is_the_sub_whatever_the_client_says(
    authed: ServerProcess, client: Connect
) -> None:
    room = fresh_room()
    alice = await client(f"{authed.ws}/{room}?token={token('alice')}")
    await welcome(alice)
    await alice.send(
        dumps({"type": "chat", "from": "mallory", "id": "forged", "data": {"text": "hi"}})
    )
    chat = await recv_type(alice, "chat")
    assert chat["from"] == "alice"
    assert chat["id"] != "forged"


async def test_rooms_claim_on_join_and_publish(authed: ServerProcess, client: Connect) -> None:
    ws = await client(f"{authed.ws}/team-a?token={token(rooms=['team-*', 'lobby'])}")
    assert (await welcome(ws))["rooms"] == ["team-a"]
    await ws.send(dumps({"type": "join", "room": "ops", "ref": "j1"}))
    error = await recv_type(ws, "error")
    assert (error["data"]["code"], error["data"]["ref"]) == ("forbidden_room", "j1")
    await ws.send(dumps({"type": "chat", "room": "ops", "data": {}, "ref": "p1"}))
    error = await recv_type(ws, "error")
    assert (error["data"]["code"], error["data"]["ref"]) == ("forbidden_room", "p1")
    await ws.send(dumps({"type": "join", "room": "team-b", "ref": "j2"}))
    joined = await recv_until(ws, lambda m: m.get("data", {}).get("event") == "joined")
    assert joined["data"]["room"] == "team-b"
    await pong_after(ws)


async def test_a_star_stops_at_separators_and_a_double_star_does_not(
    authed: ServerProcess, client: Connect
) -> None:
    one_level = token(rooms=["team-red-*"])
    chat = await client(f"{authed.ws}/team-red-chat?token={one_level}")
    assert (await welcome(chat))["rooms"] == ["team-red-chat"]
    status, body = await status_of(f"{authed.ws}/team-red-ops-secret?token={one_level}")
    assert status == 403, body
    await chat.send(dumps({"type": "join", "room": "team-red-ops-secret", "ref": "j1"}))
    error = await recv_type(chat, "error")
    assert (error["data"]["code"], error["data"]["ref"]) == ("forbidden_room", "j1")
    await chat.send(dumps({"type": "chat", "room": "team-red-a:admin", "data": {}, "ref": "p1"}))
    error = await recv_type(chat, "error")
    assert (error["data"]["code"], error["data"]["ref"]) == ("forbidden_room", "p1")
    await pong_after(chat)

    every_level = token(rooms=["team-red-**"])
    deep = await client(f"{authed.ws}/team-red-ops-secret?token={every_level}")
    assert (await welcome(deep))["rooms"] == ["team-red-ops-secret"]
    await deep.send(dumps({"type": "join", "room": "team-red-a.b:c", "ref": "j2"}))
    joined = await recv_until(deep, lambda m: m.get("data", {}).get("event") == "joined")
    assert joined["data"]["room"] == "team-red-a.b:c"
    assert (await status_of(f"{authed.ws}/team-blue-chat?token={every_level}"))[0] == 403


async def test_a_malformed_room_pattern_is_401(authed: ServerProcess) -> None:
    status, body = await status_of(f"{authed.ws}/team-a?token={token(rooms=['team-***'])}")
    assert status == 401
    assert b"rooms claim" in body


async def test_rooms_per_connection_limit(authed: ServerProcess, client: Connect) -> None:
    ws = await client(f"{authed.ws}?token={token()}")
    await welcome(ws)
    for i in range(MAX_ROOMS):
        await ws.send(dumps({"type": "join", "room": fresh_room(), "ref": f"j{i}"}))
        await recv_until(ws, lambda m: m.get("data", {}).get("event") == "joined")
    await ws.send(dumps({"type": "join", "room": fresh_room(), "ref": "over"}))
    error = await recv_type(ws, "error")
    assert error["data"]["code"] == "forbidden_room"
    assert error["data"]["ref"] == "over"
    assert f"at most {MAX_ROOMS} rooms" in error["data"]["error"]
    await pong_after(ws)


async def test_info_claim_is_attached_to_presence(authed: ServerProcess, client: Connect) -> None:
    room = fresh_room()
    ws = await client(f"{authed.ws}/{room}?token={token('carol', info={'name': 'Carol'})}")
    await welcome(ws)
    online = await recv_type(ws, "presence")
    assert online["from"] == "carol"
    response = await api(
        authed.http,
        "GET",
        f"/api/rooms/{room}/presence",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    members = response.json()["members"]
    assert [(m["user_id"], m.get("info")) for m in members] == [("carol", {"name": "Carol"})]


# -- refresh and expiry ---------------------------------------------------------------------------


async def test_refresh_extends_the_connection_past_the_first_exp(
    authed: ServerProcess, client: Connect
) -> None:
    first_exp = int(time.time()) + 2
    ws = await client(f"{authed.ws}/{fresh_room()}?token={token(exp=first_exp)}")
    await welcome(ws)
    await ws.send(dumps({"type": "auth", "data": {"token": token(ttl=60)}, "ref": "r1"}))
    refreshed = await recv_until(ws, lambda m: m.get("data", {}).get("event") == "refreshed")
    assert refreshed["data"]["ref"] == "r1"
    assert refreshed["data"]["expires_at"] > first_exp + 50

    # Another user's token, or a bad one, is refused; the connection stays.
    await ws.send(dumps({"type": "auth", "data": {"token": token("mallory")}, "ref": "r2"}))
    error = await recv_type(ws, "error")
    assert (error["data"]["code"], error["data"]["ref"]) == ("invalid_message", "r2")
    await ws.send(dumps({"type": "auth", "data": {"token": token(ttl=-10)}, "ref": "r3"}))
    error = await recv_type(ws, "error")
    assert error["data"]["error"] == "token refused: token expired"

    await asyncio.sleep(max(0.0, first_exp - time.time()) + 1.3)
    await pong_after(ws)  # still open past the first token's exp


async def test_expiry_closes_with_4001_on_time(authed: ServerProcess, client: Connect) -> None:
    exp = int(time.time()) + 2
    ws = await client(f"{authed.ws}/{fresh_room()}?token={token(exp=exp)}")
    await welcome(ws)
    code = await closed_with(ws, 5000 * MS)
    closed_at = time.time()
    assert code == 4001
    assert ws.close_reason == "token expired"
    assert exp - 0.05 <= closed_at <= exp + 1.5, closed_at - exp


@pytest.mark.parametrize("mode", MODES)
async def test_a_foreign_audience_is_refused_without_jwt_audience(
    serve: Callable[..., ServerProcess], client: Connect, mode: str
) -> None:
    server = serve("--ws", mode, "--jwt-secret", SECRET)
    foreign = token(aud="billing", iss=None)
    status, body = await status_of(f"{server.ws}/general?token={foreign}")
    assert status == 401
    assert b"token audience not accepted" in body
    ws = await client(f"{server.ws}/general?token={token(aud=None, iss=None)}")
    assert (await welcome(ws))["user_id"] == "alice"
    await ws.send(dumps({"type": "auth", "data": {"token": foreign}, "ref": "r1"}))
    error = await recv_type(ws, "error")
    assert (error["data"]["code"], error["data"]["ref"]) == ("invalid_message", "r1")
    assert error["data"]["error"] == "token refused: token audience not accepted"
    await pong_after(ws)


# -- public keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_rs256_and_algorithm_confusion(
    serve: Callable[..., ServerProcess], rsa_key: rsa.RSAPrivateKey, tmp_path: Path, mode: str
) -> None:
    pem = write_public_key(rsa_key, tmp_path / "public.pem")
    server = serve("--ws", mode, "--jwt-public-key", str(tmp_path / "public.pem"))
    claims = {"sub": "alice", "exp": int(time.time()) + 60}
    good = jwt.encode(claims, rsa_key, algorithm="RS256")
    assert await status_of(f"{server.ws}/general?token={good}") == (101, b"")
    forged = handmade({"alg": "HS256", "typ": "JWT"}, {**claims, "sub": "admin"}, pem)
    assert (await status_of(f"{server.ws}/general?token={forged}"))[0] == 401
    unsigned = handmade({"alg": "none"}, claims, None)
    assert (await status_of(f"{server.ws}/general?token={unsigned}"))[0] == 401
    hs = jwt.encode(claims, SECRET, algorithm="HS256")
    assert (await status_of(f"{server.ws}/general?token={hs}"))[0] == 401
    assert (await status_of(f"{server.ws}/general"))[0] == 101  # auth not required here


@pytest.mark.parametrize("mode", MODES)
async def test_es256(serve: Callable[..., ServerProcess], tmp_path: Path, mode: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    write_public_key(key, tmp_path / "ec.pem")
    server = serve("--ws", mode, "--jwt-public-key", str(tmp_path / "ec.pem"), "--auth-required")
    good = jwt.encode({"sub": "erin", "exp": int(time.time()) + 60}, key, algorithm="ES256")
    async with await ws_connect(f"{server.ws}?token={good}") as ws:
        assert (await welcome(ws))["user_id"] == "erin"
    assert (await status_of(server.ws))[0] == 401


# -- an async authenticator, in process ------------------------------------------------------------

SESSION = "session-" + "7a6b5c4d3e2f" * 2


async def session_lookup(request: ConnectRequest) -> Identity | None:
    """An authenticator that needs I/O (a session store), so the upgrade waits for it."""
    await asyncio.sleep(20 * MS)
    session = request.query.get("session")
    if session is None:
        return None
    if session != SESSION:
        raise AuthError(401, "unknown session")
    return Identity(user_id="dora", rooms=["r*"], info={"via": "session"})


@contextlib.asynccontextmanager
async def serving(mode: str, config: HandlerConfig) -> AsyncIterator[int]:
    """Serve ``/ws`` with uvicorn in this event loop, native or ASGI; yield the port."""
    hub = Hub()
    port = free_port()
    if mode == "native":
        app = Starlette(lifespan=hub.lifespan)
        ws: Any = protocol_class(hub, config)
    else:
        app = Starlette(routes=hub.websocket_routes(config), lifespan=hub.lifespan)
        ws = "websockets-sansio"
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", ws=ws)
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(5000 * MS):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn exited before it started")
                await asyncio.sleep(10 * MS)
        yield port
    finally:
        server.should_exit = True
        async with asyncio.timeout(10000 * MS):
            await task


@pytest.mark.parametrize("mode", MODES)
async def test_async_authenticator(mode: str) -> None:
    config = HandlerConfig(authenticator=session_lookup, auth_required=True)
    async with serving(mode, config) as port:
        url = f"ws://127.0.0.1:{port}/ws"
        assert (await status_of(f"{url}/r1"))[0] == 401
        assert (await status_of(f"{url}/r1?session=stolen"))[0] == 401
        assert (await status_of(f"{url}/x1?session={SESSION}"))[0] == 403
        async with await ws_connect(f"{url}/r1?session={SESSION}") as ws:
            assert (await welcome(ws))["user_id"] == "dora"
            await ws.send(dumps({"type": "join", "room": "x2", "ref": "j"}))
            assert (await recv_type(ws, "error"))["data"]["code"] == "forbidden_room"


async def test_native_admission_holds_frames_sent_behind_the_request() -> None:
    """While an async admission runs, frames already received wait for it.

    uvicorn passes the native protocol only the request itself, so this drives
    the protocol directly, on one end of a socket pair.
    """
    config = HandlerConfig(authenticator=session_lookup, auth_required=True)
    loop = asyncio.get_running_loop()
    async with Hub() as hub:
        server_end, client_end = socket.socketpair()
        client_end.setblocking(False)
        transport, _ = await loop.connect_accepted_socket(protocol_class(hub, config), server_end)
        try:
            request = upgrade_request(f"/ws/r2?session={SESSION}")
            ping = mask_frame(0x1, dumps({"type": "ping", "data": {"early": True}}).encode())
            await loop.sock_sendall(client_end, request + ping)
            raw = RawWebSocket(client_end)
            while b"\r\n\r\n" not in raw.buffer:
                raw.buffer += await asyncio.wait_for(loop.sock_recv(client_end, 4096), 5)
            head, _, raw.buffer = raw.buffer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            assert (await raw.read_message())["data"]["user_id"] == "dora"
            while (pong := await raw.read_message())["type"] != "pong":
                assert pong["type"] == "presence", pong
            assert pong["data"] == {"early": True}
        finally:
            transport.abort()
            client_end.close()


# -- abuse limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_too_many_connections_per_user_is_429(
    serve: Callable[..., ServerProcess], client: Connect, mode: str
) -> None:
    server = serve("--ws", mode, "--jwt-secret", SECRET, "--max-connections-per-user", "2")
    alice = token("alice", aud=None, iss=None)
    first = await client(f"{server.ws}?token={alice}")
    second = await client(f"{server.ws}?token={alice}")
    for ws in (first, second):
        await welcome(ws)
    status, body = await status_of(f"{server.ws}?token={alice}")
    assert status == 429
    assert b"too many connections for this user" in body
    assert (await status_of(f"{server.ws}?token={token('bob', aud=None, iss=None)}"))[0] == 101
    assert (await status_of(server.ws))[0] == 101  # anonymous: not counted per user

    await first.close()

    async def slot_freed() -> bool:
        return (await status_of(f"{server.ws}?token={alice}"))[0] == 101

    await eventually(slot_freed)


@pytest.mark.parametrize("mode", MODES)
async def test_connections_per_user_count_across_pods(
    serve: Callable[..., ServerProcess], client: Connect, redis_url: str, mode: str
) -> None:
    prefix = unique_prefix()
    flags = pod_flags(redis_url, prefix, "--ws", mode, "--jwt-secret", SECRET)
    flags += ("--max-connections-per-user", "2")
    pods = [serve(*flags, ready=False) for _ in range(2)]
    a, b = (pod.wait_ready() for pod in pods)
    alice = token("alice", aud=None, iss=None)
    on_a = [await client(f"{a.ws}?token={alice}") for _ in range(2)]
    for ws in on_a:
        await welcome(ws)
    assert (await status_of(f"{b.ws}?token={alice}"))[0] == 429
    await on_a[0].close()

    async def slot_freed() -> bool:
        return (await status_of(f"{b.ws}?token={alice}"))[0] == 101

    await eventually(slot_freed)


@pytest.mark.parametrize("mode", MODES)
async def test_connect_flood_is_429(
    serve: Callable[..., ServerProcess], client: Connect, mode: str
) -> None:
    server = serve("--ws", mode, "--connect-rate", "1")  # one per second, one at once
    statuses = [(await status_of(server.ws))[0] for _ in range(3)]
    assert statuses == [101, 429, 429]
    status, body = await status_of(server.ws)
    assert status == 429 and b"too many new connections" in body
    await asyncio.sleep(1.1)  # one connection's worth refilled
    assert (await status_of(server.ws))[0] == 101
    # Plain HTTP is not counted.
    assert (await api(server.http, "GET", "/healthz")).status_code == 200


# -- secrets stay secret --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_no_secret_reaches_the_logs(
    serve: Callable[..., ServerProcess], client: Connect, mode: str
) -> None:
    server = serve(
        "--ws", mode, "--log-level", "debug", "--jwt-secret", SECRET, "--api-key", API_KEY
    )
    in_query = token("alice", aud=None, iss=None)
    in_header = token("bob", aud=None, iss=None)
    in_frame = token("alice", ttl=120, aud=None, iss=None)
    bad = token("eve", secret="w" * 40, aud=None, iss=None)
    wrong_key = "wrong-api-key-" + "0f1e2d3c4b5a" * 2
    tokens = [in_query, in_header, in_frame, bad]

    ws = await client(f"{server.ws}/general?token={in_query}&last_id=1")
    await welcome(ws)
    await ws.send(dumps({"type": "auth", "data": {"token": in_frame}}))
    await recv_until(ws, lambda m: m.get("data", {}).get("event") == "refreshed")
    other = await client(
        f"{server.ws}/general", additional_headers={"Authorization": f"Bearer {in_header}"}
    )
    await welcome(other)
    assert (await status_of(f"{server.ws}/general?token={bad}"))[0] == 401
    for headers in ({"Authorization": f"Bearer {wrong_key}"}, {"X-API-Key": wrong_key}):
        response = await api(server.http, "GET", "/api/rooms", headers=headers)
        assert response.status_code == 401
        assert wrong_key not in response.text
    ok = await api(server.http, "GET", "/api/rooms", headers={"X-API-Key": API_KEY})
    assert ok.status_code == 200
    metrics = (await api(server.http, "GET", "/metrics")).text
    await ws.close()
    await other.close()
    assert await asyncio.to_thread(server.stop) == 0

    output = server.output()
    assert "GET /ws/general" in output or "/ws/general" in output  # debug logging was on
    for secret in (SECRET, API_KEY, wrong_key, *tokens, *(t.rpartition(".")[2] for t in tokens)):
        assert secret not in output, f"a secret reached the logs: {secret[:12]}…"
        assert secret not in metrics
    assert "Traceback" not in output


def percent(text: str, *, lower: bool = False) -> str:
    """Every character of ``text`` as a percent-escape."""
    return "".join(f"%{byte:02x}" if lower else f"%{byte:02X}" for byte in text.encode())


@pytest.mark.parametrize("mode", MODES)
async def test_percent_encoded_tokens_stay_out_of_the_logs(
    serve: Callable[..., ServerProcess], client: Connect, mode: str
) -> None:
    """A server decodes ``%74oken=%65%79…`` to ``token=ey…``; the logs must hide it too."""
    server = serve("--ws", mode, "--log-level", "debug", "--jwt-secret", SECRET)
    users = ["alice", "bob", "carol"]
    tokens = [token(user, aud=None, iss=None) for user in users]
    written = [percent(tokens[0]), percent(tokens[1], lower=True), f"%65{tokens[2][1:]}"]
    names = ["%74oken", "to%6Ben", percent("token", lower=True)]
    for user, name, value in zip(users, names, written, strict=True):
        ws = await client(f"{server.ws}/general?{name}={value}&last_id=1")
        assert (await welcome(ws))["user_id"] == user  # the server read it as the token
        await ws.close()
    assert await asyncio.to_thread(server.stop) == 0

    output = server.output()
    assert "/ws/general?" in output  # debug logging wrote the requests
    assert "%74oken=***" in output
    for secret in (*tokens, *written, *(t.rpartition(".")[2] for t in tokens)):
        assert secret not in output, f"a token reached the logs: {secret[:12]}…"
    assert "Traceback" not in output


# -- unusable keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["short-secret", "not-a-key"])
def test_unusable_jwt_keys_exit_2_with_one_line(tmp_path: Path, kind: str) -> None:
    if kind == "short-secret":
        flags = ["--jwt-secret", "too-short"]
    else:
        (tmp_path / "key.pem").write_text("not a key\n")
        flags = ["--jwt-public-key", str(tmp_path / "key.pem")]
    done = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("roomcast: error: --jwt-"), done.stderr
    assert "too-short" not in done.stderr  # a secret is never echoed, even a bad one
