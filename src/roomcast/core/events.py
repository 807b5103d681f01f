"""Cluster-wide room events for integrations: occupied, vacated, member online, offline.

:class:`Events` is the engine's list of listeners (``hub.events``). Each event
is emitted once in the whole cluster, by the pod whose presence change decided
it (the presence store answers atomically which connection was a user's first
or last in a room, and which user was a room's first or last):

=================  ===========================================================
``room_occupied``  a room's first user came online in it (cluster-wide)
``room_vacated``   a room's last user went offline in it, or vanished with its pod
``member_online``  a user's first connection joined a room
``member_offline`` a user's last connection left a room, or vanished with its pod
=================  ===========================================================

A listener is a plain function ``listener(event, room, user_id)`` (``user_id``
is None for the room events); it runs inline on the event loop, so it must be
quick — queue the work (as :mod:`roomcast.integrations.webhooks` does). One that
raises is logged and does not stop the others. Events are emitted whether or not
the room's namespace sends presence messages, but not for a namespace without
presence (no state, so no transitions).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

__all__ = ["Events", "HubEvent", "Listener"]

_log = logging.getLogger("roomcast.hub")


class HubEvent(enum.StrEnum):
    """The events :class:`Events` emits (see the module's table)."""

    ROOM_OCCUPIED = "room_occupied"
    ROOM_VACATED = "room_vacated"
    MEMBER_ONLINE = "member_online"
    MEMBER_OFFLINE = "member_offline"


Listener = Callable[[HubEvent, str, "str | None"], None]
"""``listener(event, room, user_id)``; ``user_id`` is None for the room events."""


class Events:
    """The listeners of one engine's room events."""

    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def __bool__(self) -> bool:
        """Whether anyone listens (the engine skips building events otherwise)."""
        return bool(self._listeners)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every event from now on; returns the function that stops it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def emit(self, event: HubEvent, room: str, user_id: str | None = None) -> None:
        """Call every listener with the event; one that raises is logged and skipped."""
        for listener in tuple(self._listeners):
            try:
                listener(event, room, user_id)
            except Exception:
                _log.exception("event listener failed", extra={"event": event.value, "room": room})

    def joined(self, room: str, user_id: str, change: int) -> None:
        """Emit what a presence ``add`` answered (``change``: see ``PresenceChange``)."""
        if change:
            if change & 2:
                self.emit(HubEvent.ROOM_OCCUPIED, room)
            self.emit(HubEvent.MEMBER_ONLINE, room, user_id)

    def left(self, room: str, user_id: str, change: int) -> None:
        """Emit what a presence ``remove`` answered (``change``: see ``PresenceChange``)."""
        if change:
            self.emit(HubEvent.MEMBER_OFFLINE, room, user_id)
            if change & 2:
                self.emit(HubEvent.ROOM_VACATED, room)
