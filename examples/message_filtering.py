"""Message filtering: drop chat messages with blocked words, tag the others.

An ``on_message`` hook sees every chat message before it is published. Returning
None drops it (nobody receives it, the sender included); returning the message,
possibly changed, publishes it. This hook is a plain function: it runs inline on
the event loop, so it must be quick (use an ``async def`` hook for slow work).

Delivered messages carry a field the server added::

    {"type": "chat", "room": "general", "from": "c3-9b1e0f",
     "data": {"text": "hello", "moderation": "passed"}, ...}

Run it, then send ``this is spam`` (dropped) and ``hello`` (delivered)::

    python examples/message_filtering.py [--port 8000]
    python examples/chat_client.py ws://127.0.0.1:8000/ws/general
"""

from __future__ import annotations

import argparse
import json
import logging
import re

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from roomcast import Connection, HandlerConfig, Hub, Message

BLOCKLIST = frozenset({"spam", "scam", "phishing"})

log = logging.getLogger("message_filtering")


def contains_blocked_word(data: object) -> bool:
    """Tell whether any text in ``data`` (any JSON value) has a blocked word, in any case."""
    words = re.findall(r"\w+", json.dumps(data, ensure_ascii=False).casefold())
    return not BLOCKLIST.isdisjoint(words)


def on_message(conn: Connection, msg: Message) -> Message | None:
    if contains_blocked_word(msg.data):
        log.info("dropped a message from %s in %s", conn.user_id, msg.room)
        return None  # suppress it
    # Add server metadata. ("from" is already set by the server: the user id, or
    # the connection id when anonymous; what a client claims is ignored.)
    if isinstance(msg.data, dict):
        msg.data = {**msg.data, "moderation": "passed"}
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
    parser = argparse.ArgumentParser(description="Chat with a word filter.")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None)


if __name__ == "__main__":
    main()
