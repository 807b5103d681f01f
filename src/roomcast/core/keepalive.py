"""The keepalive sweep: protocol pings, silent peers, expired credentials.

About once a second (more often with short ping intervals) :class:`Keepalive`
visits every connection of the pod:

- :meth:`Connection.keepalive <roomcast.core.connection.Connection.keepalive>`
  lets the front end send a protocol ping, or drop a peer that did not answer
  the last one within ``ping_timeout``;
- a connection whose credentials expired (its identity's ``expires_at`` is at or
  before the wall clock) and were not refreshed (:mod:`roomcast.core.refresh`)
  is closed with 4001;
- the admission gate forgets connect-rate state that has gone stale.

A connection whose sweep raises is aborted; the others are swept all the same.

Calling contract: the engine runs :meth:`Keepalive.run` as its supervised
``keepalive`` loop, from :meth:`~roomcast.core.engine.Engine.start` to
:meth:`~roomcast.core.engine.Engine.close`; :meth:`Keepalive.sweep` is one round,
synchronous, given the event loop's time and the wall clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from roomcast.errors import CloseCode

if TYPE_CHECKING:
    from roomcast.core.admission import Gate
    from roomcast.core.connection import Connection
    from roomcast.core.registry import Registry

__all__ = ["Keepalive"]

_log = logging.getLogger("roomcast.hub")


class Keepalive:
    """Sweeps the pod's connections: pings, silent peers, expired credentials.

    Args:
        registry: the connections to sweep.
        gate: the admission gate, pruned after each round.
        clock: wall-clock seconds, compared with credentials' ``expires_at``.
        ping_interval: seconds between protocol pings to each connection.
        ping_timeout: seconds a connection has to answer a ping.
    """

    __slots__ = ("_clock", "_gate", "_registry", "period")

    def __init__(
        self,
        registry: Registry,
        gate: Gate,
        *,
        clock: Callable[[], float],
        ping_interval: float,
        ping_timeout: float,
    ) -> None:
        self._registry = registry
        self._gate = gate
        self._clock = clock
        self.period = max(0.05, min(1.0, ping_interval / 4, ping_timeout / 4))
        """Seconds between two rounds: a quarter of the shorter timeout, within [0.05, 1]."""

    async def run(self) -> None:
        """Sweep every :attr:`period` seconds until cancelled (call in the engine's loop)."""
        loop = asyncio.get_running_loop()
        period = self.period
        while True:
            await asyncio.sleep(period)
            self.sweep(loop.time(), self._clock())

    def sweep(self, now: float, wall: float) -> None:
        """One round over every connection.

        Args:
            now: the event loop's time, for pings (:meth:`Connection.keepalive
                <roomcast.core.connection.Connection.keepalive>`) and the gate.
            wall: wall-clock seconds; credentials with ``expires_at <= wall``
                have expired.
        """
        for conn in list(self._registry.connections.values()):
            try:
                conn.keepalive(now)
                identity = conn.identity
                expires_at = identity.expires_at if identity is not None else None
                if expires_at is not None and expires_at <= wall:
                    _expire(conn)
            except Exception:
                _log.exception("keepalive failed", extra={"conn_id": conn.id})
                conn.abort()
        self._gate.prune(now)


def _expire(conn: Connection) -> None:
    # The credentials ran out and were not refreshed: 4001.
    _log.info(
        "credentials expired; closing (4001)",
        extra={"conn_id": conn.id, "user_id": conn.user_id, "remote": conn.remote},
    )
    conn.close(CloseCode.TOKEN_EXPIRED, "token expired")
