"""The client's publications waiting for their ack (sans-I/O): chat messages sent by
``publish()``, each with a ``ref`` of its own, and resent with that same ``ref``
after a reconnection until the server answers.

The server answers a chat message that carries a ``ref`` with a ``published``
system event once the broker stored it (``id``, ``offset``), or with an ``error``
carrying the ref (``forbidden_publish``, ``not_member``, ``rate_limited``,
``unavailable``, ...). A repeated ``ref`` from the same user in the same room,
while the first message is retained, is not published again: the answer repeats
the first one's id and offset. So a message whose ack was lost with the
connection can be sent again safely, and :class:`Publications` does: it keeps
each one, encoded once, until it is answered or given up, and says which are due
on the current connection (:meth:`Publications.due`). It sends nothing itself:
the session does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Publications", "Published"]


@dataclasses.dataclass(frozen=True, slots=True)
class Published:
    """The server's ack of a published message, returned by ``Client.publish``.

    Attributes:
        room: the room it was published to.
        id: the message's id (every member received it with this id).
        offset: its position in the room's history; None when the room retains
            no messages.
    """

    room: str
    id: str
    offset: int | None = None


@dataclasses.dataclass(slots=True)
class _Entry:
    room: str
    frame: str
    sent: bool = False  # on the current connection


class Publications:
    """The publications waiting for their ack, in the order they were made.

    The calling contract: :meth:`add` each new one; whenever the connection may
    carry more (welcomed, a room joined, a room left), send the frames of
    :meth:`due`; on the server's reply, :meth:`acked` or :meth:`refused`; when
    the connection ends, :meth:`lost` (everything not answered is due again on
    the next one); when the caller gives up, :meth:`forget`.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __contains__(self, ref: object) -> bool:
        return ref in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def add(self, ref: str, room: str, data: Any) -> None:
        """Keep a new chat message ``data`` to ``room`` under ``ref`` (not sent yet).

        Raises:
            TypeError: ``data`` cannot be encoded as JSON.
        """
        message = {"type": "chat", "room": room, "data": data, "ref": ref}
        self._entries[ref] = _Entry(room, json.dumps(message, separators=(",", ":")))

    def due(self, ready: Callable[[str], bool]) -> list[str]:
        """The frames to send now, in order: those not sent on this connection whose
        room is ``ready``; they count as sent from now on."""
        frames = []
        for entry in self._entries.values():
            if not entry.sent and ready(entry.room):
                entry.sent = True
                frames.append(entry.frame)
        return frames

    def acked(self, ref: str, data: dict[str, Any]) -> Published | None:
        """The server's ``published`` event ``data`` answers ``ref``: the ack, or None if
        ``ref`` is not waiting (answered already, or given up). Forgets ``ref``."""
        entry = self._entries.pop(ref, None)
        if entry is None:
            return None
        room, message_id, offset = data.get("room"), data.get("id"), data.get("offset")
        return Published(
            room=room if isinstance(room, str) else entry.room,
            id=message_id if isinstance(message_id, str) else "",
            offset=offset if isinstance(offset, int) and not isinstance(offset, bool) else None,
        )

    def refused(self, ref: str) -> bool:
        """The server answered ``ref`` with an error; True if it was waiting. Forgets it."""
        return self._entries.pop(ref, None) is not None

    def lost(self) -> None:
        """The connection ended: every publication not answered is due again."""
        for entry in self._entries.values():
            entry.sent = False

    def forget(self, ref: str) -> None:
        """Stop waiting for ``ref`` (the caller gave up): it is never sent again."""
        self._entries.pop(ref, None)
