"""The standalone server: ``roomcast serve``.

It assembles the same ASGI apps a library user mounts (:mod:`roomcast.frontends.asgi`)
into one Starlette app and runs it on uvicorn (uvloop, httptools). WebSocket
upgrades go to the native protocol class (:mod:`roomcast.frontends.native`) unless
``--ws asgi`` asks for the plain ASGI path; docs/benchmarks.md measures both.

``--app module:attr`` adds the user's own ASGI app behind roomcast's endpoints: it
gets every HTTP path they do not match, and every WebSocket path but ``/ws``
(docs/topics/embedding.md); its lifespan runs inside the hub's.

SIGTERM/SIGINT: uvicorn stops accepting, every WebSocket is closed with 1012,
the hub and broker stop, and the process exits 0 within ``--shutdown-timeout``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount

from roomcast.app import Hub
from roomcast.core.auth import Authenticator, JwtAuthenticator
from roomcast.core.endpoint import HandlerConfig
from roomcast.errors import ConfigError
from roomcast.frontends.httpguard import guarded_http_protocol
from roomcast.frontends.native import protocol_class
from roomcast.frontends.wsguard import GuardedWebSocketProtocol
from roomcast.integrations.proxy import ConnectProxy, JoinProxy, PublishProxy
from roomcast.integrations.webhooks import Webhooks
from roomcast.server.embed import ASGIApp, GracefulServer, app_lifespan
from roomcast.server.logs import configure_logging
from roomcast.settings import Settings

__all__ = ["build_app", "build_hub", "handler_config", "load_app", "run", "uvicorn_config"]

_log = logging.getLogger("roomcast.server")


def build_hub(settings: Settings) -> Hub:
    """Build the hub (and its broker) that ``settings`` describe."""
    if not settings.redis_url:
        return Hub.from_settings(settings)
    from roomcast.brokers.redis import RedisBroker
    from roomcast.brokers.redis.users import RedisUserConnections

    broker = RedisBroker.from_url(
        settings.redis_url,
        prefix=settings.redis_prefix,
        history_size=settings.history_size,
        history_ttl=settings.history_ttl,
        history_bytes=settings.history_bytes,
        presence_ttl=settings.presence_ttl,
    )
    extra: dict[str, Any] = {}
    if settings.max_connections_per_user:  # counted across pods
        extra["user_connections"] = RedisUserConnections.from_url(
            settings.redis_url, prefix=settings.redis_prefix, ttl=settings.presence_ttl
        )
    return Hub.from_settings(settings, broker=broker, **extra)


def handler_config(settings: Settings) -> HandlerConfig:
    """The WebSocket endpoint's configuration: authentication, origins, proxies.

    ``--proxy-connect`` makes the backend the authenticator (instead of JWT);
    ``--proxy-join`` and ``--proxy-publish`` become the ``on_join`` and
    ``on_publish`` hooks (:mod:`roomcast.integrations.proxy`). The proxies are
    opened and closed by the app's lifespan (:func:`build_app`).

    Raises:
        ConfigError: a JWT key is unusable (see :class:`~roomcast.core.auth.JwtAuthenticator`).
    """
    timeout = settings.proxy_timeout
    authenticator: Authenticator | None
    if settings.proxy_connect:
        authenticator = ConnectProxy(settings.proxy_connect, timeout=timeout)
    else:
        authenticator = JwtAuthenticator.from_settings(settings)
    return HandlerConfig(
        auth_required=settings.auth_required,
        authenticator=authenticator,
        allowed_origins=settings.allowed_origins,
        on_join=JoinProxy(settings.proxy_join, timeout=timeout) if settings.proxy_join else None,
        on_publish=(
            PublishProxy(settings.proxy_publish, timeout=timeout)
            if settings.proxy_publish
            else None
        ),
    )


def load_app(spec: str) -> ASGIApp:
    """Import the ASGI app named ``module:attribute`` (``--app``).

    The current directory is searched first, as ``uvicorn module:app`` does.

    Raises:
        ConfigError: the module cannot be imported, has no such attribute, or
            the attribute is not callable; the message is one line.
    """
    name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(f"--app: no module named {exc.name!r} (in {spec!r})") from exc
        raise ConfigError(f"--app: importing {name!r} failed: {exc!r}") from exc
    except Exception as exc:
        raise ConfigError(f"--app: importing {name!r} failed: {exc!r}") from exc
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigError(f"--app: module {name!r} has no attribute {attribute!r}") from None
    if not callable(found):
        raise ConfigError(f"--app: {spec!r} is not an ASGI app (got {type(found).__name__})")
    app: ASGIApp = found
    return app


def _lifespan(
    hub: Hub, settings: Settings, handler: HandlerConfig, app: ASGIApp | None
) -> Callable[[object], contextlib.AbstractAsyncContextManager[Mapping[str, Any]]]:
    # The hub with what talks to the backend: proxies open before the hub and close
    # after it; webhooks are flushed after the hub closed its connections. The
    # user's app (--app) starts once the hub runs and stops before it closes; what
    # its lifespan puts in its state reaches its requests (Starlette merges it).
    parts = [
        part
        for part in (handler.authenticator, handler.on_join, handler.on_publish)
        if isinstance(part, ConnectProxy | JoinProxy | PublishProxy)
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[Mapping[str, Any]]:
        state: dict[str, Any] = {}
        async with contextlib.AsyncExitStack() as stack:
            for part in parts:
                await stack.enter_async_context(part)
            if settings.webhook_url and settings.webhook_secret:
                webhooks = Webhooks(hub, settings.webhook_url, settings.webhook_secret)
                await stack.enter_async_context(webhooks)
            await stack.enter_async_context(hub)
            if app is not None:
                await stack.enter_async_context(app_lifespan(app, state))
            yield state

    return lifespan


def build_app(hub: Hub, settings: Settings, config: HandlerConfig | None = None) -> Starlette:
    """Return the standalone server's ASGI app: ``/ws``, ``/ws/{room}`` and the HTTP API.

    With ``settings.demo`` it also serves the console and the demo routes
    (:mod:`roomcast.server.demo`); pass settings prepared by
    :func:`~roomcast.server.demo.demo_settings` then, as :func:`run` does.
    With ``settings.app`` (``--app``) the user's app comes last, for every path
    roomcast's routes do not match; its lifespan runs inside the hub's.

    Raises:
        ConfigError: ``settings.app`` cannot be loaded (:func:`load_app`).
    """
    handler = config or handler_config(settings)
    demo: list[BaseRoute] = []
    if settings.demo:
        from roomcast.server.demo import demo_routes

        demo = demo_routes(hub, settings)
    api = hub.api_app(api_key=settings.api_key, insecure=settings.api_insecure)
    user = load_app(settings.app) if settings.app else None
    # With --app: roomcast's own routes first, then everything else to the app.
    rest: list[BaseRoute] = (
        [Mount("/", app=api)] if user is None else [*api.router.routes, Mount("/", app=user)]
    )
    return Starlette(
        routes=[*hub.websocket_routes(handler), *demo, *rest],
        lifespan=_lifespan(hub, settings, handler, user),
    )


def uvicorn_config(hub: Hub, settings: Settings, config: HandlerConfig | None = None) -> Any:
    """Return the ``uvicorn.Config`` that serves ``hub`` as ``settings`` describe."""
    handler = config or handler_config(settings)
    ws: Any = GuardedWebSocketProtocol
    if settings.ws == "native":  # with --app, other WebSocket paths go to its ASGI routes
        fallback = GuardedWebSocketProtocol if settings.app else None
        ws = protocol_class(hub, handler, fallback=fallback)
    return uvicorn.Config(
        build_app(hub, settings, handler),
        host=settings.host,
        port=settings.port,
        loop="uvloop" if _has_uvloop() else "asyncio",
        http=guarded_http_protocol(
            handshake_timeout=settings.handshake_timeout,
            max_header_bytes=settings.max_header_bytes,
            max_pending=settings.max_pending_handshakes,
            on_refused=lambda status: hub.metrics.rejected.labels(status=str(status)).inc(),
        ),
        ws=ws,
        ws_max_size=settings.max_message_bytes,
        ws_ping_interval=settings.ping_interval,
        ws_ping_timeout=settings.ping_timeout,
        ws_per_message_deflate=False,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout)),
        backlog=4096,
    )


def run(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; return the process exit code."""
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    if settings.demo:
        from roomcast.server.demo import demo_settings

        settings = demo_settings(settings)
    hub = build_hub(settings)
    handler = handler_config(settings)
    server = GracefulServer(uvicorn_config(hub, settings, handler))
    authenticator = handler.authenticator
    _log.info(
        "roomcast serving",
        extra={
            "url": f"http://{settings.host}:{settings.port}",
            "broker": type(hub.broker).__name__,
            "ws": settings.ws,
            **({"app": settings.app} if settings.app else {}),
            "auth": ",".join(authenticator.algorithms)
            if isinstance(authenticator, JwtAuthenticator)
            else "proxy"
            if isinstance(authenticator, ConnectProxy)
            else "none",
        },
    )
    server.run()
    if not server.started:
        _log.error("server failed to start")
        return 1
    _log.info("roomcast stopped")
    return 0


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True
