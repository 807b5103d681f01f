"""The HTTP API under hostile callers: body size, media type, speaking for users, redirects.

Each check runs against a real ``roomcast serve`` over a real socket.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx
import orjson

from tests.support import ServerProcess, fresh_room

Serve = Callable[..., ServerProcess]
KEY = "api-limits-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def test_a_body_over_max_message_bytes_is_refused_with_413(serve: Serve) -> None:
    server = serve("--api-insecure", "--max-message-bytes", "1024")
    room = fresh_room("big")
    async with httpx.AsyncClient(base_url=server.http, timeout=5) as http:
        big = {"room": room, "type": "notification", "data": {"pad": "x" * 2000}}
        declared = await http.post("/api/publish", json=big)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "body_too_large"

        async def chunks():  # no Content-Length: counted as it streams
            body = orjson.dumps(big)
            for i in range(0, len(body), 256):
                yield body[i : i + 256]

        streamed = await http.post(
            "/api/publish", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        small = {"room": room, "type": "notification", "data": {"pad": "x" * 100}}
        assert (await http.post("/api/publish", json=small)).status_code == 200
        history = (await http.get(f"/api/rooms/{room}/history")).json()["messages"]
        assert [m["data"]["pad"] for m in history] == ["x" * 100]  # nothing of the big ones


async def test_a_body_that_is_not_application_json_is_refused_with_415(serve: Serve) -> None:
    # A cross-site form or text/plain POST (no CORS preflight) must not publish.
    server = serve("--api-insecure")
    room = fresh_room("media")
    body = orjson.dumps({"room": room, "type": "notification", "data": {"n": 1}})
    async with httpx.AsyncClient(base_url=server.http, timeout=5) as http:
        for media_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"content-type": media_type} if media_type else {}
            refused = await http.post("/api/publish", content=body, headers=headers)
            assert refused.status_code == 415, media_type
            assert refused.json()["error"]["code"] == "unsupported_media_type"
        accepted = await http.post(
            "/api/publish",
            content=body,
            headers={"content-type": "application/json; charset=utf-8"},
        )
        assert accepted.status_code == 200
        assert len((await http.get(f"/api/rooms/{room}/history")).json()["messages"]) == 1


async def test_from_is_taken_only_from_a_caller_with_the_api_key(serve: Serve) -> None:
    room = fresh_room("from")
    body = {"room": room, "type": "chat", "data": {"text": "hi"}, "from": "alice"}
    insecure = serve("--api-insecure")
    async with httpx.AsyncClient(base_url=insecure.http, timeout=5) as http:
        refused = await http.post("/api/publish", json=body)
        assert refused.status_code == 400
        assert "API key" in refused.json()["error"]["message"]
        assert (await http.get(f"/api/rooms/{room}/history")).json()["messages"] == []

    keyed = serve("--api-key", KEY)
    async with httpx.AsyncClient(base_url=keyed.http, timeout=5) as http:
        assert (await http.post("/api/publish", json=body)).status_code == 401  # no key at all
        published = await http.post("/api/publish", json=body, headers=AUTH)
        assert published.status_code == 200
        history = await http.get(f"/api/rooms/{room}/history", headers=AUTH)
        assert [m["from"] for m in history.json()["messages"]] == ["alice"]
        bad = await http.post("/api/publish", json={**body, "from": 7}, headers=AUTH)
        assert bad.status_code == 400


def test_no_redirect_reflects_the_host_header(serve: Serve) -> None:
    server = serve("--api-key", KEY)
    request = b"GET /api/rooms/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    assert not head.startswith(b"http/1.1 30"), head
    assert b"location:" not in head
    assert b"evil.example" not in reply
