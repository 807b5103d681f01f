"""Your ASGI app on uvicorn, with roomcast's native WebSocket protocol: :func:`run`.

Mounted into an application (``app.mount("/ws", hub.websocket_app())``), roomcast
speaks plain ASGI: every message is one ``websocket.send`` that uvicorn frames on
its own. :func:`run` serves the same application on uvicorn, but hands WebSocket
upgrades on ``{path}`` and ``{path}/{room}`` to the native protocol
(:mod:`roomcast.frontends.native`), which writes the frames built once per
message itself. Everything else reaches the application through uvicorn as
usual: every HTTP request, and WebSocket upgrades on any other path (served by
uvicorn's ``websockets-sansio`` protocol with roomcast's ping budget,
:class:`~roomcast.frontends.wsguard.GuardedWebSocketProtocol`), so its own
``@app.websocket`` routes keep working. :func:`uvicorn_config` is the same as a
``uvicorn.Config``, for those who run ``uvicorn.Server`` themselves.

Lifespan: the hub starts before the application's own lifespan starts and stops
after it ended (the application's startup code may publish; its shutdown code
still can). An application whose lifespan runs ``async with hub`` (or
``lifespan=hub.lifespan``) works unchanged: a hub starts once, and the first
close stops it. A hub already started when the server starts is left to whoever
started it.

The standalone server (:mod:`roomcast.server.assemble`) uses :func:`app_lifespan`
and :class:`GracefulServer` for ``roomcast serve --app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Final

import uvicorn

from roomcast.core.endpoint import HandlerConfig
from roomcast.errors import ConfigError, RoomcastError
from roomcast.frontends.asgi import Receive, Scope, Send
from roomcast.frontends.httpguard import guarded_http_protocol
from roomcast.frontends.native import protocol_class
from roomcast.frontends.wsguard import GuardedWebSocketProtocol

if TYPE_CHECKING:
    from roomcast.app import Hub

__all__ = ["ASGIApp", "GracefulServer", "app_lifespan", "run", "uvicorn_config"]

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application: FastAPI, Starlette, or any ``async (scope, receive, send)``."""

_log = logging.getLogger("roomcast.server")

# The standalone server's defaults (``roomcast serve --help``).
HANDSHAKE_TIMEOUT: Final = 10.0
MAX_HEADER_BYTES: Final = 16384
MAX_PENDING_HANDSHAKES: Final = 1024
SHUTDOWN_TIMEOUT: Final = 10

_OWNED: Final = ("app", "http", "ws", "lifespan")
"""``uvicorn.Config`` arguments that :func:`uvicorn_config` sets itself."""

_LIFESPAN_RETURN_TIMEOUT: Final = 5.0
"""Seconds an app that answered the lifespan shutdown gets to return."""


# -- the application's lifespan ---------------------------------------------------------------


async def _reply(task: asyncio.Task[None], replies: asyncio.Queue[MutableMapping[str, Any]]) -> Any:
    """The app's next lifespan message, or None when the app returned (or raised) first."""
    getter = asyncio.ensure_future(replies.get())
    try:
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        getter.cancel()
    return getter.result() if getter.done() and not getter.cancelled() else None


