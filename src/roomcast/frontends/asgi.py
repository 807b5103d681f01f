"""The ASGI WebSocket front end: the WebSocket endpoint as an ASGI app.

It mounts into Starlette, FastAPI or any ASGI router (the HTTP API is
:mod:`roomcast.frontends.http_api`)::

    app = Starlette(
        routes=[
            Mount("/ws", app=hub.websocket_app(HandlerConfig())),
            Mount("/", app=hub.api_app(api_key="...")),
        ],
        lifespan=hub.lifespan,
    )

Over plain ASGI each outgoing message is one ``websocket.send`` event, which the
ASGI server frames and writes on its own. The standalone server avoids that
layer for WebSockets (see :mod:`roomcast.frontends.native`); docs/benchmarks.md measures
the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from roomcast.core.admission import Admission, Refusal
from roomcast.core.auth import ConnectRequest
from roomcast.core.connection import Connection
from roomcast.core.endpoint import HandlerConfig
from roomcast.errors import CloseCode, ErrorCode, ProtocolError
from roomcast.protocol import Encoded

if TYPE_CHECKING:
    from roomcast.core.engine import Engine

__all__ = ["AsgiConnection", "Receive", "Scope", "Send", "WebSocketApp"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_log = logging.getLogger("roomcast.asgi")


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

    def __init__(self, hub: Engine, config: HandlerConfig, *, roomless: bool = False) -> None:
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
        try:
            with hub.gate.handshake():
                message = await receive()
                if message["type"] == "websocket.connect":
                    await send({"type": "websocket.accept"})
                    accepted = True
        finally:
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
