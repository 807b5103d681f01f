"""The native WebSocket front end: an asyncio protocol that writes frames itself.

uvicorn hands every WebSocket upgrade request to its ``ws`` protocol class; the
standalone server plugs :func:`protocol_class` in there, so plain HTTP stays on
ASGI while WebSocket connections skip the ASGI message layer entirely. The
opening handshake, frame parsing, UTF-8 and size checks, pings and the closing
handshake are done by the sans-I/O :class:`websockets.server.ServerProtocol`;
outgoing data frames are built once per message by
:attr:`roomcast.protocol.Encoded.frame` and written by :meth:`NativeConnection.flush`
with one ``transport.write`` per connection per event-loop iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import SERVER, Protocol, State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C extension is missing on this platform
    from websockets.utils import apply_mask

from roomcast.core.admission import Admission, Refusal
from roomcast.core.auth import ConnectRequest
from roomcast.core.connection import Connection
from roomcast.core.endpoint import HandlerConfig
from roomcast.core.ratelimit import TokenBucket
from roomcast.errors import CloseCode, ErrorCode, ProtocolError

if TYPE_CHECKING:
    from roomcast.core.engine import Engine

__all__ = ["NativeConnection", "NativeWebSocketProtocol", "protocol_class"]

_log = logging.getLogger("roomcast.native")

CLOSE_TIMEOUT = 5.0

CONTROL_BURST = 10
"""Pings a client may send at once; beyond, ``CONTROL_RATE`` per second, else close 1008."""

CONTROL_RATE = 2.0
"""Pings per second a client may keep sending (each one costs the server a pong)."""
"""Seconds to wait for the client's close frame (or to drain to a slow client)."""

_WAITING = StreamReader.at_eof.__code__


