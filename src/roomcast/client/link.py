"""The asyncio client's I/O: one WebSocket connection, and the inbox behind it.

:func:`open_link` opens the WebSocket a handshake names; every failure (a refused
handshake, a timeout, ``OSError``, any ``websockets`` exception) becomes an
:class:`Ended`, so that none escapes. A :class:`Link` then reads the connection
until it ends, writes the frames it is given, pings the server and refreshes the
token; it owns the tasks that do so, and they end with it. It decides nothing:
every frame goes to the client's handler, and through it to the session.

An :class:`Inbox` holds the messages the application has not read; when it is
full the reader waits (backpressure), and the keepalive does not count that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)

from roomcast.client.connector import Handshake
from roomcast.client.session import ABNORMAL_CLOSURE, Session, decode_frame
from roomcast.errors import ClientClosed, NotConnected, TokenUnavailable
from roomcast.protocol import Message

__all__ = ["Ended", "Inbox", "Link", "fetch_token", "open_link"]

_log = logging.getLogger("roomcast.client")


@dataclasses.dataclass(frozen=True, slots=True)
class Ended:
    """How a connection, or an attempt to open one, ended.

    ``code`` is the close code (1006 when there was none), ``status`` the HTTP
    status of a refused handshake.
    """

    code: int
    reason: str = ""
    status: int | None = None


class Inbox:
    """The messages received and not read yet; at most ``max_queue`` (None: no bound)
    before :meth:`put` waits."""

    def __init__(self, max_queue: int | None) -> None:
        self.max_queue = max_queue
        self.blocked = False
        """True while :meth:`put` waits for the application to read."""
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._space = asyncio.Event()
        self._space.set()
        self._ended = False

    async def put(self, message: Message) -> None:
        """Add ``message``; while the inbox is full (and has not ended), wait."""
        bound = self.max_queue
        if bound is not None and self._queue.qsize() >= bound:
            # Stop reading until the application catches up: the server's send queue
            # absorbs the rest, and a 4008 close followed by recovery is the worst case.
            self.blocked = True
            self._space.clear()
            try:
                while not self._ended and self.max_queue is not None:
                    if self._queue.qsize() < self.max_queue:
                        break
                    await self._space.wait()
                    self._space.clear()
            finally:
                self.blocked = False
        self._queue.put_nowait(message)

    async def get(self) -> Message | None:
        """The next message; None once the inbox has ended and everything was read."""
        message = await self._queue.get()
        if self.max_queue is None or self._queue.qsize() < self.max_queue:
            self._space.set()
        if message is None:
            self._queue.put_nowait(None)  # for other readers
        return message

    def release(self) -> None:
        """Stop bounding the inbox: a waiting :meth:`put` goes through.

        Call it when the client closes for good, so that a reader waiting for the
        application to read (which may never happen) can finish; what it holds
        is kept, in order, for the iterator.
        """
        self.max_queue = None
        self._space.set()

    def end(self) -> None:
        """No message comes after those already in; a waiting :meth:`put` goes through."""
        self._ended = True
        self._queue.put_nowait(None)
        self._space.set()


async def open_link(
    handshake: Handshake, *, open_timeout: float, max_size: int | None
) -> ClientConnection | Ended:
    """Open the WebSocket ``handshake`` names, or say why it could not be opened."""
    try:
        return await ws_connect(
            handshake.url,
            additional_headers=handshake.headers,
            open_timeout=open_timeout,
            ping_interval=None,
            close_timeout=2.0,
            max_size=max_size,
            max_queue=None,
            compression=None,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
        return Ended(ABNORMAL_CLOSURE, body[:200], status=status)
    except InvalidURI as exc:
        return Ended(ABNORMAL_CLOSURE, str(exc), status=400)
    except (OSError, TimeoutError, InvalidHandshake, WebSocketException) as exc:
        return Ended(ABNORMAL_CLOSURE, str(exc) or type(exc).__name__)


async def fetch_token(get_token: Callable[[], Awaitable[str]] | None) -> str:
    """A fresh token from ``get_token``.

    Raises:
        TokenUnavailable: there is no ``get_token``, it raised, or it returned no string.
    """
    if get_token is None:
        raise TokenUnavailable("no get_token to fetch a token with")
    try:
        token = await get_token()
    except Exception as exc:
        raise TokenUnavailable(f"get_token failed: {exc}") from exc
    if not isinstance(token, str) or not token:
        raise TokenUnavailable("get_token must return a token string")
    return token


class Link:
    """One open WebSocket connection of a client, and the tasks that live as long as it.

    :meth:`run` reads until the connection ends; meanwhile :meth:`send` writes.
    Then :meth:`close` it.

    Args:
        ws: the connection.
        session: the session behind it (its ``connected`` ends the wait for the
            welcome; its connector times the token refresh).
        handle: takes each decoded message; returns it if it is for the application.
        inbox: where messages for the application go.
        ping: sends a ping and waits for the pong (the keepalive times it).
        get_token: the client's ``get_token`` (None: no refresh).
        report: takes a failed fetch (TokenUnavailable).
        open_timeout, ping_interval, ping_timeout: see ``Client``.
    """

    def __init__(
        self,
        ws: ClientConnection,
        session: Session,
        *,
        handle: Callable[[dict[str, Any]], Message | None],
        inbox: Inbox,
        ping: Callable[[], Coroutine[Any, Any, None]],
        get_token: Callable[[], Awaitable[str]] | None,
        report: Callable[[Exception], None],
        open_timeout: float,
        ping_interval: float,
        ping_timeout: float,
    ) -> None:
        self._ws = ws
        self._session = session
        self._handle = handle
        self._inbox = inbox
        self._ping = ping
        self._get_token = get_token
        self._report = report
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._ended_reason = ""
        self._running = True
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> Ended:
        """Read until the connection ends: the welcome first (within ``open_timeout``),
        then every frame, while the keepalive and the token refresh run. Returns how
        it ended, once the link's tasks are cancelled."""
        code, reason = ABNORMAL_CLOSURE, ""
        try:
            try:
                async with asyncio.timeout(self._open_timeout):
                    while not self._session.connected:
                        self._receive(await self._ws.recv())
            except TimeoutError:
                self.abort("no welcome")
                raise
            self.spawn(self._keepalive())
            self.spawn(self._refresh())
            while True:
                message = self._receive(await self._ws.recv())
                if message is not None:
                    await self._inbox.put(message)
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                code, reason = exc.rcvd.code, exc.rcvd.reason
        except TimeoutError:
            pass
        finally:
            self._running = False
            for task in list(self._tasks):
                task.cancel()
        return Ended(code, self._ended_reason or reason)

    async def send(self, frames: list[str]) -> None:
        """Write ``frames``, in order.

        Raises:
            NotConnected: the connection was lost.
        """
        for frame in frames:
            try:
                await self._ws.send(frame)
            except ConnectionClosed as exc:
                raise NotConnected("the connection was lost") from exc

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as long as the link (its NotConnected or ClientClosed is ignored)."""
        # The coroutine itself is the task: a task cancelled before it starts still
        # closes its coroutine, so nothing is left "never awaited".
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def abort(self, reason: str) -> None:
        """Drop the connection at once (no closing handshake); ``reason`` is reported."""
        self._ended_reason = reason
        self._ws.transport.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (quietly: it may be gone already)."""
        with contextlib.suppress(Exception):
            await self._ws.close(code, reason)

    def _receive(self, raw: str | bytes) -> Message | None:
        obj = decode_frame(raw)
        return None if obj is None else self._handle(obj)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, NotConnected | ClientClosed):
            _log.error("roomcast client task failed", exc_info=exc)

    async def _keepalive(self) -> None:
        while self._running and self._ping_interval > 0:
            await asyncio.sleep(self._ping_interval)
            pong = asyncio.ensure_future(self._ping())
            try:
                while True:
                    try:
                        await asyncio.wait_for(asyncio.shield(pong), self._ping_timeout)
                        break
                    except TimeoutError:
                        if self._inbox.blocked:
                            continue  # the pong waits behind messages the application has not read
                        _log.info(
                            "no pong within %.1f s: dropping the connection", self._ping_timeout
                        )
                        self.abort("ping timeout")
                        return
            except (NotConnected, ClientClosed):
                return
            finally:
                pong.cancel()

    async def _refresh(self) -> None:
        connector = self._session.connector
        if self._get_token is None:
            return
        while self._running and (delay := connector.refresh_delay()) is not None:
            await asyncio.sleep(delay)
            while self._running:
                try:
                    token = await fetch_token(self._get_token)
                except TokenUnavailable as exc:
                    self._report(exc)
                    retry = connector.refresh_retry_delay()
                    if retry is None:
                        return  # the server closes with 4001; the reconnection gets a token
                    await asyncio.sleep(retry)
                    continue
                connector.set_token(token)
                if not self._running:
                    return  # the next connection uses it
                self._session.send_token()
                await self.send(self._session.data_to_send())
                break
