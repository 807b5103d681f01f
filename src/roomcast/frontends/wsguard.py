"""uvicorn's WebSocket protocol with the native front end's two defences (``--ws asgi``).

``roomcast serve --ws asgi`` serves WebSockets through uvicorn's sans-I/O
protocol and the ASGI app. That protocol answers every ping at once, whether or
not the client reads: a client that floods pings and never reads makes the
server buffer the pongs (about 0.9 MB of memory per MB of pings). This subclass
adds what :mod:`roomcast.frontends.native` does:

- a budget of control frames: ``CONTROL_BURST`` pings at once, then
  ``CONTROL_RATE`` per second; past it the connection is failed with 1008;
- reading stops while the transport's outgoing buffer is full, so nothing a
  client provokes piles up unread. (uvicorn resumes reading when the app drains
  a receive queue that it had paused reading for; the ping budget still holds
  then.)

An application that runs its own uvicorn gets uvicorn's protocol as it is;
docs/topics/limits.md says what that means.
"""

from __future__ import annotations

import time
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from roomcast.core.ratelimit import TokenBucket
from roomcast.errors import CloseCode
from roomcast.frontends.native import CONTROL_BURST, CONTROL_RATE

__all__ = ["GuardedWebSocketProtocol"]


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol with a ping budget and read back-pressure."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._controls = TokenBucket(CONTROL_RATE, CONTROL_BURST, time.monotonic())

    def handle_ping(self) -> None:
        """Answer the ping within the budget; past it, fail the connection with 1008."""
        if self._controls.take(time.monotonic()):
            super().handle_ping()
            return
        self.conn.fail(CloseCode.POLICY_VIOLATION, "too many control frames")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()

    def pause_writing(self) -> None:
        """The outgoing buffer is full: stop reading too."""
        super().pause_writing()
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        """The outgoing buffer drained: read again, unless the app's queue holds reading."""
        super().resume_writing()
        if not self.read_paused and not self.transport.is_closing():
            self.transport.resume_reading()