def _between_frames(ws: Protocol) -> bool:
    """Whether ``ws``'s parser waits for the first byte of a frame, nothing buffered.

    Its reader's buffer alone does not tell: the parser takes a frame's header
    out of the buffer before the rest has arrived. Between frames the parser
    sits in :meth:`StreamReader.at_eof`, and that is what is checked.
    """
    if ws.reader.buffer or ws.current_size is not None:
        return False
    gen: Any = ws.parser
    while gen.gi_yieldfrom is not None:
        gen = gen.gi_yieldfrom
    return gen.gi_code is _WAITING


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

    Handles ``{prefix}`` and ``{prefix}/{room}``; any other path gets HTTP 404.
    """

    __slots__ = (
        "close_sent",
        "close_timer",
        "conn",
        "controls",
        "fragment_text",
        "fragments",
        "held",
        "paused",
        "plain",
        "reading_held",
        "remote",
        "server_connections",
        "transport",
        "ws",
    )

    hub: ClassVar[Engine]
    config: ClassVar[HandlerConfig]
    prefix: ClassVar[str] = "/ws"

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
        # The handshake's protocol; a frames-only one replaces it once open.
        self.ws: Protocol = ServerProtocol(max_size=self.hub.max_message_bytes, logger=_log)
        # True while the parser is between frames: plain text frames may skip it.
        self.plain = False
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.conn: NativeConnection | None = None
        self.paused = False
        # Reading stops while an admission runs (reading_held) or writes are
        # paused: a client that does not read cannot make the server buffer for it.
        self.reading_held = False
        # Control frames (pings) a client may send: CONTROL_BURST, then CONTROL_RATE/s.
        self.controls = TokenBucket(CONTROL_RATE, CONTROL_BURST, time.monotonic())
        self.close_sent = False
        self.close_timer: asyncio.TimerHandle | None = None
        self.fragments: list[bytes | bytearray | memoryview] = []
        self.fragment_text = True
        self.remote = ""
        # Events received while an async admission runs (None otherwise).
        self.held: list[Any] | None = None

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
        # Read from the client only while neither an admission nor a full
        # outgoing buffer holds it back (every pong, error and reply it could
        # provoke would otherwise pile up unread).
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.paused or self.reading_held:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        """Parse frames and hand complete text messages to the connection."""
        if self.plain:
            data = self.text_frames(data)
            if not data:
                return
        ws = self.ws
        ws.receive_data(data)
        self.dispatch(ws.events_received())

    def text_frames(self, data: bytes) -> bytes:
        """Handle the plain text frames at the front of ``data``; return the rest.

        The fast path for what clients send almost always: complete, unfragmented,
        masked text frames with a payload under 64 KiB and no reserved bits. Only
        called while the sans-I/O parser sits at a frame boundary with nothing
        buffered, so everything else — control frames, fragments, protocol errors,
        frames split across reads — goes on to it from the first frame that is not
        plain, and it enforces the protocol there.
        """
        # Precondition: self.plain (the parser is between frames).
        limit = self.hub.max_message_bytes
        size = len(data)
        i = 0
        while size - i >= 6 and data[i] == 0x81:  # FIN, no RSV bits, opcode text
            second = data[i + 1]
            if second < 0x80:  # unmasked: a protocol error for the parser to report
                break
            length = second & 0x7F
            start = i + 6
            if length == 126:
                if size - i < 8:
                    break
                length = (data[i + 2] << 8) | data[i + 3]
                start = i + 8
            elif length == 127:
                break
            end = start + length
            if end > size or length > limit:
                break
            payload = apply_mask(data[start:end], data[start - 4 : start])
            i = end
            self.message_received(payload, True)
            if self.close_sent:
                break
        return data[i:] if i else data

    def dispatch(self, events: Iterable[Any]) -> None:
        ws = self.ws
        for event in events:
            if type(event) is Frame:
                held = self.held
                if held is None:
                    self.frame_received(event)
                else:  # sent right behind the request: after the admission
                    held.append(event)
            elif isinstance(event, Request):
                self.handshake(event)
        self.write_protocol_data()
        if ws.parser_exc is not None and not self.close_sent:
            # The parser failed the connection (1002, 1007, 1009): close frame is out.
            self.after_close_sent()
        self.plain = (
            self.conn is not None
            and self.held is None
            and not self.close_sent
            and ws.state is State.OPEN
            and _between_frames(ws)
        )
        if self.plain and type(ws) is ServerProtocol:
            # Open, and nothing half-parsed: go on with a protocol that knows only
            # frames, so the upgrade request (which the handshake's parser keeps
            # referring to) is freed. Its pending output went out above.
            self.ws = Protocol(SERVER, max_size=self.hub.max_message_bytes, logger=_log)

    def eof_received(self) -> bool | None:
        """The client half-closed: let the transport close."""
        return None

    # -- uvicorn's server state -------------------------------------------------------------

    def shutdown(self) -> None:
        """uvicorn is shutting down: close with 1012 (or refuse a pending handshake)."""
        if self.conn is None:
            self.transport.close()
        else:
            self.close(CloseCode.SERVICE_RESTART, "server shutting down")

    # -- handshake --------------------------------------------------------------------------

    def handshake(self, request: Request) -> None:
        parts = urlsplit(request.path)
        path = unquote(parts.path)
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            self.refuse(Refusal(404, "no such endpoint"))
            return
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
        self.held = []
        self.reading_held = True
        self._reading()
        task = self.hub.spawn(decision, name="roomcast-admission")
        task.add_done_callback(functools.partial(self.admission_done, request))

    def admission_done(self, request: Request, task: asyncio.Task[Any]) -> None:
        held, self.held = self.held or [], None
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
        self.dispatch(held)  # also when empty: it picks the parser for what comes next

    def opening(self) -> ServerProtocol:
        """The handshake's protocol (replaced by a frames-only one once open)."""
        ws = self.ws
        assert isinstance(ws, ServerProtocol)
        return ws

    def decided(self, request: Request, decision: Admission | Refusal) -> None:
        if isinstance(decision, Refusal):
            self.refuse(decision)
            return
        hub = self.hub
        opening = self.opening()
        response = opening.accept(request)
        opening.send_response(response)
        self.write_protocol_data()
        if response.status_code != 101:
            hub.abandon(decision)
            self.close_sent = True
            self.transport.close()
            return
        conn = self.conn = NativeConnection(
            self,
            hub,
            self.config,
            user_id=decision.user_id,
            info=decision.info,
            remote=self.remote,
        )
        hub.attach(conn, decision)

    def refuse(self, refusal: Refusal) -> None:
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
        self.write_protocol_data()
        self.close_sent = True
        self.transport.close()

    # -- frames -----------------------------------------------------------------------------

    def frame_received(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self.message_received(frame.data, opcode is Opcode.TEXT)
            else:
                self.fragments = [frame.data]
                self.fragment_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            self.fragments.append(frame.data)
            if frame.fin:
                data, self.fragments = b"".join(self.fragments), []
                self.message_received(data, self.fragment_text)
        elif opcode is Opcode.PONG:
            if self.conn is not None:
                self.conn.pong(bytes(frame.data))
        elif opcode is Opcode.CLOSE:
            self.close_received()
        elif not self.controls.take(time.monotonic()) and not self.close_sent:
            # A ping flood: each one costs a pong; a client has no need for more.
            self.hub.metrics.policy_closes.labels(reason="pings").inc()
            self.fail(CloseCode.POLICY_VIOLATION, "too many control frames")
        # PING: the protocol queued the pong; write_protocol_data sends it.

    def message_received(self, data: bytes | bytearray | memoryview, text: bool) -> None:
        conn = self.conn
        if conn is None or self.close_sent:
            return
        if not text:
            conn.hub.send_error(
                conn,
                ProtocolError(
                    ErrorCode.INVALID_MESSAGE, "binary frames are not supported; send JSON text"
                ),
            )
            return
        try:
            payload = str(data, "utf-8")
        except UnicodeDecodeError:
            self.fail(CloseCode.INVALID_DATA, "invalid UTF-8 in text frame")
            return
        conn.receive(payload)

    # -- closing ----------------------------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """Flush what is pending, send a close frame, and forget the connection."""
        if self.close_sent:
            return
        conn = self.conn
        if conn is not None and conn.pending and not self.paused:
            conn.flush()
        with contextlib.suppress(InvalidState):
            self.ws.send_close(code, reason)
        self.write_protocol_data()
        self.after_close_sent()

    def fail(self, code: int, reason: str) -> None:
        """Close because the client broke the protocol or went silent."""
        if self.close_sent:
            return
        self.ws.fail(code, reason)
        self.write_protocol_data()
        self.after_close_sent()

    def after_close_sent(self) -> None:
        self.close_sent = True
        self.plain = False
        conn = self.conn
        if conn is not None:
            self.hub.detach(conn)
        if self.close_timer is None:
            # Also when closing: close() waits for a full buffer to drain, which a
            # dead client never does.
            self.close_timer = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT, self.transport.abort
            )

    def close_received(self) -> None:
        # The protocol queued its echo of the client's close frame (if we had not
        # sent ours already); once both are exchanged the server closes the TCP.
        self.write_protocol_data()
        self.plain = False
        if not self.close_sent:
            self.close_sent = True
            conn = self.conn
            if conn is not None:
                self.hub.detach(conn)
        self.transport.close()

    def ping(self, payload: bytes) -> None:
        """Send a protocol-level ping."""
        if self.close_sent:
            return
        self.ws.send_ping(payload)
        self.write_protocol_data()

    def write_protocol_data(self) -> None:
        out = self.ws.data_to_send()
        if not out:
            return
        conn = self.conn
        if conn is not None and conn.pending and self.ws.state is not State.OPEN:
            conn.flush()  # what was queued before the close frame goes out before it
        data = b"".join(out)
        if data and not self.transport.is_closing():
            self.transport.write(data)
        if out[-1] == b"":
            # The protocol failed the connection (keepalive timeout, 1009, 1007...)
            # or finished the closing handshake: a server closes the TCP now.
            self.transport.close()


def protocol_class(
    hub: Engine, config: HandlerConfig | None = None, *, prefix: str = "/ws"
) -> type[NativeWebSocketProtocol]:
    """Return a uvicorn ``ws`` protocol class serving ``hub`` at ``prefix``.

    Pass it as ``uvicorn.Config(app, ws=protocol_class(hub))``.
    """
    return type(
        "BoundNativeWebSocketProtocol",
        (NativeWebSocketProtocol,),
        {
            "__slots__": (),
            "hub": hub,
            "config": config or HandlerConfig(),
            "prefix": prefix.rstrip("/"),
        },
    )
