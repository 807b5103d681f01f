"""Client errors: reject an invalid chat message with an ``error`` to its sender only.

The ``on_message`` hook validates each chat message: ``data`` must be an object
with a non-empty string ``text`` of at most 500 characters. An invalid one is not
published; its sender alone gets::

    {"type": "error", "data": {"code": "invalid_message", "error": "data.text is empty"}, ...}

and the connection stays open. Valid messages are delivered to the room as usual.

Run it, then send an empty line (invalid) and ``hello`` (valid)::

    python examples/client_errors.py [--port 8000]
    python examples/chat_client.py ws://127.0.0.1:8000/ws/general
"""

from __future__ import annotations

import argparse
import logging

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from roomcast import Connection, ErrorCode, HandlerConfig, Hub, Message

MAX_TEXT = 500


def problem_with(data: object) -> str | None:
    """Return what is wrong with a chat message's ``data``, or None if it is valid."""
    if not isinstance(data, dict):
        return "data must be an object"
    text = data.get("text")
    if not isinstance(text, str):
        return "data.text must be a string"
    if not text.strip():
        return "data.text is empty"
    if len(text) > MAX_TEXT:
        return f"data.text is longer than {MAX_TEXT} characters"
    return None


def on_message(conn: Connection, msg: Message) -> Message | None:
    problem = problem_with(msg.data)
    if problem is not None:
        conn.send(hub.messages.error(ErrorCode.INVALID_MESSAGE, problem))  # to this client only
        return None  # and do not publish it
    return msg


hub = Hub()
app = Starlette(
    routes=[
        Mount("/ws", app=hub.websocket_app(HandlerConfig(on_message=on_message))),
        Mount("/", app=hub.api_app(insecure=True)),
    ],
    lifespan=hub.lifespan,
)


def main() -> None:
    parser = argparse.ArgumentParser(description="Chat that validates messages.")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None)


if __name__ == "__main__":
    main()
