"""What the server's replies to a client's requests come to: the session's events
besides messages, state changes, join outcomes and gaps (sans-I/O value objects).

The session routes each reply by its ``ref`` (see :mod:`roomcast.client.session`)
and emits one of these; the asyncio client resolves a future or calls back.
"""

from __future__ import annotations

import dataclasses
from typing import TypeAlias

from roomcast.errors import ClientError, ReplyError

__all__ = ["JoinRefused", "ReconnectNeeded", "RefreshRefused", "Reply", "RequestDone"]


@dataclasses.dataclass(frozen=True, slots=True)
class RequestDone:
    """The request ``ref`` (a leave or a ping) is over; ``error`` is None if it succeeded.

    When the connection is lost, a leave counts as done, a ping fails (NotConnected).
    """

    ref: str
    error: ClientError | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class JoinRefused:
    """The server refused to let the client into ``room``; the room is no longer wanted."""

    room: str
    error: ReplyError


@dataclasses.dataclass(frozen=True, slots=True)
class RefreshRefused:
    """The server refused a refreshed token (for ``on_error``); the connection goes on."""

    error: ReplyError


@dataclasses.dataclass(frozen=True, slots=True)
class ReconnectNeeded:
    """This connection cannot be repaired in place: drop it and reconnect now."""

    reason: str


Reply: TypeAlias = RequestDone | JoinRefused | RefreshRefused | ReconnectNeeded
"""Any of the above."""
