"""The Python client: ``async with connect(url) as client``.

A sans-I/O core under a thin asyncio layer. The core does no I/O; its clocks and
random source are injected:

- :mod:`roomcast.client.policy`: the rules as pure functions (backoff, what a
  close code or a refused handshake means, when to refresh the token);
- :mod:`roomcast.client.rooms`: the room tracker: rooms wanted, the position in
  each, gaps, what to ask for on reconnecting;
- :mod:`roomcast.client.connector`: the attempts, the token and the URL of the
  next connection;
- :mod:`roomcast.client.publishing`: the publications waiting for their ack,
  resent under the same ref after a lost connection;
- :mod:`roomcast.client.session`: server frames and the user's requests in,
  frames and events (:mod:`roomcast.client.replies`) out, over the connection
  state machine of :mod:`roomcast.client.lifecycle`.

The asyncio layer: :mod:`roomcast.client.client` (:class:`Client`,
:func:`connect`) on :mod:`roomcast.client.loop` (the reconnection loop, events to
callbacks and futures), :mod:`roomcast.client.link` (one WebSocket connection and
its tasks) and :mod:`roomcast.client.pending` (what callers wait for, with timeouts).
The exceptions live in :mod:`roomcast.errors`, under :class:`~roomcast.RoomcastError`.
"""

from roomcast.client.client import Client, connect
from roomcast.client.policy import (
    CloseAction,
    backoff_ceiling,
    backoff_delay,
    close_action,
    jwt_expiry,
    status_action,
)
from roomcast.client.publishing import Published
from roomcast.client.rooms import Gap, RoomLeft, RoomState, RoomStatus
from roomcast.client.session import State, StateChange
from roomcast.errors import (
    ClientClosed,
    ClientError,
    InvalidArgument,
    NotConnected,
    ReplyError,
    TokenUnavailable,
)

__all__ = [
    "Client",
    "ClientClosed",
    "ClientError",
    "CloseAction",
    "Gap",
    "InvalidArgument",
    "NotConnected",
    "Published",
    "ReplyError",
    "RoomLeft",
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
