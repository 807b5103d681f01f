"""The native WebSocket front end: an asyncio protocol that writes frames itself.

uvicorn hands every WebSocket upgrade request to its ``ws`` protocol class; the
standalone server plugs :func:`protocol_class` in there, so plain HTTP stays on ASGI
while WebSocket connections skip the ASGI message layer. The opening handshake is
websockets' sans-I/O ``ServerProtocol``; then :class:`~roomcast.frontends.fastpath.FrameSplitter`
parses the client's frames, and this module moves bytes, answers pings within a
budget and closes. :meth:`NativeConnection.flush` writes the frames built once per
message (:attr:`roomcast.protocol.Encoded.frame`), one write per loop iteration.

An upgrade outside the prefix gets HTTP 404, or, when :func:`protocol_class` is
given a ``fallback`` (one of uvicorn's own ``ws`` protocol classes), is handed to
it whole, so that the application's own WebSocket routes stay on plain ASGI
(:mod:`roomcast.server.embed`). The choice is made once per connection, at the
handshake; no frame pays for it.

Long on purpose: one connection's handshake, frames and closing are one state
machine over the same slots; split, each part would reach into the others'.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

from websockets.frames import Close as CloseFrame
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from roomcast.core.admission import Admission, Refusal
from roomcast.core.auth import ConnectRequest
from roomcast.core.connection import Connection
from roomcast.core.endpoint import HandlerConfig
from roomcast.core.ratelimit import TokenBucket
from roomcast.errors import CloseCode, ErrorCode, ProtocolError
from roomcast.frontends.fastpath import Close, Event, FrameSplitter, Ping, Pong, Violation

if TYPE_CHECKING:
    from roomcast.core.engine import Engine

__all__ = ["NativeConnection", "NativeWebSocketProtocol", "protocol_class"]

_log = logging.getLogger("roomcast.native")

CLOSE_TIMEOUT = 5.0
"""Seconds to wait for the client's close frame (or to drain to a slow client)."""

CONTROL_BURST = 10
"""Pings a client may send at once; beyond, ``CONTROL_RATE`` per second, else close 1008."""

CONTROL_RATE = 2.0
"""Pings per second a client may keep sending (each one costs the server a pong)."""

_BINARY = "binary frames are not supported; send JSON text"


def _frame(opcode: Opcode, payload: bytes) -> bytes:
    """An unmasked control frame from the server (websockets checks and builds it)."""
    return Frame(opcode, payload).serialize(mask=False)


def _close_frame(code: int, reason: str) -> bytes:
    """A close frame with ``code`` and ``reason``."""
    return _frame(Opcode.CLOSE, CloseFrame(code, reason).serialize())


