"""An asyncio client for roomcast servers that stays connected.

::

    from roomcast.client import connect

    async with connect("ws://localhost:8000/ws", rooms=["general"]) as client:
        await client.send("general", {"text": "hello"})
        async for message in client:          # roomcast.Message objects
            print(message.room, message.from_, message.data)

The client reconnects with exponential backoff and full jitter, rejoins its rooms
with the id of the last message it saw in each (``last_id``), so nothing retained
is lost or repeated, notices an offset gap while connected and repairs it,
pings the server to detect a dead connection, and refreshes its token before it
expires. ``docs/clients.md`` documents the rules, including which close codes end
the client for good.

Exceptions (all are :class:`~roomcast.RoomcastError`)::

    ClientError            anything this module raises
    ├── NotConnected       send() or ping() while the connection is down
    ├── ClientClosed       the client is closed (by close(), or the server said not to retry)
    ├── ReplyError         the server answered a request with an error message
    └── TokenUnavailable   get_token failed or returned no token (reported to on_error)

``websockets`` exceptions never escape.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import enum
import itertools
import json
import logging
import random as _random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)

from roomcast.errors import RoomcastError
from roomcast.protocol import Message, is_valid_room

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

_log = logging.getLogger("roomcast.client")

_ABNORMAL_CLOSURE: Final = 1006
"""The close code reported when a connection ended without a close frame."""


# -- errors ---------------------------------------------------------------------------


class ClientError(RoomcastError):
    """Root of the client's exceptions."""


class NotConnected(ClientError):
    """The client is not connected right now (it may be reconnecting).

    Chat messages are neither queued nor resent: the caller decides what to do.
    """


class ClientClosed(ClientError):
    """The client is closed and will not reconnect.

    Attributes:
        code: the close code (or HTTP status, see ``status``) that ended it; 1000
            after :meth:`Client.close`.
        reason: the close reason.
        status: the HTTP status when the server refused the handshake.
        deliberate: True when :meth:`Client.close` ended it.
    """

    def __init__(
        self,
        code: int | None,
        reason: str = "",
        *,
        status: int | None = None,
        deliberate: bool = False,
    ) -> None:
        super().__init__(code, reason, status, deliberate)
        self.code = code
        self.reason = reason
        self.status = status
        self.deliberate = deliberate

    def __str__(self) -> str:
        if self.deliberate:
            return "client closed"
        if self.status is not None:
            return f"server refused the connection: HTTP {self.status} {self.reason}".rstrip()
        detail = f"{self.code}: {self.reason}" if self.reason else f"{self.code}"
        return f"connection closed by the server ({detail})"


class ReplyError(ClientError):
    """The server answered a request (join, leave, …) with an ``error`` message.

    Attributes:
        code: the error code (``forbidden_room``, ``not_member``, …).
        detail: the server's explanation.
        ref: the ref of the request.
    """

    def __init__(self, code: str, detail: str, ref: str | None = None) -> None:
        super().__init__(code, detail, ref)
        self.code = code
        self.detail = detail
        self.ref = ref

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


class TokenUnavailable(ClientError):
    """``get_token`` raised, or did not return a token string."""


# -- the rules, as pure functions -------------------------------------------------------


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
    """Terminal: closed by :meth:`Client.close` or by a close code that means "do not retry"."""


class CloseAction(enum.StrEnum):
    """What the client does after a connection ends."""

    RECONNECT = "reconnect"
    """Reconnect after a backoff delay."""
    SLOW = "slow"
    """Reconnect after a delay drawn from the widest window, [0, max_delay]."""
    REFRESH = "refresh"
    """Get a new token from ``get_token``, then reconnect after a backoff delay."""
    STOP = "stop"
    """Do not reconnect."""


def backoff_ceiling(attempt: int, *, min_delay: float = 1.0, max_delay: float = 30.0) -> float:
    """The longest delay before reconnection attempt ``attempt`` (0 for the first).

    ``min(max_delay, min_delay * 2 ** attempt)``.
    """
    return float(min(max_delay, min_delay * 2 ** max(0, min(attempt, 60))))


def backoff_delay(
    attempt: int,
    *,
    min_delay: float = 1.0,
    max_delay: float = 30.0,
    random: Callable[[], float] = _random.random,
) -> float:
    """A delay drawn uniformly from ``[0, backoff_ceiling(attempt)]`` ("full jitter")."""
    return random() * backoff_ceiling(attempt, min_delay=min_delay, max_delay=max_delay)


def close_action(code: int, *, can_refresh_token: bool = False) -> CloseAction:
    """What to do after a connection closed with ``code`` (see ``docs/clients.md``).

    1000 (the server ended the session on purpose), 1002, 1003 and 1007 (the
    client broke the protocol; the same client would again) stop; 4001 (token
    expired) refreshes the token if ``can_refresh_token``, else stops; 1008
    (rate-limit abuse) reconnects slowly; every other code — 1001, 1006 (no close
    frame), 1009 (the oversized message is not resent), 1011, 1012, 1013, 4008,
    unknown ones — reconnects with backoff.
    """
    if code in (1000, 1002, 1003, 1007):
        return CloseAction.STOP
    if code == 1008:
        return CloseAction.SLOW
    if code == 4001:
        return CloseAction.REFRESH if can_refresh_token else CloseAction.STOP
    return CloseAction.RECONNECT


