"""Whether a subscriber connection is deaf, or only behind.

Every health interval a pod publishes a probe that its own subscriber
connection should hear. When no probe has come back for three intervals, the
connection is either:

- **deaf**: Redis stopped sending on it (a half-open connection after a network
  cut, say) and nothing at all is read from it. It is replaced, and what was
  published meanwhile is repaired from each room's history;
- **behind**: the pod still reads from it, but an older backlog is ahead of the
  probe (a pod starved of CPU, a slow link). Replacing it would throw that
  backlog away, and messages to everyone are not retained, so it is kept:
  Redis's own output-buffer limit for pub/sub clients
  (``client-output-buffer-limit pubsub``) bounds how far behind it can get, by
  closing it.

:class:`Hearing` tells them apart by what is read. A connection is deaf when no
probe has come back for three intervals and nothing was read across three
checks in a row that ran on time. A check that ran late, because the event loop
itself was held up, counts neither way.
"""

from __future__ import annotations

import time

__all__ = ["Hearing"]


class Hearing:
    """What one subscriber connection has heard, and whether it is deaf.

    The reader adds one to :attr:`reads` for everything it reads and calls
    :meth:`probe_seen` when a probe comes back; the health loop calls
    :meth:`deaf` after publishing each probe.
    """

    __slots__ = ("_quiet", "_reads_checked", "last_probe_seen", "reads")

    def __init__(self) -> None:
        self.last_probe_seen = 0.0
        """When a probe last came back, or the connection was made (monotonic)."""
        self.reads = 0
        """Everything read from the connection so far (messages, confirmations)."""
        self._reads_checked = 0
        self._quiet = 0  # checks in a row, on time, with nothing read

    def connected(self) -> None:
        """A connection was made (or is about to be): start afresh."""
        self.last_probe_seen = time.monotonic()
        self._reads_checked = self.reads
        self._quiet = 0

    def probe_seen(self) -> None:
        """A probe came back."""
        self.last_probe_seen = time.monotonic()

    def deaf(self, interval: float, *, late: float = 0.0) -> float | None:
        """After a probe was published: the seconds without one back if deaf, else None.

        ``late`` is how many seconds after its time this check runs (the event
        loop's own delay): a check later than ``interval`` counts neither way.
        """
        heard = self.reads != self._reads_checked
        self._reads_checked = self.reads
        if heard:
            self._quiet = 0
            return None
        if late <= interval:
            self._quiet += 1
        silent = time.monotonic() - self.last_probe_seen
        if silent > 3 * interval and self._quiet >= 3:
            self._quiet = 0
            return silent
        return None
