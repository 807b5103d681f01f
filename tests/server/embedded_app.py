"""A small FastAPI app for the embedding tests (tests/server/test_embed.py) and benchmarks.

Its own routes: ``GET /hello`` (says whether its lifespan ran), ``GET /stats``
(how often the hub started and closed, and the class of every connection the
hub holds), and a WebSocket ``/echo`` that echoes text: an ASGI route of the
app's own. Its lifespan prints ``app: startup`` / ``app: shutdown``; the hub
prints ``hub: started`` / ``hub: closed``, so a test reads from the output how
often each ran.

``roomcast serve --app tests.server.embedded_app:app`` serves ``app`` behind the
standalone server's endpoints (the server builds a hub of its own then).
``python -m tests.server.embedded_app --port P`` serves it with
``roomcast.run(app, hub)``; ``--hub-in-lifespan`` makes the app's lifespan run
``async with hub`` too, as an app written for mounting does.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect

import roomcast
from roomcast import CloseCode, HandlerConfig, Hub


class CountingHub(Hub):
    """A hub that counts (and prints) the times it really starts and closes."""

    starts = 0
    closes = 0

    async def start(self) -> None:
        if not self.started:
            type(self).starts += 1
            print("hub: started", flush=True)
        await super().start()

    async def close(self, *, code: int = CloseCode.SERVICE_RESTART, grace: float = 5.0) -> None:
        if self.started:
            type(self).closes += 1
            print("hub: closed", flush=True)
        await super().close(code=code, grace=grace)


hub = CountingHub()


def make_app(*, hub_in_lifespan: bool = False) -> FastAPI:
    """The app; ``hub_in_lifespan``: its lifespan also runs ``async with hub``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        print("app: startup", flush=True)
        async with contextlib.AsyncExitStack() as stack:
            if hub_in_lifespan:
                await stack.enter_async_context(hub)
            yield {"lifespan": "started"}
        print("app: shutdown", flush=True)

    app = FastAPI(lifespan=lifespan)

    @app.get("/hello")
    async def hello(request: Request) -> dict[str, Any]:
        return {"hello": "world", "lifespan": getattr(request.state, "lifespan", None)}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {
            "starts": CountingHub.starts,
            "closes": CountingHub.closes,
            "connections": sorted(
                type(conn).__name__ for conn in hub.registry.connections.values()
            ),
        }

    @app.websocket("/echo")
    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                await ws.send_text("echo: " + await ws.receive_text())
        except WebSocketDisconnect:
            pass

    return app


app = make_app()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the test app with roomcast.run.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hub-in-lifespan", action="store_true")
    parser.add_argument("--shutdown-timeout", type=int, default=3)
    args = parser.parse_args()
    roomcast.run(
        make_app(hub_in_lifespan=args.hub_in_lifespan),
        hub,
        port=args.port,
        config=HandlerConfig(),
        timeout_graceful_shutdown=args.shutdown_timeout,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
