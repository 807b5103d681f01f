"""The asyncio client's engine: the reconnection loop, and the session's events turned
into callbacks and resolved futures.

:class:`ConnectionLoop` is the private half of :class:`~roomcast.client.client.Client`
(which adds the public API on top of it): it connects, runs each connection over
a :class:`~roomcast.client.link.Link` until it ends, waits the delay the session
decides, and connects again; it hands every frame to the session
(:mod:`roomcast.client.session`) and acts on what comes out: frames to send,
callbacks to call, futures (:mod:`roomcast.client.pending`) to resolve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from roomcast.client.link import Ended, Inbox, Link, fetch_token, open_link
from roomcast.client.pending import Pending
from roomcast.client.replies import (
    JoinRefused,
    PublishDone,
    ReconnectNeeded,
    RefreshRefused,
    RequestDone,
)
from roomcast.client.rooms import Gap, RoomLeft, RoomStatus
from roomcast.client.session import ABNORMAL_CLOSURE, Session, State, StateChange
from roomcast.errors import ClientClosed, ClientError, NotConnected, TokenUnavailable
from roomcast.protocol import Message

__all__ = ["ConnectionLoop"]

_log = logging.getLogger("roomcast.client")


def _call(callback: Callable[[Any], object] | None, arg: object) -> None:
    if callback is None:
        return
    try:
        callback(arg)
    except Exception:
        _log.exception("client callback %r failed", callback)


class ConnectionLoop:
    """The connections of one client, one after the other, and what happens on them.

    ``start_loop()`` starts the task that connects, runs each connection until it
    ends and waits the session's delay before the next, until the session ends.
    The options and callbacks are those of :class:`~roomcast.client.client.Client`,
    kept as attributes of the same names (read per connection, or per event).
    """

    def __init__(
        self,
        session: Session,
        *,
        url: str,
        get_token: Callable[[], Awaitable[str]] | None,
        ping_interval: float,
        ping_timeout: float,
        request_timeout: float,
        open_timeout: float,
        gap_timeout: float,
        max_queue: int | None,
        max_size: int | None,
        on_state: Callable[[StateChange], object] | None,
        on_join: Callable[[RoomStatus], object] | None,
        on_leave: Callable[[RoomLeft], object] | None,
        on_gap: Callable[[Gap], object] | None,
        on_error: Callable[[Exception], object] | None,
    ) -> None:
        self._session = session
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
        self.on_leave = on_leave
        self.on_gap = on_gap
        self.on_error = on_error

        self._link: Link | None = None
        self._inbox = Inbox(max_queue)
        self._pending = Pending()
        self._wakeup = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _start_loop(self) -> None:
        """Start the connection loop's task (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"roomcast-client-{self.url}"
            )

    def _restart(self) -> None:
        """Drop the current connection (if any) and connect again now (ClientClosed if
        the client is closed)."""
        self._session.request_reconnect()
        self._wakeup.set()
        if self._link is not None:
            self._link.spawn(self._link.close(4000, "reconnecting"))

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
                case PublishDone(ref=ref, published=published, error=error):
                    self._pending.published(ref, published, error)
                case RoomLeft(room=room, server=server):
                    if server:
                        self._pending.fail(room, ClientError(f"the server removed {room}"))
                    _call(self.on_leave, event)
                case ReconnectNeeded():
                    with contextlib.suppress(ClientClosed):
                        self._restart()
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
            self._restart()

    async def _pong(self) -> None:
        """Send a ping and wait for its pong (no timeout: the caller keeps time)."""
        await self._pending.reply(self._session.ping(), self._flush, self._session.forget)
