"""An asyncio client for roomcast servers that stays connected.

::

    from roomcast.client import connect

    async with connect("ws://localhost:8000/ws", rooms=["general"]) as client:
        await client.send("general", {"text": "hello"})
        published = await client.publish("general", {"text": "stored?"})  # waits for the ack
        async for message in client:          # roomcast.Message objects
            print(message.room, message.from_, message.data)

The client reconnects with backoff, rejoins its rooms recovering what it missed
(``last_id``), repairs an offset gap in place, replaces a dead connection and
refreshes its token (``docs/clients.md`` has the rules); ``publish()`` resends a
message whose ack was lost with the connection, under the same ref, which the
server does not publish twice. This module is the public face of the I/O half:
the session (:mod:`roomcast.client.session`) decides; the connection loop
(:mod:`roomcast.client.loop`), which :class:`Client` is built on, moves its frames
over a :class:`~roomcast.client.link.Link` and turns its events into callbacks
and resolved futures. Its exceptions are in :mod:`roomcast.errors`;
``websockets`` exceptions never escape.
"""

from __future__ import annotations

import asyncio
import random as _random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

from roomcast.client.connector import Connector
from roomcast.client.loop import ConnectionLoop
from roomcast.client.publishing import Published
from roomcast.client.rooms import Gap, RoomLeft, RoomState, RoomStatus
from roomcast.client.session import Session, State, StateChange
from roomcast.errors import ClientClosed, ClientError
from roomcast.protocol import Message

__all__ = ["Client", "connect"]


class Client(ConnectionLoop):
    """A roomcast connection that reconnects, rejoins, recovers and refreshes its token.

    Use it through :func:`connect` (``async with connect(url, …) as client``);
    iterate over it for messages (:class:`roomcast.Message`: chat, notification,
    application ``system`` messages, presence and errors, in order; the replies
    to join and leave, the acks of :meth:`publish` and the pongs are consumed by
    the client).

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
            connected, and publish() for its ack (connected or not), unless told.
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
            :class:`RoomStatus` of each (re)join (``server`` True when the server
            joined the client on its own), with each :class:`Gap` detected.
        on_leave: called with a :class:`RoomLeft` when the server confirms a
            ``leave()``, or takes the client out of a room on its own (``server``).
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
        on_leave: Callable[[RoomLeft], object] | None = None,
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
        super().__init__(
            Session(connector, rooms=rooms),
            url=url,
            get_token=get_token,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            request_timeout=request_timeout,
            open_timeout=open_timeout,
            gap_timeout=gap_timeout,
            max_queue=max_queue,
            max_size=max_size,
            on_state=on_state,
            on_join=on_join,
            on_leave=on_leave,
            on_gap=on_gap,
            on_error=on_error,
        )

    # -- public state -------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The connection state."""
        return self._session.state

    @property
    def rooms(self) -> list[str]:
        """The rooms the client wants to be in (joined now, or once connected), those the
        server joined it to included."""
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
        self._start_loop()
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
        self._restart()

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
        """Send a chat message to ``room`` (which the client has joined), and forget it.

        The server echoes it to every member, this client included. With ``ref``, an
        error about it (``not_member``, ``rate_limited``, ...) arrives as an ``error``
        message with ``ref``, and so does its ack, a ``system`` message with event
        ``published``. To wait for the ack, and have the message resent after a lost
        connection, use :meth:`publish`.

        Raises:
            NotConnected: the connection is down (nothing is queued or resent).
            ClientClosed: the client is closed.
        """
        self._session.send_chat(room, data, ref=ref)
        await self._flush()

    async def publish(
        self,
        room: str,
        data: Any,
        *,
        # The bound of the retries, not only of a wait: the client's own deadline.
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Published:
        """Publish a chat message to ``room`` and wait for the server's ack.

        The message carries a fresh ``ref`` and is sent once connected and in
        ``room``. If the connection drops before the ack, it is sent again, with the
        same ref, once the client has reconnected and rejoined ``room``: the server
        answers a ref the same user repeats in a room with the first message's id
        and offset, and does not publish it twice (while the room retains it, and
        for an authenticated user: an anonymous one is a new user on every
        connection). The echo to this client is an ordinary message, as with
        :meth:`send`; the ack is not.

        Args:
            room: the room (one the client is in, or the server refuses).
            data: the message's ``data``, anything JSON can encode.
            timeout: seconds to wait for the ack, over as many connections as it takes
                (default: ``request_timeout``).

        Returns:
            The ack: ``Published(room, id, offset)``.

        Raises:
            InvalidArgument: ``room`` is not a valid room name (also a ValueError).
            TypeError: ``data`` cannot be encoded as JSON.
            ReplyError: the server refused it, and did not publish it
                (``forbidden_publish``, ``not_member``, ``rate_limited``,
                ``unavailable``, ...).
            TimeoutError: no ack in time; it may have been published or not, and it
                is not sent again.
            ClientClosed: the client closed (or was closed) before the ack.
        """
        ref = self._session.publish(room, data)
        seconds = self.request_timeout if timeout is None else timeout
        return await self._pending.publication(ref, seconds, self._flush, self._session.forget)

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


def connect(url: str, **options: Any) -> Client:
    """Make a :class:`Client` for ``url``; use it as ``async with connect(url, …) as client``.

    Entering the block waits for the first connection (retrying with backoff);
    leaving it closes the client. See :class:`Client` for the options.

    Raises:
        InvalidArgument: a URL that is not ws:// or wss://, a bad room name (a ValueError).
    """
    return Client(url, **options)
