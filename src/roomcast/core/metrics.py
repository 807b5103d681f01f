"""Prometheus collectors for one hub, registered on a registry that is passed in.

Names follow SPEC §8 (the seed's names, counters exposed with the standard
``_total`` suffix). Deliveries are counted once per fan-out (``inc(n)``), never
once per recipient, so metrics cost nothing per member on the hot path.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "HotCounter", "HotHistogram", "Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class HotCounter(Collector):
    """A counter for the hot path: a plain integer, read at scrape time.

    ``prometheus_client``'s counters take a lock on every ``inc``; the hub's
    counters are only touched from its event loop, so an ``int`` is enough and
    costs a fraction of that.
    """

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0
        registry.register(self)

    def inc(self, amount: int = 1) -> None:
        """Add ``amount``."""
        self.value += amount

    def collect(self) -> Iterator[Metric]:
        """Expose the value (as ``<name>_total``)."""
        yield CounterMetricFamily(self.name, self.documentation, value=self.value)


class HotHistogram(Collector):
    """A histogram for the hot path: bucket counts in a list, read at scrape time."""

    def __init__(
        self,
        name: str,
        documentation: str,
        registry: CollectorRegistry,
        *,
        buckets: tuple[float, ...],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> Iterator[Metric]:
        """Expose cumulative buckets, sum and count."""
        cumulative = 0
        buckets = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self.sum
        )


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
        self.messages_sent = HotCounter(
            "realtime_messages_sent",
            "Messages queued for delivery to connections (counted per fan-out).",
            r,
        )
        self.messages_received = HotCounter(
            "realtime_messages_received", "Messages received from clients.", r
        )
        self.redis_publish_errors = Counter(
            "realtime_redis_publish_errors",
            "Publishes the broker could not carry out (delivered locally when known unsent).",
            registry=r,
        )
        self.redis_reconnects = Counter(
            "realtime_redis_reconnects", "Broker subscriber reconnections.", registry=r
        )
        self.redis_publish_unknown = Counter(
            "realtime_redis_publish_unknown",
            "Publishes whose outcome stayed unknown (no reply; not delivered locally).",
            registry=r,
        )
        self.redis_subscriber_drops = Counter(
            "realtime_redis_subscriber_drops",
            "Broker subscriber connections lost (dropped by Redis, network, deaf).",
            registry=r,
        )
        self.gap_repairs = Counter(
            "realtime_gap_repairs",
            "Gaps in a room's feed filled from its history by this pod.",
            registry=r,
        )
        self.gap_repaired_messages = Counter(
            "realtime_gap_repaired_messages",
            "Messages a pod had missed and delivered from history.",
            registry=r,
        )
        self.gap_lost_messages = Counter(
            "realtime_gap_lost_messages",
            "Messages a pod had missed that were no longer in the history.",
            registry=r,
        )
        self.history_resets = Counter(
            "realtime_history_resets",
            "Rooms whose history changed under their members on this pod (lost, or"
            " rewound by a failover); the members were told to resync.",
            registry=r,
        )
        self.duplicates_dropped = Counter(
            "realtime_duplicates_dropped",
            "Publications dropped because their offset was already delivered.",
            registry=r,
        )
        self.task_failures = Counter(
            "realtime_task_failures",
            "Background loops that raised and were restarted, by task.",
            ["task"],
            registry=r,
        )
        self.history_evicted = Counter(
            "realtime_history_evicted_messages",
            "Retained messages evicted early by a byte budget: the room's own (budget=room)"
            " or the pod's over all rooms (budget=pod).",
            ["budget"],
            registry=r,
        )
        self.history_bytes = Gauge(
            "realtime_history_bytes",
            "Bytes of messages the in-memory broker retains over all rooms.",
            registry=r,
        )
        self.slow_consumers = Counter(
            "realtime_slow_consumer_disconnects",
            "Connections closed with 4008 because their send queue filled.",
            registry=r,
        )
        self.policy_closes = Counter(
            "realtime_policy_closes",
            "Connections closed with 1008, by reason: rate (persistent rate-limit abuse)"
            " or pings (a ping flood, native front end).",
            ["reason"],
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
        self.control_commands = Counter(
            "realtime_control_commands",
            "Control API commands this pod answered, by command.",
            ["command"],
            registry=r,
        )
        self.control_unanswered = Counter(
            "realtime_control_unanswered",
            "Control API requests of this pod that some pod did not answer in time, by command.",
            ["command"],
            registry=r,
        )
        self.fanouts = HotCounter(
            "realtime_fanouts", "Fan-outs performed (one per delivered publication).", r
        )
        self.delivery_latency = HotHistogram(
            "realtime_delivery_latency_seconds",
            "Time from a message's stamping to its fan-out on this pod.",
            r,
            buckets=_LATENCY_BUCKETS,
        )

    def render(self) -> bytes:
        """Return the registry in the Prometheus text format."""
        return generate_latest(self.registry)
