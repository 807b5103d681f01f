"""The engine: connections, rooms, the message protocol's server behaviour, presence.

:class:`Engine` is everything the public :class:`~roomcast.Hub` does except build
front ends (that is :mod:`roomcast.app`). It owns the local
:class:`~roomcast.core.registry.Registry`, a :class:`~roomcast.brokers.base.Broker`
(in-memory by default) and the metrics, and implements SPEC §3's server
behaviour. It does no network I/O itself: front ends
(:mod:`roomcast.frontends.native`, :mod:`roomcast.frontends.asgi`) feed it
frames and it queues encoded messages on connections. Nothing here imports a
front end or an I/O library.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Self

from roomcast.brokers.base import Broker, HistoryPage, PresenceMember
from roomcast.brokers.memory import MemoryBroker
from roomcast.core.admission import Admission, Gate, Refusal
from roomcast.core.auth import ConnectRequest, Identity
from roomcast.core.connection import Connection, Flusher
from roomcast.core.endpoint import HandlerConfig
from roomcast.core.limits import UserConnections
from roomcast.core.metrics import Metrics
from roomcast.core.presence import StatusCoalescer
from roomcast.core.recovery import merge
from roomcast.core.registry import Registry
from roomcast.errors import (
    AuthError,
    BrokerError,
    CloseCode,
    ErrorCode,
    HubClosed,
    ProtocolError,
)
from roomcast.protocol import (
    ClientMessage,
    Encoded,
    Message,
    MessageFactory,
    MessageType,
    PresenceStatus,
    default_id,
    parse,
    validate_room,
)
from roomcast.supervisor import Supervisor

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["Engine"]

_log = logging.getLogger("roomcast.hub")


class Engine:
    """Rooms of WebSocket connections, broadcast, presence; one per pod.

    Applications hold the :class:`~roomcast.Hub`, which adds the front ends;
    front ends and brokers see only this class.

    Args:
        broker: carries messages between pods and keeps history; a
            :class:`MemoryBroker` when None.
        metrics_registry: Prometheus registry for the hub's collectors; a private
            one when None.
        max_connections: connections this pod accepts; more get HTTP 503.
        max_message_bytes: largest client frame; larger ones close with 1009.
        send_queue: messages buffered per connection before it is closed with 4008.
        send_queue_bytes: bytes buffered per connection before it is closed with
            4008 (whichever of the two bounds is reached first).
        rate: client messages per second per connection (0 disables the rate
            limit, in messages and in bytes).
        burst: messages a connection may send at once before the rate applies.
        rate_bytes: client bytes per second per connection (0 disables this side).
        burst_bytes: bytes a connection may send at once before ``rate_bytes``
            applies; at least ``max_message_bytes``.
        ping_interval: seconds between protocol pings to each connection.
        ping_timeout: seconds to wait for the pong before dropping the connection.
        history_size: messages kept per room by the default broker.
        history_ttl: seconds of inactivity before the default broker drops a room's history.
        history_bytes: bytes of messages the default broker keeps per room.
        history_max_bytes: bytes of messages the default broker keeps over all rooms.
        max_rooms_per_connection: rooms one connection may be in; a join beyond
            gets a ``forbidden_room`` error.
        presence_events: publish ``presence`` messages to rooms (online on a
            user's first join, offline on the last leave, status changes). When
            False none are sent; the presence state (:meth:`presence`,
            :meth:`rooms`, the HTTP API) is kept all the same.
        presence_interval: seconds between two rounds of one connection's status
            announcements: the first change goes out at once, later ones within
            the interval only update the state, and when it ends the latest
            status is announced in each room where it differs from what was
            last announced there (0: every change at once). See
            :mod:`roomcast.core.presence`.
        max_connections_per_user: connections one authenticated user may hold
            (0: no limit); more get HTTP 429.
        connect_rate: new connections per second per client address (0: no
            limit); more get HTTP 429.
        user_connections: counts connections per user; per pod
            (:class:`~roomcast.core.limits.MemoryUserConnections`) when None, give a
            :class:`~roomcast.brokers.redis.users.RedisUserConnections` to count
            across pods.
        id_factory: returns new message ids (UUIDv7 by default).
        clock: wall-clock seconds, for timestamps and credential expiry.
    """

    def __init__(
        self,
        *,
        broker: Broker | None = None,
        metrics_registry: CollectorRegistry | None = None,
        # Limits
        max_connections: int = 10_000,
        max_message_bytes: int = 65_536,
        send_queue: int = 256,
        send_queue_bytes: int = 1 << 20,
        rate: float = 20.0,
        burst: int = 40,
        rate_bytes: int = 256 << 10,
        burst_bytes: int = 1 << 20,
        # Keepalive
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        # History (default broker)
        history_size: int = 100,
        history_ttl: float = 300.0,
        history_bytes: int = 1 << 20,
        history_max_bytes: int = 64 << 20,
        # Abuse limits
        max_rooms_per_connection: int = 100,
        presence_events: bool = True,
        presence_interval: float = 1.0,
        max_connections_per_user: int = 0,
        connect_rate: float = 0.0,
        user_connections: UserConnections | None = None,
        # Determinism
        id_factory: Callable[[], str] = default_id,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker: Broker = (
            broker
            if broker is not None
            else MemoryBroker(
                history_size=history_size,
                history_ttl=history_ttl,
                history_bytes=history_bytes,
                history_max_bytes=history_max_bytes,
            )
        )
        self.metrics = Metrics(metrics_registry)
        broker_ = self.broker
        if isinstance(broker_, MemoryBroker):
            self.metrics.history_bytes.set_function(lambda: broker_.retained_bytes)
        self.registry = Registry()
        self.messages = MessageFactory(id_factory=id_factory, clock=clock)
        self.clock = clock
        self.node_id = secrets.token_hex(3)
        # Limits
        self.max_connections = max_connections
        self.max_message_bytes = max_message_bytes
        self.send_queue = send_queue
        self.send_queue_bytes = send_queue_bytes
        self.small_frame = send_queue_bytes // max(1, send_queue)
        """Frames up to this size are bounded by the message count alone (see connection)."""
        self.rate = rate
        self.burst = burst
        # rate 0 turns the whole rate limit off, the byte side included.
        self.rate_bytes = rate_bytes if rate else 0
        self.burst_bytes = max(burst_bytes, max_message_bytes) if rate_bytes else burst_bytes
        # Keepalive
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        # Abuse limits
        self.max_rooms_per_connection = max_rooms_per_connection
        self.presence_events = presence_events
        self.statuses = StatusCoalescer(presence_interval, self._announce_status)
        self.gate = Gate(
            self,
            max_connections_per_user=max_connections_per_user,
            connect_rate=connect_rate,
            user_connections=user_connections,
            clock=clock,
        )
        # Lifecycle
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: Flusher | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops = Supervisor(on_failure=self.handle_loop_failure)
        # Connections being attached (welcome not sent yet) -> messages held for them.
        self._attaching: dict[Connection, list[Encoded]] = {}
        # Room -> connections catching up on it -> messages held for them.
        self._recovering: dict[str, dict[Connection, list[Encoded]]] = {}
        # Room -> the task that subscribed this pod to it.
        self._subscriptions: dict[str, asyncio.Task[None]] = {}
        self.draining = False

    # -- lifecycle ----------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the hub runs on (set by :meth:`start`)."""
        if self._loop is None:
            raise HubClosed("the hub is not started: use 'async with hub' or its lifespan")
        return self._loop

    @property
    def flusher(self) -> Flusher:
        """The flusher shared by this hub's connections."""
        if self._flusher is None:
            raise HubClosed("the hub is not started")
        return self._flusher

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has run and :meth:`close` has not."""
        return self._loop is not None

    @property
    def ready(self) -> bool:
        """Whether the hub takes traffic: started, not draining, broker reachable."""
        return self.started and not self.draining and self.broker.ready and not self._loops.down

    async def start(self) -> None:
        """Start the broker and the keepalive sweeper. Call once."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._flusher = Flusher(self._loop)
        self.draining = False
        await self.broker.start(self)
        await self.gate.user_connections.start()
        self._loops.start("keepalive", self._sweep)

    async def close(self, *, code: int = CloseCode.SERVICE_RESTART, grace: float = 5.0) -> None:
        """Close every connection with ``code`` (1012 by default), then stop the broker.

        Connections that have not finished closing after ``grace`` seconds are aborted.
        """
        if self._loop is None:
            return
        self.draining = True
        for conn in list(self.registry.connections.values()):
            conn.close(code, "server shutting down")
        deadline = self._loop.time() + grace
        while self.registry.connections and self._loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        for conn in list(self.registry.connections.values()):
            conn.abort()
        await self._loops.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        await self.broker.close()
        await self.gate.user_connections.close()
        self._loop = None
        self._flusher = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Starlette/FastAPI lifespan: ``Starlette(..., lifespan=hub.lifespan)``."""
        async with self:
            yield

    def spawn(self, coro: Awaitable[Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the hub owns (awaited or cancelled at close)."""
        task = self.loop.create_task(_as_coroutine(coro), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("background task failed", exc_info=task.exception())

    # -- admission --------------------------------------------------------------------

    def admit(
        self, request: ConnectRequest, config: HandlerConfig | None = None
    ) -> Admission | Refusal | Awaitable[Admission | Refusal]:
        """Decide, before the upgrade, whether a WebSocket request may connect.

        See :meth:`roomcast.core.admission.Gate.admit`.
        """
        return self.gate.admit(request, config or HandlerConfig())

    def abandon(self, admission: Admission) -> None:
        """Release what ``admission`` holds: its upgrade failed, so no :meth:`attach` follows."""
        self.gate.abandon(admission)

    # -- connection lifecycle -----------------------------------------------------------

    def attach(self, conn: Connection, admission: Admission) -> None:
        """Register an upgraded connection: welcome it, join its room, run on_connect.

        The welcome is the connection's first frame. When it connects to a room,
        the welcome waits for the room's position (``epoch``, ``offset``) and the
        replay of what it missed after ``last_id``; messages published meanwhile
        are held and delivered after the replay, without duplicates.
        """
        conn.identity = admission.identity
        self.gate.hold(conn, admission)
        if admission.room is None:
            self._register(conn, recovered=False)
            conn.run_async(self._connected(conn))
            return
        buffer: list[Encoded] = []
        self._attaching[conn] = buffer
        conn.run_async(self._connected(conn, admission.room, admission.last_id, buffer))

    def _register(self, conn: Connection, *, recovered: bool, **room_state: Any) -> None:
        self.registry.add(conn)
        self.metrics.connections.set(len(self.registry))
        data: dict[str, Any] = {
            "connection_id": conn.id,
            "user_id": conn.user_id,
            "rooms": [room_state["room"]] if "room" in room_state else [],
            "recovered": recovered,
        }
        if "epoch" in room_state:
            data["epoch"] = room_state["epoch"]
            data["offset"] = room_state["offset"]
        conn.send(self.messages.system("welcome", data))

    async def _connected(
        self,
        conn: Connection,
        room: str | None = None,
        last_id: str | None = None,
        buffer: list[Encoded] | None = None,
    ) -> None:
        if room is not None and buffer is not None:
            try:
                await self._join(conn, room, last_id=last_id, buffer=buffer)
            finally:
                self._attaching.pop(conn, None)
            if conn.closed:
                return
        hook = conn.config.on_connect
        if hook is not None:
            await _call(hook, conn)

    def detach(self, conn: Connection) -> None:
        """Forget a connection whose transport is gone; presence and hooks follow."""
        if conn.closed:
            return
        conn.closed = True
        conn.pending = None
        self.statuses.forget(conn)
        self.gate.release(conn)
        if self.registry.connections.get(conn.id) is not conn:
            return
        left = self.registry.remove(conn)
        self.metrics.connections.set(len(self.registry))
        self.metrics.rooms.set(len(self.registry.rooms))
        if self._loop is not None:
            self.spawn(self._disconnected(conn, left), name=f"roomcast-disconnect-{conn.id}")

    async def _disconnected(self, conn: Connection, left: list[tuple[str, bool]]) -> None:
        await conn.drain_inbox()
        for room, last in left:
            await self._after_leave(conn, room, last)
        hook = conn.config.on_disconnect
        if hook is not None:
            await _call(hook, conn)

    def on_slow_consumer(self, conn: Connection) -> None:
        """Count and log a connection closed because its send queue filled."""
        self.metrics.slow_consumers.inc()
        _log.warning(
            "slow consumer: send queue full, closing with 4008",
            extra={"conn_id": conn.id, "user_id": conn.user_id, "remote": conn.remote},
        )

    def reject_overload(self, conn: Connection, raw: str | bytes) -> None:
        """A connection's inbox is full (its hooks are too slow): drop the frame."""
        self.metrics.rate_limited.inc()
        self.send_error(
            conn,
            ProtocolError(
                ErrorCode.RATE_LIMITED, "too many messages waiting; dropped", ref=_ref_of(raw)
            ),
        )

    # -- inbound ------------------------------------------------------------------------

    def handle(self, conn: Connection, raw: str | bytes) -> Awaitable[None] | None:
        """Handle one client frame.

        Returns None when done, or an awaitable the connection must run before its
        next frame (see :meth:`Connection.receive`).
        """
        self.metrics.messages_received.inc()
        if conn.abuse is not None:
            over = self._over_rate(conn, raw)
            if over is not None:
                self._rate_limited(conn, raw, over)
                return None
        try:
            msg = parse(raw)
            kind = msg.type
            if kind is MessageType.CHAT:
                return self._chat(conn, msg)
            if kind is MessageType.PING:
                pong = self.messages.make(MessageType.PONG, data=msg.data)
                conn.send(pong)
                return None
            if kind is MessageType.JOIN:
                room = _named_room(msg)
                self._check_join(conn, room, msg.ref)
                return self._join(conn, room, last_id=msg.last_id, ref=msg.ref)
            if kind is MessageType.LEAVE:
                return self._leave(conn, _named_room(msg), ref=msg.ref)
            if kind is MessageType.PRESENCE:
                rooms = [self._target(conn, msg)] if msg.room is not None else sorted(conn.rooms)
                return self._set_status(conn, PresenceStatus(msg.data["status"]), rooms)
            return self._auth(conn, msg)
        except ProtocolError as exc:
            self.send_error(conn, exc)
            return None

    def _over_rate(self, conn: Connection, raw: str | bytes) -> str | None:
        # Which limit this frame is over (None: within both), in messages and bytes.
        now = self.loop.time()
        if self.rate and not conn.bucket.take(now):
            return f"{self.rate:g} messages/s"
        byte_bucket = conn.byte_bucket
        if byte_bucket is not None:
            size = len(raw) if isinstance(raw, bytes) or raw.isascii() else len(raw.encode())
            if not byte_bucket.take(now, size):
                if self.rate:
                    conn.bucket.give_back()
                return f"{self.rate_bytes} bytes/s"
        return None

    def _rate_limited(self, conn: Connection, raw: str | bytes, limit: str) -> None:
        self.metrics.rate_limited.inc()
        abuse = conn.abuse
        if abuse is not None and not abuse.take(self.loop.time()):
            _log.warning(
                "closing connection over the rate limit (1008)",
                extra={"conn_id": conn.id, "remote": conn.remote},
            )
            self.metrics.policy_closes.labels(reason="rate").inc()
            conn.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
            return
        self.send_error(
            conn,
            ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"rate limit of {limit} exceeded; message dropped",
                ref=_ref_of(raw),
            ),
        )

    def send_error(self, conn: Connection, exc: ProtocolError) -> None:
        """Send ``exc`` to ``conn`` as an ``error`` message."""
        self.metrics.errors.labels(code=exc.code.value).inc()
        conn.send(self.messages.error(exc.code, exc.detail, ref=exc.ref))

    def _target(self, conn: Connection, msg: ClientMessage) -> str:
        room = msg.room
        if room is None:
            if len(conn.rooms) != 1:
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE,
                    f"'room' is required when joined to {len(conn.rooms)} rooms",
                    ref=msg.ref,
                )
            (room,) = conn.rooms
        elif room not in conn.rooms:
            identity = conn.identity
            if identity is not None and not identity.allows(room):
                raise _forbidden(room, msg.ref)
            raise ProtocolError(
                ErrorCode.NOT_MEMBER, f"not a member of room {room!r}; join it first", ref=msg.ref
            )
        return room

    def _check_join(self, conn: Connection, room: str, ref: str | None) -> None:
        # Joins of one connection run one after another, so conn.rooms is current.
        if room in conn.rooms:
            return
        identity = conn.identity
        if identity is not None and not identity.allows(room):
            raise _forbidden(room, ref)
        if len(conn.rooms) >= self.max_rooms_per_connection:
            raise ProtocolError(
                ErrorCode.FORBIDDEN_ROOM,
                f"room limit reached: a connection may be in at most"
                f" {self.max_rooms_per_connection} rooms; leave one first",
                ref=ref,
            )

    def _chat(self, conn: Connection, msg: ClientMessage) -> Awaitable[None] | None:
        room = self._target(conn, msg)
        message = self.messages.make(
            MessageType.CHAT, room=room, data=msg.data, sender=conn.user_id
        )
        message.ref = msg.ref
        hook = conn.config.on_message
        if hook is None:
            self._publish_from(conn, message)
            return None
        try:
            result = hook(conn, message)
        except Exception:
            _log.exception("on_message hook failed; message dropped", extra={"conn_id": conn.id})
            return None
        if inspect.isawaitable(result):
            return self._chat_async(conn, result)
        if result is not None:
            self._publish_from(conn, result)
        return None

    async def _chat_async(self, conn: Connection, pending: Awaitable[Message | None]) -> None:
        try:
            result = await pending
        except Exception:
            _log.exception("on_message hook failed; message dropped", extra={"conn_id": conn.id})
            return
        if result is not None and not conn.closed:
            self._publish_from(conn, result)

    def _publish_from(self, conn: Connection, message: Message) -> None:
        # A message that cannot be encoded (a hook's result, say) gets its sender
        # an invalid_message error; nothing is stored or delivered.
        try:
            self.broker.publish(message)
        except ProtocolError as exc:
            self.send_error(conn, exc)

    async def _join(
        self,
        conn: Connection,
        room: str,
        *,
        last_id: str | None = None,
        ref: str | None = None,
        buffer: list[Encoded] | None = None,
    ) -> None:
        """Join ``room``: subscribe, read the room's position and replay, then go live.

        ``buffer`` is given while the connection is being attached (its welcome is
        sent here); otherwise a ``joined`` reply is sent.
        """
        welcome = buffer is not None
        if conn.closed:
            return
        resync = room in conn.rooms
        if resync:
            if last_id is None:  # already live in the room: nothing to replay
                try:
                    epoch = (await self.broker.history(room, limit=0)).epoch
                except BrokerError:
                    epoch = ""
                self._reply_joined(conn, room, ref, recovered=False, epoch=epoch)
                return
            # A member asking for a replay (it saw an offset gap): catch up again,
            # as a joiner would, while staying present in the room.
            self.registry.leave(conn, room)
        # Hold the room's live messages for this connection while it catches up.
        held = buffer if buffer is not None else []
        recovering = self._recovering.setdefault(room, {})
        recovering[conn] = held
        try:
            await self._subscribed(room)
            replay, page = await self._missed(room, last_id)
        except BrokerError as exc:
            _log.warning("history unavailable; joining without replay", extra={"error": str(exc)})
            replay, page = [], HistoryPage(room=room, epoch="", offset=0)
        finally:
            del recovering[conn]
            if not recovering:
                del self._recovering[room]
        if conn.closed:
            self._release(room)
            if resync:  # it left the registry's rooms above, so detach did not see it
                await self._after_leave(conn, room, room not in self.registry.rooms)
            return
        # From here to registry.join nothing awaits: no message can slip between.
        if welcome:
            self._register(
                conn, recovered=page.recovered, room=room, epoch=page.epoch, offset=page.offset
            )
        else:
            self._reply_joined(
                conn, room, ref, recovered=page.recovered, epoch=page.epoch, offset=page.offset
            )
        for encoded in merge(room, page.offset, replay, held):
            conn.push(encoded)
        self.registry.join(conn, room)
        self.metrics.rooms.set(len(self.registry.rooms))
        if resync:
            return
        came_online = await self.broker.presence.add(
            room, user_id=conn.user_id, conn_id=conn.id, info=conn.info
        )
        if came_online and self.presence_events:
            online = PresenceStatus.ONLINE
            self._announce(self.messages.presence(room, conn.user_id, online, info=conn.info))

    def _reply_joined(
        self, conn: Connection, room: str, ref: str | None, *, recovered: bool, **extra: Any
    ) -> None:
        data: dict[str, Any] = {"room": room, "recovered": recovered, **extra}
        if ref is not None:
            data["ref"] = ref
        conn.send(self.messages.system("joined", data, room=room))

    async def _subscribed(self, room: str) -> None:
        # One subscription per room, shared by concurrent joiners.
        pending = self._subscriptions.get(room)
        if pending is None:
            pending = self._subscriptions[room] = self.loop.create_task(
                _as_coroutine(self.broker.subscribe(room)), name=f"roomcast-subscribe-{room}"
            )
        await asyncio.shield(pending)

    def _release(self, room: str) -> None:
        # Unsubscribe from a room nobody here is in or joining any more.
        if room in self.registry.rooms or room in self._recovering:
            return
        if self._subscriptions.pop(room, None) is not None and self.started:
            self.spawn(self.broker.unsubscribe(room), name=f"roomcast-unsubscribe-{room}")

    async def _missed(self, room: str, last_id: str | None) -> tuple[list[Encoded], HistoryPage]:
        """The messages of ``room`` after ``last_id`` (every page), and the room's position."""
        if last_id is None:
            return [], await self.broker.history(room, limit=0)
        page_size = max(1, self.send_queue // 2)
        first = page = await self.broker.history(room, since=last_id, limit=page_size)
        if not page.recovered:
            return [], page
        replay = list(page.messages)
        while len(page.messages) == page_size:
            tail = page.messages[-1].message
            if tail is None:
                break
            page = await self.broker.history(room, since=tail.id, limit=page_size)
            if not page.recovered:  # evicted while paging: the client must resync
                return [], HistoryPage(room=room, epoch=page.epoch, offset=page.offset)
            replay += page.messages
        newest = replay[-1].message if replay else None
        offset = first.offset
        if newest is not None and newest.offset is not None:
            offset = max(offset, newest.offset)
        return replay, HistoryPage(room=room, epoch=first.epoch, offset=offset, recovered=True)

    async def _leave(self, conn: Connection, room: str, *, ref: str | None) -> None:
        if room not in conn.rooms:
            self.send_error(
                conn, ProtocolError(ErrorCode.NOT_MEMBER, f"not a member of room {room!r}", ref=ref)
            )
            return
        last_local = self.registry.leave(conn, room)
        self.metrics.rooms.set(len(self.registry.rooms))
        data: dict[str, Any] = {"room": room}
        if ref is not None:
            data["ref"] = ref
        conn.send(self.messages.system("left", data, room=room))
        await self._after_leave(conn, room, last_local)

    async def _after_leave(self, conn: Connection, room: str, last_local: bool) -> None:
        self.statuses.left(conn, room)
        went_offline = await self.broker.presence.remove(
            room, user_id=conn.user_id, conn_id=conn.id
        )
        if went_offline and self.started and self.presence_events:
            self._announce(self.messages.presence(room, conn.user_id, PresenceStatus.OFFLINE))
        if last_local:
            self._release(room)

    async def _set_status(self, conn: Connection, status: PresenceStatus, rooms: list[str]) -> None:
        # The state changes at once; announcements go out at most once per
        # --presence-interval per connection (see roomcast.core.presence).
        conn.status = status
        statuses = self.statuses
        sent = False
        for room in rooms:
            changed = await self.broker.presence.set_status(
                room, user_id=conn.user_id, status=status
            )
            if not self.presence_events:
                continue
            if statuses.holding(conn):
                statuses.hold(conn, room, status, changed=changed)
            elif changed:
                self._announce_status(conn, room, status)
                sent = True
        if sent and self.started and not conn.closed:
            statuses.sent(conn, self.loop)

    def _announce_status(self, conn: Connection, room: str, status: PresenceStatus) -> bool:
        if not self.started:
            return False
        self._announce(self.messages.presence(room, conn.user_id, status, info=conn.info))
        return True

    def _auth(self, conn: Connection, msg: ClientMessage) -> Awaitable[None] | None:
        # Token refresh: the same authenticator, the same user, a later expiry.
        authenticator = conn.config.authenticator
        if authenticator is None:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                "this server does not check tokens, so there is nothing to refresh",
                ref=msg.ref,
            )
        host = conn.remote.rpartition(":")[0]
        try:
            identity = authenticator(ConnectRequest.for_refresh(msg.data["token"], client=host))
        except AuthError as exc:
            raise _refused(exc.message, msg.ref) from None
        except Exception:
            _log.exception("authenticator failed on refresh", extra={"conn_id": conn.id})
            raise _refused("authentication failed", msg.ref) from None
        if inspect.isawaitable(identity):
            return self._auth_later(conn, identity, msg.ref)
        return self._refresh(conn, identity, msg.ref)

    async def _auth_later(
        self, conn: Connection, pending: Awaitable[Identity | None], ref: str | None
    ) -> None:
        try:
            try:
                identity = await pending
            except AuthError as exc:
                raise _refused(exc.message, ref) from None
            except Exception:
                _log.exception("authenticator failed on refresh", extra={"conn_id": conn.id})
                raise _refused("authentication failed", ref) from None
            step = self._refresh(conn, identity, ref)
        except ProtocolError as exc:
            self.send_error(conn, exc)
            return
        if step is not None:
            await step

    def _refresh(
        self, conn: Connection, identity: Identity | None, ref: str | None
    ) -> Awaitable[None] | None:
        if not isinstance(identity, Identity):
            raise _refused("no credentials", ref)
        if conn.identity is None or identity.user_id != conn.user_id:
            raise _refused("a refresh must be for the connection's own user (the same sub)", ref)
        if identity.expires_at is not None and identity.expires_at <= self.clock():
            raise _refused("token expired", ref)
        conn.identity = identity
        conn.info = identity.info
        data: dict[str, Any] = {"user_id": identity.user_id, "expires_at": identity.expires_at}
        if ref is not None:
            data["ref"] = ref
        conn.send(self.messages.system("refreshed", data))
        revoked = sorted(room for room in conn.rooms if not identity.allows(room))
        return self._leave_revoked(conn, revoked) if revoked else None

    async def _leave_revoked(self, conn: Connection, rooms: list[str]) -> None:
        # The new token no longer allows these rooms: leave them as if asked to.
        for room in rooms:
            await self._leave(conn, room, ref=None)

    # -- outbound -------------------------------------------------------------------------

    def handle_publication(self, encoded: Encoded) -> None:
        """Deliver a publication the broker handed back to the local members it targets."""
        message = encoded.message
        room = message.room if message is not None else None
        conns = (
            self.registry.connections.values() if room is None else self.registry.rooms.get(room)
        )
        if self._recovering or self._attaching:
            self._hold(room, encoded)
        if not conns:
            return
        n = Registry.fanout(conns, encoded, self.flusher, self.small_frame)
        metrics = self.metrics
        metrics.messages_sent.inc(n)
        metrics.fanouts.inc()
        if message is not None and message.created:
            metrics.delivery_latency.observe(max(0.0, time.time() - message.created))

    def _hold(self, room: str | None, encoded: Encoded) -> None:
        # Connections catching up on a room get its messages after their replay.
        if room is None:
            for held in self._attaching.values():
                held.append(encoded)
            return
        recovering = self._recovering.get(room)
        if recovering:
            for held in recovering.values():
                held.append(encoded)

    def _announce(self, message: Message) -> None:
        # A server event (presence) whose payload cannot be encoded, e.g. an
        # authenticator's ``info`` that is not JSON: logged, not sent.
        try:
            self.broker.publish(message)
        except ProtocolError as exc:
            _log.error("cannot announce %s: %s", message.type.value, exc.detail)

    def handle_publish_error(self, message: Message, exc: BaseException) -> None:
        """Degrade gracefully: count, warn, and deliver ``message`` to local members."""
        self.metrics.redis_publish_errors.inc()
        _log.warning(
            "broker publish failed; delivering locally only",
            extra={"room": message.room, "error": str(exc)},
        )
        self.handle_publication(Encoded.of(message))

    def handle_publish_unknown(self, message: Message, exc: BaseException) -> None:
        """Count and log a publication whose outcome is unknown (not delivered locally)."""
        self.metrics.redis_publish_errors.inc()
        self.metrics.redis_publish_unknown.inc()
        _log.warning(
            "broker publish outcome unknown; not delivered locally (Redis may have)",
            extra={"room": message.room, "error": str(exc)},
        )

    def handle_loop_failure(self, name: str, exc: BaseException) -> None:
        """Count a background loop that failed (it was logged and is restarted)."""
        self.metrics.task_failures.labels(task=name).inc()

    def handle_reconnect(self) -> None:
        """Count a broker subscriber reconnection."""
        self.metrics.redis_reconnects.inc()

    def handle_subscriber_lost(self) -> None:
        """Count a broker subscriber connection lost or replaced."""
        self.metrics.redis_subscriber_drops.inc()

    def handle_repair(self, room: str, *, repaired: int, lost: int) -> None:
        """Count a gap in ``room``'s feed that the broker filled from history."""
        self.metrics.gap_repairs.inc()
        self.metrics.gap_repaired_messages.inc(repaired)
        self.metrics.gap_lost_messages.inc(lost)
        _log.info(
            "filled a gap in a room's feed from its history",
            extra={"room": room, "repaired": repaired, "lost": lost},
        )

    def handle_history_evicted(self, budget: str, count: int) -> None:
        """Count retained messages a byte budget evicted early."""
        self.metrics.history_evicted.labels(budget=budget).inc(count)

    def handle_duplicates(self, count: int) -> None:
        """Count publications the broker dropped as copies of ones already delivered."""
        self.metrics.duplicates_dropped.inc(count)

    def handle_presence_expired(self, room: str, user_id: str) -> None:
        """Announce that a user of a vanished pod went offline in ``room``."""
        if self.started and self.presence_events:
            self._announce(self.messages.presence(room, user_id, PresenceStatus.OFFLINE))

    # -- application API --------------------------------------------------------------------

    async def publish(self, message: Message) -> Message:
        """Publish ``message`` to its room (or to everyone when ``room`` is None).

        Server-assigned fields are filled in when empty. Returns the message as
        stored, with ``offset`` set when the room retains it.

        Raises:
            ProtocolError: ``invalid_room`` for a bad room name,
                ``invalid_message`` if it cannot be encoded as JSON (nothing
                is stored or delivered).
            HubClosed: the hub is not running.
        """
        if message.room is not None:
            validate_room(message.room)
        if not message.id:
            self.messages.stamp(message)
        if self._loop is None:
            raise HubClosed("the hub is not started")
        return await self.broker.publish(message)

    def broadcast(self, message: Message) -> None:
        """Publish without waiting (the seed's ``hub.Broadcast``); see :meth:`publish`."""
        if message.room is not None:
            validate_room(message.room)
        if not message.id:
            self.messages.stamp(message)
        self.broker.publish(message)

    async def presence(self, room: str) -> list[PresenceMember]:
        """Users present in ``room`` (cluster-wide with a cluster broker)."""
        return await self.broker.presence.members(validate_room(room))

    async def rooms(self) -> list[dict[str, Any]]:
        """Rooms with their local and cluster-wide connection counts and user counts."""
        stats = {s.room: s for s in await self.broker.presence.rooms()}
        names = sorted(set(stats) | set(self.registry.rooms))
        out = []
        for name in names:
            stat = stats.get(name)
            out.append(
                {
                    "room": name,
                    "connections": len(self.registry.rooms.get(name, ())),
                    "cluster_connections": stat.connections if stat else 0,
                    "users": stat.users if stat else 0,
                }
            )
        return out

    @property
    def connection_count(self) -> int:
        """Connections on this pod."""
        return len(self.registry)

    @property
    def attaching(self) -> int:
        """Connections accepted whose welcome is not sent yet."""
        return len(self._attaching)

    # -- keepalive --------------------------------------------------------------------------

    async def _sweep(self) -> None:
        period = max(0.05, min(1.0, self.ping_interval / 4, self.ping_timeout / 4))
        while True:
            await asyncio.sleep(period)
            now = self.loop.time()
            wall = self.clock()
            for conn in list(self.registry.connections.values()):
                try:
                    conn.keepalive(now)
                    identity = conn.identity
                    expires_at = identity.expires_at if identity is not None else None
                    if expires_at is not None and expires_at <= wall:
                        self._expire(conn)
                except Exception:
                    _log.exception("keepalive failed", extra={"conn_id": conn.id})
                    conn.abort()
            self.gate.prune(now)

    def _expire(self, conn: Connection) -> None:
        # The credentials ran out and were not refreshed: 4001.
        _log.info(
            "credentials expired; closing (4001)",
            extra={"conn_id": conn.id, "user_id": conn.user_id, "remote": conn.remote},
        )
        conn.close(CloseCode.TOKEN_EXPIRED, "token expired")


def _forbidden(room: str, ref: str | None) -> ProtocolError:
    return ProtocolError(
        ErrorCode.FORBIDDEN_ROOM, f"room {room!r} is not allowed by your token", ref=ref
    )


def _refused(reason: str, ref: str | None) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_MESSAGE, f"token refused: {reason}", ref=ref)


def _ref_of(raw: str | bytes) -> str | None:
    # The ref of a message that is dropped unhandled, for the error about it.
    try:
        return parse(raw).ref
    except ProtocolError as exc:
        return exc.ref


def _named_room(msg: ClientMessage) -> str:
    # parse() guarantees join/leave name a valid room.
    if msg.room is None:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{msg.type.value} needs a 'room'")
    return msg.room


async def _as_coroutine(aw: Awaitable[Any]) -> Any:
    return await aw


async def _call(hook: Callable[..., Any], *args: Any) -> Any:
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            result = await result
        return result
    except Exception:
        _log.exception("hook %s failed", getattr(hook, "__name__", hook))
        return None
