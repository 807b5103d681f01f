"""Admission: what decides, before the upgrade, whether a WebSocket may connect.

:class:`Gate` runs the checks of SPEC §4 and §5, cheapest first, for both front
ends (:mod:`roomcast.frontends.native`, :mod:`roomcast.frontends.asgi`), and holds what an accepted
connection keeps until it ends: its per-user connection slot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson

from roomcast.core.auth import ConnectRequest, Identity
from roomcast.core.limits import ConnectRateLimiter, MemoryUserConnections, UserConnections
from roomcast.errors import AuthError, ProtocolError
from roomcast.protocol import validate_room

if TYPE_CHECKING:
    from roomcast.core.connection import Connection
    from roomcast.core.endpoint import HandlerConfig
    from roomcast.core.engine import Engine

__all__ = ["Admission", "Gate", "Refusal"]

_log = logging.getLogger("roomcast.admission")


@dataclass(frozen=True, slots=True)
class Admission:
    """A connection request the hub accepts: the room to join and who is asking.

    End each one with :meth:`Engine.attach <roomcast.core.engine.Engine.attach>` or, if the
    upgrade fails, :meth:`Engine.abandon <roomcast.core.engine.Engine.abandon>` (it may hold a
    per-user connection slot).
    """

    room: str | None
    user_id: str | None = None
    info: Any = None
    last_id: str | None = None
    identity: Identity | None = None
    slot: str | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A connection request refused before the upgrade, with its HTTP status."""

    status: int
    message: str

    def body(self) -> bytes:
        """The response body both front ends send: ``{"error": {"code", "message"}}``."""
        try:
            code = HTTPStatus(self.status).phrase.lower().replace(" ", "_").replace("-", "_")
        except ValueError:
            code = "refused"
        return orjson.dumps({"error": {"code": code, "message": self.message}})


