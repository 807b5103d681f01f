"""What the asyncio client's callers wait for, and for how long.

``join()`` waits for a room's outcome (every call for the room gets the same
one), ``leave()`` and ``ping()`` for the reply to their ``ref``, ``publish()`` for
its ack, and an in-place gap repair for its ``joined``. The timeouts of joins and
repairs run only while connected: a join made while disconnected waits for the
next connection, and its clock starts there. A publication's runs from the call,
connected or not: it is resent on every connection until then. :class:`Pending`
holds the futures and timers; the session decides what resolves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable

from roomcast.client.publishing import Published
from roomcast.client.rooms import RoomStatus
from roomcast.errors import ClientError, NotConnected

__all__ = ["Pending"]


@dataclasses.dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[RoomStatus]
    timeout: float
    timer: asyncio.TimerHandle | None = None


class Pending:
    """The futures and timers of the requests a client is waiting on."""

    def __init__(self) -> None:
        self._joins: dict[str, list[_Waiter]] = {}
        self._replies: dict[str, asyncio.Future[None]] = {}
        self._publications: dict[str, asyncio.Future[Published]] = {}
        self._repairs: dict[str, asyncio.TimerHandle] = {}

    # -- joins ----------------------------------------------------------------------------

    async def join(
        self, room: str, seconds: float, send: Callable[[], Awaitable[None]] | None
    ) -> RoomStatus:
        """Wait for the outcome of joining ``room``.

        ``send``, given when connected, sends the ``join``; the ``seconds`` of timeout then
        starts (else at the next :meth:`connected`).

        Raises:
            TimeoutError: ``seconds`` passed while connected.
            ClientError: the error :meth:`fail` was given (ReplyError, ClientClosed, ...).
        """
        waiter = _Waiter(asyncio.get_running_loop().create_future(), seconds)
        self._joins.setdefault(room, []).append(waiter)
        try:
            if send is not None:
                with contextlib.suppress(NotConnected):  # then it is joined on reconnecting
                    await send()
                self._arm(waiter, room)
            return await waiter.future
        finally:
            if waiter.timer is not None:
                waiter.timer.cancel()
            waiters = self._joins.get(room, [])
            if waiter in waiters:
                waiters.remove(waiter)

    def joined(self, status: RoomStatus) -> None:
        """``status.room`` is joined: its join() calls return ``status``; a repair is over."""
        self._cancel_repair(status.room)
        for waiter in self._joins.pop(status.room, []):
            if waiter.timer is not None:
                waiter.timer.cancel()
            if not waiter.future.done():
                waiter.future.set_result(status)

    def fail(self, room: str, error: ClientError) -> None:
        """The join() calls for ``room`` raise ``error`` (refused, or left); a repair is off."""
        self._cancel_repair(room)
        for waiter in self._joins.pop(room, []):
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def fail_all(self, error: ClientError) -> None:
        """Every join() and publish() raises ``error``: the client closed."""
        self.disconnected()
        for room in list(self._joins):
            self.fail(room, error)
        for ref in list(self._publications):
            self.published(ref, None, error)

    # -- replies --------------------------------------------------------------------------

    async def reply(
        self, ref: str, send: Callable[[], Awaitable[None]], forget: Callable[[str], None]
    ) -> None:
        """Send the request ``ref`` (``send``), then wait for :meth:`done` (no timeout);
        ``forget(ref)`` at the end, however it ends.

        Raises:
            NotConnected: ``send`` could not, or the connection was lost meanwhile.
            ClientError: the server refused (ReplyError).
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._replies[ref] = future
        try:
            await send()
            await future
        finally:
            del self._replies[ref]
            forget(ref)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved, even when nobody awaits it any more

    def done(self, ref: str, error: ClientError | None) -> None:
        """The request ``ref`` is over: its waiter returns, or raises ``error``."""
        future = self._replies.get(ref)
        if future is None or future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    # -- publications ---------------------------------------------------------------------

    async def publication(
        self,
        ref: str,
        seconds: float,
        send: Callable[[], Awaitable[None]],
        forget: Callable[[str], None],
    ) -> Published:
        """Send the publication ``ref`` if it can go now (``send``), then wait up to
        ``seconds`` for :meth:`published`; ``forget(ref)`` at the end, however it ends.

        A connection lost meanwhile (even while sending) does not end the wait: the
        session sends it again on the next one.

        Raises:
            TimeoutError: no answer within ``seconds``.
            ClientError: the server refused (ReplyError), or the client closed.
        """
        future: asyncio.Future[Published] = asyncio.get_running_loop().create_future()
        self._publications[ref] = future
        try:
            with contextlib.suppress(NotConnected):
                await send()
            try:
                async with asyncio.timeout(seconds):
                    return await future
            except TimeoutError:
                if future.done():
                    raise
                raise TimeoutError(f"no ack for {ref} within {seconds} s") from None
        finally:
            del self._publications[ref]
            forget(ref)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved, even when nobody awaits it any more

    def published(self, ref: str, published: Published | None, error: ClientError | None) -> None:
        """The publication ``ref`` is over: its waiter returns ``published``, or raises
        ``error``."""
        future = self._publications.get(ref)
        if future is None or future.done():
            return
        if published is not None:
            future.set_result(published)
        else:
            future.set_exception(error or ClientError(f"no ack for {ref}"))

    # -- the connection -------------------------------------------------------------------

    def repairing(self, room: str, timeout: float, overdue: Callable[[str], object]) -> None:
        """A gap in ``room`` is being repaired: ``overdue(room)`` if it is still not
        :meth:`joined` after ``timeout`` seconds on this connection."""
        self._cancel_repair(room)

        def expire() -> None:
            del self._repairs[room]
            overdue(room)

        self._repairs[room] = asyncio.get_running_loop().call_later(timeout, expire)

    def connected(self) -> None:
        """A connection was welcomed: the timeouts of the waiting joins start."""
        for room, waiters in self._joins.items():
            for waiter in waiters:
                self._arm(waiter, room)

    def disconnected(self) -> None:
        """The connection ended: join timeouts stop (they restart on the next), repairs end."""
        for handle in self._repairs.values():
            handle.cancel()
        self._repairs.clear()
        for waiters in self._joins.values():
            for waiter in waiters:
                if waiter.timer is not None:
                    waiter.timer.cancel()
                    waiter.timer = None

    def _arm(self, waiter: _Waiter, room: str) -> None:
        if waiter.timer is not None or waiter.future.done():
            return

        def expire() -> None:
            if not waiter.future.done():
                message = f"no reply to join {room} within {waiter.timeout} s"
                waiter.future.set_exception(TimeoutError(message))

        waiter.timer = asyncio.get_running_loop().call_later(waiter.timeout, expire)

    def _cancel_repair(self, room: str) -> None:
        handle = self._repairs.pop(room, None)
        if handle is not None:
            handle.cancel()