def status_action(status: int, *, can_refresh_token: bool = False) -> CloseAction:
    """What to do after the server refused the WebSocket handshake with HTTP ``status``.

    401 refreshes the token if ``can_refresh_token``, else stops; 429 reconnects
    slowly; 400, 403, 404 and other 4xx stop (retrying the same request cannot
    help); 5xx (503: at capacity, or shutting down) reconnects with backoff.
    """
    if status == 401:
        return CloseAction.REFRESH if can_refresh_token else CloseAction.STOP
    if status == 429:
        return CloseAction.SLOW
    if 400 <= status < 500:
        return CloseAction.STOP
    return CloseAction.RECONNECT


def jwt_expiry(token: str | None) -> float | None:
    """The ``exp`` claim of a JWT (seconds since the epoch), or None.

    The signature is not verified — the server does that; the client only needs
    to know when to refresh.
    """
    if not token:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (ValueError, TypeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


# -- what the client reports ------------------------------------------------------------


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
        deliberate: CLOSED by :meth:`Client.close`.
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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RoomStatus:
    """The outcome of joining a room, passed to ``on_join`` and returned by :meth:`Client.join`.

    Attributes:
        room: the room.
        recovered: the server replayed everything after ``last_id`` (the messages
            follow as ordinary messages).
        resync: the client may have missed messages that will not come: reload the
            room's state some other way. True on a rejoin that was not recovered,
            unless the room is exactly where the client left it (same epoch and offset).
        rejoin: the client had been in the room before (after a reconnection or a gap).
        epoch: the name of the room's history.
        offset: the room's position after the replay.
        last_id: the ``last_id`` the client sent (None on a first join).
    """

    room: str
    recovered: bool
    resync: bool
    rejoin: bool
    epoch: str | None
    offset: int | None
    last_id: str | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Gap:
    """Messages ``expected`` to ``got - 1`` of ``room`` were missed while connected.

    ``repairing``: the client is rejoining with ``last_id`` to get them (else it has
    no message id to recover from, and the application should resync).
    """

    room: str
    expected: int
    got: int
    repairing: bool


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RoomState:
    """What the client knows of one of its rooms (:meth:`Client.room_state`)."""

    room: str
    joined: bool
    epoch: str | None
    offset: int | None
    last_id: str | None


# -- internals -----------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[RoomStatus]
    timeout: float
    timer: asyncio.TimerHandle | None = None


@dataclasses.dataclass(slots=True)
class _Room:
    name: str
    joined: bool = False
    ever_joined: bool = False
    repairing: bool = False
    epoch: str | None = None
    offset: int | None = None
    last_id: str | None = None
    sent_last_id: str | None = None
    join_ref: str | None = None
    status: RoomStatus | None = None
    gap_timer: asyncio.TimerHandle | None = None
    waiters: list[_Waiter] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class _Ended:
    code: int
    reason: str = ""
    status: int | None = None
    welcomed: bool = False
    stable: bool = False


_CONTROL_EVENTS: Final = frozenset({"welcome", "joined", "left", "refreshed"})


def _call(callback: Callable[[Any], object] | None, arg: object) -> None:
    if callback is None:
        return
    try:
        callback(arg)
    except Exception:
        _log.exception("client callback %r failed", callback)


class Client:
    """A roomcast connection that reconnects, rejoins, recovers and refreshes its token.

    Use it through :func:`connect` (``async with connect(url, …) as client``);
    iterate over it for messages (:class:`roomcast.Message`: chat, notification,
    application ``system`` messages, presence and errors, in order; the replies
    to join and leave and the pongs are consumed by the client).

    Args:
        url: the WebSocket endpoint, e.g. ``wss://example.com/ws``; the first room
            is appended as ``/{room}``; other query parameters are kept.
        rooms: rooms to join; they are rejoined after every reconnection.
        token: a JWT, sent as ``Authorization: Bearer`` (or ``?token=`` with
            ``token_in_query``).
        get_token: an async function returning a fresh JWT; called before
            connecting when there is no token or it expires within
            ``token_refresh_margin``, after a 4001 close or an HTTP 401, and
            ``token_refresh_margin`` before expiry while connected (then sent in an
            ``auth`` message).
        min_delay, max_delay: backoff bounds in seconds (1 and 30).
        stable_after: a connection welcomed this many seconds ago resets the backoff.
        should_reconnect: ``(code, reason) -> bool | None`` overrides the close-code
            rules (None keeps them).
        random: the random source of the jitter.
        ping_interval: seconds between application pings (0: none).
        ping_timeout: seconds without the pong after which the connection is
            considered dead and replaced.
        request_timeout: seconds join(), leave() and ping() wait for the reply
            while connected.
        open_timeout: seconds for the handshake and the welcome.
        gap_timeout: seconds an in-place gap repair may take before the client
            reconnects instead.
        token_refresh_margin: refresh this many seconds before ``exp`` (at most
            half the token's remaining lifetime).
        max_queue: messages buffered for the iterator; when full the client stops
            reading the socket (backpressure) — None for no bound.
        max_size: the largest incoming message in bytes (None: no limit).
        headers: extra HTTP headers for the handshake (e.g. ``Origin``).
        token_in_query: send the token as ``?token=`` instead of a header.
        on_state: called with a :class:`StateChange` on every state change.
        on_join: called with a :class:`RoomStatus` whenever a room is (re)joined.
        on_gap: called with a :class:`Gap` when an offset gap is detected.
        on_error: called with client-side failures (:class:`TokenUnavailable`,
            :class:`ReplyError` for a refused token refresh).
    """

    def __init__(
        self,
        url: str,
        *,
        rooms: Iterable[str] = (),
        token: str | None = None,
        get_token: Callable[[], Awaitable[str]] | None = None,
        # Reconnection
        min_delay: float = 1.0,
        max_delay: float = 30.0,
        stable_after: float = 5.0,
        should_reconnect: Callable[[int, str], bool | None] | None = None,
        random: Callable[[], float] = _random.random,
        # Timeouts
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        request_timeout: float = 10.0,
        open_timeout: float = 10.0,
        gap_timeout: float = 5.0,
        token_refresh_margin: float = 30.0,
        # Limits
        max_queue: int | None = 1024,
        max_size: int | None = 2**20,
        # Handshake
        headers: Mapping[str, str] | None = None,
        token_in_query: bool = False,
        # Callbacks
        on_state: Callable[[StateChange], object] | None = None,
        on_join: Callable[[RoomStatus], object] | None = None,
        on_gap: Callable[[Gap], object] | None = None,
        on_error: Callable[[Exception], object] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        self.url = url
        self._rooms: dict[str, _Room] = {}
        for room in rooms:
            self._check_room(room)
            self._rooms[room] = _Room(room)
        self._token = token
        self._get_token = get_token
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.stable_after = stable_after
        self.should_reconnect = should_reconnect
        self.random = random
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.request_timeout = request_timeout
        self.open_timeout = open_timeout
        self.gap_timeout = gap_timeout
        self.token_refresh_margin = token_refresh_margin
        self.max_queue = max_queue
        self.max_size = max_size
        self.headers = dict(headers or {})
        self.token_in_query = token_in_query
        self.on_state = on_state
        self.on_join = on_join
        self.on_gap = on_gap
        self.on_error = on_error

        self._state = State.IDLE
        self._closing = False
        self._stopped: ClientClosed | None = None
        self._status = "online"
        self._attempt = 0
        self._refresh_needed = False
        self._reconnect_now = False
        self._connection_id: str | None = None
        self._user_id: str | None = None
        self._refs = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._welcomed = False
        self._welcomed_at = 0.0
        self._connect_room: str | None = None
        self._ended_reason = ""
        self._pending: dict[str, tuple[str, str | None, asyncio.Future[Any]]] = {}
        self._auto_ping: asyncio.Future[None] | None = None
        self._auto_ping_ref: str | None = None
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._space = asyncio.Event()
        self._space.set()
        self._blocked = False
        self._wakeup = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._helpers: set[asyncio.Task[None]] = set()

    # -- public state -------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The connection state."""
        return self._state

    @property
    def rooms(self) -> list[str]:
        """The rooms the client wants to be in (joined now, or once connected)."""
        return list(self._rooms)

    @property
    def connection_id(self) -> str | None:
        """The server's id of the current (or last) connection."""
        return self._connection_id

    @property
    def user_id(self) -> str | None:
        """The user id the server gave the connection (JWT ``sub``, or the connection id)."""
        return self._user_id

    @property
    def presence(self) -> str:
        """The presence status this client sets (``online`` or ``away``)."""
        return self._status

    def room_state(self, room: str) -> RoomState | None:
        """What the client knows of ``room``, or None if it is not one of its rooms."""
        r = self._rooms.get(room)
        if r is None:
            return None
        return RoomState(
            room=room, joined=r.joined, epoch=r.epoch, offset=r.offset, last_id=r.last_id
        )

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self, *, wait: bool = True) -> None:
        """Start connecting; with ``wait``, return once connected.

        Raises:
            ClientClosed: the server refused the client for good before it connected.
        """
        if self._stopped is not None:
            raise self._stopped
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"roomcast-client-{self.url}"
            )
        if wait:
            await self.wait_connected()

    async def wait_connected(self) -> None:
        """Wait until the client is connected.

        Raises:
            ClientClosed: the client closed instead.
        """
        while self._state is not State.CONNECTED:
            if self._stopped is not None:
                raise self._stopped
            self._connected.clear()
            await self._connected.wait()

    async def close(self) -> None:
        """Close for good: no reconnection after this; pending requests fail.

        Messages already received stay available to the iterator.
        """
        if self._closing:
            if self._task is not None and not self._task.done():
                await asyncio.wait([self._task])
            return
        self._closing = True
        self._wakeup.set()
        ws = self._ws
        if ws is not None:
            await self._close_quietly(ws, 1000, "client closed")
        task = self._task
        if task is not None and not task.done():
            if self._ws is None:
                task.cancel()  # connecting or waiting to: nothing to close politely
            await asyncio.wait([task])
        self._finish(ClientClosed(1000, "client closed", deliberate=True))

    def reconnect(self) -> None:
        """Drop the current connection (if any) and connect again now.

        Every room is recovered with ``last_id``. Use it when the network changed.

        Raises:
            ClientClosed: the client is closed.
        """
        if self._stopped is not None or self._closing:
            raise self._stopped or ClientClosed(1000, "client closed", deliberate=True)
        self._reconnect_now = True
        self._wakeup.set()
        ws = self._ws
        if ws is not None:
            self._spawn(self._close_quietly(ws, 4000, "reconnecting"))

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        """The next message.

        Raises:
            StopAsyncIteration: after :meth:`close` (once buffered messages are read).
            ClientClosed: the server ended the client for good.
        """
        message = await self._queue.get()
        if self.max_queue is None or self._queue.qsize() < self.max_queue:
            self._space.set()
        if message is None:
            self._queue.put_nowait(None)  # for other iterators
            stopped = self._stopped
            if stopped is not None and not stopped.deliberate:
                raise stopped
            raise StopAsyncIteration
        return message

    # -- requests -----------------------------------------------------------------------

    async def send(self, room: str, data: Any, *, ref: str | None = None) -> None:
        """Send a chat message to ``room`` (which the client has joined).

        The server echoes it to every member, this client included; an error about
        it (``not_member``, ``rate_limited``) arrives as an ``error`` message with
        ``ref``.

        Raises:
            NotConnected: the connection is down (nothing is queued or resent).
            ClientClosed: the client is closed.
        """
        message: dict[str, Any] = {"type": "chat", "room": room, "data": data}
        if ref is not None:
            message["ref"] = ref
        await self._send(message)

    async def join(self, room: str) -> RoomStatus:
        """Join ``room``; it is rejoined after every reconnection until :meth:`leave`.

        Returns once joined (now, or after connecting) with the join's outcome.

        Raises:
            ValueError: ``room`` is not a valid room name.
            ReplyError: the server refused (``forbidden_room``, …); the room is dropped.
            TimeoutError: no reply within ``request_timeout`` seconds while connected
                (the room stays wanted).
            ClientClosed: the client is closed.
        """
        self._check_room(room)
        self._check_open()
        r = self._rooms.get(room)
        if r is not None and r.joined and r.status is not None:
            return r.status
        if r is None:
            r = self._rooms[room] = _Room(room)
        waiter = _Waiter(asyncio.get_running_loop().create_future(), self.request_timeout)
        r.waiters.append(waiter)
        if self._is_connected():
            if r.join_ref is None:
                with contextlib.suppress(NotConnected):  # then it is joined on reconnecting
                    await self._send_join(r)
            self._arm(waiter, r)
        try:
            return await waiter.future
        finally:
            if waiter.timer is not None:
                waiter.timer.cancel()
            if waiter in r.waiters:
                r.waiters.remove(waiter)

    async def leave(self, room: str) -> None:
        """Leave ``room`` (it is no longer rejoined); returns once the server confirmed.

        Raises:
            TimeoutError: no confirmation within ``request_timeout`` seconds.
        """
        r = self._rooms.pop(room, None)
        if r is None:
            return
        if r.gap_timer is not None:
            r.gap_timer.cancel()
        for waiter in r.waiters:
            if not waiter.future.done():
                waiter.future.set_exception(ClientError(f"left {room} before it was joined"))
        if not self._is_connected() or not (r.joined or r.join_ref is not None or r.repairing):
            return
        await self._request("leave", {"type": "leave", "room": room}, room)

    async def set_presence(self, status: str) -> None:
        """Set this user's status, ``online`` or ``away``, in every room of the connection.

        Remembered, and restored in every room after reconnecting.
        """
        if status not in ("online", "away"):
            raise ValueError("status must be 'online' or 'away'")
        changed = status != self._status
        self._status = status
        if changed and self._is_connected():
            await self._send({"type": "presence", "data": {"status": status}})

    async def ping(self) -> float:
        """Send an application ping; return the round-trip time in seconds.

        Raises:
            NotConnected: not connected, or the connection was lost before the pong.
            TimeoutError: no pong within ``request_timeout`` seconds.
        """
        started = time.monotonic()
        await self._request("ping", None, None)
        return time.monotonic() - started

    # -- the connection loop ------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self._closing:
                self._set_state(State.CONNECTING, attempt=self._attempt)
                ended = await self._connect_once()
                if self._closing:
                    return
                if self._reconnect_now:
                    self._reconnect_now = False
                    self._set_state(
                        State.DISCONNECTED,
                        code=ended.code,
                        reason=ended.reason,
                        attempt=self._attempt,
                        delay=0.0,
                        action=CloseAction.RECONNECT,
                    )
                    continue
                if ended.stable:
                    self._attempt = 0
                action = self._decide(ended)
                if action is CloseAction.STOP:
                    self._finish(ClientClosed(ended.code, ended.reason, status=ended.status))
                    return
                if action is CloseAction.REFRESH:
                    self._refresh_needed = True
                attempt = self._attempt
                ceiling = (
                    self.max_delay
                    if action is CloseAction.SLOW
                    else backoff_ceiling(
                        attempt, min_delay=self.min_delay, max_delay=self.max_delay
                    )
                )
                delay = self.random() * ceiling
                self._attempt = attempt + 1
                self._set_state(
                    State.DISCONNECTED,
                    code=ended.code,
                    status=ended.status,
                    reason=ended.reason,
                    attempt=attempt,
                    delay=delay,
                    ceiling=ceiling,
                    action=action,
                )
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                self._reconnect_now = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.exception("roomcast client failed")
            self._finish(ClientClosed(_ABNORMAL_CLOSURE, f"client failed: {exc}"))

    def _decide(self, ended: _Ended) -> CloseAction:
        can_refresh = self._get_token is not None
        if ended.status is not None:
            action = status_action(ended.status, can_refresh_token=can_refresh)
        else:
            action = close_action(ended.code, can_refresh_token=can_refresh)
        if self.should_reconnect is not None:
            try:
                verdict = self.should_reconnect(ended.code, ended.reason)
            except Exception:
                _log.exception("should_reconnect failed")
                verdict = None
            if verdict is False:
                action = CloseAction.STOP
            elif verdict is True and action is CloseAction.STOP:
                action = CloseAction.RECONNECT
        return action

    async def _connect_once(self) -> _Ended:
        try:
            token = await self._token_for_connect()
        except TokenUnavailable as exc:
            _call(self.on_error, exc)
            return _Ended(_ABNORMAL_CLOSURE, str(exc))
        url, headers = self._target(token)
        try:
            ws = await ws_connect(
                url,
                additional_headers=headers,
                open_timeout=self.open_timeout,
                ping_interval=None,
                close_timeout=2.0,
                max_size=self.max_size,
                max_queue=None,
                compression=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
            return _Ended(_ABNORMAL_CLOSURE, body[:200], status=status)
        except InvalidURI as exc:
            return _Ended(_ABNORMAL_CLOSURE, str(exc), status=400)
        except (OSError, TimeoutError, InvalidHandshake, WebSocketException) as exc:
            return _Ended(_ABNORMAL_CLOSURE, str(exc) or type(exc).__name__)
        if self._closing:
            await self._close_quietly(ws, 1000, "client closed")
            return _Ended(1000, "client closed")
        return await self._session(ws)

    async def _session(self, ws: ClientConnection) -> _Ended:
        self._ws = ws
        self._welcomed = False
        self._ended_reason = ""
        loop = asyncio.get_running_loop()
        code, reason = _ABNORMAL_CLOSURE, ""
        try:
            try:
                async with asyncio.timeout(self.open_timeout):
                    raw = await ws.recv()
                    self._receive(raw)
                    while not self._welcomed:
                        self._receive(await ws.recv())
            except TimeoutError:
                self._ended_reason = "no welcome"
                ws.transport.abort()
                raise
            for coro in (self._pinger(ws), self._refresher(ws)):
                self._spawn(coro)
            while True:
                message = self._receive(await ws.recv())
                if message is not None:
                    await self._deliver(message)
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                code, reason = exc.rcvd.code, exc.rcvd.reason
        except TimeoutError:
            pass
        finally:
            welcomed = self._welcomed
            stable = welcomed and loop.time() - self._welcomed_at >= self.stable_after
            self._end_session()
            await self._close_quietly(ws, 1000, "")
        return _Ended(
            code,
            self._ended_reason or reason,
            welcomed=welcomed,
            stable=stable,
        )

    def _end_session(self) -> None:
        for task in list(self._helpers):
            task.cancel()
        self._ws = None
        self._welcomed = False
        self._auto_ping_ref = None
        self._blocked = False
        for r in self._rooms.values():
            r.joined = False
            r.repairing = False
            r.join_ref = None
            if r.gap_timer is not None:
                r.gap_timer.cancel()
                r.gap_timer = None
            for waiter in r.waiters:  # they wait for the next connection
                if waiter.timer is not None:
                    waiter.timer.cancel()
                    waiter.timer = None
        for ref, (kind, _room, future) in list(self._pending.items()):
            del self._pending[ref]
            if future.done():
                continue
            if kind == "ping":
                future.set_exception(NotConnected("connection lost before the pong"))
            else:
                future.set_result(None)

    def _finish(self, closed: ClientClosed) -> None:
        """Enter the terminal state (once): fail what waits, end the iterator."""
        if self._stopped is not None:
            return
        self._stopped = closed
        self._closing = True
        self._end_session()
        for r in self._rooms.values():
            for waiter in r.waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(closed)
            r.waiters.clear()
        self._queue.put_nowait(None)
        self._space.set()
        self._set_state(
            State.CLOSED,
            code=closed.code,
            status=closed.status,
            reason=closed.reason,
            action=None if closed.deliberate else CloseAction.STOP,
            deliberate=closed.deliberate,
        )
        self._connected.set()

    async def _close_quietly(self, ws: ClientConnection, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await ws.close(code, reason)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # The coroutine itself is the task: a task cancelled before it starts still
        # closes its coroutine, so nothing is left "never awaited".
        task = asyncio.get_running_loop().create_task(coro)
        self._helpers.add(task)
        task.add_done_callback(self._helper_done)

    def _helper_done(self, task: asyncio.Task[None]) -> None:
        self._helpers.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, NotConnected | ClientClosed):
            _log.error("roomcast client task failed", exc_info=exc)

    async def _token_for_connect(self) -> str | None:
        if self._get_token is None:
            return self._token
        exp = jwt_expiry(self._token)
        soon = exp is not None and exp - time.time() <= self.token_refresh_margin
        if self._token is None or self._refresh_needed or soon:
            self._token = await self._fetch_token()
            self._refresh_needed = False
        return self._token

    async def _fetch_token(self) -> str:
        assert self._get_token is not None
        try:
            token = await self._get_token()
        except Exception as exc:
            raise TokenUnavailable(f"get_token failed: {exc}") from exc
        if not isinstance(token, str) or not token:
            raise TokenUnavailable("get_token must return a token string")
        return token

    def _target(self, token: str | None) -> tuple[str, dict[str, str]]:
        parts = urlsplit(self.url)
        first = next(iter(self._rooms.values()), None)
        self._connect_room = first.name if first is not None else None
        path = parts.path.rstrip("/")
        query = parse_qsl(parts.query, keep_blank_values=True)
        if first is not None:
            path += "/" + quote(first.name, safe="@:")
            first.sent_last_id = first.last_id
            if first.last_id:
                query.append(("last_id", first.last_id))
        headers = dict(self.headers)
        if token:
            if self.token_in_query:
                query.append(("token", token))
            else:
                headers["Authorization"] = f"Bearer {token}"
        url = urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))
        return url, headers

    # -- sending ------------------------------------------------------------------------

    def _is_connected(self) -> bool:
        return self._welcomed and self._ws is not None

    def _check_open(self) -> None:
        if self._stopped is not None:
            raise self._stopped
        if self._closing:
            raise ClientClosed(1000, "client closed", deliberate=True)

    @staticmethod
    def _check_room(room: str) -> None:
        if not is_valid_room(room):
            raise ValueError(f"invalid room name {room!r}: use 1-128 of A-Z a-z 0-9 _ - . : @")

    async def _send(self, message: dict[str, Any]) -> None:
        self._check_open()
        ws = self._ws
        if ws is None or not self._welcomed:
            raise NotConnected("not connected")
        try:
            await ws.send(json.dumps(message, separators=(",", ":")))
        except ConnectionClosed as exc:
            raise NotConnected("the connection was lost") from exc

    def _ref(self, prefix: str) -> str:
        return f"{prefix}{next(self._refs)}"

    async def _request(self, kind: str, message: dict[str, Any] | None, room: str | None) -> None:
        ref = self._ref(kind[0])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ref] = (kind, room, future)
        try:
            if kind == "ping":
                await self._send({"type": "ping", "data": {"ref": ref}})
            else:
                assert message is not None
                await self._send({**message, "ref": ref})
            async with asyncio.timeout(self.request_timeout):
                await future
        finally:
            self._pending.pop(ref, None)

    async def _send_join(self, r: _Room, *, prefix: str = "j") -> None:
        ref = self._ref(prefix)
        r.join_ref = ref
        r.sent_last_id = r.last_id
        message: dict[str, Any] = {"type": "join", "room": r.name, "ref": ref}
        if r.last_id:
            message["last_id"] = r.last_id
        await self._send(message)

    def _arm(self, waiter: _Waiter, r: _Room) -> None:
        if waiter.timer is not None or waiter.future.done():
            return

        def expire() -> None:
            if not waiter.future.done():
                waiter.future.set_exception(
                    TimeoutError(f"no reply to join {r.name} within {waiter.timeout} s")
                )

        waiter.timer = asyncio.get_running_loop().call_later(waiter.timeout, expire)

    def _send_soon(self, message: dict[str, Any]) -> None:
        async def send() -> None:
            with contextlib.suppress(NotConnected, ClientClosed):
                await self._send(message)

        self._spawn(send())

    # -- receiving ----------------------------------------------------------------------

    def _receive(self, raw: str | bytes) -> Message | None:
        try:
            obj = json.loads(raw)
        except ValueError:
            _log.warning("server sent a frame that is not JSON")
            return None
        if not isinstance(obj, dict):
            return None
        return self._handle(obj)

    def _handle(self, obj: dict[str, Any]) -> Message | None:
        """Handle one decoded server message; return it if it is for the application.

        The connection's reader calls this for every frame; tests call it (or wrap
        it) to feed messages, such as one with a skipped offset.
        """
        kind = obj.get("type")
        data = obj.get("data")
        if kind == "system" and isinstance(data, dict) and data.get("event") in _CONTROL_EVENTS:
            event = data["event"]
            if event == "welcome" and not self._welcomed:
                self._on_welcome(data)
                return None
            room = data.get("room")
            if event == "joined" and isinstance(room, str):
                self._on_joined(room, data)
                return None
            if event == "left" and isinstance(room, str):
                self._on_left(room, data)
                return None
            if event == "refreshed":
                return None
        if kind == "pong":
            self._on_pong(data)
            return None
        if kind == "error" and isinstance(data, dict):
            self._on_error(data)
        room = obj.get("room")
        offset = obj.get("offset")
        if (
            isinstance(room, str)
            and isinstance(offset, int)
            and not self._accept(obj, room, offset)
        ):
            return None
        try:
            return Message.from_dict(obj)
        except RoomcastError:
            _log.debug("ignoring a message of unknown shape: %.200r", obj)
            return None

    async def _deliver(self, message: Message) -> None:
        if self.max_queue is not None and self._queue.qsize() >= self.max_queue:
            # Stop reading until the application catches up: the server's send queue
            # absorbs the rest, and a 4008 close followed by recovery is the worst case.
            self._blocked = True
            self._space.clear()
            try:
                while self._queue.qsize() >= self.max_queue and not self._closing:
                    await self._space.wait()
                    self._space.clear()
            finally:
                self._blocked = False
        self._queue.put_nowait(message)

    def _on_welcome(self, data: dict[str, Any]) -> None:
        self._welcomed = True
        self._reconnect_now = False
        self._welcomed_at = asyncio.get_running_loop().time()
        self._connection_id = _str_or_none(data.get("connection_id"))
        self._user_id = _str_or_none(data.get("user_id"))
        self._set_state(State.CONNECTED, connection_id=self._connection_id, user_id=self._user_id)
        self._connected.set()
        connect_room = self._connect_room
        rooms = data.get("rooms")
        if connect_room is not None and isinstance(rooms, list) and connect_room in rooms:
            if connect_room in self._rooms:
                self._on_joined(connect_room, data)
            else:  # left while connecting
                self._send_soon({"type": "leave", "room": connect_room})
        for r in self._rooms.values():
            if not r.joined and r.join_ref is None:
                r.join_ref = "pending"
                self._spawn(self._send_join(r))
            for waiter in r.waiters:
                self._arm(waiter, r)

    def _on_joined(self, room: str, data: dict[str, Any]) -> None:
        r = self._rooms.get(room)
        if r is None:
            leaving = any(k == "leave" and rm == room for k, rm, _ in self._pending.values())
            if not leaving and self._is_connected():
                self._send_soon({"type": "leave", "room": room})
            return
        recovered = data.get("recovered") is True
        epoch = _str_or_none(data.get("epoch"))
        raw_offset = data.get("offset")
        offset = raw_offset if isinstance(raw_offset, int) else None
        rejoin = r.ever_joined
        unchanged = r.epoch is not None and epoch == r.epoch and offset == r.offset
        resync = rejoin and not recovered and not unchanged
        if r.epoch is not None and epoch != r.epoch:
            r.last_id = None  # ids of a lost history
        r.epoch = epoch
        if not recovered:
            r.offset = offset  # after a replay, the replayed messages advance it
        r.joined = True
        r.ever_joined = True
        r.repairing = False
        r.join_ref = None
        if r.gap_timer is not None:
            r.gap_timer.cancel()
            r.gap_timer = None
        status = RoomStatus(
            room=room,
            recovered=recovered,
            resync=resync,
            rejoin=rejoin,
            epoch=epoch,
            offset=offset,
            last_id=r.sent_last_id,
        )
        r.status = status
        if self._status != "online" and self._is_connected():
            # A join announces the user online: restore the chosen status in this room.
            self._send_soon({"type": "presence", "room": room, "data": {"status": self._status}})
        for waiter in r.waiters:
            if waiter.timer is not None:
                waiter.timer.cancel()
            if not waiter.future.done():
                waiter.future.set_result(status)
        r.waiters.clear()
        _call(self.on_join, status)

    def _on_left(self, room: str, data: dict[str, Any]) -> None:
        ref = data.get("ref")
        if isinstance(ref, str):
            self._resolve(ref, None)
        r = self._rooms.get(room)
        if r is not None:
            r.joined = False

    def _on_pong(self, data: Any) -> None:
        ref = data.get("ref") if isinstance(data, dict) else None
        if not isinstance(ref, str):
            return
        if ref == self._auto_ping_ref:
            self._auto_ping_ref = None
            if self._auto_ping is not None and not self._auto_ping.done():
                self._auto_ping.set_result(None)
            return
        self._resolve(ref, None)

    def _on_error(self, data: dict[str, Any]) -> None:
        ref = data.get("ref")
        if not isinstance(ref, str):
            return
        error = ReplyError(str(data.get("code")), str(data.get("error", "")), ref)
        if ref.startswith("g"):
            # The gap repair was refused (rate limited?): reconnecting recovers instead.
            with contextlib.suppress(ClientClosed):
                self.reconnect()
            return
        if ref.startswith("a"):
            _call(self.on_error, error)
            return
        pending = self._pending.get(ref)
        if pending is not None:
            kind, _room, future = pending
            if not future.done():
                if kind == "leave" and error.code == "not_member":
                    future.set_result(None)  # left either way
                else:
                    future.set_exception(error)
            return
        for r in list(self._rooms.values()):
            if r.join_ref == ref:
                del self._rooms[r.name]  # refused: not retried
                for waiter in r.waiters:
                    if not waiter.future.done():
                        waiter.future.set_exception(error)
                r.waiters.clear()

    def _resolve(self, ref: str, value: Any) -> None:
        pending = self._pending.get(ref)
        if pending is not None and not pending[2].done():
            pending[2].set_result(value)

    def _accept(self, obj: dict[str, Any], room: str, offset: int) -> bool:
        """Track a retained room message's offset; False drops it (duplicate, stale, gap)."""
        r = self._rooms.get(room)
        if r is None or not r.joined or r.repairing:
            return False  # left, or being repaired: the replay follows
        if r.offset is not None:
            if offset <= r.offset:
                return False  # already seen
            if offset > r.offset + 1 and self._on_gap(r, r.offset + 1, offset):
                return False
        r.offset = offset
        message_id = obj.get("id")
        if isinstance(message_id, str) and message_id:
            r.last_id = message_id
        return True

    def _on_gap(self, r: _Room, expected: int, got: int) -> bool:
        """Report a gap; start a repair and return True if there is a ``last_id`` to repair from."""
        repairing = r.last_id is not None and self._is_connected()
        _call(self.on_gap, Gap(room=r.name, expected=expected, got=got, repairing=repairing))
        if not repairing:
            return False  # nothing to recover from: the application must resync
        # Join the room again with the last id seen: the server replays from there, in
        # order, while the client stays a member (no presence change).
        r.repairing = True
        r.joined = False
        last_id = r.last_id
        ref = self._ref("g")
        r.join_ref = ref
        r.sent_last_id = last_id

        self._send_soon({"type": "join", "room": r.name, "ref": ref, "last_id": last_id})

        def too_slow() -> None:
            if r.repairing and self._rooms.get(r.name) is r and not self._closing:
                self.reconnect()

        r.gap_timer = asyncio.get_running_loop().call_later(self.gap_timeout, too_slow)
        return True

    # -- keepalive and token refresh ----------------------------------------------------

    async def _pinger(self, ws: ClientConnection) -> None:
        if self.ping_interval <= 0:
            return
        loop = asyncio.get_running_loop()
        while self._ws is ws:
            await asyncio.sleep(self.ping_interval)
            ref = self._ref("p")
            pong: asyncio.Future[None] = loop.create_future()
            self._auto_ping_ref = ref
            self._auto_ping = pong
            try:
                await self._send({"type": "ping", "data": {"ref": ref}})
            except (NotConnected, ClientClosed):
                return
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(pong), self.ping_timeout)
                    break
                except TimeoutError:
                    if self._blocked:
                        continue  # the pong waits behind messages the application has not read
                    self._ended_reason = "ping timeout"
                    _log.info("no pong within %.1f s: dropping the connection", self.ping_timeout)
                    ws.transport.abort()
                    return

    async def _refresher(self, ws: ClientConnection) -> None:
        if self._get_token is None:
            return
        while self._ws is ws:
            exp = jwt_expiry(self._token)
            if exp is None:
                return
            left = exp - time.time()
            margin = min(self.token_refresh_margin, left / 2)
            # At least a second apart, so a token service handing out expired tokens
            # cannot spin the client.
            await asyncio.sleep(max(1.0, left - margin))
            while self._ws is ws:
                try:
                    token = await self._fetch_token()
                except TokenUnavailable as exc:
                    _call(self.on_error, exc)
                    exp = jwt_expiry(self._token)
                    left = exp - time.time() if exp is not None else 0.0
                    if left <= 0:
                        return  # the server closes with 4001; the reconnection gets a token
                    await asyncio.sleep(min(5.0, max(0.5, left / 2)))
                    continue
                self._token = token
                if self._ws is not ws:
                    return  # the next connection uses it
                try:
                    await self._send(
                        {"type": "auth", "data": {"token": token}, "ref": self._ref("a")}
                    )
                except (NotConnected, ClientClosed):
                    return
                break

    # -- state --------------------------------------------------------------------------

    def _set_state(self, state: State, **details: Any) -> None:
        self._state = state
        _call(self.on_state, StateChange(state=state, **details))


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def connect(url: str, **options: Any) -> Client:
    """Make a :class:`Client` for ``url``; use it as ``async with connect(url, …) as client``.

    Entering the block waits for the first connection (retrying with backoff);
    leaving it closes the client. See :class:`Client` for the options.

    Raises:
        ValueError: ``url`` is not a ws:// or wss:// URL, or a room name is invalid.
    """
    return Client(url, **options)
