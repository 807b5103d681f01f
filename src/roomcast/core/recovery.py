"""Merging a replay with the live messages that arrived while it was read (pure).

A connection that joins a room with ``last_id`` is added to the room's
subscription first, then the room's history after ``last_id`` is read. Live
messages published meanwhile are held. What the connection receives is then
:func:`merge`'s output: the replay in history order, followed by the held
messages not already covered — so nothing is missed (subscribed before reading)
and nothing is doubled (offsets at or below the replay's end are dropped).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from roomcast.protocol import Encoded

__all__ = ["merge"]


def merge(
    room: str, position: int, replay: Sequence[Encoded], held: Iterable[Encoded]
) -> list[Encoded]:
    """Return what a connection catching up on ``room`` receives, in order.

    Args:
        room: the room being joined.
        position: the room's offset the connection is told it is at once the
            replay is done (the newest offset the history read saw).
        replay: retained messages after the client's ``last_id``, oldest first.
        held: every publication delivered to the pod while the history was read,
            in arrival order (the room's messages and, while attaching, global
            ones).

    Held messages of ``room`` with an offset at or below the last offset already
    delivered are dropped, and so are messages of any other room; messages without
    an offset (presence, messages to everyone, messages delivered locally while
    the broker was down) pass through.
    """
    out = list(replay)
    last = position
    for encoded in replay:
        message = encoded.message
        if message is not None and message.offset is not None:
            last = max(last, message.offset)
    for encoded in held:
        message = encoded.message
        if message is not None and message.room is not None:
            if message.room != room:
                continue
            if message.offset is not None:
                if message.offset <= last:
                    continue
                last = message.offset
        out.append(encoded)
    return out
