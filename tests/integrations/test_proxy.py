"""The connect, join and publish proxy of `roomcast serve`, against a real backend process.

Over real sockets on both front ends: every answer of the backend (allowed,
refused with its reason, down, too slow, broken) and what the client gets for
it, with the exact HTTP status, error code or close code
(docs/topics/proxy.md has the table).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from roomcast.errors import ConfigError
from roomcast.integrations.proxy import shown_url
from roomcast.settings import Settings
from tests.integrations.conftest import Backend
from tests.server.test_auth_server import status_of, welcome
from tests.support import (
    MS,
    ServerProcess,
    assert_silent,
    dumps,
    recv_type,
    recv_until,
    running_server,
    until,
    ws_connect,
)

MODES = ["native", "asgi"]
TIMEOUT = "1"  # --proxy-timeout, seconds: the backend's slow answers take 3


@pytest.fixture(scope="module", params=MODES)
def proxied(request: pytest.FixtureRequest, backend: Backend) -> Iterator[ServerProcess]:
    with running_server(
        "--ws", request.param,
        "--proxy-connect", backend.url("connect"),
        "--proxy-join", backend.url("join"),
        "--proxy-publish", backend.url("publish"),
        "--proxy-timeout", TIMEOUT,
        "--rate", "0",
    ) as proc:  # fmt: skip
        yield proc


def url(server: ServerProcess, token: str, room: str = "") -> str:
    return f"{server.ws}{'/' + room if room else ''}?token={token}"


async def join(ws: Any, room: str, ref: str) -> dict[str, Any]:
    await ws.send(dumps({"type": "join", "room": room, "ref": ref}))
    reply = await recv_until(ws, lambda m: m["data"].get("ref") == ref)
    return dict(reply)


async def publish(ws: Any, text: str, ref: str) -> dict[str, Any]:
    await ws.send(dumps({"type": "chat", "data": {"text": text}, "ref": ref}))
    reply = await recv_until(
        ws, lambda m: m["type"] in ("error", "system") and m["data"].get("ref") == ref
    )
    return dict(reply)


async def test_connect_allowed_takes_the_backends_user(proxied: ServerProcess) -> None:
    ws = await ws_connect(url(proxied, "alice", "lobby"))
    data = await welcome(ws)
    assert data["user_id"] == "alice"
    assert data["rooms"] == ["lobby"]
    await ws.send(dumps({"type": "chat", "data": {"text": "hi"}}))
    chat = await recv_type(ws, "chat")
    assert chat["from"] == "alice"
    await ws.close()


async def test_connect_channels_from_the_backend_are_joined(proxied: ServerProcess) -> None:
    ws = await ws_connect(url(proxied, "bob"))
    assert (await welcome(ws))["user_id"] == "bob"
    joined = await recv_until(ws, lambda m: m["data"].get("event") == "joined")
    assert joined["data"]["room"] == "news"
    assert joined["data"]["server"] is True
    await ws.close()


async def test_connect_anonymous_when_the_backend_names_nobody(proxied: ServerProcess) -> None:
    ws = await ws_connect(url(proxied, "anon"))
    data = await welcome(ws)
    assert data["user_id"] == data["connection_id"]
    await ws.close()


@pytest.mark.parametrize(
    ("token", "status", "text"),
    [
        ("deny", 403, b"banned"),
        ("kick", 403, b"kicked"),
        ("nobody", 401, b"who are you?"),
        ("missing", 401, b"no token"),
        ("broken", 503, b"connect proxy unavailable"),
        ("junk", 503, b"connect proxy unavailable"),
        ("bad", 503, b"malformed result"),
    ],
)
async def test_connect_refusals(
    proxied: ServerProcess, token: str, status: int, text: bytes
) -> None:
    got, body = await status_of(url(proxied, token))
    assert got == status
    assert text in body


async def test_connect_timeout_is_503_within_the_timeout(proxied: ServerProcess) -> None:
    started = time.monotonic()
    got, body = await status_of(url(proxied, "slow"))
    took = time.monotonic() - started
    assert (got, b"unavailable" in body) == (503, True)
    assert took < 2.5, f"waited {took:.1f} s for a backend that answers after 3 s"


async def test_connect_backend_down_is_503_and_logged_without_the_token(down_url: str) -> None:
    token = "alice-0123456789-very-secret"
    with running_server("--proxy-connect", down_url) as server:
        got, body = await status_of(url(server, token), additional_headers={"Cookie": token})
        await until(lambda: "connect proxy unavailable" in server.output(), timeout=2000 * MS)
        log = server.output()
    assert got == 503
    assert b"connect proxy unavailable" in body
    assert "ConnectError" in log  # why, and ...
    assert token not in log  # ... never the credentials


async def test_the_backend_gets_the_documented_bodies(
    proxied: ServerProcess, backend: Backend
) -> None:
    ws = await ws_connect(
        url(proxied, "alice", "lobby"),
        user_agent_header="proxy-test/1",
        additional_headers={"X-Internal": "not forwarded", "Cookie": "session=1"},
    )
    data = await welcome(ws)
    sent = backend.log_entries()["last"]
    assert isinstance(sent, dict)
    assert sent["connect"] == {
        "transport": "websocket",
        "client": "127.0.0.1",
        "room": "lobby",
        "token": "alice",
        "headers": {"user-agent": "proxy-test/1", "cookie": "session=1"},
    }
    assert sent["join"] == {
        "user": "alice",
        "connection_id": data["connection_id"],
        "room": "lobby",
        "info": {"name": "Alice"},
    }
    await publish(ws, "hello", "b1")
    sent = backend.log_entries()["last"]
    assert isinstance(sent, dict)
    assert sent["publish"] == {
        "user": "alice",
        "connection_id": data["connection_id"],
        "room": "lobby",
        "data": {"text": "hello"},
    }
    await ws.close()


async def test_an_anonymous_user_is_an_empty_user_for_the_backend(
    proxied: ServerProcess,
) -> None:
    anon = await ws_connect(url(proxied, "anon"))
    await welcome(anon)
    refused = await join(anon, "users-only", "a1")
    assert refused["data"] == {"code": "forbidden_room", "error": "sign in first", "ref": "a1"}
    alice = await ws_connect(url(proxied, "alice"))
    await welcome(alice)
    assert (await join(alice, "users-only", "a2"))["data"]["event"] == "joined"
    await anon.close()
    await alice.close()


async def test_join_allowed_refused_slow_and_broken(proxied: ServerProcess) -> None:
    ws = await ws_connect(url(proxied, "alice"))
    await welcome(ws)
    allowed = await join(ws, "open", "j1")
    assert (allowed["type"], allowed["data"]["event"]) == ("system", "joined")
    refused = await join(ws, "secret", "j2")
    assert refused["type"] == "error"
    assert refused["data"] == {"code": "forbidden_room", "error": "members only", "ref": "j2"}
    slow = await join(ws, "slow-room", "j3")
    assert slow["data"]["code"] == "unavailable"
    assert slow["data"]["error"] == "join proxy unavailable"
    broken = await join(ws, "broken", "j4")
    assert broken["data"]["code"] == "unavailable"
    # Still served, and in the one room it was allowed.
    await ws.send(dumps({"type": "chat", "room": "secret", "data": {"text": "x"}, "ref": "c1"}))
    assert (await recv_type(ws, "error"))["data"]["code"] == "not_member"
    await ws.close()


async def test_the_connect_url_room_refused_closes_4503(proxied: ServerProcess) -> None:
    ws = await ws_connect(url(proxied, "alice", "secret"))
    with pytest.raises(ConnectionClosed):
        await recv_type(ws, "system")
    assert ws.close_code == 4503
    assert ws.close_reason == "members only"


async def test_publish_allowed_replaced_refused_and_slow(proxied: ServerProcess) -> None:
    ws = await ws_connect(url(proxied, "alice", "talk"))
    await welcome(ws)
    other = await ws_connect(url(proxied, "bob", "talk"))
    await welcome(other)

    ack = await publish(ws, "hello", "p1")
    assert ack["data"]["event"] == "published"
    assert (await recv_type(other, "chat"))["data"] == {"text": "hello"}

    await publish(ws, "shout", "p2")
    assert (await recv_type(other, "chat"))["data"] == {"text": "SHOUT"}

    refused = await publish(ws, "rude", "p3")
    assert refused["data"] == {"code": "forbidden_publish", "error": "be nice", "ref": "p3"}
    slow = await publish(ws, "slow", "p4")
    assert slow["data"] == {
        "code": "unavailable",
        "error": "publish proxy unavailable",
        "ref": "p4",
    }
    await assert_silent(other, 300 * MS, "chat")  # neither refused message went out
    await ws.close()
    await other.close()


def test_settings_refuse_a_connect_proxy_with_jwt_and_bad_urls() -> None:
    with pytest.raises(ConfigError, match="--proxy-connect"):
        Settings(proxy_connect="http://127.0.0.1:1/c", jwt_secret="x" * 32)
    with pytest.raises(ConfigError, match="--proxy-join"):
        Settings(proxy_join="ftp://example.com/join")
    with pytest.raises(ConfigError, match="--proxy-timeout"):
        Settings(proxy_timeout=0)
    with pytest.raises(ConfigError, match="--webhook-secret"):
        Settings(webhook_url="http://127.0.0.1:1/hooks")
    assert Settings(proxy_connect="https://auth.example.com/c", auth_required=True).auth_required


def test_logged_urls_lose_their_credentials_and_query() -> None:
    assert shown_url("https://user:pw@app.example.com:8443/c?key=k#top") == (
        "https://app.example.com:8443/c"
    )
    assert shown_url("http://[::1]:9000/join") == "http://[::1]:9000/join"
