"""The broker interface: how a hub reaches every pod, and where history and presence live.

A room message goes to the broker, which appends it to the room's bounded
history (assigning its per-room ``offset``), and hands it back to every hub that
subscribes to the room, the origin included, through
:meth:`BrokerHandler.handle_publication`. The hub delivers only what the broker
hands back, so all members of a room see one order: the history's.

Implementations: :class:`~roomcast.brokers.memory.MemoryBroker` (one process, the
default) and the Redis broker (many pods). One conformance suite
(``tests/brokers/conformance.py``) runs against each.

Call order: :meth:`Broker.start` once, then any other method, then
:meth:`Broker.close` once. ``publish`` raises only for a message that cannot be
encoded; a failure to publish is reported to
:meth:`BrokerHandler.handle_publish_error`, which degrades gracefully.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from roomcast.protocol import Encoded, Message, PresenceStatus

Retention = Callable[[str], "tuple[int | None, float | None] | None"]
"""``retention(room)``: the room's ``(history_size, history_ttl)``, either None for the
broker's own setting, or None for both (see :meth:`Broker.set_retention`)."""


class PublishResult(Protocol):
    """What :meth:`Broker.publish` returns: awaitable, and future-like without a task.

    :class:`asyncio.Future` is one; the memory broker returns a cheaper one that
    is already done.
    """

    def __await__(self) -> Generator[Any, None, Message]:
        """Wait for the message as stored."""
        ...

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None:
        """Call ``fn(self)`` once done (at once if done already)."""
        ...

    def result(self) -> Message:
        """The message as stored (only once done; it never fails, see :meth:`Broker.publish`)."""
        ...

    def cancelled(self) -> bool:
        """Whether it was cancelled (the broker closed first)."""
        ...


class PresenceChange(enum.IntEnum):
    """What a presence ``add`` or ``remove`` changed (true when the user's state did).

    ``USER``: the user came online in the room (its first connection there) or
    went offline (its last). ``ROOM``: that, and the user was the room's first
    user (the room became occupied) or its last (vacated).
    """

    NONE = 0
    USER = 1
    ROOM = 3


__all__ = [
    "Broker",
    "BrokerHandler",
    "ControlBus",
    "ControlHandler",
    "ControlReplies",
    "HistoryPage",
    "PresenceChange",
    "PresenceMember",
    "PresenceStore",
    "PublishResult",
    "Retention",
    "RoomStats",
    "page_of",
]


