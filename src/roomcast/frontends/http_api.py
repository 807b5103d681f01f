"""The HTTP API of SPEC §2 as an ASGI app: publish, rooms, presence, history, health, metrics.

Plus the control API (``docs/topics/control.md``): disconnect, subscribe and
unsubscribe a user's connections on every pod, list them, and a room's info.

Mount it beside the WebSocket endpoint (``Mount("/", app=hub.api_app(api_key=...))``);
``/api/*`` takes the API key, ``/metrics``, ``/healthz`` and ``/readyz`` do not.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from roomcast.core.control import DISCONNECT_REASON, Outcome
from roomcast.core.metrics import CONTENT_TYPE_LATEST
from roomcast.errors import BrokerError, CloseCode, ErrorCode, ProtocolError
from roomcast.frontends.asgi import Receive, Scope, Send
from roomcast.protocol import Message, MessageType, validate_room

if TYPE_CHECKING:
    from roomcast.core.engine import Engine

__all__ = ["PUBLISHABLE_TYPES", "ApiApp"]

PUBLISHABLE_TYPES = frozenset({MessageType.CHAT, MessageType.NOTIFICATION, MessageType.SYSTEM})
"""Message types ``POST /api/publish`` accepts."""


def _error(status: int, code: str, message: str) -> Response:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return Response(body, status, media_type="application/json")


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json")


def _outcome(body: dict[str, Any], outcome: Outcome[Any]) -> Response:
    # A control answer; when some pod did not answer in time, how many did not.
    if outcome.unanswered:
        body["unanswered"] = outcome.unanswered
    return _json(body)


class ApiApp:
    """The HTTP API of SPEC §2 as an ASGI app.

    Routes: ``POST /api/publish``, ``GET /api/rooms``,
    ``GET /api/rooms/{room}/presence``, ``GET /api/rooms/{room}/history``,
    the control API (``POST /api/disconnect``, ``POST /api/subscribe``,
    ``POST /api/unsubscribe``, ``GET /api/users/{user_id}/connections``,
    ``GET /api/rooms/{room}``), ``GET /metrics``, ``GET /healthz``, ``GET /readyz``.

    Args:
        hub: the hub to serve.
        api_key: required as ``Authorization: Bearer <key>`` or ``X-API-Key`` on
            ``/api/*``; compared in constant time.
        insecure: serve ``/api/*`` without a key. With neither, ``/api/*``
            answers 403 and says why.
    """

    def __init__(self, hub: Engine, *, api_key: str | None = None, insecure: bool = False) -> None:
        self.hub = hub
        self._api_key = api_key.encode() if api_key else None
        self._insecure = insecure
        # No redirect to the slash-less (or slashed) path: it would be built from
        # the client's Host header, before the key check.
        self.router = Router(
            redirect_slashes=False,
            routes=[
                Route("/api/publish", self._guard(self.publish), methods=["POST"]),
                Route("/api/rooms", self._guard(self.rooms), methods=["GET"]),
                Route("/api/rooms/{room}/presence", self._guard(self.presence), methods=["GET"]),
                Route("/api/rooms/{room}/history", self._guard(self.history), methods=["GET"]),
                Route("/api/rooms/{room}", self._guard(self.room_info), methods=["GET"]),
                Route("/api/disconnect", self._guard(self.disconnect), methods=["POST"]),
                Route("/api/subscribe", self._guard(self.subscribe), methods=["POST"]),
                Route("/api/unsubscribe", self._guard(self.unsubscribe), methods=["POST"]),
                Route(
                    "/api/users/{user_id}/connections",
                    self._guard(self.connections),
                    methods=["GET"],
                ),
                Route("/metrics", self.metrics, methods=["GET"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
            ],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.router(scope, receive, send)

    def _guard(
        self, endpoint: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            refusal = self._check_key(request)
            if refusal is not None:
                return refusal
            try:
                return await endpoint(request)
            except ProtocolError as exc:
                return _error(400, exc.code.value, exc.detail)
            except BrokerError as exc:
                return _error(503, "broker_unavailable", str(exc))

        return guarded

    def _check_key(self, request: Request) -> Response | None:
        if self._insecure:
            return None
        if self._api_key is None:
            return _error(
                403,
                "api_disabled",
                "the HTTP API is disabled: start the server with --api-key (or --api-insecure)",
            )
        given = request.headers.get("x-api-key")
        if given is None:
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            given = value.strip() if scheme.lower() == "bearer" else None
        if given is None:
            return _error(401, "unauthorized", "missing API key (Authorization: Bearer <key>)")
        if not hmac.compare_digest(given.encode(), self._api_key):
            return _error(401, "unauthorized", "invalid API key")
        return None

    async def _body(self, request: Request) -> dict[str, Any] | Response:
        # The request's JSON object, or the error response: 415 unless
        # application/json, 413 past max_message_bytes, 400 unless a JSON object.
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            return _error(
                415,
                "unsupported_media_type",
                "the body must be sent as Content-Type: application/json",
            )
        limit = self.hub.max_message_bytes
        too_large = _error(413, "body_too_large", f"the body may be at most {limit} bytes")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return too_large
            chunks.append(chunk)
        try:
            body = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            return _error(400, ErrorCode.INVALID_JSON.value, "body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, ErrorCode.INVALID_MESSAGE.value, "body must be a JSON object")
        return body

    async def publish(self, request: Request) -> Response:
        """Publish ``{"room"?, "type", "data", "from"?}``; no room means every connection.

        The body must be ``application/json`` (else 415) of at most the hub's
        ``max_message_bytes`` (else 413). ``from`` (speak for a user) is taken
        only from a caller that presented the API key; without one it is refused.
        """
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        try:
            kind = MessageType(body.get("type", "notification"))
        except ValueError:
            kind = None
        if kind not in PUBLISHABLE_TYPES:
            return _error(
                400, ErrorCode.FORBIDDEN_TYPE.value, "type must be chat, notification or system"
            )
        room = body.get("room")
        if room is not None:
            validate_room(room)
        message = Message(type=kind, room=room, data=body.get("data"))
        if "from" in body:
            sender = body["from"]
            if not isinstance(sender, str) or not sender or len(sender) > 256:
                return _error(400, ErrorCode.INVALID_MESSAGE.value, "'from' must be a user id")
            if self._api_key is None:
                return _error(
                    400,
                    ErrorCode.INVALID_MESSAGE.value,
                    "'from' (publishing as a user) needs the API key: the insecure API cannot",
                )
            message.from_ = sender
        stored = await self.hub.publish(message)
        out: dict[str, Any] = {"id": stored.id, "timestamp": stored.timestamp}
        if stored.offset is not None:
            out["offset"] = stored.offset
        return _json(out)

    async def rooms(self, request: Request) -> Response:
        """Rooms with local and cluster-wide connection counts."""
        return _json({"rooms": await self.hub.rooms()})

    async def presence(self, request: Request) -> Response:
        """Members of a room, cluster-wide."""
        room = validate_room(request.path_params["room"])
        members = await self.hub.presence(room)
        return _json({"room": room, "members": [m.to_dict() for m in members]})

    async def history(self, request: Request) -> Response:
        """Retained messages of a room, oldest first (``since``, ``limit``)."""
        room = validate_room(request.path_params["room"])
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            return _error(400, "invalid_limit", "limit must be an integer")
        limit = max(0, min(limit, 1000))
        since = request.query_params.get("since") or None
        page = await self.hub.broker.history(room, since=since, limit=limit)
        messages = [orjson.Fragment(bytes(e.payload)) for e in page.messages]
        return _json({"room": room, "epoch": page.epoch, "messages": messages})

    # -- the control API --------------------------------------------------------------------

    async def disconnect(self, request: Request) -> Response:
        """Close connections on every pod: ``{"user_id" | "connection_id", "code"?, "reason"?}``.

        ``code`` is 4000-4999 (4100 by default: the client reconnects; from 4500
        it does not). Answers ``{"disconnected": n}``; every control answer
        also has ``"unanswered": k`` when ``k`` pods did not answer in time.
        """
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        outcome = await self.hub.control.disconnect(
            user_id=body.get("user_id"),
            connection_id=body.get("connection_id"),
            code=body.get("code", CloseCode.DISCONNECT),
            reason=body.get("reason", DISCONNECT_REASON),
        )
        return _outcome({"disconnected": outcome.value}, outcome)

    async def subscribe(self, request: Request) -> Response:
        """Join a room for a user's connections: ``{"user_id", "room"}`` -> ``{"subscribed"}``."""
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        outcome = await self.hub.control.subscribe(body.get("user_id", ""), body.get("room", ""))
        return _outcome({"subscribed": outcome.value}, outcome)

    async def unsubscribe(self, request: Request) -> Response:
        """Leave a room: ``{"user_id", "room", "reason"?}`` -> ``{"unsubscribed": n}``."""
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        outcome = await self.hub.control.unsubscribe(
            body.get("user_id", ""),
            body.get("room", ""),
            reason=body.get("reason"),
        )
        return _outcome({"unsubscribed": outcome.value}, outcome)

    async def connections(self, request: Request) -> Response:
        """A user's connections on every pod: ``{"user_id", "connections": [...]}``."""
        user_id = request.path_params["user_id"]
        outcome = await self.hub.control.connections(user_id)
        return _outcome({"user_id": user_id, "connections": outcome.value}, outcome)

    async def room_info(self, request: Request) -> Response:
        """A room's position, members and cluster-wide counts."""
        outcome = await self.hub.control.room_info(request.path_params["room"])
        return _outcome(outcome.value, outcome)

    async def metrics(self, request: Request) -> Response:
        """Prometheus text format."""
        return Response(self.hub.metrics.render(), headers={"content-type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: Request) -> Response:
        """200 while the process serves."""
        return _json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """200 when ready; 503 while the broker is unreachable or the hub drains."""
        hub = self.hub
        if hub.ready:
            return _json({"status": "ready"})
        reason = "draining" if hub.draining else "broker unavailable"
        if not hub.started:
            reason = "not started"
        return _json({"status": "unavailable", "reason": reason}, 503)
