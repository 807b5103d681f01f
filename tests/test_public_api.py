"""The curated public API: ``roomcast.__all__`` exports exactly what users may rely on."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

import roomcast

PUBLIC_API = {
    "AuthError",
    "Authenticator",
    "Broker",
    "BrokerError",
    "BrokerHandler",
    "BrokerUnavailable",
    "CloseCode",
    "ConfigError",
    "ConnectRequest",
    "Connection",
    "ErrorCode",
    "HandlerConfig",
    "HistoryPage",
    "Hub",
    "HubClosed",
    "HubEvent",
    "Identity",
    "JwtAuthenticator",
    "MemoryBroker",
    "MemoryPresence",
    "Message",
    "MessageType",
    "Namespace",
    "PresenceMember",
    "PresenceStatus",
    "PresenceStore",
    "ProtocolError",
    "Refused",
    "RoomcastError",
    "__version__",
    "run",
    "uvicorn_config",
}


def test_all_is_the_public_api() -> None:
    assert set(roomcast.__all__) == PUBLIC_API
    assert len(roomcast.__all__) == len(set(roomcast.__all__))


def test_every_name_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from roomcast import *", namespace)  # exactly what users write
    for name in PUBLIC_API:
        assert getattr(roomcast, name) is namespace[name]


def test_every_name_is_documented() -> None:
    assert inspect.getdoc(roomcast)
    for name in PUBLIC_API - {"__version__"}:
        obj = getattr(roomcast, name)
        doc = inspect.getdoc(obj)
        assert doc, f"{name} has no docstring"
        assert doc != inspect.getdoc(object), f"{name} inherits object's docstring"


def test_version() -> None:
    assert isinstance(roomcast.__version__, str)
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?([.-]?\w+)*", roomcast.__version__)


def test_exceptions_share_one_root() -> None:
    errors = [getattr(roomcast, n) for n in PUBLIC_API if n.endswith(("Error", "Unavailable"))]
    errors.append(roomcast.HubClosed)
    for exc in errors:
        assert issubclass(exc, roomcast.RoomcastError)
    assert issubclass(roomcast.RoomcastError, Exception)


# Modules that moved in the package's redesign, with every name each exported
# then and where that name lives now. The old paths keep working.
OLD_PATHS: dict[str, dict[str, str]] = {
    "roomcast.hub": {
        "Admission": "roomcast.core.admission",
        "Refusal": "roomcast.core.admission",
        "HandlerConfig": "roomcast.core.endpoint",
        "Hub": "roomcast.app",
    },
    "roomcast.connection": {
        "Connection": "roomcast.core.connection",
        "Flusher": "roomcast.core.flusher",
        "TokenBucket": "roomcast.core.ratelimit",
    },
    "roomcast.config": {
        "ENV_PREFIX": "roomcast.settings",
        "LogFormat": "roomcast.settings",
        "LogLevel": "roomcast.settings",
        "Settings": "roomcast.settings",
        "WsImplementation": "roomcast.settings",
        "build_parser": "roomcast.settings",
        "load_settings": "roomcast.settings",
        "settings_from_namespace": "roomcast.settings",
    },
    "roomcast.asgi": {
        "ApiApp": "roomcast.frontends.http_api",
        "AsgiConnection": "roomcast.frontends.asgi",
        "WebSocketApp": "roomcast.frontends.asgi",
    },
    "roomcast.native": {
        "NativeConnection": "roomcast.frontends.native",
        "NativeWebSocketProtocol": "roomcast.frontends.native",
        "protocol_class": "roomcast.frontends.native",
    },
    "roomcast.cli": {
        "main": "roomcast.server.cli",
    },
    "roomcast.logs": {
        "ConsoleFormatter": "roomcast.server.logs",
        "JsonFormatter": "roomcast.server.logs",
        "RedactingFilter": "roomcast.server.logs",
        "configure_logging": "roomcast.server.logs",
        "get_logger": "roomcast.server.logs",
        "redact": "roomcast.server.logs",
    },
    "roomcast.wsguard": {
        "GuardedWebSocketProtocol": "roomcast.frontends.wsguard",
    },
    "roomcast.httpguard": {
        "guarded_http_protocol": "roomcast.frontends.httpguard",
    },
    "roomcast.registry": {
        "Registry": "roomcast.core.registry",
    },
    "roomcast.recovery": {
        "merge": "roomcast.core.recovery",
    },
    "roomcast.auth": {
        "AuthError": "roomcast.core.auth",
        "Authenticator": "roomcast.core.auth",
        "ConnectRequest": "roomcast.core.auth",
        "Identity": "roomcast.core.auth",
        "JwtAuthenticator": "roomcast.core.auth",
    },
    "roomcast.limits": {
        "ConnectRateLimiter": "roomcast.core.limits",
        "MemoryUserConnections": "roomcast.core.limits",
        "UserConnections": "roomcast.core.limits",
    },
    "roomcast.brokers.redis_users": {
        "RedisUserConnections": "roomcast.brokers.redis.users",
        "USER_ACQUIRE": "roomcast.brokers.redis.users",
    },
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_import_paths_keep_working(old: str) -> None:
    module = importlib.import_module(old)
    assert sorted(module.__all__) == sorted(OLD_PATHS[old])
    for name, home in OLD_PATHS[old].items():
        assert getattr(module, name) is getattr(importlib.import_module(home), name), name
    namespace: dict[str, object] = {}
    exec(f"from {old} import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(OLD_PATHS[old])


SUBPACKAGES = [
    "roomcast.app",
    "roomcast.brokers.base",
    "roomcast.brokers.memory",
    "roomcast.brokers.redis",
    "roomcast.client",
    "roomcast.core.engine",
    "roomcast.frontends.asgi",
    "roomcast.frontends.http_api",
    "roomcast.frontends.native",
    "roomcast.server",
    "roomcast.settings",
]


@pytest.mark.parametrize("path", SUBPACKAGES)
def test_each_module_all_is_importable_and_documented(path: str) -> None:
    module = importlib.import_module(path)
    assert module.__all__, f"{path} exports nothing"
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        obj = getattr(module, name)  # AttributeError: __all__ names a missing name
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{path}.{name} has no docstring"
