"""How one WebSocket endpoint treats its connections: :class:`HandlerConfig`.

Kept apart from the hub so that front ends and the hub's helpers can name an
endpoint's configuration without importing the hub. ``roomcast.core.engine`` re-exports
it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from roomcast.core.origins import OriginPolicy

if TYPE_CHECKING:
    from roomcast.core.auth import Authenticator
    from roomcast.core.connection import ConnectionHook, JoinHook, MessageHook, PublishHook

__all__ = ["HandlerConfig"]


@dataclass(frozen=True, kw_only=True, slots=True)
class HandlerConfig:
    """How one WebSocket endpoint treats its connections (the seed's HandlerConfig).

    Hooks may be plain functions or coroutine functions. A plain function runs
    inline on the event loop and must be quick (it blocks everything while it
    runs); a coroutine function runs in the connection's own pipeline, so a slow
    one delays only that connection's later messages, never other connections.

    Attributes:
        on_connect: called with the connection after its welcome and first join.
        on_disconnect: called with the connection once it is gone and its presence
            removed; ``conn.rooms`` still lists the rooms it was in.
        on_message: called with ``(connection, message)`` for each chat message
            before it is published (after ``on_publish`` allowed it); return the
            message (possibly changed) to publish it, or None to drop it.
        on_join: called with ``(connection, room)`` before a client joins a room
            (by a ``join`` or the connect URL), after the token and the room
            limit allowed it. Return None or True to
            allow; False, or a reason string, to refuse (``forbidden_room``
            error; for the connect URL's room, close 4503); or raise
            :class:`~roomcast.errors.Refused` to pick the code. A hook that
            fails refuses with ``unavailable``. Server-side subscriptions (the
            token's ``channels``, the control API) do not ask it.
        on_publish: called with ``(connection, message)`` before a client's chat
            message is published; allows or refuses like ``on_join``
            (``forbidden_publish`` error). It authorizes; ``on_message``
            transforms and filters.
        auth_required: refuse connections without credentials (HTTP 401). Invalid
            credentials are refused either way.
        authenticator: turns the upgrade request into an
            :class:`~roomcast.core.auth.Identity` (see :mod:`roomcast.core.auth`), e.g.
            :class:`~roomcast.core.auth.JwtAuthenticator`; None accepts everyone
            anonymously (or nobody, with ``auth_required``).
        allowed_origins: ``Origin`` patterns allowed to connect (see
            :mod:`roomcast.core.origins`); others get HTTP 403. Empty allows any.
        origins: ``allowed_origins`` compiled (set from it; not an argument).

    Raises:
        ConfigError: an origin pattern is malformed.
    """

    on_connect: ConnectionHook | None = None
    on_disconnect: ConnectionHook | None = None
    on_message: MessageHook | None = None
    on_join: JoinHook | None = None
    on_publish: PublishHook | None = None
    auth_required: bool = False
    authenticator: Authenticator | None = None
    allowed_origins: Sequence[str] = ()
    origins: OriginPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))
        object.__setattr__(self, "origins", OriginPolicy(self.allowed_origins))
