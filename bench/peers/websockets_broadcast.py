"""Reference peer: a minimal room server on raw ``websockets`` using ``websockets.broadcast``.

Speaks the benchmark wire protocol (see ``bench/README.md``):

* ``/ws/{room}`` joins ``room`` on connect; ``/ws`` joins nothing and accepts
  ``{"type": "join", "room": "..."}`` / ``{"type": "leave", "room": "..."}`` messages.
* Every connection first receives a ``system``/``welcome`` frame; a join via message is
  acknowledged with a ``system``/``joined`` frame.
* A ``chat`` message is parsed with :func:`json.loads`, enriched with ``id``, ``from`` and
  ``timestamp``, serialised once with :func:`json.dumps` and pushed to every member of the room
  (the sender included) with :func:`websockets.broadcast`.

Usage: ``python bench/peers/websockets_broadcast.py PORT``
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

HOST = "127.0.0.1"

rooms: dict[str, set[ServerConnection]] = {}


def utc_timestamp() -> str:
    """Current UTC time as ISO 8601 with a ``Z`` suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def system_frame(event: str, **data: Any) -> str:
    return json.dumps({"type": "system", "data": {"event": event, **data}})


def join(ws: ServerConnection, room: str, joined: set[str]) -> None:
    rooms.setdefault(room, set()).add(ws)
    joined.add(room)


def leave(ws: ServerConnection, room: str, joined: set[str]) -> None:
    members = rooms.get(room)
    if members is not None:
        members.discard(ws)
        if not members:
            del rooms[room]
    joined.discard(room)


async def handler(ws: ServerConnection) -> None:
    path = ws.request.path if ws.request is not None else ""
    conn_id = str(uuid.uuid4())
    joined: set[str] = set()
    if path.startswith("/ws/") and len(path) > 4:
        initial_room: str | None = path[4:]
    elif path == "/ws":
        initial_room = None
    else:
        await ws.close(1008, "unknown path")
        return
    try:
        await ws.send(system_frame("welcome", id=conn_id))
        if initial_room is not None:
            join(ws, initial_room, joined)
        async for raw in ws:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            kind = msg.get("type")
            room = msg.get("room")
            if kind == "chat":
                members = rooms.get(room) if isinstance(room, str) else None
                if members is None or ws not in members:
                    continue
                out = {
                    "id": str(uuid.uuid4()),
                    "type": "chat",
                    "room": room,
                    "from": conn_id,
                    "data": msg.get("data"),
                    "timestamp": utc_timestamp(),
                }
                broadcast(members, json.dumps(out))
            elif kind == "join" and isinstance(room, str) and room:
                join(ws, room, joined)
                await ws.send(system_frame("joined", room=room))
            elif kind == "leave" and isinstance(room, str):
                leave(ws, room, joined)
                await ws.send(system_frame("left", room=room))
    except ConnectionClosed:
        pass
    finally:
        for room in list(joined):
            leave(ws, room, joined)


async def main(port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(handler, HOST, port, backlog=4096):
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
