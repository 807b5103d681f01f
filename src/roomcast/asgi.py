"""The ASGI front end: the WebSocket endpoint and the HTTP API as ASGI apps.

Both mount into Starlette, FastAPI or any ASGI router::

    app = Starlette(
        routes=[
            Mount("/ws", app=hub.websocket_app(HandlerConfig())),
            Mount("/", app=hub.api_app(api_key="...")),
        ],
        lifespan=hub.lifespan,
    )

Over plain ASGI each outgoing message is one ``websocket.send`` event, which the
ASGI server frames and writes on its own. The standalone server avoids that
layer for WebSockets (see :mod:`roomcast.native`); docs/benchmarks.md measures
the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from roomcast.admission import Admission, Refusal
from roomcast.auth import ConnectRequest
from roomcast.connection import Connection
from roomcast.endpoint import HandlerConfig
from roomcast.errors import BrokerError, CloseCode, ErrorCode, ProtocolError
from roomcast.metrics import CONTENT_TYPE_LATEST
from roomcast.protocol import Encoded, Message, MessageType, validate_room

if TYPE_CHECKING:
    from roomcast.hub import Hub

__all__ = ["ApiApp", "AsgiConnection", "WebSocketApp"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_log = logging.getLogger("roomcast.asgi")

PUBLISHABLE_TYPES = frozenset({MessageType.CHAT, MessageType.NOTIFICATION, MessageType.SYSTEM})
"""Types the HTTP API may publish."""


class AsgiConnection(Connection):
    """A connection served through an ASGI server's ``send``.

    One writer task per connection drains the pending list; while it waits on a
    slow client the list grows, and reaching ``send_queue`` closes it with 4008.
    """

    __slots__ = ("asgi_send", "busy", "closing", "tail", "wake", "writer")

    def __init__(self, asgi_send: Send, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asgi_send = asgi_send
        self.wake = asyncio.Event()
        self.busy = False
        self.closing: tuple[int, str] | None = None
        self.tail: list[Encoded] = []
        self.writer: asyncio.Task[None] | None = None

    def start_writer(self) -> None:
        """Start the writer task (after the handshake was accepted)."""
        self.writer = self.hub.loop.create_task(self._write_loop(), name=f"roomcast-{self.id}")

    def writable(self) -> bool:
        """False while the writer is waiting for the ASGI server to take a message."""
        return not self.busy

    def flush(self) -> None:
        """Wake the writer (it sends every pending message)."""
        self.wake.set()

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Send what is pending, then the close frame; forget the connection now."""
        if self.closing is not None:
            return
        self.closing = (code, reason)
        if code == CloseCode.SLOW_CONSUMER and self.writer is not None:
            self.writer.cancel()  # it is stuck on this client: close without draining
            self.writer = self.hub.loop.create_task(self._send_close())
        else:
            self.tail = self.pending or []
        self.hub.detach(self)
        self.wake.set()

    def abort(self) -> None:
        """Stop writing; the ASGI server drops the connection when the app returns."""
        if self.writer is not None:
            self.writer.cancel()
        self.hub.detach(self)

    async def _write_loop(self) -> None:
        send = self.asgi_send
        wake = self.wake
        try:
            while True:
                await wake.wait()
                wake.clear()
                pending = self.pending
                if self.closing is not None:
                    batch, self.tail = self.tail, []
                elif pending is None:
                    return  # the client went away
                else:
                    batch = self.take_pending()
                self.busy = True
                for encoded in batch:
                    await send({"type": "websocket.send", "text": encoded.text})
                self.busy = False
                if self.closing is not None:
                    break
        except OSError:  # the ASGI server's "client disconnected"
            return
        await self._send_close()

    async def _send_close(self) -> None:
        code, reason = self.closing or (CloseCode.NORMAL, "")
        with contextlib.suppress(Exception):
            await self.asgi_send({"type": "websocket.close", "code": code, "reason": reason})


