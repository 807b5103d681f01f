"""Single-pod setup: one hub, in memory, mounted in a Starlette app.

The seed's development Quick Start. No Redis: the hub's default in-memory broker
carries messages between the connections of this one process.

- ``ws://127.0.0.1:8000/ws/{room}`` connects and joins ``room`` (``/ws/`` joins none);
- ``/api/publish``, ``/api/rooms``, ``/healthz``, ``/metrics``... are the HTTP API,
  served here without an API key (``insecure=True``): for development only.

Run it, then connect a client or two::

    python examples/single_pod.py [--port 8000]
    python examples/chat_client.py ws://127.0.0.1:8000/ws/general
"""

from __future__ import annotations

import argparse
import logging

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from roomcast import HandlerConfig, Hub

hub = Hub()  # in memory, single pod

app = Starlette(
    routes=[
        Mount("/ws", app=hub.websocket_app(HandlerConfig())),
        Mount("/", app=hub.api_app(insecure=True)),
    ],
    lifespan=hub.lifespan,  # starts the hub with the app and closes it on shutdown
)


def main() -> None:
    parser = argparse.ArgumentParser(description="roomcast on one pod, in memory.")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()

    # Development logging: readable lines on stderr, roomcast's own at debug level.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    logging.getLogger("roomcast").setLevel(logging.DEBUG)

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None)


if __name__ == "__main__":
    main()
