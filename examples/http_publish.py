"""Sending from HTTP handlers: a FastAPI route that publishes to a room.

``POST /rooms/{room}/messages`` with ``{"text": "..."}`` publishes a chat message
to ``room``; every WebSocket member of the room receives it. ``hub.publish`` goes
through the hub's broker, so with a Redis broker it reaches every pod.

Run it, connect a client, then post::

    python examples/http_publish.py [--port 8000]
    python examples/chat_client.py ws://127.0.0.1:8000/ws/general
    curl -X POST localhost:8000/rooms/general/messages \\
         -H 'content-type: application/json' -d '{"text": "deploy finished"}'
"""

from __future__ import annotations

import argparse
import logging

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from roomcast import HandlerConfig, Hub, Message, MessageType, ProtocolError

hub = Hub()
app = FastAPI(title="roomcast HTTP publish example", lifespan=hub.lifespan)
app.mount("/ws", hub.websocket_app(HandlerConfig()))


class NewMessage(BaseModel):
    text: str


class Published(BaseModel):
    id: str
    timestamp: str


@app.post("/rooms/{room}/messages")
async def post_message(room: str, body: NewMessage) -> Published:
    """Publish ``body.text`` as a chat message to ``room``."""
    try:
        msg = await hub.publish(Message(type=MessageType.CHAT, room=room, data={"text": body.text}))
    except ProtocolError as exc:  # e.g. invalid_room
        raise HTTPException(status_code=400, detail=exc.detail) from exc
    return Published(id=msg.id, timestamp=msg.timestamp)


def main() -> None:
    parser = argparse.ArgumentParser(description="Publish to rooms from a FastAPI route.")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None)


if __name__ == "__main__":
    main()
