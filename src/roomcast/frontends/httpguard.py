"""Deadlines and byte budgets for HTTP request heads, before any upgrade (slowloris).

uvicorn's HTTP protocol waits for a request head as long as the client cares to
take and buffers headers of any size. :func:`guarded_http_protocol` returns its
httptools protocol with three limits on every request head (the upgrade
request of a WebSocket included):

- a deadline: a head not complete ``handshake_timeout`` seconds after the
  connection (or after the request began, on a kept-alive connection) closes
  the connection (HTTP 408);
- a size: a head larger than ``max_header_bytes`` gets HTTP 431 and a close;
- a count: at most ``max_pending`` connections may be sending a head at once;
  one more is refused at once with HTTP 503 (they count apart from
  ``--max-connections``, which counts WebSockets).

Pass the class as ``uvicorn.Config(app, http=guarded_http_protocol(...))``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["guarded_http_protocol"]


class _Pending:
    """Connections of one server still sending a request head, and who counts refusals."""

    __slots__ = ("count", "on_refused")

    def __init__(self, on_refused: Callable[[int], None] | None) -> None:
        self.count = 0
        self.on_refused = on_refused


class _GuardedHttpProtocol(HttpToolsProtocol):
    handshake_timeout: ClassVar[float]
    max_header_bytes: ClassVar[int]
    max_pending: ClassVar[int]
    pending: ClassVar[_Pending]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting = False
        self._head = 0  # bytes of the current request head so far
        self._tail = b""  # the last bytes seen, to find a head's end across reads
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.pending.count >= self.max_pending:
            self._refuse(503, b"too many connections still sending their request")
            return
        self._wait()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._waiting:
            # Count what belongs to the head: up to its blank line, if it is here.
            window = self._tail + data
            end = window.find(b"\r\n\r\n")
            if end < 0:
                self._head += len(data)
            else:  # the head ends in this read: what follows is the body
                self._head += end + 4 - len(self._tail)
            self._tail = window[-3:]
            if self._head > self.max_header_bytes:
                self._refuse(431, b"request head too large")
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._waiting:  # the next request on a kept-alive connection
            self._wait()

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        super().on_headers_complete()

    def _wait(self) -> None:
        self._waiting = True
        self._head = 0
        self._tail = b""
        self.pending.count += 1
        self._deadline = self.loop.call_later(self.handshake_timeout, self._expired)

    def _stop_waiting(self) -> None:
        if not self._waiting:
            return
        self._waiting = False
        self.pending.count -= 1
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        self._refuse(408, b"request head not received in time")

    def _refuse(self, status: int, reason: bytes) -> None:
        self._stop_waiting()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        on_refused = self.pending.on_refused
        if on_refused is not None:
            on_refused(status)
        phrase = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}.get(
            status, b"Service Unavailable"
        )
        transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, phrase, len(reason), reason)
        )
        transport.close()


def guarded_http_protocol(
    *,
    handshake_timeout: float,
    max_header_bytes: int,
    max_pending: int,
    on_refused: Callable[[int], None] | None = None,
) -> type[HttpToolsProtocol]:
    """Return uvicorn's httptools protocol with the module's three limits.

    Args:
        handshake_timeout: seconds a request head may take.
        max_header_bytes: largest request head (request line and headers).
        max_pending: connections that may be sending a head at once.
        on_refused: called with the HTTP status of each connection refused
            (408, 431 or 503), to count it.
    """
    return type(
        "GuardedHttpProtocol",
        (_GuardedHttpProtocol,),
        {
            "handshake_timeout": handshake_timeout,
            "max_header_bytes": max_header_bytes,
            "max_pending": max_pending,
            "pending": _Pending(on_refused),
        },
    )
