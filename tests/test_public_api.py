"""The curated public API: ``roomcast.__all__`` exports exactly what users may rely on."""

from __future__ import annotations

import inspect
import re

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
    "Identity",
    "JwtAuthenticator",
    "MemoryBroker",
    "MemoryPresence",
    "Message",
    "MessageType",
    "PresenceMember",
    "PresenceStatus",
    "PresenceStore",
    "ProtocolError",
    "RoomcastError",
    "__version__",
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
