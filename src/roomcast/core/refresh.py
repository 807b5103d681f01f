"""Token refresh: a client's ``auth`` message, and the rooms a new token revokes.

A connection authenticated by a token must send a fresher one before the old
one's ``exp`` (SPEC §5); the keepalive sweep (:mod:`roomcast.core.keepalive`)
closes a connection whose credentials ran out with 4001. :class:`TokenRefresh`
checks the new token with the endpoint's authenticator — the same user (same
``sub``), an expiry still in the future — then swaps the connection's identity,
replies ``refreshed``, and leaves the rooms the new token no longer allows, as
if the client had asked to.

Calling contract: :meth:`TokenRefresh.auth` is called by the inbound dispatch
(:mod:`roomcast.core.commands`) for an ``auth`` message. It raises
:class:`~roomcast.errors.ProtocolError` for a refusal it can decide at once, and
returns None when done or an awaitable the connection must run before its next
frame (an async authenticator, or leaving revoked rooms).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from roomcast.core.auth import ConnectRequest, Identity
from roomcast.errors import AuthError, ErrorCode, ProtocolError
from roomcast.protocol import ClientMessage

if TYPE_CHECKING:
    from roomcast.core.connection import Connection
    from roomcast.core.engine import Engine
    from roomcast.core.subscriptions import Membership

__all__ = ["TokenRefresh"]

_log = logging.getLogger("roomcast.hub")


class TokenRefresh:
    """Replaces a connection's credentials with a fresher token's.

    Args:
        hub: the engine: its message factory and clock are read once; its
            ``send_error`` answers a refusal decided after an await.
        membership: leaves the rooms a new token revokes.
    """

    __slots__ = ("_clock", "_hub", "_membership", "_messages")

    def __init__(self, hub: Engine, *, membership: Membership) -> None:
        self._hub = hub
        self._messages = hub.messages
        self._clock = hub.clock
        self._membership = membership

    def auth(self, conn: Connection, msg: ClientMessage) -> Awaitable[None] | None:
        """Handle a client's ``auth``: the same authenticator, the same user, a later expiry.

        Raises:
            ProtocolError: ``invalid_message`` when the endpoint checks no tokens
                or the token is refused.
        """
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
            self._hub.send_error(conn, exc)
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
        if identity.expires_at is not None and identity.expires_at <= self._clock():
            raise _refused("token expired", ref)
        conn.identity = identity
        conn.info = identity.info
        data: dict[str, Any] = {"user_id": identity.user_id, "expires_at": identity.expires_at}
        if ref is not None:
            data["ref"] = ref
        conn.send(self._messages.system("refreshed", data))
        # Rooms the server subscribed the connection to are the server's to take away.
        revoked = sorted(
            room
            for room in conn.rooms
            if not identity.allows(room) and room not in conn.server_rooms
        )
        return self._leave_revoked(conn, revoked) if revoked else None

    async def _leave_revoked(self, conn: Connection, rooms: list[str]) -> None:
        # The new token no longer allows these rooms: leave them as if asked to.
        for room in rooms:
            await self._membership.leave(conn, room, ref=None)


def _refused(reason: str, ref: str | None) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_MESSAGE, f"token refused: {reason}", ref=ref)