class WebSocketApp:
    """The WebSocket endpoint as an ASGI app: ``/`` (no room) and ``/{room}``.

    Works under ``Mount("/ws", app=...)`` and as the endpoint of
    ``WebSocketRoute("/ws/{room}", ...)``; ``roomless=True`` serves a route
    without a room parameter, such as ``WebSocketRoute("/ws", ...)``.
    """

    def __init__(self, hub: Hub, config: HandlerConfig, *, roomless: bool = False) -> None:
        self.hub = hub
        self.config = config
        self.roomless = roomless

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            response = Response("WebSocket endpoint: connect with a WebSocket client\n", 426)
            await response(scope, receive, send)
            return
        hub = self.hub
        decision = hub.admit(
            _connect_request(scope, "" if self.roomless else _route(scope)), self.config
        )
        if not isinstance(decision, Admission | Refusal):
            decision = await decision  # an async authenticator, or a per-user count in Redis
        if isinstance(decision, Refusal):
            await receive()  # websocket.connect
            await self._refuse(scope, send, decision)
            return
        accepted = False
        hub.gate.handshakes += 1
        try:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
                accepted = True
        finally:
            hub.gate.handshakes -= 1
            if not accepted:
                hub.abandon(decision)
        if accepted:
            await self._serve(scope, receive, send, decision)

    async def _refuse(self, scope: Scope, send: Send, refusal: Refusal) -> None:
        self.hub.gate.refused(refusal, remote=_remote(scope))
        if "websocket.http.response" in scope.get("extensions", {}):
            body = refusal.body()
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": refusal.status,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": refusal.message})

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, admission: Admission
    ) -> None:
        hub = self.hub
        conn = AsgiConnection(
            send,
            hub,
            self.config,
            user_id=admission.user_id,
            info=admission.info,
            remote=_remote(scope),
        )
        conn.start_writer()
        hub.attach(conn, admission)
        limit = hub.max_message_bytes
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    text = message.get("text")
                    if text is None:
                        hub.send_error(
                            conn,
                            ProtocolError(
                                ErrorCode.INVALID_MESSAGE,
                                "binary frames are not supported; send JSON text",
                            ),
                        )
                        continue
                    if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
                        conn.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
                        break
                    if conn.closing is None:
                        conn.receive(text)
                elif kind == "websocket.disconnect":
                    break
        finally:
            hub.detach(conn)
            writer = conn.writer
            if writer is not None and conn.closing is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(writer), 5.0)
            if conn.writer is not None:
                conn.writer.cancel()


def _remote(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


def _connect_request(scope: Scope, route: str) -> ConnectRequest:
    client = scope.get("client")
    return ConnectRequest.build(
        path=scope.get("path", ""),
        route=route,
        query_string=scope.get("query_string", b"").decode("latin-1"),
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", ())],
        client=str(client[0]) if client else "",
    )


def _route(scope: Scope) -> str:
    # The path below the endpoint: "/{room}" or "/" or "" (no room).
    params = scope.get("path_params") or {}
    if "room" in params:  # WebSocketRoute("/ws/{room}", ...)
        return "/" + str(params["room"])
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")  # Mount("/ws", ...) moved "/ws" here
    return path[len(root) :] if root and path.startswith(root) else path


def _error(status: int, code: str, message: str) -> Response:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return Response(body, status, media_type="application/json")


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json")


class ApiApp:
    """The HTTP API of SPEC §2 as an ASGI app.

    Routes: ``POST /api/publish``, ``GET /api/rooms``,
    ``GET /api/rooms/{room}/presence``, ``GET /api/rooms/{room}/history``,
    ``GET /metrics``, ``GET /healthz``, ``GET /readyz``.

    Args:
        hub: the hub to serve.
        api_key: required as ``Authorization: Bearer <key>`` or ``X-API-Key`` on
            ``/api/*``; compared in constant time.
        insecure: serve ``/api/*`` without a key. With neither, ``/api/*``
            answers 403 and says why.
    """

    def __init__(self, hub: Hub, *, api_key: str | None = None, insecure: bool = False) -> None:
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

    async def publish(self, request: Request) -> Response:
        """Publish ``{"room"?, "type", "data", "from"?}``; no room means every connection.

        The body must be ``application/json`` (else 415) of at most the hub's
        ``max_message_bytes`` (else 413). ``from`` (speak for a user) is taken
        only from a caller that presented the API key; without one it is refused.
        """
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
