"""One write per connection per event-loop iteration.

The hub appends each message to its members' ``pending`` lists and marks a
connection with :meth:`Flusher.mark` when its list goes from empty to non-empty.
The flusher then runs once, at the next iteration of the event loop, and calls
each marked connection's ``flush()``: however many messages arrived for a
connection in one iteration, it is written with one write.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from roomcast.core.connection import Connection

__all__ = ["Flusher"]

_log = logging.getLogger("roomcast.connection")


class Flusher:
    """Flushes every connection with pending frames once per event-loop iteration."""

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Connection] = []
        self._scheduled = False

    def mark(self, conn: Connection) -> None:
        """Flush ``conn`` at the next iteration (call once per empty→non-empty change)."""
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    @property
    def dirty(self) -> list[Connection]:
        """Connections to flush at the next run; append, then call :meth:`schedule`."""
        return self._dirty

    def schedule(self) -> None:
        """Make sure the flusher runs at the next iteration."""
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            if conn.pending:  # not closed or flushed meanwhile
                try:
                    conn.flush()
                except Exception:  # one broken transport must not stop the others
                    _log.exception("flush failed", extra={"conn_id": conn.id})
                    conn.abort()
