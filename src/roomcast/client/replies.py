"""What the server's replies to a client's requests come to: the session's events
besides messages, state changes, join outcomes and gaps (sans-I/O value objects),
and the refs that tie them together (:class:`Requests`).

The session routes each reply by its ``ref`` (see :mod:`roomcast.client.session`)
and emits one of these; the asyncio client resolves a future or calls back.
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
from typing import TypeAlias

from roomcast.client.publishing import Published
from roomcast.errors import ClientError, NotConnected, ReplyError

__all__ = [
    "JoinRefused",
    "PublishDone",
    "ReconnectNeeded",
    "RefreshRefused",
    "Reply",
    "RequestDone",
    "Requests",
]


@dataclasses.dataclass(frozen=True, slots=True)
class RequestDone:
    """The request ``ref`` (a leave or a ping) is over; ``error`` is None if it succeeded.

    When the connection is lost, a leave counts as done, a ping fails (NotConnected).
    """

    ref: str
    error: ClientError | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PublishDone:
    """The publication ``ref`` is over: ``published`` is the server's ack, or ``error``
    says why there is none (ReplyError: refused, not published; ClientClosed).

    A lost connection does not end a publication: it is sent again after reconnecting.
    """

    ref: str
    published: Published | None = None
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


Reply: TypeAlias = RequestDone | PublishDone | JoinRefused | RefreshRefused | ReconnectNeeded
"""Any of the above."""


class Requests:
    """The refs one session makes, and its requests still waiting for their reply.

    Every ref is :attr:`prefix`, a letter for what it asks (``j`` join, ``g`` gap
    repair, ``l`` leave, ``p`` ping, ``a`` auth, ``m`` publication) and a counter:
    :meth:`kind` tells a reply to one of them from a reply to a ref of the
    application's own. Leaves and pings wait here for their reply.

    Args:
        prefix: the refs' prefix; by default 12 random characters and a dot, so that
            refs differ between the user's clients too (the server takes a ref that
            the same user repeats in a room for a retry of the first message).
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = secrets.token_urlsafe(9) + "." if prefix is None else prefix
        self._count = itertools.count(1)
        self._waiting: dict[str, str | None] = {}  # ref -> room, for leaves and pings

    def new(self, kind: str) -> str:
        """A fresh ref for a request of ``kind`` (its letter)."""
        return f"{self.prefix}{kind}{next(self._count)}"

    def wait(self, ref: str, room: str | None = None) -> None:
        """``ref`` (a leave of ``room``, or a ping) waits for its reply: see :meth:`done`."""
        self._waiting[ref] = room

    def kind(self, ref: object) -> str | None:
        """The letter of a ref made here; None for anything else."""
        prefix = self.prefix
        if isinstance(ref, str) and ref.startswith(prefix) and len(ref) > len(prefix):
            return ref[len(prefix)]
        return None

    def waiting(self, ref: object) -> bool:
        """Whether ``ref`` waits for its reply."""
        return ref in self._waiting

    def leaving(self, room: str) -> bool:
        """Whether a leave of ``room`` waits for its reply."""
        return any(room == r and self.kind(ref) == "l" for ref, r in self._waiting.items())

    def done(self, ref: object, error: ClientError | None = None) -> RequestDone | None:
        """The reply to ``ref`` came: its outcome, or None if it was not waiting."""
        if not isinstance(ref, str) or self._waiting.pop(ref, 0) == 0:
            return None
        return RequestDone(ref, error)

    def lost(self) -> list[RequestDone]:
        """The connection ended: a leave counts as done, a ping fails; none waits any more."""
        lost = NotConnected("connection lost before the pong")
        done = [RequestDone(ref, lost if self.kind(ref) == "p" else None) for ref in self._waiting]
        self._waiting.clear()
        return done

    def forget(self, ref: str) -> None:
        """Stop waiting for ``ref``."""
        self._waiting.pop(ref, None)
