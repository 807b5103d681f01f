"""Prometheus collectors for one hub, registered on a registry that is passed in.

Names follow SPEC §8 (the seed's names, counters exposed with the standard
``_total`` suffix). Deliveries are counted once per fan-out (``inc(n)``), never
once per recipient, so metrics cost nothing per member on the hot path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The hub's collectors.

    Args:
        registry: where to register them; a new private registry when None, so
            two hubs in one process never collide and nothing is global.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "realtime_connections_total", "Active WebSocket connections on this pod.", registry=r
        )
        self.rooms = Gauge(
            "realtime_rooms_total", "Rooms with at least one connection on this pod.", registry=r
        )
        self.messages_sent = Counter(
            "realtime_messages_sent",
            "Messages queued for delivery to connections (counted per fan-out).",
            registry=r,
        )
        self.messages_received = Counter(
            "realtime_messages_received", "Messages received from clients.", registry=r
        )
        self.redis_publish_errors = Counter(
            "realtime_redis_publish_errors",
            "Publishes the broker could not carry out (delivered locally instead).",
            registry=r,
        )
        self.redis_reconnects = Counter(
            "realtime_redis_reconnects", "Broker subscriber reconnections.", registry=r
        )
        self.slow_consumers = Counter(
            "realtime_slow_consumer_disconnects",
            "Connections closed with 4008 because their send queue filled.",
            registry=r,
        )
        self.rate_limited = Counter(
            "realtime_rate_limited_messages",
            "Client messages dropped by the rate limit.",
            registry=r,
        )
        self.errors = Counter(
            "realtime_client_errors",
            "Error replies sent to clients, by code.",
            ["code"],
            registry=r,
        )
        self.rejected = Counter(
            "realtime_connections_rejected",
            "Connection attempts refused before the upgrade, by HTTP status.",
            ["status"],
            registry=r,
        )
        self.fanouts = Counter(
            "realtime_fanouts", "Fan-outs performed (one per delivered publication).", registry=r
        )
        self.delivery_latency = Histogram(
            "realtime_delivery_latency_seconds",
            "Time from a message's stamping to its fan-out on this pod.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        """Return the registry in the Prometheus text format."""
        return generate_latest(self.registry)
