"""Reference peer: the typical Starlette-on-uvicorn room server with a per-member send loop.

Same wire protocol as ``websockets_broadcast.py`` (see ``bench/README.md``), implemented the way
a Starlette application usually does it: rooms are a ``dict`` of ``set[WebSocket]`` and a chat
message is delivered with ``for ws in list(room): await ws.send_text(text)``.

Runs under uvicorn with uvloop and httptools (uvicorn's default WebSocket implementation).

Usage: ``python bench/peers/starlette_loop.py PORT``
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

HOST = "127.0.0.1"

rooms: dict[str, set[WebSocket]] = {}


def utc_timestamp() -> str:
    """Current UTC time as ISO 8601 with a ``Z`` suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def system_frame(event: str, **data: Any) -> str:
    return json.dumps({"type": "system", "data": {"event": event, **data}})


def join(ws: WebSocket, room: str, joined: set[str]) -> None:
    rooms.setdefault(room, set()).add(ws)
    joined.add(room)


def leave(ws: WebSocket, room: str, joined: set[str]) -> None:
    members = rooms.get(room)
    if members is not None:
        members.discard(ws)
        if not members:
            del rooms[room]
    joined.discard(room)


async def endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    conn_id = str(uuid.uuid4())
    joined: set[str] = set()
    try:
        await websocket.send_text(system_frame("welcome", id=conn_id))
        initial_room = websocket.path_params.get("room")
        if initial_room:
            join(websocket, initial_room, joined)
        while True:
            raw = await websocket.receive_text()
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
                if members is None or websocket not in members:
                    continue
                text = json.dumps(
                    {
                        "id": str(uuid.uuid4()),
                        "type": "chat",
                        "room": room,
                        "from": conn_id,
                        "data": msg.get("data"),
                        "timestamp": utc_timestamp(),
                    }
                )
                for ws in list(members):
                    # A member that went away is removed by its own endpoint's cleanup.
                    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                        await ws.send_text(text)
            elif kind == "join" and isinstance(room, str) and room:
                join(websocket, room, joined)
                await websocket.send_text(system_frame("joined", room=room))
            elif kind == "leave" and isinstance(room, str):
                leave(websocket, room, joined)
                await websocket.send_text(system_frame("left", room=room))
    except WebSocketDisconnect:
        pass
    finally:
        for room in list(joined):
            leave(websocket, room, joined)


app = Starlette(
    routes=[
        WebSocketRoute("/ws", endpoint),
        WebSocketRoute("/ws/{room}", endpoint),
    ]
)


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    raise_fd_limit()
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    uvicorn.run(
        app,
        host=HOST,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
