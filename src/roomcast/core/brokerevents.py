"""The engine's broker callbacks that count and log: publish failures, reconnects, repairs.

:class:`BrokerCallbacks` is the part of :class:`~roomcast.brokers.base.BrokerHandler`
that only keeps the operator informed (metrics and log lines); the engine
inherits it and implements the callbacks that deliver
(``handle_publication``, ``handle_presence_expired``) itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from roomcast.protocol import Encoded, Message

if TYPE_CHECKING:
    from roomcast.core.metrics import Metrics

__all__ = ["BrokerCallbacks"]

_log = logging.getLogger("roomcast.hub")


class BrokerCallbacks:
    """Counting and logging broker callbacks; mixed into the engine."""

    metrics: Metrics

    def handle_publication(self, encoded: Encoded) -> None:
        """Deliver a publication (the engine's own)."""
        raise NotImplementedError

    def handle_publish_error(self, message: Message, exc: BaseException) -> None:
        """Degrade gracefully: count, warn, and deliver ``message`` to local members."""
        message.degraded = "local"
        self.metrics.redis_publish_errors.inc()
        _log.warning(
            "broker publish failed; delivering locally only",
            extra={"room": message.room, "error": str(exc)},
        )
        self.handle_publication(Encoded.of(message))

    def handle_publish_unknown(self, message: Message, exc: BaseException) -> None:
        """Count and log a publication whose outcome is unknown (not delivered locally)."""
        message.degraded = "unknown"
        self.metrics.redis_publish_errors.inc()
        self.metrics.redis_publish_unknown.inc()
        _log.warning(
            "broker publish outcome unknown; not delivered locally (Redis may have)",
            extra={"room": message.room, "error": str(exc)},
        )

    def handle_loop_failure(self, name: str, exc: BaseException) -> None:
        """Count a background loop that failed (it was logged and is restarted)."""
        self.metrics.task_failures.labels(task=name).inc()

    def handle_reconnect(self) -> None:
        """Count a broker subscriber reconnection."""
        self.metrics.redis_reconnects.inc()

    def handle_subscriber_lost(self) -> None:
        """Count a broker subscriber connection lost or replaced."""
        self.metrics.redis_subscriber_drops.inc()

    def handle_repair(self, room: str, *, repaired: int, lost: int) -> None:
        """Count a gap in ``room``'s feed that the broker filled from history."""
        self.metrics.gap_repairs.inc()
        self.metrics.gap_repaired_messages.inc(repaired)
        self.metrics.gap_lost_messages.inc(lost)
        _log.info(
            "filled a gap in a room's feed from its history",
            extra={"room": room, "repaired": repaired, "lost": lost},
        )

    def handle_history_evicted(self, budget: str, count: int) -> None:
        """Count retained messages a byte budget evicted early."""
        self.metrics.history_evicted.labels(budget=budget).inc(count)

    def handle_duplicates(self, count: int) -> None:
        """Count publications the broker dropped as copies of ones already delivered."""
        self.metrics.duplicates_dropped.inc(count)
