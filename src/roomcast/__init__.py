"""roomcast: a real-time messaging hub.

WebSocket connections grouped into rooms, broadcast to a room or to everyone,
presence, replay of missed messages on reconnect, and scale-out across server
processes through Redis. Mount it into any ASGI app, serve your app with
roomcast's native WebSocket protocol (``roomcast.run(app, hub)``), or run
``roomcast serve``.

:func:`run` and :func:`uvicorn_config` load on first use, so that ``import roomcast``
loads no server (uvicorn, starlette).
"""

from typing import TYPE_CHECKING, Any

from roomcast._version import __version__
from roomcast.app import Hub
from roomcast.brokers.base import Broker, BrokerHandler, HistoryPage, PresenceMember, PresenceStore
from roomcast.brokers.memory import MemoryBroker, MemoryPresence
from roomcast.core.auth import Authenticator, ConnectRequest, Identity, JwtAuthenticator
from roomcast.core.connection import Connection
from roomcast.core.endpoint import HandlerConfig
from roomcast.core.events import HubEvent
from roomcast.core.namespaces import Namespace
from roomcast.errors import (
    AuthError,
    BrokerError,
    BrokerUnavailable,
    CloseCode,
    ConfigError,
    ErrorCode,
    HubClosed,
    ProtocolError,
    Refused,
    RoomcastError,
)
from roomcast.protocol import Message, MessageType, PresenceStatus

if TYPE_CHECKING:
    from roomcast.server.embed import run, uvicorn_config

__all__ = [
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
]

_LAZY = frozenset({"run", "uvicorn_config"})


def __getattr__(name: str) -> Any:
    """``roomcast.run`` and ``roomcast.uvicorn_config``, imported when first asked for."""
    if name in _LAZY:
        from roomcast.server import embed

        value = getattr(embed, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'roomcast' has no attribute {name!r}")
