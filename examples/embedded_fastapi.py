"""Your FastAPI app, with roomcast's WebSockets on its native protocol: ``roomcast.run``.

``roomcast.run(app, hub)`` serves the app on uvicorn like ``uvicorn.run(app)``,
but WebSocket upgrades on ``/ws`` and ``/ws/{room}`` go to roomcast's own
WebSocket protocol (frames written once per message, no ASGI message layer)
instead of ``app.mount("/ws", hub.websocket_app())``. Everything else is the
app's: ``POST /rooms/{room}/messages`` publishes to a room from a handler, and
its own ``@app.websocket("/echo")`` route keeps working on plain ASGI. The hub
starts before the app's lifespan and stops after it; SIGTERM closes every
WebSocket with 1012 and exits 0. See docs/topics/embedding.md.

Run it, connect a client, then post::

    python examples/embedded_fastapi.py [--port 8000]
    python examples/chat_client.py ws://127.0.0.1:8000/ws/general
    curl -X POST localhost:8000/rooms/general/messages \\
         -H 'content-type: application/json' -d '{"text": "hi"}'
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect
from pydantic import BaseModel

import roomcast
from roomcast import HandlerConfig, Hub, Message, MessageType, ProtocolError

hub = Hub()
log = logging.getLogger("example")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # roomcast.run has started the hub already: startup code may publish.
    log.info("app starting; hub started: %s", hub.started)
    yield
    log.info("app stopping")


app = FastAPI(title="roomcast embedded example", lifespan=lifespan)


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


@app.websocket("/echo")
async def echo(ws: WebSocket) -> None:
    """The app's own WebSocket route: served through ASGI, as before."""
    await ws.accept()
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await ws.send_text(await ws.receive_text())


def main() -> None:
    parser = argparse.ArgumentParser(description="A FastAPI app with roomcast.run.")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    roomcast.run(app, hub, port=args.port, config=HandlerConfig(), log_config=None)


if __name__ == "__main__":
    main()
