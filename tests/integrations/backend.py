"""A small backend for the proxy and webhook tests, run as its own process.

``python tests/integrations/backend.py PORT SECRET`` serves, on 127.0.0.1:

- ``POST /connect``: by the token — ``alice`` or ``bob``: that user (``bob``
  also gets ``channels: ["news"]``); ``deny``: error 403; ``nobody``: an error
  without a code; ``kick``: a ``disconnect``; ``anon``: an empty user; ``slow``: answers after 3 s;
  ``broken``: HTTP 500; ``junk``: a body that is not JSON; ``bad``: a result with
  an invalid user.
- ``POST /join``: room ``secret``: refused with "members only"; ``users-only``:
  refused with "sign in first" for an anonymous user (``""``); ``slow-*``:
  after 3 s; ``broken``: HTTP 500; others allowed.
- ``POST /publish``: ``data.text`` ``rude``: refused with "be nice"; ``shout``:
  allowed with ``{"text": "SHOUT"}``; ``slow``: after 3 s; others allowed.
- ``POST /hooks`` records the body and headers of each webhook request
  (verifying the signature with SECRET); ``POST /hooks-flaky`` answers 500 twice,
  then records like ``/hooks``; ``POST /hooks-stall`` answers after 10 s.
- ``GET /log`` returns what was recorded, the calls made to every path, and the
  last body each proxy path received.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import sys
from collections import Counter
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SECRET = sys.argv[2] if len(sys.argv) > 2 else "secret"
calls: Counter[str] = Counter()
hooks: list[dict[str, Any]] = []
last: dict[str, Any] = {}


def answer(obj: object, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


async def connect(request: Request) -> Response:
    calls["connect"] += 1
    body = last["connect"] = orjson.loads(await request.body())
    token = body.get("token")
    if token in ("alice", "bob"):
        result: dict[str, Any] = {"user": token, "info": {"name": token.title()}}
        if token == "bob":
            result["channels"] = ["news"]
        return answer({"result": result})
    if token == "deny":
        return answer({"error": {"code": 403, "message": "banned"}})
    if token == "kick":
        return answer({"disconnect": {"code": 4500, "reason": "kicked"}})
    if token == "nobody":
        return answer({"error": {"message": "who are you?"}})
    if token == "anon":
        return answer({"result": {"user": ""}})
    if token == "slow":
        await asyncio.sleep(3)
        return answer({"result": {"user": "late"}})
    if token == "broken":
        return answer({"oops": True}, 500)
    if token == "junk":
        return Response(b"<html>", media_type="text/html")
    if token == "bad":
        return answer({"result": {"user": 42}})
    return answer({"error": {"code": 401, "message": "no token"}})


async def join(request: Request) -> Response:
    calls["join"] += 1
    body = last["join"] = orjson.loads(await request.body())
    room = body["room"]
    if room == "secret":
        return answer({"error": {"message": "members only"}})
    if room == "users-only" and body["user"] == "":
        return answer({"error": {"message": "sign in first"}})
    if room.startswith("slow-"):
        await asyncio.sleep(3)
    if room == "broken":
        return answer({}, 500)
    return answer({"result": {}})


async def publish(request: Request) -> Response:
    calls["publish"] += 1
    body = last["publish"] = orjson.loads(await request.body())
    text = (body.get("data") or {}).get("text")
    if text == "rude":
        return answer({"error": {"message": "be nice"}})
    if text == "shout":
        return answer({"result": {"data": {"text": "SHOUT"}}})
    if text == "slow":
        await asyncio.sleep(3)
    return answer({"result": {}})


async def record(request: Request) -> Response:
    raw = await request.body()
    timestamp = request.headers.get("x-roomcast-timestamp", "")
    expected = (
        "sha256="
        + hmac.new(SECRET.encode(), timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
    )
    signature = request.headers.get("x-roomcast-signature", "")
    hooks.append(
        {
            "path": request.url.path,
            "body": orjson.loads(raw),
            "signed": hmac.compare_digest(signature, expected),
        }
    )
    return answer({"ok": True})


async def webhook(request: Request) -> Response:
    calls["hooks"] += 1
    return await record(request)


async def flaky(request: Request) -> Response:
    calls["hooks-flaky"] += 1
    if calls["hooks-flaky"] <= 2:
        return answer({}, 500)
    return await record(request)


async def stall(request: Request) -> Response:
    calls["hooks-stall"] += 1
    await asyncio.sleep(10)
    return await record(request)


async def log(request: Request) -> Response:
    return answer({"calls": dict(calls), "hooks": hooks, "last": last})


app = Starlette(
    routes=[
        Route("/connect", connect, methods=["POST"]),
        Route("/join", join, methods=["POST"]),
        Route("/publish", publish, methods=["POST"]),
        Route("/hooks", webhook, methods=["POST"]),
        Route("/hooks-flaky", flaky, methods=["POST"]),
        Route("/hooks-stall", stall, methods=["POST"]),
        Route("/log", log),
    ]
)

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