class BrokerHandler(Protocol):
    """What a broker calls back into (the hub implements it)."""

    def handle_publication(self, encoded: Encoded) -> None:
        """Deliver a message the broker hands back (room message or global, ``room`` None).

        ``encoded.message`` carries the final fields (``offset`` for retained
        messages); ``encoded.payload`` is what every member receives.
        """

    def handle_publish_error(self, message: Message, exc: BaseException) -> None:
        """The broker could not publish ``message``; deliver it locally, count and log it."""

    def handle_publish_unknown(self, message: Message, exc: BaseException) -> None:
        """Whether ``message`` was published is unknown (no reply came, and it is
        not retried); it is not delivered locally, since Redis may have. Count, log."""

    def handle_loop_failure(self, name: str, exc: BaseException) -> None:
        """Background loop ``name`` raised ``exc`` (logged already; it is restarted)."""

    def handle_reconnect(self) -> None:
        """The broker's subscriber reconnected (and resubscribed); count it."""

    def handle_subscriber_lost(self) -> None:
        """The broker's subscriber connection was lost or replaced; count it."""

    def handle_repair(self, room: str, *, repaired: int, lost: int) -> None:
        """The broker filled a gap in ``room``'s feed from its history.

        ``repaired`` missed messages were found and handed over; ``lost`` ones
        were no longer retained (members see the offset jump and recover).
        """

    def handle_history_reset(self, room: str, epoch: str, offset: int) -> None:
        """``room``'s history changed under its members (it was lost, or a failover
        rewound it): tell them its ``epoch`` now and the ``offset`` of the last
        message they have that it still holds; what is delivered next follows it."""

    def handle_history_evicted(self, budget: str, count: int) -> None:
        """``count`` retained messages were evicted early by a byte ``budget``
        (``"room"``: the room's own, ``"pod"``: all rooms' together)."""

    def handle_duplicates(self, count: int) -> None:
        """The broker dropped ``count`` copies of publications already handed over."""

    def handle_presence_expired(self, room: str, user_id: str, *, vacated: bool = False) -> None:
        """``user_id`` went offline in ``room`` because its pod stopped refreshing it
        (``vacated``: and the room has no user left)."""


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A slice of a room's history.

    Attributes:
        room: the room.
        epoch: identifies this incarnation of the room's history; it changes
            whenever the history is lost, so offsets are comparable only within it.
        offset: the offset of the room's newest message (0 if none yet).
        messages: retained messages, oldest first.
        recovered: when a ``since`` id was asked for, whether it was found, so
            ``messages`` are exactly the ones after it (else False).
    """

    room: str
    epoch: str
    offset: int
    messages: list[Encoded] = field(default_factory=list)
    recovered: bool = False


_Entry = TypeVar("_Entry")


def page_of(
    entries: Sequence[_Entry],
    *,
    since: str | None,
    limit: int | None,
    id_of: Callable[[_Entry], str],
) -> tuple[list[_Entry], bool]:
    """Select from a room's retained ``entries`` (oldest first) what a history read asks.

    Args:
        id_of: the message id of an entry.

    Returns:
        ``(entries, recovered)``: with ``since``, the first ``limit`` entries after
        the one whose id it is, and whether it was found; without, the newest
        ``limit`` entries.
    """
    if since is None:
        if limit is None:
            return list(entries), False
        return (list(entries[-limit:]) if limit > 0 else []), False
    for index, entry in enumerate(entries):
        if id_of(entry) == since:
            after = list(entries[index + 1 :])
            return (after[:limit] if limit is not None else after), True
    return [], False


@dataclass(frozen=True, slots=True)
class PresenceMember:
    """One user present in a room, aggregated over all of the user's connections."""

    user_id: str
    status: PresenceStatus
    connections: int
    info: Any = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form used by the HTTP API."""
        out: dict[str, Any] = {
            "user_id": self.user_id,
            "status": self.status.value,
            "connections": self.connections,
        }
        if self.info is not None:
            out["info"] = self.info
        return out


@dataclass(frozen=True, slots=True)
class RoomStats:
    """Cluster-wide counts for one room."""

    room: str
    connections: int
    users: int


@runtime_checkable
class PresenceStore(Protocol):
    """Who is in which room, aggregated per user over connections (and pods)."""

    async def add(
        self, room: str, *, user_id: str, conn_id: str, info: Any = None
    ) -> PresenceChange:
        """Record ``conn_id`` of ``user_id`` in ``room``.

        Returns:
            ``USER`` (true) if this is the user's first connection in the room
            (the user just came online there), ``ROOM`` if the user is also the
            room's first, else ``NONE`` (false).
        """
        ...

    async def remove(self, room: str, *, user_id: str, conn_id: str) -> PresenceChange:
        """Forget ``conn_id`` of ``user_id`` in ``room``.

        Returns:
            ``USER`` (true) if it was the user's last connection in the room
            (the user just went offline there), ``ROOM`` if the room is now
            empty too, else ``NONE`` (false).
        """
        ...

    async def set_status(self, room: str, *, user_id: str, status: PresenceStatus) -> bool:
        """Set ``user_id``'s status in ``room``; return True if it changed."""
        ...

    async def members(self, room: str) -> list[PresenceMember]:
        """Return the users present in ``room``, sorted by user id."""
        ...

    async def rooms(self) -> list[RoomStats]:
        """Return every room with at least one connection, sorted by name."""
        ...


