"""Reference peer: the ``websockets_broadcast.py`` room server rebuilt on picows and orjson.

Same wire protocol and the same features as ``websockets_broadcast.py`` (see
``bench/README.md``), on a faster WebSocket layer: `picows <https://github.com/tarasko/picows>`_
(Cython framing, callbacks instead of one coroutine per connection) and orjson. It answers "how
fast is the same per-message JSON work on a fast WebSocket library", next to roomcast.

* ``/ws/{room}`` joins ``room`` on connect; ``/ws`` joins nothing and accepts
  ``{"type": "join", "room": "..."}`` / ``{"type": "leave", "room": "..."}`` messages. Any other
  path is accepted and closed with 1008, as the websockets peer does.
* Every connection first receives a ``system``/``welcome`` frame; a join via message is
  acknowledged with a ``system``/``joined`` frame (a leave with ``left``).
* A ``chat`` message is parsed with :func:`orjson.loads`, validated (a JSON object whose
  ``room`` the sender has joined), enriched with ``id`` (uuid4), ``from`` and ``timestamp``,
  serialised once with :func:`orjson.dumps` and the same bytes are sent to every member of the
  room, the sender included, with ``WSTransport.send``. Like ``websockets.broadcast()``, this
  neither waits for nor skips slow members: the frame goes to each transport's write buffer.
* What ``websockets`` does by default is done here too: fragmented messages are reassembled,
  binary messages are parsed as JSON, messages over 1 MiB close the connection with 1009, a
  ping goes out every 20 s and a connection that does not answer within 20 s is dropped, and a
  close frame is answered.

Usage: ``python bench/peers/picows_server.py PORT``
"""

from __future__ import annotations

import asyncio
import resource
import signal
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

HOST = "127.0.0.1"
#: ``websockets``' default ``max_size`` (per message) and keepalive (``ping_interval``,
#: ``ping_timeout``), so that both peers do the same work.
MAX_MESSAGE = 2**20
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0

TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY
CONTINUATION = WSMsgType.CONTINUATION
CLOSE = WSMsgType.CLOSE

rooms: dict[str, set[WSTransport]] = {}


def utc_timestamp() -> str:
    """Current UTC time as ISO 8601 with a ``Z`` suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def system_frame(event: str, **data: Any) -> bytes:
    return orjson.dumps({"type": "system", "data": {"event": event, **data}})


class RoomListener(WSListener):
    """One connection: its id, the rooms it joined, a partly received fragmented message."""

    def __init__(self, initial_room: str | None, valid_path: bool) -> None:
        super().__init__()
        self.conn_id = str(uuid.uuid4())
        self.joined: set[str] = set()
        self.initial_room = initial_room
        self.valid_path = valid_path
        self.transport: WSTransport | None = None
        self.fragments: list[bytes] | None = None
        self.fragments_size = 0

    # ------------------------------------------------------------------ rooms

    def join(self, room: str) -> None:
        assert self.transport is not None
        rooms.setdefault(room, set()).add(self.transport)
        self.joined.add(room)

    def leave(self, room: str) -> None:
        members = rooms.get(room)
        if members is not None:
            members.discard(self.transport)
            if not members:
                del rooms[room]
        self.joined.discard(room)

    # ------------------------------------------------------------------ picows callbacks

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if not self.valid_path:
            transport.send_close(WSCloseCode.POLICY_VIOLATION, b"unknown path")
            transport.disconnect()
            return
        transport.send(TEXT, system_frame("welcome", id=self.conn_id))
        if self.initial_room is not None:
            self.join(self.initial_room)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for room in list(self.joined):
            self.leave(room)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type in (TEXT, BINARY):
            if frame.fin:
                # Only valid during this callback; orjson.loads reads it right away.
                self.handle(transport, frame.get_payload_as_memoryview())
            else:
                self.fragments = [frame.get_payload_as_bytes()]
                self.fragments_size = frame.payload_size
        elif msg_type == CONTINUATION:
            if self.fragments is None:
                transport.send_close(WSCloseCode.PROTOCOL_ERROR, b"unexpected continuation")
                transport.disconnect()
                return
            self.fragments.append(frame.get_payload_as_bytes())
            self.fragments_size += frame.payload_size
            if self.fragments_size > MAX_MESSAGE:
                self.fragments = None
                transport.send_close(WSCloseCode.MESSAGE_TOO_BIG, b"message too big")
                transport.disconnect()
            elif frame.fin:
                payload = b"".join(self.fragments)
                self.fragments = None
                self.handle(transport, payload)
        elif msg_type == CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        # PING is answered by picows (enable_auto_pong); PONG is consumed by its auto-ping.

    # ------------------------------------------------------------------ the protocol

    def handle(self, transport: WSTransport, raw: bytes | memoryview) -> None:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if not isinstance(msg, dict):
            return
        kind = msg.get("type")
        room = msg.get("room")
        if kind == "chat":
            members = rooms.get(room) if isinstance(room, str) else None
            if members is None or transport not in members:
                return
            out = orjson.dumps(
                {
                    "id": str(uuid.uuid4()),
                    "type": "chat",
                    "room": room,
                    "from": self.conn_id,
                    "data": msg.get("data"),
                    "timestamp": utc_timestamp(),
                }
            )
            for member in members:
                member.send(TEXT, out)
        elif kind == "join" and isinstance(room, str) and room:
            self.join(room)
            transport.send(TEXT, system_frame("joined", room=room))
        elif kind == "leave" and isinstance(room, str):
            self.leave(room)
            transport.send(TEXT, system_frame("left", room=room))


def listener_factory(request: WSUpgradeRequest) -> RoomListener | None:
    try:
        path = request.path.decode("ascii")
    except UnicodeDecodeError:
        return None  # 404; websockets answers a non-ASCII request line with 400
    if path.startswith("/ws/") and len(path) > 4:
        return RoomListener(path[4:], valid_path=True)
    if path == "/ws":
        return RoomListener(None, valid_path=True)
    return RoomListener(None, valid_path=False)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    server = await ws_create_server(
        listener_factory,
        HOST,
        port,
        backlog=4096,
        max_frame_size=MAX_MESSAGE,
        enable_auto_ping=True,
        auto_ping_strategy=WSAutoPingStrategy.PING_PERIODICALLY,
        auto_ping_idle_timeout=PING_INTERVAL,
        auto_ping_reply_timeout=PING_TIMEOUT,
    )
    async with server:
        await stop


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    raise_fd_limit()
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(port))
    else:
        uvloop.run(main(port))
