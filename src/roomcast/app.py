"""The public :class:`Hub`: the one place the core meets its front ends.

:class:`~roomcast.core.engine.Engine` runs rooms, presence and recovery without
knowing how frames arrive; :class:`Hub` adds the constructors for the ASGI
WebSocket endpoint, its Starlette routes and the HTTP API, and building itself
from :class:`~roomcast.settings.Settings`. The standalone server's native front
end (:mod:`roomcast.frontends.native`) takes the same hub.

Typical use::

    hub = Hub()
    app = Starlette(
        routes=[Mount("/ws", app=hub.websocket_app(HandlerConfig()))],
        lifespan=hub.lifespan,
    )
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from roomcast.core.endpoint import HandlerConfig
from roomcast.core.engine import Engine

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from roomcast.frontends.asgi import WebSocketApp
    from roomcast.frontends.http_api import ApiApp
    from roomcast.settings import Settings

__all__ = ["Hub"]


class Hub(Engine):
    """Rooms of WebSocket connections, broadcast, presence; one per pod.

    Takes the options of :class:`~roomcast.core.engine.Engine` (broker, limits,
    keepalive, history of the default broker, presence, clock and id factory).
    Start it with ``async with hub`` or ``lifespan=hub.lifespan``; then serve it
    with :meth:`websocket_app` and :meth:`api_app` (or the native front end).
    """

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Self:
        """Build a hub from :class:`~roomcast.settings.Settings` (extra kwargs win)."""
        options: dict[str, Any] = {
            "max_connections": settings.max_connections,
            "max_message_bytes": settings.max_message_bytes,
            "send_queue": settings.send_queue,
            "send_queue_bytes": settings.send_queue_bytes,
            "rate": settings.rate,
            "burst": settings.burst,
            "rate_bytes": settings.rate_bytes,
            "burst_bytes": settings.burst_bytes,
            "ping_interval": settings.ping_interval,
            "ping_timeout": settings.ping_timeout,
            "history_size": settings.history_size,
            "history_ttl": settings.history_ttl,
            "history_bytes": settings.history_bytes,
            "history_max_bytes": settings.history_max_bytes,
            "max_rooms_per_connection": settings.max_rooms_per_connection,
            "presence_events": settings.presence_events,
            "presence_interval": settings.presence_interval,
            "max_connections_per_user": settings.max_connections_per_user,
            "connect_rate": settings.connect_rate,
        }
        options.update(kwargs)
        return cls(**options)

    def websocket_app(self, config: HandlerConfig | None = None) -> WebSocketApp:
        """Return the WebSocket endpoint as an ASGI app (mount it at ``/ws``).

        ``/`` connects without a room, ``/{room}`` connects and joins ``room``.
        Under ``Mount("/ws", ...)`` that is ``/ws/`` and ``/ws/{room}``; see
        :meth:`websocket_routes` to serve ``/ws`` without the trailing slash too.
        """
        from roomcast.frontends.asgi import WebSocketApp

        return WebSocketApp(self, config or HandlerConfig())

    def websocket_routes(
        self, config: HandlerConfig | None = None, *, path: str = "/ws"
    ) -> list[BaseRoute]:
        """Return Starlette routes for ``{path}`` and ``{path}/{room}``.

        ``Mount(path, app=hub.websocket_app())`` serves ``{path}/`` and
        ``{path}/{room}``; these routes also serve ``{path}`` without the slash.
        """
        from starlette.routing import WebSocketRoute

        from roomcast.frontends.asgi import WebSocketApp

        config = config or HandlerConfig()
        path = path.rstrip("/")
        return [
            WebSocketRoute(path, WebSocketApp(self, config, roomless=True)),
            WebSocketRoute(path + "/{room}", WebSocketApp(self, config)),
        ]

    def api_app(self, *, api_key: str | None = None, insecure: bool = False) -> ApiApp:
        """Return the HTTP API of SPEC §2 as an ASGI app (mount it at ``/``)."""
        from roomcast.frontends.http_api import ApiApp

        return ApiApp(self, api_key=api_key, insecure=insecure)
