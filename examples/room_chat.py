"""Room-based chat with presence hooks: announce who arrives and who leaves.

roomcast already sends ``presence`` events (``online`` when a user's first
connection joins a room, ``offline`` when the last one leaves). This example adds
application-level announcements on top, as the seed's OnConnect/OnDisconnect do:
a ``system`` message to each of the connection's rooms, e.g.::

    {"type": "system", "room": "general",
     "data": {"event": "member_joined", "user_id": "c7-3fa2b1", "text": "c7-3fa2b1 joined"}}

Run it, then connect two clients to the same room and watch the announcements::

    python examples/room_chat.py [--port 8000]
    python examples/chat_client.py ws://127.0.0.1:8000/ws/general
"""

from __future__ import annotations

import argparse
import logging

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from roomcast import Connection, HandlerConfig, Hub, Message, MessageType

hub = Hub()


async def announce(conn: Connection, rooms: list[str], event: str, verb: str) -> None:
    """Publish one ``system`` message to each of ``rooms`` about ``conn``'s user."""
    for room in rooms:
        data = {"event": event, "user_id": conn.user_id, "text": f"{conn.user_id} {verb}"}
        await hub.publish(Message(type=MessageType.SYSTEM, room=room, data=data))


async def on_connect(conn: Connection) -> None:
    # Runs after the welcome and the join of the room in the URL.
    # on_disconnect runs after the connection left its rooms, so remember them here.
    conn.state["rooms"] = sorted(conn.rooms)
    await announce(conn, conn.state["rooms"], "member_joined", "joined")


async def on_disconnect(conn: Connection) -> None:
    await announce(conn, conn.state.get("rooms", []), "member_left", "left")


config = HandlerConfig(on_connect=on_connect, on_disconnect=on_disconnect)
app = Starlette(
    routes=[
        Mount("/ws", app=hub.websocket_app(config)),
        Mount("/", app=hub.api_app(insecure=True)),
    ],
    lifespan=hub.lifespan,
)


def main() -> None:
    parser = argparse.ArgumentParser(description="Room chat with join/leave announcements.")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None)


if __name__ == "__main__":
    main()
