"""Multi-pod setup: the same app, with a Redis broker between the pods.

The seed's production Quick Start. Every pod runs this app against the same
Redis; a message published on one pod reaches the room's members on every pod,
and presence and history are shared. Switching from one pod to many is one line:
the ``broker=`` argument.

The HTTP API needs an API key here (``Authorization: Bearer $ROOMCAST_API_KEY``);
without ``ROOMCAST_API_KEY`` it answers 403. ``/healthz`` and ``/readyz`` stay open
for the orchestrator.

Run two pods against one Redis and connect a client to each::

    export REDIS_URL=redis://127.0.0.1:6379/0
    python examples/multi_pod.py --port 8001 &
    python examples/multi_pod.py --port 8002 &
    python examples/chat_client.py ws://127.0.0.1:8001/ws/general
    python examples/chat_client.py ws://127.0.0.1:8002/ws/general
"""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from roomcast import HandlerConfig, Hub


def build_app(redis_url: str, api_key: str | None) -> Starlette:
    """Return the pod's app: WebSocket endpoint at /ws, HTTP API at /."""
    from roomcast.brokers.redis import RedisBroker

    hub = Hub(broker=RedisBroker.from_url(redis_url))
    return Starlette(
        routes=[
            Mount("/ws", app=hub.websocket_app(HandlerConfig())),
            Mount("/", app=hub.api_app(api_key=api_key)),
        ],
        lifespan=hub.lifespan,  # connects to Redis at startup, disconnects at shutdown
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="One roomcast pod of many, sharing Redis.")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()

    # Production logging: one line per record, info level.
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s",
    )

    app = build_app(os.environ["REDIS_URL"], os.environ.get("ROOMCAST_API_KEY"))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None)


if __name__ == "__main__":
    main()
