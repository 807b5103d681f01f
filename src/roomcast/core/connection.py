"""Per-connection state: the bounded outbox, the rate limiter, the inbound pipeline.

A :class:`Connection` is what the hub knows of one WebSocket. Its subclasses move
bytes: :class:`~roomcast.frontends.native.NativeConnection` writes frames straight to its
transport, :class:`~roomcast.frontends.asgi.AsgiConnection` hands them to an ASGI server.

Outbound, the hub appends one shared :class:`~roomcast.protocol.Encoded` to each
member's ``pending`` list and registers connections whose list just became
non-empty with the :class:`~roomcast.core.flusher.Flusher`, which calls
:meth:`Connection.flush` on each once per event-loop iteration: one write per
connection per iteration, however many messages arrived in it. A connection
whose pending list reaches ``send_queue`` messages or ``send_queue_bytes`` bytes
while its transport cannot take more is a slow consumer: it alone is closed with
4008, and nobody waits for it. Only frames larger than ``send_queue_bytes /
send_queue`` are counted in bytes (the message bound covers the rest, and the
fan-out loop stays short), and the transport holds at most one flush beyond its
high-water mark, so a connection holds at most about twice ``send_queue_bytes``.

Inbound, frames are handled in order. Most are handled synchronously; when one
needs to wait (an async hook, a join), the rest of that connection's frames queue
behind it in a small inbox drained by one task, so a slow hook delays only its own
connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from roomcast.core.ratelimit import TokenBucket
from roomcast.errors import CloseCode, ErrorCode, ProtocolError
from roomcast.protocol import Encoded, Message, PresenceStatus

if TYPE_CHECKING:
    from roomcast.core.auth import Identity
    from roomcast.core.endpoint import HandlerConfig
    from roomcast.core.engine import Engine

__all__ = ["Connection"]

_log = logging.getLogger("roomcast.connection")


class Connection:
    """One client connection as the hub sees it.

    Attributes:
        id: unique connection id, ``c{n}-{node_id}`` with ``n`` from the hub's
            ``connection_ids`` (also the ``from`` of an anonymous user).
        user_id: the authenticated user id, or the connection id when anonymous.
        info: optional JSON object attached to the user's presence.
        identity: what the endpoint's authenticator said about the user (room
            permissions, expiry), or None for an anonymous connection.
        rooms: rooms this connection has joined.
        remote: ``host:port`` of the client, for logs.
        status: the presence status the client set for itself.
        connected_at: when it connected (the hub's wall clock, seconds).
        pending: encoded messages waiting for the next flush (None once closing).
        queued: bytes of the frames in ``pending`` larger than the hub's
            ``small_frame`` (smaller ones are bounded by the message count:
            ``send_queue`` of them take at most ``send_queue_bytes``).
    """

    __slots__ = (
        "__weakref__",
        "abuse",
        "answered",
        "bucket",
        "byte_bucket",
        "byte_limit",
        "closed",
        "config",
        "connected_at",
        "hub",
        "id",
        "identity",
        "inbox",
        "info",
        "limit",
        "pending",
        "queued",
        "remote",
        "rooms",
        "server_rooms",
        "state",
        "status",
        "user_id",
        "worker",
    )

    def __init__(
        self,
        hub: Engine,
        config: HandlerConfig,
        *,
        user_id: str | None = None,
        info: Any = None,
        remote: str = "",
    ) -> None:
        self.hub = hub
        self.config = config
        self.id = f"c{hub.connection_ids()}-{hub.node_id}"
        self.user_id = user_id if user_id is not None else self.id
        self.info = info
        self.identity: Identity | None = None
        self.remote = remote
        self.connected_at = hub.clock()
        self.rooms: set[str] = set()
        self.server_rooms: set[str] = set()
        """Rooms the server subscribed it to (token ``channels``, control API): a token
        refresh does not take them away."""
        self.status = PresenceStatus.ONLINE
        self.pending: list[Encoded] | None = []
        self.queued = 0
        self.limit = hub.send_queue
        self.byte_limit = hub.send_queue_bytes
        now = hub.loop.time()
        self.bucket = TokenBucket(hub.rate, hub.burst, now)
        self.byte_bucket = (
            TokenBucket(hub.rate_bytes, hub.burst_bytes, now) if hub.rate_bytes else None
        )
        self.abuse = TokenBucket(1.0, max(hub.burst, 10), now) if hub.rate else None
        self.inbox: deque[Any] | None = None
        self.worker: asyncio.Task[None] | None = None
        self.closed = False
        self.answered: str | None = None
        """The ``ref`` of the last error sent to this connection (so a drop is told once)."""
        self.state: dict[str, Any] = {}
        """Free-form storage for the application's hooks."""

    # -- outbound ---------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Encode ``message`` and queue it for this connection alone."""
        self.push(Encoded.of(message))

    def send_error(self, code: ErrorCode, text: str, *, ref: str | None = None) -> None:
        """Send an ``error`` message to this connection alone (and count it)."""
        self.hub.send_error(self, ProtocolError(code, text, ref=ref))

    def push(self, encoded: Encoded) -> None:
        """Queue an encoded message; the flusher writes it at the next iteration.

        The hub's fan-out inlines this method; keep the two in step.
        """
        pending = self.pending
        if pending is None:
            return
        pending.append(encoded)
        size = len(encoded.frame)
        if size > self.hub.small_frame:
            self.queued += size
        n = len(pending)
        if n == 1:
            self.hub.flusher.mark(self)
        elif n >= self.limit or self.queued >= self.byte_limit:
            self.overflow()

    def take_pending(self) -> list[Encoded]:
        """Empty the pending list into a new one and return that (for :meth:`flush`)."""
        pending = self.pending or []
        batch = pending[:]
        pending.clear()
        self.queued = 0
        return batch

    def overflow(self) -> None:
        """The pending list reached its bound: write now if possible, else 4008."""
        if self.writable():
            self.flush()
            return
        self.pending = None  # drop what it could not take; nothing more is queued
        self.hub.on_slow_consumer(self)
        # Close on the next iteration: the caller may be iterating over a room.
        self.hub.loop.call_soon(
            self.close, CloseCode.SLOW_CONSUMER, "slow consumer: send queue full"
        )

    def writable(self) -> bool:
        """Whether the transport can take more bytes now."""
        raise NotImplementedError

    def flush(self) -> None:
        """Write every pending message to the transport and clear ``pending``."""
        raise NotImplementedError

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Flush what is pending, send a close frame with ``code``, and end the connection.

        Idempotent; the hub forgets the connection when the transport is gone.
        """
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""
        raise NotImplementedError

    def keepalive(self, now: float) -> None:
        """Send a protocol ping or give up on a silent peer (called about once a second)."""

    # -- inbound ----------------------------------------------------------------

    def receive(self, raw: str | bytes) -> None:
        """Handle one client frame, in order with this connection's other frames."""
        inbox = self.inbox
        if inbox is not None:  # something is awaiting: queue behind it
            if len(inbox) >= self.limit:
                self.hub.reject_overload(self, raw)
                return
            inbox.append(raw)
            return
        pending = self.hub.handle(self, raw)
        if pending is not None:
            self.run_async(pending)

    def run_async(self, step: Awaitable[None]) -> None:
        """Run ``step``, holding this connection's later frames until it is done."""
        if self.inbox is not None:
            self.inbox.append(step)
            return
        self.inbox = deque()
        # Owned by the hub, so closing the hub ends a worker stuck in a slow hook.
        self.worker = self.hub.spawn(self._drain(step), name=f"roomcast-inbox-{self.id}")

    async def _drain(self, step: Awaitable[None]) -> None:
        inbox = self.inbox
        if inbox is None:  # run_async sets it before creating this task
            return
        try:
            while True:
                try:
                    await step
                except asyncio.CancelledError:
                    raise
                except Exception:
                    _log.exception("error while handling a message", extra={"conn_id": self.id})
                while inbox:
                    item = inbox.popleft()
                    if isinstance(item, (str, bytes)):
                        nxt = self.hub.handle(self, item) if not self.closed else None
                        if nxt is None:
                            continue
                        step = nxt
                    else:
                        step = item
                    break
                else:
                    return
        finally:
            self.inbox = None
            self.worker = None

    async def drain_inbox(self) -> None:
        """Wait until the frames received so far are handled (used at disconnect)."""
        worker = self.worker
        if worker is not None and worker is not asyncio.current_task():
            # wait() neither raises the worker's outcome nor swallows our own
            # cancellation (as suppressing CancelledError around shield() did).
            await asyncio.wait((worker,))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} user={self.user_id!r} rooms={len(self.rooms)}>"


HookResult = Message | None | Awaitable[Message | None]
MessageHook = Callable[[Connection, Message], HookResult]
ConnectionHook = Callable[[Connection], Awaitable[None] | None]
Verdict = bool | str | None
"""An authorization hook's answer: None or True allows; False refuses; a string
refuses with that reason (a hook may also raise :class:`~roomcast.errors.Refused`)."""
JoinHook = Callable[[Connection, str], Verdict | Awaitable[Verdict]]
PublishHook = Callable[[Connection, Message], Verdict | Awaitable[Verdict]]