@runtime_checkable
class Broker(Protocol):
    """Carries messages between hubs and keeps each room's history."""

    presence: PresenceStore
    """The presence store that goes with this broker."""

    control: ControlBus
    """The cluster-wide control channel (commands to every pod, one reply each)."""

    async def start(self, handler: BrokerHandler) -> None:
        """Connect and start delivering publications to ``handler``."""
        ...

    async def close(self) -> None:
        """Stop delivering, release connections and tasks. Idempotent."""
        ...

    @property
    def ready(self) -> bool:
        """Whether the broker is reachable right now (drives ``/readyz``)."""
        ...

    def publish(self, message: Message) -> PublishResult:
        """Publish a stamped message to its room (or to everyone when ``room`` is None).

        Retained messages (:attr:`Message.retained`) are appended to the room's
        history first and get their ``offset``. Publications from one caller are
        handed back in the order they were published. Failures to reach other
        pods never raise (see :class:`BrokerHandler`).

        Raises:
            ProtocolError: ``invalid_message`` if the message cannot be encoded;
                nothing is stored, no offset is taken, nothing is delivered.

        A retained message with a ``ref`` (a client's) whose sender already
        published one with that ``ref`` to the room, still retained, is not
        stored or delivered again: the result carries the first one's ``id``
        and ``offset`` (a client's safe retry).

        Returns:
            An awaitable (the caller need not await it) that gives the message as
            stored (``offset`` set when retained), or, if publishing failed, the
            message unchanged after :meth:`BrokerHandler.handle_publish_error` was
            called.
        """
        ...

    def set_retention(self, retention: Retention | None) -> None:
        """Let ``retention(room)`` override the history size and TTL per room (namespaces).

        Call before :meth:`start`.
        """
        ...

    async def subscribe(self, room: str) -> None:
        """Start receiving ``room``'s publications (first local member joined)."""
        ...

    async def unsubscribe(self, room: str) -> None:
        """Stop receiving ``room``'s publications (last local member left)."""
        ...

    async def history(
        self, room: str, *, since: str | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Return retained messages of ``room``, oldest first.

        Ordering contract: once this returns, every publication of ``room`` up
        to the page's ``offset`` that this broker will hand to the handler has
        been handed over (for a room it subscribes to), so a caller that holds
        live publications until then, and drops held ones at or below the
        page's ``offset``, delivers each message once.

        Args:
            since: return the messages after this id; ``recovered`` tells
                whether it was still retained.
            limit: at most this many messages (without ``since``: the newest ones).
        """
        ...


# -- the control channel -------------------------------------------------------------------

ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""``handler(command)``: answers one control command on this pod (see :class:`ControlBus`)."""


@dataclass(frozen=True, slots=True)
class ControlReplies:
    """What :meth:`ControlBus.request` gathered: one reply per pod that answered in time.

    Attributes:
        replies: each answering pod's reply, once per pod (order not specified).
        pods: how many pods the command reached (the replies expected); with
            Redis, the subscribers of the control channel when it was published.
    """

    replies: list[dict[str, Any]]
    pods: int

    @property
    def missing(self) -> int:
        """Pods the command reached that did not answer in time."""
        return max(0, self.pods - len(self.replies))


class ControlBus(Protocol):
    """A channel from one pod to every pod of the cluster: a command out, a reply from each.

    The hub (:class:`~roomcast.core.control.Control`) sends server commands
    through it (disconnect a user, subscribe it to a room, list its
    connections) and answers the ones that arrive with its handler.

    Call order: :meth:`start` once, after :meth:`Broker.start`; then
    :meth:`request` at any time, from the broker's event loop; :meth:`close`
    once, before :meth:`Broker.close`. Commands that arrive before
    :meth:`start` or after :meth:`close` are not answered.
    """

    async def start(self, handler: ControlHandler) -> None:
        """Answer every command that arrives from now on with ``handler``.

        The handler gets the command as sent (a JSON object); what it returns
        (a JSON object) is this pod's reply. If it raises, the reply is
        ``{"error": "<text>"}`` and the error is logged.
        """
        ...

    async def close(self) -> None:
        """Stop answering; commands being answered are cancelled. Idempotent."""
        ...

    async def request(
        self,
        command: dict[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109
    ) -> ControlReplies:
        """Send ``command`` to every pod (this one included) and gather their replies.

        Returns once every pod the command reached has answered, or after
        ``timeout`` seconds with the replies that came (:attr:`ControlReplies.missing`
        counts the others); it never waits longer.

        Raises:
            BrokerUnavailable: the command could not be sent (nothing was done).
            ProtocolError: ``invalid_message`` if ``command`` cannot be encoded
                as JSON or is too large.
        """
        ...
