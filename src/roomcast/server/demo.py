"""Demo mode (``roomcast serve --demo``): the browser console and what it needs.

Development only. With ``--demo`` the standalone server also serves

* ``GET /``: the console, a chat page and a live view of this pod
  (``src/roomcast/server/console/``: plain HTML, CSS and JavaScript, no build step, no
  CDN), and ``GET /console/{file}``, its files, among them the JavaScript client;
* ``POST /demo/token`` ``{"name": "alice"}``: an HS256 token whose ``sub`` is the
  name, valid for :data:`TOKEN_TTL` seconds. Anyone who can reach the server
  can ask for any name, which is why this is a demo: the page still never
  chooses its identity over the WebSocket, the server does, from the token;
* ``GET /demo/stats``: this pod's numbers for the console's pod view
  (connections, rooms, message counters, broker and Redis status);
* ``GET /demo/rooms/{room}/presence``: who is in a room, so that a page that
  joins sees who was there before it.

The HTTP API (``/api/*``) keeps its key: the console reads only these demo
routes. In demo mode every WebSocket needs a token (``--auth-required`` is
implied), and when no ``--jwt-secret`` is given a random one is made at start,
so the tokens minted here are the only ones that verify, until a restart.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import time
from pathlib import Path
from typing import Any, Final

import jwt
import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from roomcast.app import Hub
from roomcast.errors import BrokerError, ConfigError, ProtocolError
from roomcast.protocol import validate_room
from roomcast.settings import Settings

__all__ = [
    "CONSOLE_DIR",
    "NAME_PATTERN",
    "TOKEN_TTL",
    "demo_routes",
    "demo_settings",
    "mint_token",
]

_log = logging.getLogger("roomcast.demo")

CONSOLE_DIR: Final = Path(__file__).parent / "console"
"""The console's files, shipped inside the package."""

TOKEN_TTL: Final = 600
"""Lifetime of a demo token, in seconds (the JavaScript client refreshes it)."""

NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
"""Names the token endpoint accepts: 1-32 of ``A-Z a-z 0-9 _ . -``."""

_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "roomcast.js": "text/javascript; charset=utf-8",
}

# The page loads nothing from elsewhere, and nothing may frame it.
_CSP: Final = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_PAGE_HEADERS: Final = {
    "cache-control": "no-cache",
    "content-security-policy": _CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
_NO_STORE: Final = {"cache-control": "no-store"}


def demo_settings(settings: Settings) -> Settings:
    """Return ``settings`` as demo mode runs them (unchanged without ``--demo``).

    Tokens are required on every WebSocket, and a random HS256 secret is made
    when ``--jwt-secret`` is not given, so that the demo's tokens verify.
    """
    if not settings.demo:
        return settings
    _log.warning(
        "demo mode: anyone who reaches this server can get a token for any name;"
        " for development only, never expose it",
        extra={"console": f"http://{settings.host}:{settings.port}/"},
    )
    secret = settings.jwt_secret
    if secret is None:
        secret = secrets.token_urlsafe(48)
        _log.info(
            "demo mode: no --jwt-secret given; tokens are signed with a random secret"
            " that lasts as long as this process"
        )
    return dataclasses.replace(settings, jwt_secret=secret, auth_required=True)


def mint_token(
    name: str, settings: Settings, *, ttl: float = TOKEN_TTL, now: float | None = None
) -> str:
    """Return an HS256 token for user ``name``, signed with ``settings.jwt_secret``.

    It carries ``sub`` (the name), ``iat``, ``exp`` and, when the server checks
    them, ``aud`` and ``iss``; no ``rooms`` claim, so every room is allowed.

    Raises:
        ConfigError: the settings have no ``jwt_secret`` (see :func:`demo_settings`).
    """
    if settings.jwt_secret is None:
        raise ConfigError("--demo: tokens need a JWT secret (use demo_settings())")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": name, "iat": issued, "exp": issued + int(ttl)}
    if settings.jwt_audience is not None:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer is not None:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def demo_routes(hub: Hub, settings: Settings) -> list[BaseRoute]:
    """The routes demo mode adds in front of the HTTP API.

    Raises:
        ConfigError: the settings have no ``jwt_secret`` (see :func:`demo_settings`).
    """
    if settings.jwt_secret is None:
        raise ConfigError("--demo: tokens need a JWT secret (use demo_settings())")
    demo = _Demo(hub, settings)
    return [
        Route("/", demo.index, methods=["GET"]),
        Route("/console/{name}", demo.asset, methods=["GET"]),
        Route("/demo/token", demo.token, methods=["POST"]),
        Route("/demo/stats", demo.stats, methods=["GET"]),
        Route("/demo/rooms/{room}/presence", demo.presence, methods=["GET"]),
    ]


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json", headers=_NO_STORE)


def _error(status: int, code: str, message: str) -> Response:
    return _json({"error": {"code": code, "message": message}}, status)


class _Demo:
    def __init__(self, hub: Hub, settings: Settings) -> None:
        self.hub = hub
        self.settings = settings
        self.started = time.time()

    async def index(self, request: Request) -> Response:
        return self._file("index.html")

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _FILES or name == "index.html":
            return _error(404, "not_found", "no such console file")
        return self._file(name)

    def _file(self, name: str) -> Response:
        return FileResponse(CONSOLE_DIR / name, media_type=_FILES[name], headers=_PAGE_HEADERS)

    async def token(self, request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(415, "unsupported_media_type", 'send JSON: {"name": "alice"}')
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "invalid_json", "body is not valid JSON")
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
            return _error(400, "invalid_name", "name must be 1-32 characters of A-Z a-z 0-9 _ . -")
        now = time.time()
        token = mint_token(name, self.settings, now=now)
        return _json(
            {
                "token": token,
                "user_id": name,
                "expires_in": TOKEN_TTL,
                "expires_at": int(now) + TOKEN_TTL,
            }
        )

    async def stats(self, request: Request) -> Response:
        hub = self.hub
        registry = hub.metrics.registry
        redis = type(hub.broker).__name__ == "RedisBroker"
        rooms = sorted(hub.registry.rooms.items())
        return _json(
            {
                "node": hub.node_id,
                "time": time.time(),
                "uptime": time.time() - self.started,
                "ready": hub.ready,
                "draining": hub.draining,
                "broker": "redis" if redis else "memory",
                "redis": ("connected" if hub.broker.ready else "unreachable") if redis else None,
                "connections": hub.connection_count,
                "rooms": len(rooms),
                "room_list": [
                    {"room": room, "connections": len(members)} for room, members in rooms[:50]
                ],
                "messages_sent": _sample(registry, "realtime_messages_sent_total"),
                "messages_received": _sample(registry, "realtime_messages_received_total"),
                "redis_publish_errors": _sample(registry, "realtime_redis_publish_errors_total"),
            }
        )

    async def presence(self, request: Request) -> Response:
        try:
            room = validate_room(request.path_params["room"])
            members = await self.hub.presence(room)
        except ProtocolError as exc:
            return _error(400, exc.code.value, exc.detail)
        except BrokerError as exc:
            return _error(503, "broker_unavailable", str(exc))
        return _json({"room": room, "members": [m.to_dict() for m in members]})


def _sample(registry: Any, name: str) -> float:
    value = registry.get_sample_value(name)
    return float(value) if value is not None else 0.0