class Gate:
    """The connect-time checks of one hub, and the per-user slots they hand out.

    Args:
        hub: the hub whose capacity and lifecycle the checks read.
        max_connections_per_user: connections one authenticated user may hold
            (0: no limit).
        connect_rate: new connections per second per client address (0: no limit).
        user_connections: counts connections per user (per pod by default;
            cluster-wide with the Redis implementation).
        clock: wall-clock seconds, to check credential expiry.
    """

    def __init__(
        self,
        hub: Engine,
        *,
        max_connections_per_user: int,
        connect_rate: float,
        user_connections: UserConnections | None,
        clock: Callable[[], float],
    ) -> None:
        self._hub = hub
        self.max_connections_per_user = max_connections_per_user
        self.user_connections: UserConnections = (
            user_connections if user_connections is not None else MemoryUserConnections()
        )
        self._clock = clock
        self._limiter = ConnectRateLimiter(connect_rate) if connect_rate > 0 else None
        self.handshakes = 0
        """Requests admitted or being admitted but not attached yet (count as connections)."""
        # Connection -> (user id, slot) it holds under max_connections_per_user.
        self._slots: dict[Connection, tuple[str, str]] = {}

    @contextlib.contextmanager
    def handshake(self) -> Iterator[None]:
        """Count one upgrade in progress against ``max_connections`` while the block runs.

        A front end wraps the part of a handshake that awaits the client (after
        :meth:`admit`, before ``attach``) in it, so that a burst of slow
        handshakes cannot push the pod past its capacity.
        """
        self.handshakes += 1
        try:
            yield
        finally:
            self.handshakes -= 1

    def admit(
        self, request: ConnectRequest, config: HandlerConfig
    ) -> Admission | Refusal | Awaitable[Admission | Refusal]:
        """Decide whether ``request`` may connect to the endpoint ``config`` describes.

        Checks, cheapest first: the hub serves and has room (503); the client
        address is under ``connect_rate`` (429); the origin is allowed (403); the
        route names a valid room (404, 400); the credentials, through the
        endpoint's authenticator (401, or the status of its
        :class:`~roomcast.errors.AuthError`); the identity allows the room (403);
        the user is under ``max_connections_per_user`` (429).

        Args:
            request: the upgrade request (``request.route`` is ``""`` or ``"/{room}"``).
            config: the endpoint's configuration.

        Returns:
            The decision, or an awaitable of it when the authenticator is async
            or the per-user count needs I/O: await it before reading anything
            more from the client. An :class:`Admission` must end in ``attach``
            or, when the upgrade fails, :meth:`abandon`.
        """
        hub = self._hub
        if hub.draining or not hub.started:
            return Refusal(503, "server shutting down")
        if hub.occupied + self.handshakes >= hub.max_connections:
            return Refusal(503, "server at capacity")
        limiter = self._limiter
        if (
            limiter is not None
            and request.client
            and not limiter.allow(request.client, hub.loop.time())
        ):
            return Refusal(429, "too many new connections from this address; retry later")
        if not config.origins.allows(request.origin):
            return Refusal(403, "origin not allowed")
        name = request.route.strip("/")
        room = None
        if name:
            if "/" in name:
                return Refusal(404, "no such endpoint")
            try:
                room = validate_room(name)
            except ProtocolError as exc:
                return Refusal(400, exc.detail)
        last_id = request.query.get("last_id") or None
        authenticator = config.authenticator
        if authenticator is None:
            if config.auth_required:
                return Refusal(401, "authentication required, but no authenticator is set up")
            return Admission(room=room, last_id=last_id)
        try:
            identity = authenticator(request)
        except AuthError as exc:
            return Refusal(exc.status, exc.message)
        except Exception:
            _log.exception("authenticator failed; refusing the connection")
            return Refusal(500, "authentication failed")
        if inspect.isawaitable(identity):
            return self._admit_later(identity, room, last_id, config)
        return self._authorize(identity, room, last_id, config)

    async def _admit_later(
        self,
        pending: Awaitable[Identity | None],
        room: str | None,
        last_id: str | None,
        config: HandlerConfig,
    ) -> Admission | Refusal:
        with self.handshake():  # counts against max_connections meanwhile
            try:
                identity = await pending
            except AuthError as exc:
                return Refusal(exc.status, exc.message)
            except Exception:
                _log.exception("authenticator failed; refusing the connection")
                return Refusal(500, "authentication failed")
            decision = self._authorize(identity, room, last_id, config)
            if not isinstance(decision, Admission | Refusal):
                decision = await decision
        if self._hub.draining and isinstance(decision, Admission):
            self.abandon(decision)
            return Refusal(503, "server shutting down")
        return decision

    def _authorize(
        self,
        identity: Identity | None,
        room: str | None,
        last_id: str | None,
        config: HandlerConfig,
    ) -> Admission | Refusal | Awaitable[Admission | Refusal]:
        # What the identity the authenticator returned allows.
        if identity is None:
            if config.auth_required:
                return Refusal(401, "authentication required: send a token")
            return Admission(room=room, last_id=last_id)
        if not isinstance(identity, Identity):
            _log.error("authenticator returned %r, not an Identity or None", type(identity))
            return Refusal(500, "authentication failed")
        if identity.expires_at is not None and identity.expires_at <= self._clock():
            return Refusal(401, "credentials expired")
        if room is not None and not identity.allows(room):
            return Refusal(403, f"room {room!r} is not allowed by the token")
        admission = Admission(
            room=room,
            user_id=identity.user_id,
            info=identity.info,
            last_id=last_id,
            identity=identity,
        )
        limit = self.max_connections_per_user
        if not limit:
            return admission
        admission = dataclasses.replace(admission, slot=secrets.token_hex(8))
        taken = self.user_connections.acquire(identity.user_id, admission.slot or "", limit)
        if inspect.isawaitable(taken):
            return self._slot_later(taken, admission)
        return admission if taken else self._too_many(limit)

    async def _slot_later(
        self, pending: Awaitable[bool], admission: Admission
    ) -> Admission | Refusal:
        try:
            taken = await pending
        except Exception:
            _log.exception("per-user connection count failed; refusing the connection")
            return Refusal(503, "connection count unavailable; retry later")
        return admission if taken else self._too_many(self.max_connections_per_user)

    @staticmethod
    def _too_many(limit: int) -> Refusal:
        return Refusal(429, f"too many connections for this user (at most {limit})")

    def hold(self, conn: Connection, admission: Admission) -> None:
        """``conn`` was attached with ``admission``: keep its slot until :meth:`release`."""
        if admission.slot is not None and admission.user_id is not None:
            self._slots[conn] = (admission.user_id, admission.slot)

    def release(self, conn: Connection) -> None:
        """``conn`` ended: give back its per-user slot."""
        slot = self._slots.pop(conn, None)
        if slot is not None:
            self._release_slot(*slot)

    def abandon(self, admission: Admission) -> None:
        """Release what ``admission`` holds: its upgrade failed, so no attach follows."""
        if admission.slot is not None and admission.user_id is not None:
            self._release_slot(admission.user_id, admission.slot)

    def _release_slot(self, user_id: str, slot: str) -> None:
        done = self.user_connections.release(user_id, slot)
        if done is None:
            return
        if self._hub.started:
            self._hub.spawn(done, name="roomcast-release-slot")
        elif inspect.iscoroutine(done):
            done.close()

    def refused(self, refusal: Refusal, *, remote: str = "") -> None:
        """Count (and log at debug level) a refused connection attempt."""
        self._hub.metrics.rejected.labels(status=str(refusal.status)).inc()
        _log.debug(
            "connection refused",
            extra={"status": refusal.status, "reason": refusal.message, "remote": remote},
        )

    def prune(self, now: float) -> None:
        """Forget idle addresses of the connect-rate limiter (called periodically)."""
        limiter = self._limiter
        if limiter is not None and len(limiter) > 1024:
            limiter.prune(now)
