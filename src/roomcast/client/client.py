"""An asyncio client for roomcast servers that stays connected.

::

    from roomcast.client import connect

    async with connect("ws://localhost:8000/ws", rooms=["general"]) as client:
        await client.send("general", {"text": "hello"})
        async for message in client:          # roomcast.Message objects
            print(message.room, message.from_, message.data)

The client reconnects with backoff, rejoins its rooms recovering what it missed
(``last_id``), repairs an offset gap in place, replaces a dead connection and
refreshes its token (``docs/clients.md`` has the rules). This module is the I/O
half: the session (:mod:`roomcast.client.session`) decides; :class:`Client` moves
its frames over a :class:`~roomcast.client.link.Link`, runs the reconnection
loop, and turns its events into callbacks and resolved futures. Its exceptions
are in :mod:`roomcast.errors`; ``websockets`` exceptions never escape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as _random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

from roomcast.client.connector import Connector
from roomcast.client.link import Ended, Inbox, Link, fetch_token, open_link
from roomcast.client.pending import Pending
from roomcast.client.replies import JoinRefused, ReconnectNeeded, RefreshRefused, RequestDone
from roomcast.client.rooms import Gap, RoomState, RoomStatus
from roomcast.client.session import ABNORMAL_CLOSURE, Session, State, StateChange
from roomcast.errors import ClientClosed, ClientError, NotConnected, TokenUnavailable
from roomcast.protocol import Message

__all__ = ["Client", "connect"]

_log = logging.getLogger("roomcast.client")


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
        get_token: an async function returning a fresh JWT; called before connecting
            when there is no token or it expires within ``token_refresh_margin``,
            after a 4001 close or an HTTP 401, and ``token_refresh_margin`` before
            expiry while connected (then sent in an ``auth`` message).
        min_delay, max_delay: backoff bounds in seconds (1 and 30); ``random``, the
            jitter's random source.
        stable_after: a connection welcomed this many seconds ago resets the backoff.
        should_reconnect: ``(code, reason) -> bool | None`` overrides the close-code
            rules (None keeps them).
        ping_interval, ping_timeout: an application ping every ``ping_interval``
            seconds (0: none); no pong within ``ping_timeout``: the connection is dead.
        request_timeout: seconds join(), leave() and ping() wait for the reply while
            connected.
        open_timeout: seconds for the handshake and the welcome.
        gap_timeout: seconds an in-place gap repair may take before the client
            reconnects instead.
        token_refresh_margin: refresh this many seconds before ``exp`` (at most
            half the token's remaining lifetime).
        clock: the wall clock (seconds since the epoch) token expiry is read on.
        max_queue: messages buffered for the iterator (None: no bound); when full the
            client stops reading the socket (backpressure).
        max_size: the largest incoming message in bytes (None: no limit).
        headers: extra HTTP headers for the handshake (e.g. ``Origin``).
        token_in_query: send the token as ``?token=`` instead of a header.
        on_state, on_join, on_gap: called with each :class:`StateChange`, with the
            :class:`RoomStatus` of each (re)join, with each :class:`Gap` detected.
        on_error: called with client-side failures (:class:`TokenUnavailable`,
            :class:`ReplyError` for a refused token refresh).

    Raises:
        InvalidArgument: ``url`` is not a ws:// or wss:// URL, or a room name is invalid.
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
        clock: Callable[[], float] = time.time,
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
        connector = Connector(
            url,
            token=token,
            can_refresh_token=get_token is not None,
            min_delay=min_delay,
            max_delay=max_delay,
            stable_after=stable_after,
            should_reconnect=should_reconnect,
            token_refresh_margin=token_refresh_margin,
            headers=headers,
            token_in_query=token_in_query,
            random=random,
            clock=clock,
        )
        self._session = Session(connector, rooms=rooms)
        self.url = url
        self._get_token = get_token
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.request_timeout = request_timeout
        self.open_timeout = open_timeout
        self.gap_timeout = gap_timeout
        self.max_queue = max_queue
        self.max_size = max_size
        self.on_state = on_state
        self.on_join = on_join
        self.on_gap = on_gap
        self.on_error = on_error

        self._link: Link | None = None
        self._inbox = Inbox(max_queue)
        self._pending = Pending()
        self._wakeup = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- public state -------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The connection state."""
        return self._session.state

    @property
    def rooms(self) -> list[str]:
        """The rooms the client wants to be in (joined now, or once connected)."""
        return self._session.rooms.names

    @property
    def connection_id(self) -> str | None:
        """The server's id of the current (or last) connection."""
        return self._session.connection_id

    @property
    def user_id(self) -> str | None:
        """The user id the server gave the connection (JWT ``sub``, or the connection id)."""
        return self._session.user_id

    @property
    def presence(self) -> str:
        """The presence status this client sets (``online`` or ``away``)."""
        return self._session.presence

    def room_state(self, room: str) -> RoomState | None:
        """What the client knows of ``room``, or None if it is not one of its rooms."""
        return self._session.rooms.state(room)

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self, *, wait: bool = True) -> None:
        """Start connecting; with ``wait``, return once connected.

        Raises:
            ClientClosed: the server refused the client for good before it connected.
        """
        if self._session.closed is not None:
            raise self._session.closed
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
        while self._session.state is not State.CONNECTED:
            if self._session.closed is not None:
                raise self._session.closed
            self._connected.clear()
            await self._connected.wait()

    async def close(self) -> None:
        """Close for good: no reconnection after this; pending requests fail.

        Messages already received stay available to the iterator.
        """
        session = self._session
        if session.closing:
            if self._task is not None and not self._task.done():
                await asyncio.wait([self._task])
            return
        session.begin_close()
        self._wakeup.set()
        self._inbox.release()  # a reader waiting for the application must not hold up the close
        if self._link is not None:
            await self._link.close(1000, "client closed")
        task = self._task
        if task is not None and not task.done():
            if self._link is None:
                task.cancel()  # connecting or waiting to: nothing to close politely
            await asyncio.wait([task])
        closed = ClientClosed(1000, "client closed", deliberate=True)
        if session.terminate(closed):
            self._finish(closed)

    def reconnect(self) -> None:
        """Drop the current connection (if any) and connect again now.

        Every room is recovered with ``last_id``. Use it when the network changed.

        Raises:
            ClientClosed: the client is closed.
        """
        self._session.request_reconnect()
        self._wakeup.set()
        if self._link is not None:
            self._link.spawn(self._link.close(4000, "reconnecting"))

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        """The next message.

        Raises:
            StopAsyncIteration: after :meth:`close` (once buffered messages are read).
            ClientClosed: the server ended the client for good.
        """
        message = await self._inbox.get()
        if message is None:
            stopped = self._session.closed
            if stopped is not None and not stopped.deliberate:
                raise stopped
            raise StopAsyncIteration
        return message

    # -- requests -----------------------------------------------------------------------

    async def send(self, room: str, data: Any, *, ref: str | None = None) -> None:
        """Send a chat message to ``room`` (which the client has joined).

        The server echoes it to every member, this client included; an error about it
        (``not_member``, ``rate_limited``) arrives as an ``error`` message with ``ref``.

        Raises:
            NotConnected: the connection is down (nothing is queued or resent).
            ClientClosed: the client is closed.
        """
        self._session.send_chat(room, data, ref=ref)
        await self._flush()

    async def join(self, room: str) -> RoomStatus:
        """Join ``room``; it is rejoined after every reconnection until :meth:`leave`.

        Returns once joined (now, or after connecting) with the join's outcome.

        Raises:
            InvalidArgument: ``room`` is not a valid room name (also a ValueError).
            ReplyError: the server refused (``forbidden_room``, …); the room is dropped.
            TimeoutError: no reply within ``request_timeout`` seconds while connected
                (the room stays wanted).
            ClientClosed: the client is closed.
        """
        status = self._session.join(room)
        if status is not None:
            return status
        send = self._flush if self._session.connected else None
        return await self._pending.join(room, self.request_timeout, send)

    async def leave(self, room: str) -> None:
        """Leave ``room`` (it is no longer rejoined); returns once the server confirmed.

        Raises:
            TimeoutError: no confirmation within ``request_timeout`` seconds.
        """
        self._pending.fail(room, ClientError(f"left {room} before it was joined"))
        ref = self._session.leave(room)
        if ref is not None:
            async with asyncio.timeout(self.request_timeout):
                await self._pending.reply(ref, self._flush, self._session.forget)

    async def set_presence(self, status: str) -> None:
        """Set this user's status, ``online`` or ``away``, in every room of the connection;
        remembered, and restored in every room after reconnecting.

        Raises:
            InvalidArgument: ``status`` is neither ``online`` nor ``away`` (also a ValueError).
        """
        if self._session.set_presence(status):
            await self._flush()

    async def ping(self) -> float:
        """Send an application ping; return the round-trip time in seconds.

        Raises:
            NotConnected: not connected, or the connection was lost before the pong.
            TimeoutError: no pong within ``request_timeout`` seconds.
        """
        started = time.monotonic()
        async with asyncio.timeout(self.request_timeout):
            await self._pong()
        return time.monotonic() - started

    # -- the connection loop ------------------------------------------------------------

    async def _run(self) -> None:
        session = self._session
        try:
            while not session.closing:
                session.connecting()
                self._dispatch()
                ended = await self._connect_once()
                if session.closing:
                    return
                change = session.connection_closed(ended.code, ended.reason, status=ended.status)
                if session.closed is not None:
                    self._finish(session.closed)
                    return
                self._dispatch()
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), change.delay or 0.0)
        except Exception as exc:
            _log.exception("roomcast client failed")
            closed = ClientClosed(ABNORMAL_CLOSURE, f"client failed: {exc}")
            if session.terminate(closed):
                self._finish(closed)

    async def _connect_once(self) -> Ended:
        session = self._session
        if session.connector.token_needed():
            try:
                session.connector.set_token(await fetch_token(self._get_token))
            except TokenUnavailable as exc:
                _call(self.on_error, exc)
                return Ended(ABNORMAL_CLOSURE, str(exc))
        handshake = session.handshake()
        ws = await open_link(handshake, open_timeout=self.open_timeout, max_size=self.max_size)
        if isinstance(ws, Ended):
            return ws
        link = Link(
            ws,
            session,
            handle=lambda obj: self._handle(obj),  # looked up per frame: tests wrap it
            inbox=self._inbox,
            ping=self._pong,
            get_token=self._get_token,
            report=lambda exc: _call(self.on_error, exc),
            open_timeout=self.open_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
        )
        if session.closing:
            await link.close(1000, "client closed")
            return Ended(1000, "client closed")
        self._link = link
        try:
            return await link.run()
        finally:
            self._link = None
            self._pending.disconnected()
            session.connection_lost()
            self._dispatch()
            await link.close()

    def _finish(self, closed: ClientClosed) -> None:
        """The session terminated: fail what waits, end the iterator, report CLOSED."""
        self._pending.fail_all(closed)
        self._inbox.end()
        self._dispatch()
        self._connected.set()

    # -- frames and events --------------------------------------------------------------

    def _handle(self, obj: dict[str, Any]) -> Message | None:
        """Handle one decoded server message; return it if it is for the application.

        The connection's reader calls this for every frame; tests call it (or wrap
        it) to feed messages, such as one with a skipped offset.
        """
        self._session.receive_message(obj)
        message = self._dispatch()
        frames = self._session.data_to_send()
        if frames and self._link is not None:  # the reader never waits on a full buffer
            self._link.spawn(self._link.send(frames))
        return message

    def _dispatch(self) -> Message | None:
        """Act on the session's events; return the message for the application, if any."""
        message = None
        for event in self._session.events_received():
            match event:
                case Message():
                    message = event
                case StateChange():
                    _call(self.on_state, event)
                    if event.state is State.CONNECTED:
                        self._connected.set()
                        self._pending.connected()
                case RoomStatus():
                    self._pending.joined(event)
                    _call(self.on_join, event)
                case Gap():
                    _call(self.on_gap, event)
                    if event.repairing:
                        self._pending.repairing(event.room, self.gap_timeout, self._overdue)
                case RequestDone(ref=ref, error=error):
                    self._pending.done(ref, error)
                case JoinRefused(room=room, error=refusal):
                    self._pending.fail(room, refusal)
                case RefreshRefused(error=refusal):
                    _call(self.on_error, refusal)
                case ReconnectNeeded():
                    with contextlib.suppress(ClientClosed):
                        self.reconnect()
        return message

    async def _flush(self) -> None:
        """Send what the caller's request queued (and anything queued before it)."""
        frames = self._session.data_to_send()
        if frames:
            if self._link is None:
                raise NotConnected("not connected")
            await self._link.send(frames)

    def _overdue(self, room: str) -> None:
        """A gap repair took longer than ``gap_timeout``: reconnecting recovers instead."""
        if self._session.rooms.is_repairing(room) and not self._session.closing:
            self.reconnect()

    async def _pong(self) -> None:
        """Send a ping and wait for its pong (no timeout: the caller keeps time)."""
        await self._pending.reply(self._session.ping(), self._flush, self._session.forget)


def connect(url: str, **options: Any) -> Client:
    """Make a :class:`Client` for ``url``; use it as ``async with connect(url, …) as client``.

    Entering the block waits for the first connection (retrying with backoff);
    leaving it closes the client. See :class:`Client` for the options.

    Raises:
        InvalidArgument: a URL that is not ws:// or wss://, a bad room name (a ValueError).
    """
    return Client(url, **options)
