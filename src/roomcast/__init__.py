"""roomcast: a real-time messaging hub.

WebSocket connections grouped into rooms, broadcast to a room or to everyone,
presence, replay of missed messages on reconnect, and scale-out across server
processes through Redis. Mount it into any ASGI app, or run ``roomcast serve``.
"""

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
]
