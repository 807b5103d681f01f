"""The client session's state machine (sans-I/O): connection attempts, the welcome,
lost connections and the end, with the queues of frames and events they fill.

:class:`Lifecycle` is the half of :class:`~roomcast.client.session.Session` that
follows the connection: it names the states (:class:`State`), reports each change
(:class:`StateChange`), decides with the connector what follows a lost
connection, and holds what the session knows across connections (the rooms, the
publications waiting for their ack, the refs of requests). The session adds the
user's requests and what the server says on top of it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterable
from typing import Any, Final, TypeAlias

from roomcast.client.connector import Connector, Handshake
from roomcast.client.policy import CloseAction
from roomcast.client.publishing import Publications
from roomcast.client.replies import PublishDone, Reply, Requests
from roomcast.client.rooms import Gap, RoomLeft, RoomStatus, RoomTracker
from roomcast.errors import ClientClosed, ClientError, NotConnected
from roomcast.protocol import Message

__all__ = ["ABNORMAL_CLOSURE", "Event", "Lifecycle", "State", "StateChange"]

ABNORMAL_CLOSURE: Final = 1006
"""The close code reported when a connection ended without a close frame."""


class State(enum.StrEnum):
    """The client's connection state."""

    IDLE = "idle"
    """Not started yet."""
    CONNECTING = "connecting"
    """Getting a token, opening the WebSocket, waiting for the welcome."""
    CONNECTED = "connected"
    """Welcomed by the server: messages flow."""
    DISCONNECTED = "disconnected"
    """The connection ended; the next attempt is ``delay`` seconds away."""
    CLOSED = "closed"
    """Terminal: closed by ``Client.close()`` or by a close code that means "do not retry"."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StateChange:
    """A change of :class:`State`, passed to ``on_state``.

    Attributes:
        state: the new state.
        code: the close code that ended the connection (DISCONNECTED, CLOSED), or
            1006 when there was none (network, refused handshake, ping timeout).
        status: the HTTP status when the handshake was refused.
        reason: the close reason, or what went wrong.
        attempt: the reconnection attempt the ``delay`` is for (0 = first).
        delay: seconds until the next attempt (DISCONNECTED).
        ceiling: the upper bound ``delay`` was drawn under.
        action: what the client decided (DISCONNECTED, CLOSED).
        connection_id: the server's id of the connection (CONNECTED).
        user_id: the user id the server gave the connection (CONNECTED).
        deliberate: CLOSED by ``Client.close()``.
    """

    state: State
    code: int | None = None
    status: int | None = None
    reason: str = ""
    attempt: int | None = None
    delay: float | None = None
    ceiling: float | None = None
    action: CloseAction | None = None
    connection_id: str | None = None
    user_id: str | None = None
    deliberate: bool = False


Event: TypeAlias = Message | StateChange | RoomStatus | RoomLeft | Gap | Reply
"""What ``Session.events_received`` returns: messages for the application (in order),
state changes, join outcomes, rooms left, gaps, and the outcomes of requests."""


class Lifecycle:
    """The connection state machine of a session, and the queues it fills.

    The calling contract is the session's (see :class:`~roomcast.client.session.Session`):
    per attempt :meth:`connecting`, :meth:`handshake`, the frames, then
    :meth:`connection_closed`; :meth:`begin_close` and :meth:`terminate` to end.

    Args:
        connector: when and how to (re)connect; kept as ``connector``.
        rooms: the rooms wanted from the start; kept as a ``rooms`` tracker.
        ref_prefix: the prefix of the session's refs (see
            :class:`~roomcast.client.replies.Requests`).
    """

    def __init__(
        self, connector: Connector, *, rooms: Iterable[str] = (), ref_prefix: str | None = None
    ) -> None:
        self.connector = connector
        self.rooms = RoomTracker(rooms)
        self.publications = Publications()
        self.connection_id: str | None = None
        self.user_id: str | None = None
        self._requests = Requests(ref_prefix)
        self._state = State.IDLE
        self._last_change = StateChange(state=State.IDLE)
        self._closing = False
        self._closed: ClientClosed | None = None
        self._reconnect_now = False
        self._welcomed = False
        self._connect_room: str | None = None
        self._writes: list[str] = []
        self._events: list[Event] = []

    @property
    def state(self) -> State:
        """The connection state."""
        return self._state

    @property
    def connected(self) -> bool:
        """Welcomed on the current connection: requests may be sent."""
        return self._welcomed

    @property
    def closing(self) -> bool:
        """:meth:`begin_close` or :meth:`terminate` was called: nothing more is sent."""
        return self._closing or self._closed is not None

    @property
    def closed(self) -> ClientClosed | None:
        """Why the session ended for good, once it has (:meth:`terminate`)."""
        return self._closed

    def data_to_send(self) -> list[str]:
        """The frames to send on the current connection, in order (the queue is emptied).

        Frames queued for a connection that is then lost are dropped; only
        publications are queued again, on the next connection.
        """
        writes, self._writes = self._writes, []
        return writes

    def events_received(self) -> list[Event]:
        """What happened since the last call, in order (the queue is emptied)."""
        events, self._events = self._events, []
        return events

    # -- the connection's life ----------------------------------------------------------

    def connecting(self) -> None:
        """A connection attempt starts (state CONNECTING): next, :meth:`handshake`."""
        self._reconnect_now = False
        self.connector.starting()
        self._change(State.CONNECTING, attempt=self.connector.attempt)

    def handshake(self) -> Handshake:
        """Where to connect: into the first room, with its ``last_id`` (its replay
        arrives with the welcome). Call it once per attempt."""
        first = self.rooms.connect_room()
        self._connect_room = None if first is None else first[0]
        return self.connector.handshake(*(first or (None, None)))

    def connection_lost(self) -> None:
        """The WebSocket is gone (or never opened): rooms count as not joined, requests
        still waiting are over (:class:`RequestDone`), queued frames are dropped. Safe
        to call again; then :meth:`connection_closed` says what comes next."""
        self.connector.lost()
        self._welcomed = False
        self._writes.clear()
        self.rooms.connection_lost()
        self.publications.lost()
        self._events.extend(self._requests.lost())

    def connection_closed(
        self, code: int, reason: str = "", *, status: int | None = None
    ) -> StateChange:
        """Decide what follows the end of a connection, or of a failed attempt.

        ``code`` is the close code (1006 for none), ``status`` the HTTP status of a
        refused handshake; :meth:`connection_lost` is included. Returns (and emits)
        DISCONNECTED, with the ``delay`` before :meth:`connecting`, or CLOSED.
        """
        self.connection_lost()
        if self._reconnect_now:  # asked for: at once, and not counted as a failure
            self._reconnect_now = False
            now = {"attempt": self.connector.attempt, "delay": 0.0}
            return self._change(
                State.DISCONNECTED, code=code, reason=reason, action=CloseAction.RECONNECT, **now
            )
        retry = self.connector.retry(code, reason, status=status)
        if retry is None:
            self.terminate(ClientClosed(code, reason, status=status))
            return self._last_change
        return self._change(
            State.DISCONNECTED,
            code=code,
            status=status,
            reason=reason,
            attempt=retry.attempt,
            delay=retry.delay,
            ceiling=retry.ceiling,
            action=retry.action,
        )

    def request_reconnect(self) -> None:
        """The user wants a new connection now: the next :meth:`connection_closed`
        answers with no delay, and the attempt is not counted as a failure. The
        caller closes the current WebSocket, if any."""
        self._check_open()
        self._reconnect_now = True

    def begin_close(self) -> None:
        """The user closes the client: from now on requests raise :class:`ClientClosed`
        and nothing more is queued. Then close the WebSocket and call :meth:`terminate`."""
        self._closing = True
        self._writes.clear()

    def terminate(self, closed: ClientClosed) -> bool:
        """Enter the terminal state CLOSED because of ``closed``; False if already there."""
        if self._closed is not None:
            return False
        self._closed = closed
        self.connection_lost()
        for ref in self.publications:
            self.publications.forget(ref)
            self._events.append(PublishDone(ref, error=closed))
        action = None if closed.deliberate else CloseAction.STOP
        self._change(
            State.CLOSED,
            code=closed.code,
            status=closed.status,
            reason=closed.reason,
            action=action,
            deliberate=closed.deliberate,
        )
        return True

    # -- internals ----------------------------------------------------------------------

    def _change(self, state: State, **details: Any) -> StateChange:
        self._state = state
        self._last_change = StateChange(state=state, **details)
        self._events.append(self._last_change)
        return self._last_change

    def _send_due(self) -> None:
        """Queue the publications due on this connection (call it whenever more may be)."""
        if self._welcomed and not self.closing:
            self._writes.extend(self.publications.due(self._ready))

    def _ready(self, room: str) -> bool:
        # Publications go once their room is joined, or at once for a room the
        # client is not in (the server answers, not_member most likely).
        return room not in self.rooms or self.rooms.status(room) is not None

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed
        if self._closing:
            raise ClientClosed(1000, "client closed", deliberate=True)

    def _send_now(self, message: dict[str, Any]) -> None:
        self._check_open()
        if not self._welcomed:
            raise NotConnected("not connected")
        self._send(message)

    def _done(self, ref: object, error: ClientError | None) -> None:
        if (done := self._requests.done(ref, error)) is not None:
            self._events.append(done)

    def _send(self, message: dict[str, Any]) -> None:
        if not self.closing:  # closing: nothing more goes out
            self._writes.append(json.dumps(message, separators=(",", ":")))
