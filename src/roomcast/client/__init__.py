"""The Python client: ``async with connect(url) as client``.

See :mod:`roomcast.client.client`.
"""

from roomcast.client.client import (
    Client,
    ClientClosed,
    ClientError,
    CloseAction,
    Gap,
    NotConnected,
    ReplyError,
    RoomState,
    RoomStatus,
    State,
    StateChange,
    TokenUnavailable,
    backoff_ceiling,
    backoff_delay,
    close_action,
    connect,
    jwt_expiry,
    status_action,
)

__all__ = [
    "Client",
    "ClientClosed",
    "ClientError",
    "CloseAction",
    "Gap",
    "NotConnected",
    "ReplyError",
    "RoomState",
    "RoomStatus",
    "State",
    "StateChange",
    "TokenUnavailable",
    "backoff_ceiling",
    "backoff_delay",
    "close_action",
    "connect",
    "jwt_expiry",
    "status_action",
]
