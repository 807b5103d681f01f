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

from roomcast.core.control import CONTROL_TIMEOUT, DISCONNECT_REASON
from roomcast.core.endpoint import HandlerConfig
from roomcast.core.engine import Engine
from roomcast.errors import CloseCode

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

    The control API (:meth:`disconnect`, :meth:`subscribe`, :meth:`unsubscribe`,
    :meth:`connections`, :meth:`room_info`) acts on connections on every pod,
    through the broker's control channel (``docs/topics/control.md``).
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
            "namespaces": settings.namespaces,
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

    # -- the control API (cluster-wide) -----------------------------------------------------

    async def disconnect(
        self,
        *,
        user_id: str | None = None,
        connection_id: str | None = None,
        code: int = CloseCode.DISCONNECT,
        reason: str = DISCONNECT_REASON,
        timeout: float = CONTROL_TIMEOUT,  # noqa: ASYNC109
    ) -> int:
        """Close every connection of ``user_id``, or the connection ``connection_id``, on every pod.

        Args:
            user_id: close all of this user's connections (give this or
                ``connection_id``, not both).
            connection_id: close this one connection (the ``connection_id`` of
                its welcome).
            code: the close code, 4000 to 4999: below 4500 (4100,
                :attr:`CloseCode.DISCONNECT <roomcast.errors.CloseCode.DISCONNECT>`,
                by default) the client reconnects with backoff; from 4500
                (:attr:`CloseCode.DISCONNECT_FINAL
                <roomcast.errors.CloseCode.DISCONNECT_FINAL>`: banned, logged
                out) it does not.
            reason: the close reason, at most 123 bytes of UTF-8.
            timeout: seconds to wait for every pod's reply (at most 60); pods
                that do not answer in time are logged and counted
                (``realtime_control_unanswered``), and their connections are
                not in the count.

        Returns:
            The connections closed, over the pods that answered.

        Raises:
            ProtocolError: ``invalid_message`` for a bad argument (neither or
                both targets, a code outside 4000-4999, a long reason); nothing
                is sent.
            BrokerUnavailable: the command could not be sent to the other pods.
            HubClosed: the hub is not running.
        """
        outcome = await self.control.disconnect(
            user_id=user_id, connection_id=connection_id, code=code, reason=reason, timeout=timeout
        )
        return outcome.value

    async def subscribe(
        self,
        user_id: str,
        room: str,
        *,
        timeout: float = CONTROL_TIMEOUT,  # noqa: ASYNC109
    ) -> int:
        """Join ``room`` for every connection of ``user_id``, on every pod.

        Each connection gets an unsolicited ``joined`` with ``"server": true``
        (and then the room's messages), in order with the frames it sent
        before. The token's room permissions and the ``on_join`` hook are not
        asked: the server decides. Connections already in the room are left
        as they are.

        Args:
            user_id: whose connections.
            room: the room to join.
            timeout: seconds to wait for every pod's reply (see :meth:`disconnect`).

        Returns:
            The connections that were not in ``room`` and are being joined to it.

        Raises:
            ProtocolError: ``invalid_room`` or ``invalid_message`` for a bad argument.
            BrokerUnavailable: the command could not be sent.
            HubClosed: the hub is not running.
        """
        return (await self.control.subscribe(user_id, room, timeout=timeout)).value

    async def unsubscribe(
        self,
        user_id: str,
        room: str,
        *,
        reason: str | None = None,
        timeout: float = CONTROL_TIMEOUT,  # noqa: ASYNC109
    ) -> int:
        """Leave ``room`` for every connection of ``user_id``, on every pod.

        Each connection in the room gets an unsolicited ``left`` with
        ``"server": true`` (and ``reason`` when given), in order with the
        frames it sent before; clients do not rejoin that room on reconnect.

        Args:
            user_id: whose connections.
            room: the room to leave.
            reason: told to the client in the ``left`` event (at most 123 bytes).
            timeout: seconds to wait for every pod's reply (see :meth:`disconnect`).

        Returns:
            The connections that were in ``room`` and are leaving it.

        Raises:
            ProtocolError: ``invalid_room`` or ``invalid_message`` for a bad argument.
            BrokerUnavailable: the command could not be sent.
            HubClosed: the hub is not running.
        """
        outcome = await self.control.unsubscribe(user_id, room, reason=reason, timeout=timeout)
        return outcome.value

    async def connections(
        self,
        user_id: str,
        *,
        timeout: float = CONTROL_TIMEOUT,  # noqa: ASYNC109
    ) -> list[dict[str, Any]]:
        """Every connection of ``user_id`` on every pod, oldest first.

        Args:
            user_id: whose connections (an anonymous connection's user id is
                its connection id).
            timeout: seconds to wait for every pod's reply (see :meth:`disconnect`).

        Returns:
            ``{"connection_id", "user_id", "node", "rooms", "remote",
            "connected_at"}`` per connection (``node``: the pod's id, the end
            of the connection id; ``connected_at``: RFC 3339 UTC), at most
            1,000 per pod.

        Raises:
            ProtocolError: ``invalid_message`` for a bad user id.
            BrokerUnavailable: the command could not be sent.
            HubClosed: the hub is not running.
        """
        return (await self.control.connections(user_id, timeout=timeout)).value

    async def room_info(
        self,
        room: str,
        *,
        timeout: float = CONTROL_TIMEOUT,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """What the cluster knows of ``room``.

        Args:
            room: the room.
            timeout: seconds to wait for every pod's count (see :meth:`disconnect`).

        Returns:
            ``{"room", "epoch", "offset", "members", "connections", "users"}``:
            the room's history position (``epoch`` "" and ``offset`` 0 when it
            keeps none), its presence members (as ``GET
            /api/rooms/{room}/presence`` lists them), its connections on every
            pod that answered, and its users (present ones: 0 when the room's
            namespace keeps no presence).

        Raises:
            ProtocolError: ``invalid_room`` for a bad room name.
            BrokerError: the broker could not read the room's history or presence.
            HubClosed: the hub is not running.
        """
        return (await self.control.room_info(room, timeout=timeout)).value