class NativeConnection(Connection):
    """A connection that writes its frames straight to an asyncio transport."""

    __slots__ = ("ping_at", "ping_payload", "proto", "transport")

    def __init__(self, proto: NativeWebSocketProtocol, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proto = proto
        self.transport = proto.transport
        self.ping_payload: bytes | None = None
        self.ping_at = self.hub.loop.time() + self.hub.ping_interval

    def writable(self) -> bool:
        """False while the transport's buffer is above its high-water mark."""
        return not self.proto.paused

    def flush(self) -> None:
        """Write every pending frame in one ``transport.write``."""
        pending = self.pending
        if not pending or self.proto.paused:
            return
        data = pending[0].frame if len(pending) == 1 else b"".join([e.frame for e in pending])
        pending.clear()
        self.queued = 0
        self.transport.write(data)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Flush, send a close frame, forget the connection, and close after the handshake."""
        self.proto.close(code, reason)

    def abort(self) -> None:
        """Drop the TCP connection now."""
        self.transport.abort()

    def keepalive(self, now: float) -> None:
        """Ping every ``ping_interval``; fail the connection after ``ping_timeout``."""
        if self.closed:
            return
        if self.ping_payload is not None:
            if now - self.ping_at >= self.hub.ping_timeout:
                _log.info(
                    "no pong within the ping timeout; closing",
                    extra={"conn_id": self.id, "remote": self.remote},
                )
                self.proto.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        elif now >= self.ping_at:
            self.ping_payload = os.urandom(4)
            self.ping_at = now
            self.proto.ping(self.ping_payload)

    def pong(self, payload: bytes) -> None:
        """A pong arrived; clear the outstanding ping if it answers it."""
        if payload == self.ping_payload:
            self.ping_payload = None
            self.ping_at = self.hub.loop.time() + self.hub.ping_interval


class NativeWebSocketProtocol(asyncio.Protocol):
    """uvicorn ``ws`` protocol class bound to a hub (build it with :func:`protocol_class`).

    Handles ``{prefix}`` and ``{prefix}/{room}``; any other path gets HTTP 404,
    or goes to the ``fallback`` protocol class when there is one (:meth:`elsewhere`).
    """

    __slots__ = (
        "close_sent",
        "close_timer",
        "conn",
        "controls",
        "early",
        "eof",
        "frames",
        "head_tail",
        "opened_with",
        "paused",
        "reading_held",
        "remote",
        "replies",
        "server_connections",
        "transport",
        "ws",
    )

    hub: ClassVar[Engine]
    config: ClassVar[HandlerConfig]
    prefix: ClassVar[str] = "/ws"
    fallback: ClassVar[Callable[..., asyncio.Protocol] | None] = None

    def __init__(
        self,
        config: Any = None,
        server_state: Any = None,
        app_state: Any = None,
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.server_connections: set[Any] | None = (
            server_state.connections if server_state is not None else None
        )
        # What the fallback protocol is built with, kept until the handshake is decided.
        self.opened_with: tuple[Any, Any, Any] | None = (
            (config, server_state, app_state) if self.fallback is not None else None
        )
        # The handshake's protocol until the connection opens, then the frames'
        # splitter; the request's last bytes (its end may straddle two reads),
        # then what the client sent behind it.
        self.ws: ServerProtocol | None = ServerProtocol(logger=_log)
        self.frames: FrameSplitter | None = None
        self.head_tail = b""
        self.early: bytes | None = None
        # Control frames to send (pongs, close), written together at the end of a read.
        self.replies: list[bytes] = []
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.conn: NativeConnection | None = None
        self.paused = False
        # Reading stops while an admission runs (reading_held) or writes are
        # paused: a client that does not read cannot make the server buffer for it.
        self.reading_held = False
        # Control frames (pings) a client may send: CONTROL_BURST, then CONTROL_RATE/s.
        self.controls = TokenBucket(CONTROL_RATE, CONTROL_BURST, time.monotonic())
        self.close_sent = False
        self.eof = False  # the TCP is closed: the connection failed, or the handshake ended
        self.close_timer: asyncio.TimerHandle | None = None
        self.remote = ""

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; uvicorn feeds the upgrade request next."""
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.remote = f"{peer[0]}:{peer[1]}"
        if self.server_connections is not None:
            self.server_connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection (presence and hooks follow in the hub)."""
        if self.server_connections is not None:
            self.server_connections.discard(self)
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        conn = self.conn
        if conn is not None:
            self.hub.detach(conn)

    def pause_writing(self) -> None:
        """The transport buffer is full: frames wait in the pending list, reading stops."""
        self.paused = True
        self._reading()

    def resume_writing(self) -> None:
        """The transport drained: flush what waited, read again."""
        self.paused = False
        self._reading()
        conn = self.conn
        if conn is not None and conn.pending:
            self.hub.flusher.mark(conn)

    def _reading(self) -> None:
        # Read only while neither an admission nor a full outgoing buffer holds it
        # back (every pong, error and reply it could provoke would pile up unread).
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.paused or self.reading_held:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        """Split the client's frames and act on them in order (before: read the request)."""
        frames = self.frames
        if frames is None:
            self.handshake_data(data)
            return
        events = frames.receive_data(data)
        conn = self.conn
        if not events or conn is None or self.eof:
            return
        for event in events:
            if type(event) is str:
                if not self.close_sent:
                    conn.receive(event)
            else:
                self.control(event, events)
        if self.replies:  # the pongs of the whole read, in one write
            self.write_replies()

    # -- uvicorn's server state -------------------------------------------------------------

    def shutdown(self) -> None:
        """uvicorn is shutting down: close with 1012 (or refuse a pending handshake)."""
        if self.conn is None:
            self.transport.close()
        else:
            self.close(CloseCode.SERVICE_RESTART, "server shutting down")

    # -- handshake --------------------------------------------------------------------------

    def handshake_data(self, data: bytes) -> None:
        """Feed the upgrade request to the handshake's protocol; keep the frames behind it."""
        ws = self.ws
        if ws is None or self.close_sent:
            return
        if self.early is not None:  # the request is in and its admission runs
            self.early += data
            return
        seen = self.head_tail + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self.head_tail = seen[-3:]
        else:
            cut = end + 4 - len(self.head_tail)
            self.early = data[cut:]
            data = data[:cut]
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                self.handshake(event)
        self.write_replies()

    def handshake(self, request: Request) -> None:
        """Admit or refuse the upgrade ``request`` (an async admission holds reading)."""
        parts = urlsplit(request.path)
        path = unquote(parts.path)
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            self.elsewhere(request)
            return
        self.opened_with = None
        connect = ConnectRequest.build(
            path=path,
            route=path[len(self.prefix) :],
            query_string=parts.query,
            headers=request.headers.raw_items(),
            client=self.remote.rpartition(":")[0],
        )
        decision = self.hub.admit(connect, self.config)
        if isinstance(decision, Admission | Refusal):
            self.decided(request, decision)
            return
        # An async authenticator or a per-user count in Redis: stop reading from
        # the client until the decision is in, then go on where we left off.
        self.reading_held = True
        self._reading()
        task = self.hub.spawn(decision, name="roomcast-admission")
        task.add_done_callback(functools.partial(self.admission_done, request))

    def elsewhere(self, request: Request) -> None:
        """An upgrade outside the prefix: HTTP 404, or hand it to the ``fallback`` protocol.

        The fallback (uvicorn's ASGI WebSocket protocol) takes over the transport
        and is fed the request and what followed it, as uvicorn's HTTP protocol
        would have fed it; from then on this object is out of the connection.
        """
        fallback, opened_with = self.fallback, self.opened_with
        if fallback is None or opened_with is None:
            self.refuse(Refusal(404, "no such endpoint"))
            return
        config, server_state, app_state = opened_with
        self.opened_with = None
        self.ws = None  # no answer of ours
        self.close_sent = True
        if self.server_connections is not None:
            self.server_connections.discard(self)
        early, self.early = self.early or b"", None
        transport = self.transport
        proto = fallback(config=config, server_state=server_state, app_state=app_state)
        proto.connection_made(transport)
        transport.set_protocol(proto)
        proto.data_received(request.serialize() + early)

    def admission_done(self, request: Request, task: asyncio.Task[Any]) -> None:
        """An async admission finished: open or refuse, then read again."""
        decision: Admission | Refusal
        if task.cancelled():
            decision = Refusal(503, "server shutting down")
        elif task.exception() is not None:
            decision = Refusal(500, "admission failed")
        else:
            decision = task.result()
        if self.transport.is_closing():  # the client went away meanwhile
            if isinstance(decision, Admission):
                self.hub.abandon(decision)
            return
        self.decided(request, decision)
        if self.close_sent:
            return
        self.reading_held = False
        self._reading()

    def opening(self) -> ServerProtocol:
        """The handshake's protocol (RuntimeError once the connection is open)."""
        ws = self.ws
        if ws is None:
            raise RuntimeError("the opening handshake is over")
        return ws

    def decided(self, request: Request, decision: Admission | Refusal) -> None:
        """Answer the request; on 101, attach the connection and read what followed."""
        if isinstance(decision, Refusal):
            self.refuse(decision)
            return
        hub = self.hub
        opening = self.opening()
        response = opening.accept(request)
        opening.send_response(response)
        self.write_replies()  # on a refusal, this closes the TCP too
        if response.status_code != 101:
            hub.abandon(decision)
            self.close_sent = True
            return
        self.ws = None  # frees the upgrade request too
        self.frames = FrameSplitter(max_size=hub.max_message_bytes)
        conn = self.conn = NativeConnection(
            self, hub, self.config, user_id=decision.user_id, info=decision.info, remote=self.remote
        )
        hub.attach(conn, decision)
        early, self.early = self.early, None
        if early and not self.close_sent:  # sent right behind the request
            self.data_received(early)

    def refuse(self, refusal: Refusal) -> None:
        """Answer the request with ``refusal``'s status and JSON body, then close."""
        self.hub.gate.refused(refusal, remote=self.remote)
        opening = self.opening()
        response = opening.reject(refusal.status, "")
        body = refusal.body()
        for name in ("Content-Type", "Content-Length"):
            del response.headers[name]
        response.headers["Content-Type"] = "application/json"
        response.headers["Content-Length"] = str(len(body))
        response.body = body
        opening.send_response(response)
        self.write_replies()  # and close the TCP
        self.close_sent = True

    # -- frames -----------------------------------------------------------------------------

    def control(self, event: Event, events: list[Event]) -> None:
        """Act on an event other than a text message; ``events`` holds the whole read's."""
        conn = self.conn
        if self.eof or conn is None:
            return
        if isinstance(event, Ping):
            self.replies.append(_frame(Opcode.PONG, event.data))
            if not self.controls.take(time.monotonic()) and not self.close_sent:
                # A ping flood: each one costs a pong; a client has no need for more.
                self.hub.metrics.policy_closes.labels(reason="pings").inc()
                at = next(i for i, later in enumerate(events) if later is event)
                self.flood(events[at + 1 :])
        elif isinstance(event, Pong):
            conn.pong(event.data)
        elif isinstance(event, bytes):
            if not self.close_sent:
                conn.hub.send_error(conn, ProtocolError(ErrorCode.INVALID_MESSAGE, _BINARY))
        elif isinstance(event, Close):
            self.close_received(event)
        elif isinstance(event, Violation):
            if self.close_sent:  # our close frame is out: just end the TCP connection
                self.write_replies(eof=True)
            else:
                self.fail(event.code, event.reason)

    def flood(self, rest: list[Event]) -> None:
        """Fail with 1008 for a ping past the budget, answering the rest of its read first.

        Its pings get pongs; a close frame or violation ending it wins over the 1008.
        """
        last = _close_frame(CloseCode.POLICY_VIOLATION, "too many control frames")
        for event in rest:
            if isinstance(event, Ping):
                self.replies.append(_frame(Opcode.PONG, event.data))
            elif isinstance(event, Close):
                last = _frame(Opcode.CLOSE, event.data)
            elif isinstance(event, Violation):
                last = _close_frame(event.code, event.reason)
        self.replies.append(last)
        self.write_replies(eof=True)
        self.after_close_sent()

    # -- closing ----------------------------------------------------------------------------

    def close(self, code: int, reason: str, *, eof: bool = False) -> None:
        """Flush what is pending, send a close frame, forget the connection (eof: and the TCP)."""
        if self.close_sent:
            return
        self.close_sent = True
        if self.frames is not None:
            self.replies.append(_close_frame(code, reason))
        self.write_replies(eof=eof)
        self.after_close_sent()

    def fail(self, code: int, reason: str) -> None:
        """Close because the client broke the protocol or went silent (then close the TCP)."""
        self.close(code, reason, eof=True)

    def after_close_sent(self) -> None:
        """Forget the connection; abort the TCP if the client never finishes closing."""
        self.close_sent = True
        conn = self.conn
        if conn is not None:
            self.hub.detach(conn)
        if self.close_timer is None:
            # Also when closing: close() waits for a full buffer to drain, which a
            # dead client never does.
            self.close_timer = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT, self.transport.abort
            )

    def close_received(self, close: Close) -> None:
        """The client's close frame: echo it (unless ours is out), then close the TCP."""
        echo = not self.close_sent
        if echo:
            self.replies.append(_frame(Opcode.CLOSE, close.data))
        self.write_replies(eof=True)
        self.close_sent = True
        if echo and self.conn is not None:
            self.hub.detach(self.conn)

    def ping(self, payload: bytes) -> None:
        """Send a protocol-level ping."""
        if self.close_sent or self.frames is None:
            return
        self.replies.append(_frame(Opcode.PING, payload))
        self.write_replies()

    def write_replies(self, *, eof: bool = False) -> None:
        """Write the handshake's response, or the queued control frames, in one write.

        Once closing, the connection's queued messages go first; ``eof``: then close the TCP.
        """
        replies = self.replies
        if self.ws is not None:
            out = self.ws.data_to_send()
            replies += out
            eof = eof or (bool(out) and out[-1] == b"")  # refused, or not a WebSocket request
        conn = self.conn
        if (eof or self.close_sent) and conn is not None and conn.pending:
            conn.flush()  # what was queued before the close frame goes out before it
        if replies:
            self.replies = []
            data = b"".join(replies)
            if data and not self.transport.is_closing():
                self.transport.write(data)
        if eof:
            self.eof = True
            self.transport.close()


def protocol_class(
    hub: Engine,
    config: HandlerConfig | None = None,
    *,
    prefix: str = "/ws",
    fallback: Callable[..., asyncio.Protocol] | None = None,
) -> type[NativeWebSocketProtocol]:
    """Return a uvicorn ``ws`` protocol class serving ``hub`` at ``prefix``.

    Pass it as ``uvicorn.Config(app, ws=protocol_class(hub))``.

    Args:
        hub: the hub the connections join.
        config: the endpoint's hooks, authentication and origins.
        prefix: ``{prefix}`` and ``{prefix}/{room}`` are served natively.
        fallback: a uvicorn ``ws`` protocol class (for example
            :class:`~roomcast.frontends.wsguard.GuardedWebSocketProtocol`) that
            serves upgrades on every other path through the ASGI app; without
            one, those get HTTP 404.
    """
    return type(
        "BoundNativeWebSocketProtocol",
        (NativeWebSocketProtocol,),
        {
            "__slots__": (),
            "hub": hub,
            "config": config or HandlerConfig(),
            "prefix": prefix.rstrip("/"),
            "fallback": None if fallback is None else staticmethod(fallback),
        },
    )
