"""The engine: the facade over the pod's connections, rooms, SPEC §3's behaviour, presence.

:class:`Engine` is everything the public :class:`~roomcast.Hub` does except build
front ends (:mod:`roomcast.app`). It owns the registry, a broker (in-memory by
default) and the metrics, and does no I/O: front ends feed it frames and it
queues encoded messages on connections. It imports no front end, no I/O library.

It keeps the options, its lifecycle and tasks, the broker's callbacks (the
fan-out) and the application API, and composes one collaborator per other
concern, each owning its state: :mod:`~roomcast.core.sessions`,
:mod:`~roomcast.core.commands`, :mod:`~roomcast.core.subscriptions`,
:mod:`~roomcast.core.recovery`, :mod:`~roomcast.core.refresh`,
:mod:`~roomcast.core.keepalive`. The per-message paths gain no call from that:
:attr:`Engine.handle` *is* ``Commands.handle``, and
:meth:`Engine.handle_publication` fans out itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Self

from roomcast.brokers.base import Broker, PresenceChange, PresenceMember
from roomcast.brokers.memory import MemoryBroker
from roomcast.core.admission import Admission, Gate, Refusal
from roomcast.core.auth import ConnectRequest
from roomcast.core.brokerevents import BrokerCallbacks
from roomcast.core.commands import Commands
from roomcast.core.connection import Connection
from roomcast.core.control import Control
from roomcast.core.endpoint import HandlerConfig
from roomcast.core.events import Events
from roomcast.core.flusher import Flusher
from roomcast.core.keepalive import Keepalive
from roomcast.core.limits import UserConnections
from roomcast.core.metrics import Metrics
from roomcast.core.namespaces import Namespace, Namespaces, RoomOptions
from roomcast.core.presence import StatusCoalescer
from roomcast.core.recovery import Recovery
from roomcast.core.refresh import TokenRefresh
from roomcast.core.registry import Registry
from roomcast.core.sessions import Sessions
from roomcast.core.subscriptions import Membership, Subscriptions
from roomcast.errors import CloseCode, HubClosed, ProtocolError
from roomcast.protocol import (
    Encoded,
    Message,
    MessageFactory,
    PresenceStatus,
    default_id,
    validate_room,
)
from roomcast.supervisor import Supervisor

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["Engine"]

_log = logging.getLogger("roomcast.hub")


class Engine(BrokerCallbacks):
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
        namespaces: options per room-name pattern (history, presence, recovery,
            client publishing); see :mod:`roomcast.core.namespaces`. History
            options apply to the default broker and to the Redis broker alike.
        max_connections_per_user: connections one authenticated user may hold
            (0: no limit); more get HTTP 429.
        connect_rate: new connections per second per client address (0: no
            limit); more get HTTP 429.
        user_connections: counts connections per user; per pod
            (:class:`~roomcast.core.limits.MemoryUserConnections`) when None, give a
            :class:`~roomcast.brokers.redis.users.RedisUserConnections` to count
            across pods.
        id_factory: returns new message ids (UUIDv7 by default).
        connection_ids: returns the number in each new connection's id
            (``c{n}-{node_id}``); counts 1, 2, 3… per engine when None.
        clock: wall-clock seconds, for timestamps, delivery latency and
            credential expiry.
    """

    handle: Callable[[Connection, str | bytes], Awaitable[None] | None]
    """Handle one client frame; None when done, or an awaitable to run before the next
    (:meth:`Commands.handle <roomcast.core.commands.Commands.handle>`, bound as is)."""

    reject_overload: Callable[[Connection, str | bytes], None]
    """Drop a frame that found its connection's inbox full (its hooks are too slow)."""

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
        namespaces: Iterable[Namespace] = (),
        max_connections_per_user: int = 0,
        connect_rate: float = 0.0,
        user_connections: UserConnections | None = None,
        # Determinism
        id_factory: Callable[[], str] = default_id,
        connection_ids: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if broker is None:
            broker = MemoryBroker(
                history_size=history_size,
                history_ttl=history_ttl,
                history_bytes=history_bytes,
                history_max_bytes=history_max_bytes,
            )
        self.broker: Broker = broker
        self.metrics = Metrics(metrics_registry)
        if isinstance(broker, MemoryBroker):
            memory = broker  # narrowed, for the lambda
            self.metrics.history_bytes.set_function(lambda: memory.retained_bytes)
        self.registry = Registry()
        self.events = Events()
        """Listeners of the cluster-wide room events (see :mod:`roomcast.core.events`)."""
        self.messages = MessageFactory(id_factory=id_factory, clock=clock)
        self.clock = clock
        self.node_id = secrets.token_hex(3)
        self.connection_ids: Callable[[], int] = (
            connection_ids if connection_ids is not None else itertools.count(1).__next__
        )
        """Returns the number of the next connection's id (see :class:`Connection`)."""
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
        self.namespaces = Namespaces(
            namespaces, defaults=RoomOptions(presence_events=presence_events)
        )
        """Each room's options (:mod:`roomcast.core.namespaces`); call it with a room."""
        if self.namespaces.sets_history:
            broker.set_retention(self.namespaces.retention)
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
        self.draining = False
        # Collaborators, each owning its concern's state (read the settings above).
        self.subscriptions = Subscriptions(self)
        self.recovery = Recovery(self.broker, self.subscriptions, page_size=max(1, send_queue // 2))
        self.membership = Membership(self, recovery=self.recovery, subscriptions=self.subscriptions)
        self.control = Control(self)
        self.sessions = Sessions(self, membership=self.membership, recovery=self.recovery)
        self.token_refresh = TokenRefresh(self, membership=self.membership)
        self.commands = Commands(
            self,
            membership=self.membership,
            refresh=self.token_refresh,
            announce_status=self._announce_status,
        )
        self.keepalive = Keepalive(
            self.registry,
            self.gate,
            clock=clock,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
        )
        # The hot paths, bound once: no delegating call per frame or publication.
        self.handle = self.commands.handle
        self.reject_overload = self.commands.reject_overload
        self._hold = self.recovery.hold
        # The recovery's own dicts (never replaced), checked on every publication.
        self._attaching = self.recovery.attaching
        self._recovering = self.recovery.recovering

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
        await self.control.start()
        await self.gate.user_connections.start()
        self._loops.start("keepalive", self.keepalive.run)

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
        await self.control.close()
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

    # -- front ends: admission, connections, errors ------------------------------------

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

    def attach(self, conn: Connection, admission: Admission) -> None:
        """Register an upgraded connection: welcome it, join its room, run on_connect.

        The welcome is the connection's first frame. When it connects to a room,
        the welcome waits for the room's position (``epoch``, ``offset``) and the
        replay of what it missed after ``last_id``; messages published meanwhile
        are held and delivered after the replay, without duplicates.
        """
        self.sessions.attach(conn, admission)

    def detach(self, conn: Connection) -> None:
        """Forget a connection whose transport is gone; presence and hooks follow."""
        self.sessions.detach(conn)

    def on_slow_consumer(self, conn: Connection) -> None:
        """Count and log a connection closed because its send queue filled."""
        self.metrics.slow_consumers.inc()
        _log.warning(
            "slow consumer: send queue full, closing with 4008",
            extra={"conn_id": conn.id, "user_id": conn.user_id, "remote": conn.remote},
        )

    def send_error(self, conn: Connection, exc: ProtocolError) -> None:
        """Send ``exc`` to ``conn`` as an ``error`` message (and count it)."""
        self.metrics.errors.labels(code=exc.code.value).inc()
        conn.answered = exc.ref
        conn.send(self.messages.error(exc.code, exc.detail, ref=exc.ref))

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
            metrics.delivery_latency.observe(max(0.0, self.clock() - message.created))

    def handle_history_reset(self, room: str, epoch: str, offset: int) -> None:
        """Tell the local members of ``room`` its history changed (:meth:`Membership.reset`)."""
        self.membership.reset(room, epoch, offset)

    def _announce_status(self, conn: Connection, room: str, status: PresenceStatus) -> bool:
        # The status coalescer's (and the presence command's) announcement.
        if not self.started:
            return False
        self.membership.announce(self.messages.presence(room, conn.user_id, status, info=conn.info))
        return True

    def handle_presence_expired(self, room: str, user_id: str, *, vacated: bool = False) -> None:
        """Announce that a user of a vanished pod went offline in ``room``."""
        if not self.started:
            return
        if self.namespaces(room).presence_events:
            self.membership.announce(self.messages.presence(room, user_id, PresenceStatus.OFFLINE))
        if self.events:
            self.events.left(room, user_id, PresenceChange.ROOM if vacated else PresenceChange.USER)

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
        self._prepare(message)
        if self._loop is None:
            raise HubClosed("the hub is not started")
        return await self.broker.publish(message)

    def broadcast(self, message: Message) -> None:
        """Publish without waiting (the seed's ``hub.Broadcast``); see :meth:`publish`."""
        self._prepare(message)
        self.broker.publish(message)

    def _prepare(self, message: Message) -> None:
        if message.room is not None:
            validate_room(message.room)
        if not message.id:
            self.messages.stamp(message)

    async def presence(self, room: str) -> list[PresenceMember]:
        """Users present in ``room`` (cluster-wide with a cluster broker)."""
        return await self.broker.presence.members(validate_room(room))

    async def rooms(self) -> list[dict[str, Any]]:
        """Rooms with their local and cluster-wide connection counts and user counts."""
        return await self.membership.rooms()

    @property
    def connection_count(self) -> int:
        """Connections on this pod."""
        return len(self.registry)

    @property
    def attaching(self) -> int:
        """Connections accepted that are still joining the room they connected for."""
        return len(self._attaching)

    @property
    def occupied(self) -> int:
        """Connections counted against ``max_connections``, once each: those
        registered and those accepted whose welcome is not sent yet."""
        return self.registry.occupied


async def _as_coroutine(aw: Awaitable[Any]) -> Any:
    return await aw
