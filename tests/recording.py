"""A hub connection without a socket, for tests that drive the hub in-process.

:class:`RecordingConnection` stands in for the transport: its ``flush`` decodes
what the hub queued, its ``close`` records the close code and tells the hub the
transport is gone.
"""

from __future__ import annotations

from typing import Any

import orjson

from roomcast.app import Hub
from roomcast.core.connection import Connection
from roomcast.core.endpoint import HandlerConfig
from roomcast.errors import CloseCode


class RecordingConnection(Connection):
    """A connection whose transport is a list of decoded messages.

    ``writable=False`` makes it a reader that stopped reading: nothing is
    flushed and its pending list fills.
    """

    def __init__(
        self,
        hub: Hub,
        config: HandlerConfig | None = None,
        *,
        writable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(hub, config or HandlerConfig(), **kwargs)
        self.can_write = writable
        self.received: list[dict[str, Any]] = []
        self.flushes = 0
        self.close_codes: list[int] = []
        self.aborted = False

    def writable(self) -> bool:
        return self.can_write

    def flush(self) -> None:
        pending = self.pending
        if not pending or not self.can_write:
            return
        self.flushes += 1
        self.received.extend(orjson.loads(e.payload) for e in pending)
        pending.clear()

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        self.close_codes.append(code)
        if self.closed:
            return
        self.flush()
        self.hub.detach(self)

    def abort(self) -> None:
        self.aborted = True
        self.hub.detach(self)

    # -- what it received -------------------------------------------------------------

    def send_json(self, **obj: Any) -> None:
        """Feed the hub one client frame."""
        self.receive(orjson.dumps(obj).decode())

    def say(self, text: str, *, room: str | None = None, **extra: Any) -> None:
        """Send a chat message ``{"text": text}`` (to ``room`` when given)."""
        obj: dict[str, Any] = {"type": "chat", "data": {"text": text}, **extra}
        if room is not None:
            obj["room"] = room
        self.send_json(**obj)

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        """Received messages of ``type_``, in order."""
        return [m for m in self.received if m["type"] == type_]

    def texts(self) -> list[str]:
        """``data.text`` of every chat message received, in order."""
        return [m["data"]["text"] for m in self.of_type("chat")]

    def errors(self) -> list[dict[str, Any]]:
        """``data`` of every error message received, in order."""
        return [m["data"] for m in self.of_type("error")]

    def offsets(self) -> list[int]:
        """``offset`` of every chat message received, in order."""
        return [m["offset"] for m in self.of_type("chat")]

    def events(self) -> list[str]:
        """``data.event`` of every system message received, in order."""
        return [m["data"].get("event") for m in self.of_type("system")]

    def presence(self) -> list[tuple[str, str]]:
        """``(user_id, status)`` of every presence message received, in order."""
        return [(m["data"]["user_id"], m["data"]["status"]) for m in self.of_type("presence")]