async def _call(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    await app(scope, receive, send)


@contextlib.asynccontextmanager
async def app_lifespan(app: ASGIApp, state: dict[str, Any] | None = None) -> AsyncIterator[None]:
    """Run ``app``'s ASGI lifespan around the block: its startup before, its shutdown after.

    Args:
        app: the ASGI application.
        state: the lifespan scope's ``state`` (what the app stores there, the
            server copies into every request's scope).

    An app that does not speak the lifespan protocol (it raises or returns at
    once, as the ASGI spec allows) is served without one.

    Raises:
        RoomcastError: the app's startup failed (with the app's message).
    """
    to_app: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()

    async def receive() -> MutableMapping[str, Any]:
        return await to_app.get()

    async def send(message: MutableMapping[str, Any]) -> None:
        await from_app.put(message)

    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
    if state is not None:
        scope["state"] = state
    task = asyncio.create_task(_call(app, scope, receive, send), name="roomcast-app-lifespan")
    try:
        await to_app.put({"type": "lifespan.startup"})
        reply = await _reply(task, from_app)
        if reply is None:  # no lifespan support: fine
            yield
            return
        if reply["type"] != "lifespan.startup.complete":
            message = str(reply.get("message") or "").strip()
            raise RoomcastError(f"the application's lifespan startup failed: {message}")
        try:
            yield
        finally:
            await to_app.put({"type": "lifespan.shutdown"})
            reply = await _reply(task, from_app)
            if reply is not None and reply["type"] != "lifespan.shutdown.complete":
                _log.error("the application's lifespan shutdown failed: %s", reply.get("message"))
            await asyncio.wait({task}, timeout=_LIFESPAN_RETURN_TIMEOUT)
    finally:
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            _log.debug("the application's lifespan raised", exc_info=task.exception())


class _Embedded:
    """The user's app as uvicorn sees it: the same, but its lifespan also runs the hub."""

    __slots__ = ("app", "hub")

    def __init__(self, app: ASGIApp, hub: Hub) -> None:
        self.app = app
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await receive()  # lifespan.startup
        stack = contextlib.AsyncExitStack()
        try:
            if not self.hub.started:  # else its owner stops it
                await stack.enter_async_context(self.hub)
            await stack.enter_async_context(app_lifespan(self.app, scope.get("state")))
        except Exception as exc:
            _log.error("startup failed", exc_info=exc)
            await stack.aclose()
            await send({"type": "lifespan.startup.failed", "message": str(exc) or repr(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            await stack.aclose()
        except Exception as exc:
            _log.error("shutdown failed", exc_info=exc)
            await send({"type": "lifespan.shutdown.failed", "message": str(exc) or repr(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})


# -- the server -------------------------------------------------------------------------------


class GracefulServer(uvicorn.Server):
    """uvicorn's server, minus re-raising SIGTERM after a graceful shutdown (exit 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's signal handling; the signals it caught are not raised again at the end."""
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


def uvicorn_config(
    app: ASGIApp,
    hub: Hub,
    *,
    path: str = "/ws",
    config: HandlerConfig | None = None,
    # Limits on every request head (WebSocket upgrades included)
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_pending_handshakes: int = MAX_PENDING_HANDSHAKES,
    **uvicorn_options: Any,
) -> uvicorn.Config:
    """Return the ``uvicorn.Config`` that serves ``app`` with ``hub``'s native WebSockets.

    Run it with ``await GracefulServer(config).serve()`` (or ``uvicorn.Server``).
    Arguments as for :func:`run`, without ``host`` and ``port`` (pass them in
    ``uvicorn_options``).

    Raises:
        ConfigError: ``uvicorn_options`` sets what roomcast sets (``http``,
            ``ws``, ``lifespan``), or asks for several processes (``workers``,
            ``reload``): the hub lives in this one.
    """
    owned = sorted(set(_OWNED) & set(uvicorn_options))
    if owned:
        raise ConfigError(
            f"roomcast sets uvicorn's {', '.join(owned)}: WebSocket upgrades outside "
            f"{path!r} go to uvicorn's websockets-sansio protocol"
        )
    if (uvicorn_options.get("workers") or 1) > 1 or uvicorn_options.get("reload"):
        raise ConfigError(
            "the hub lives in this process: run one process per pod (several share a Redis"
            " broker) instead of uvicorn's workers or reload"
        )
    uvicorn_options.setdefault("timeout_graceful_shutdown", SHUTDOWN_TIMEOUT)
    return uvicorn.Config(
        _Embedded(app, hub),
        http=guarded_http_protocol(
            handshake_timeout=handshake_timeout,
            max_header_bytes=max_header_bytes,
            max_pending=max_pending_handshakes,
            on_refused=lambda status: hub.metrics.rejected.labels(status=str(status)).inc(),
        ),
        ws=protocol_class(hub, config, prefix=path, fallback=GuardedWebSocketProtocol),
        lifespan="on",
        **uvicorn_options,
    )


def run(
    app: ASGIApp,
    hub: Hub,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    path: str = "/ws",
    config: HandlerConfig | None = None,
    # Limits on every request head (WebSocket upgrades included)
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_pending_handshakes: int = MAX_PENDING_HANDSHAKES,
    **uvicorn_options: Any,
) -> None:
    """Serve ``app`` on uvicorn, with ``hub``'s WebSockets on roomcast's native protocol.

    ``{path}`` and ``{path}/{room}`` are roomcast's WebSocket endpoint (SPEC §2),
    served without the ASGI message layer; every HTTP request and every other
    WebSocket path goes to ``app``. The hub starts and stops with the server,
    around ``app``'s own lifespan. SIGTERM or SIGINT closes every WebSocket with
    1012 and returns once the server has stopped (within
    ``timeout_graceful_shutdown``, 10 s unless given).

    Mount ``hub.api_app(...)`` in ``app`` for the HTTP API (``/api/*``,
    ``/metrics``, ``/healthz``); :func:`run` adds no route of its own.

    Args:
        app: the ASGI application (FastAPI, Starlette, ...).
        hub: the hub; started here unless it already runs.
        host: the address to listen on.
        port: the TCP port.
        path: where roomcast's WebSocket endpoint is (``/ws``: ``/ws`` and ``/ws/{room}``).
        config: the endpoint's hooks, authentication and origins.
        handshake_timeout: seconds a connection has to send a complete request head.
        max_header_bytes: the largest request head; larger get HTTP 431.
        max_pending_handshakes: connections sending a request head at once; more get 503.
        uvicorn_options: any other ``uvicorn.Config`` argument (``log_level``,
            ``ssl_certfile``, ``ws_max_size`` for the app's own WebSocket routes ...).

    Raises:
        ConfigError: as :func:`uvicorn_config`.
        SystemExit: uvicorn could not start (the port is taken, the app's
            lifespan startup failed), as with ``uvicorn.run``.
    """
    server = GracefulServer(
        uvicorn_config(
            app,
            hub,
            path=path,
            config=config,
            handshake_timeout=handshake_timeout,
            max_header_bytes=max_header_bytes,
            max_pending_handshakes=max_pending_handshakes,
            host=host,
            port=port,
            **uvicorn_options,
        )
    )
    server.run()
    if not server.started:
        raise SystemExit(3)  # uvicorn's STARTUP_FAILURE
